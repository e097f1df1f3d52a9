CREATE TABLE "backup_service"."job_runs" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "backup_service"."job_runs_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"job" text NOT NULL,
	"slot" timestamp with time zone NOT NULL,
	"replica_id" text NOT NULL,
	"claimed" boolean NOT NULL,
	"started_at" timestamp with time zone DEFAULT now() NOT NULL,
	"finished_at" timestamp with time zone,
	"outcome" varchar(16) NOT NULL,
	"backup_id" text,
	"error" text,
	"details" jsonb
);
--> statement-breakpoint
CREATE UNIQUE INDEX "uq_job_runs_claimed_slot" ON "backup_service"."job_runs" USING btree ("job","slot") WHERE "backup_service"."job_runs"."claimed";--> statement-breakpoint
CREATE INDEX "idx_job_runs_job_slot" ON "backup_service"."job_runs" USING btree ("job","slot" DESC NULLS LAST);