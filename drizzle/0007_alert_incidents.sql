CREATE TABLE "backup_service"."alert_incidents" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "backup_service"."alert_incidents_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"key" text NOT NULL,
	"opened_at" timestamp with time zone DEFAULT now() NOT NULL,
	"notified_at" timestamp with time zone,
	"resolved_at" timestamp with time zone,
	"message" text NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX "uq_alert_incidents_open_key" ON "backup_service"."alert_incidents" USING btree ("key") WHERE "backup_service"."alert_incidents"."resolved_at" IS NULL;