-- Keeps backup_service.backup_stats equal to the totals of backup_history's rows that are
-- not deleted, per database, in the same transaction as every change to backup_history.
CREATE FUNCTION "backup_service"."backup_stats_add"(r "backup_service"."backup_history", sign integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  ok boolean := r.status IN ('COMPLETED', 'VERIFIED');
BEGIN
  IF r.is_deleted THEN
    RETURN;
  END IF;
  INSERT INTO "backup_service"."backup_stats" AS s
      (database_name, total, successful, failed, total_size, ratio_sum, ratio_count)
    VALUES (
      r.database_name,
      sign,
      CASE WHEN ok THEN sign ELSE 0 END,
      CASE WHEN r.status IN ('FAILED', 'CORRUPTED') THEN sign ELSE 0 END,
      CASE WHEN ok THEN sign * coalesce(r.file_size, 0) ELSE 0 END,
      CASE WHEN ok AND r.compression_ratio IS NOT NULL THEN sign * r.compression_ratio ELSE 0 END,
      CASE WHEN ok AND r.compression_ratio IS NOT NULL THEN sign ELSE 0 END)
    ON CONFLICT (database_name) DO UPDATE SET
      total = s.total + EXCLUDED.total,
      successful = s.successful + EXCLUDED.successful,
      failed = s.failed + EXCLUDED.failed,
      total_size = s.total_size + EXCLUDED.total_size,
      ratio_sum = s.ratio_sum + EXCLUDED.ratio_sum,
      ratio_count = s.ratio_count + EXCLUDED.ratio_count;
END;
$$;
--> statement-breakpoint
CREATE FUNCTION "backup_service"."backup_stats_maintain"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM "backup_service"."backup_stats_add"(OLD, -1);
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    PERFORM "backup_service"."backup_stats_add"(NEW, 1);
  END IF;
  RETURN NULL;
END;
$$;
--> statement-breakpoint
CREATE TRIGGER "backup_stats_insert_delete" AFTER INSERT OR DELETE ON "backup_service"."backup_history"
  FOR EACH ROW EXECUTE FUNCTION "backup_service"."backup_stats_maintain"();
--> statement-breakpoint
-- Most updates (progress, verification details, timestamps) touch none of the counted columns.
CREATE TRIGGER "backup_stats_update" AFTER UPDATE ON "backup_service"."backup_history"
  FOR EACH ROW WHEN (
    OLD.status IS DISTINCT FROM NEW.status OR OLD.is_deleted IS DISTINCT FROM NEW.is_deleted
    OR OLD.file_size IS DISTINCT FROM NEW.file_size OR OLD.compression_ratio IS DISTINCT FROM NEW.compression_ratio
    OR OLD.database_name IS DISTINCT FROM NEW.database_name)
  EXECUTE FUNCTION "backup_service"."backup_stats_maintain"();
--> statement-breakpoint
-- TRUNCATE bypasses row triggers: empty the totals with it.
CREATE FUNCTION "backup_service"."backup_stats_truncate"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM "backup_service"."backup_stats";
  RETURN NULL;
END;
$$;
--> statement-breakpoint
CREATE TRIGGER "backup_stats_truncate" AFTER TRUNCATE ON "backup_service"."backup_history"
  FOR EACH STATEMENT EXECUTE FUNCTION "backup_service"."backup_stats_truncate"();
--> statement-breakpoint
INSERT INTO "backup_service"."backup_stats"
    (database_name, total, successful, failed, total_size, ratio_sum, ratio_count)
  SELECT database_name,
         count(*),
         count(*) FILTER (WHERE status IN ('COMPLETED', 'VERIFIED')),
         count(*) FILTER (WHERE status IN ('FAILED', 'CORRUPTED')),
         coalesce(sum(file_size) FILTER (WHERE status IN ('COMPLETED', 'VERIFIED')), 0),
         coalesce(sum(compression_ratio) FILTER (WHERE status IN ('COMPLETED', 'VERIFIED') AND compression_ratio IS NOT NULL), 0),
         count(*) FILTER (WHERE status IN ('COMPLETED', 'VERIFIED') AND compression_ratio IS NOT NULL)
    FROM "backup_service"."backup_history"
   WHERE NOT is_deleted
   GROUP BY database_name;
