CREATE TABLE "backup_service"."restore_runs" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"backup_id" text NOT NULL,
	"target_database" text NOT NULL,
	"replica_id" text NOT NULL,
	"actor" text,
	"started_at" timestamp with time zone DEFAULT now() NOT NULL,
	"finished_at" timestamp with time zone,
	"outcome" varchar(16) NOT NULL,
	"safety_backup_id" text,
	"connections_blocked" boolean DEFAULT false NOT NULL,
	"original_connection_limit" integer,
	"error" text
);
--> statement-breakpoint
CREATE INDEX "idx_restore_runs_outcome" ON "backup_service"."restore_runs" USING btree ("outcome");