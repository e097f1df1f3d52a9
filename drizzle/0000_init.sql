CREATE SCHEMA "backup_service";
--> statement-breakpoint
CREATE TYPE "backup_service"."backup_status" AS ENUM('IN_PROGRESS', 'COMPLETED', 'FAILED', 'VERIFIED', 'CORRUPTED');--> statement-breakpoint
CREATE TYPE "backup_service"."backup_type" AS ENUM('FULL', 'INCREMENTAL', 'MANUAL');--> statement-breakpoint
CREATE TABLE "backup_service"."audit_events" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "backup_service"."audit_events_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"occurred_at" timestamp with time zone DEFAULT now() NOT NULL,
	"actor" text,
	"actor_username" text,
	"action" text NOT NULL,
	"backup_id" text,
	"outcome" text NOT NULL,
	"client_address" text,
	"message" text
);
--> statement-breakpoint
CREATE TABLE "backup_service"."backup_history" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"backup_type" "backup_service"."backup_type" NOT NULL,
	"file_name" varchar(255) NOT NULL,
	"file_size" bigint,
	"status" "backup_service"."backup_status" NOT NULL,
	"started_at" timestamp with time zone DEFAULT now() NOT NULL,
	"completed_at" timestamp with time zone,
	"duration_ms" bigint,
	"database_size" bigint,
	"table_count" integer,
	"row_count" bigint,
	"compression_ratio" double precision,
	"checksum" varchar(64),
	"verified_at" timestamp with time zone,
	"is_encrypted" boolean DEFAULT false NOT NULL,
	"triggered_by" text,
	"triggered_by_username" text,
	"error_message" text,
	"metadata" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"retention_days" integer NOT NULL,
	"expires_at" timestamp with time zone NOT NULL,
	"is_deleted" boolean DEFAULT false NOT NULL,
	"deleted_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"database_name" text NOT NULL,
	"dump_size" bigint,
	"archive_format" varchar(16) NOT NULL,
	"compression" varchar(16) NOT NULL,
	"server_version" text,
	"pg_dump_version" text,
	"label" text,
	"table_row_counts" jsonb
);
--> statement-breakpoint
CREATE INDEX "idx_audit_events_occurred_at" ON "backup_service"."audit_events" USING btree ("occurred_at" DESC NULLS LAST);--> statement-breakpoint
CREATE INDEX "idx_audit_events_backup_id" ON "backup_service"."audit_events" USING btree ("backup_id");--> statement-breakpoint
CREATE INDEX "idx_audit_events_actor" ON "backup_service"."audit_events" USING btree ("actor");--> statement-breakpoint
CREATE INDEX "idx_audit_events_action" ON "backup_service"."audit_events" USING btree ("action");--> statement-breakpoint
CREATE INDEX "idx_backup_history_status" ON "backup_service"."backup_history" USING btree ("status");--> statement-breakpoint
CREATE INDEX "idx_backup_history_backup_type" ON "backup_service"."backup_history" USING btree ("backup_type");--> statement-breakpoint
CREATE INDEX "idx_backup_history_started_at" ON "backup_service"."backup_history" USING btree ("started_at" DESC NULLS LAST);--> statement-breakpoint
CREATE INDEX "idx_backup_history_expires_at" ON "backup_service"."backup_history" USING btree ("expires_at");--> statement-breakpoint
CREATE INDEX "idx_backup_history_is_deleted" ON "backup_service"."backup_history" USING btree ("is_deleted");--> statement-breakpoint
CREATE INDEX "idx_backup_history_triggered_by" ON "backup_service"."backup_history" USING btree ("triggered_by");--> statement-breakpoint
CREATE INDEX "idx_backup_history_database_started" ON "backup_service"."backup_history" USING btree ("database_name","started_at" DESC NULLS LAST);