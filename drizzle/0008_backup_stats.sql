CREATE TABLE "backup_service"."backup_stats" (
	"database_name" text PRIMARY KEY NOT NULL,
	"total" bigint DEFAULT 0 NOT NULL,
	"successful" bigint DEFAULT 0 NOT NULL,
	"failed" bigint DEFAULT 0 NOT NULL,
	"total_size" bigint DEFAULT 0 NOT NULL,
	"ratio_sum" double precision DEFAULT 0 NOT NULL,
	"ratio_count" bigint DEFAULT 0 NOT NULL
);
