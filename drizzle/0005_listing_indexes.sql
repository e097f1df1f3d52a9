DROP INDEX "backup_service"."idx_audit_events_occurred_at";--> statement-breakpoint
DROP INDEX "backup_service"."idx_backup_history_started_at";--> statement-breakpoint
DROP INDEX "backup_service"."idx_backup_history_database_started";--> statement-breakpoint
DROP INDEX "backup_service"."idx_job_runs_job_slot";--> statement-breakpoint
CREATE INDEX "idx_backup_history_started_id" ON "backup_service"."backup_history" USING btree ("started_at" DESC NULLS FIRST,"id" DESC NULLS FIRST);--> statement-breakpoint
CREATE INDEX "idx_audit_events_occurred_at" ON "backup_service"."audit_events" USING btree ("occurred_at" DESC NULLS FIRST);--> statement-breakpoint
CREATE INDEX "idx_backup_history_started_at" ON "backup_service"."backup_history" USING btree ("started_at" DESC NULLS FIRST);--> statement-breakpoint
CREATE INDEX "idx_backup_history_database_started" ON "backup_service"."backup_history" USING btree ("database_name","started_at" DESC NULLS FIRST,"id" DESC NULLS FIRST);--> statement-breakpoint
CREATE INDEX "idx_job_runs_job_slot" ON "backup_service"."job_runs" USING btree ("job","slot" DESC NULLS FIRST);