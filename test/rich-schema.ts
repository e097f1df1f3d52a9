/**
 * A database that exercises what a logical backup must carry, and a
 * fingerprint of one (schema and every table's rows) to compare two.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { PG_HOST, PG_PORT, PG_USER, sql } from "./helpers.js";

const run = promisify(execFile);

export async function createRichSchema(database: string): Promise<void> {
  await sql(
    database,
    `CREATE EXTENSION hstore;
     CREATE EXTENSION citext;
     CREATE EXTENSION pgcrypto;
     CREATE SCHEMA sales;
     CREATE SCHEMA "Reporting Ω";
     CREATE TYPE sales.status AS ENUM ('new', 'paid', 'shipped');
     CREATE DOMAIN sales.positive_money AS numeric(12,2) CHECK (VALUE >= 0);
     CREATE TYPE sales.address AS (street text, city text, zip text);

     CREATE TABLE sales.customers (
       id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
       email citext UNIQUE NOT NULL,
       "DisplayName" text,
       tags text[],
       attrs hstore,
       home sales.address,
       created timestamptz NOT NULL DEFAULT '2026-01-01 00:00:00+00'
     );
     COMMENT ON TABLE sales.customers IS 'people who buy things';
     COMMENT ON COLUMN sales.customers.email IS 'case-insensitive';

     CREATE TABLE sales.orders (
       id serial PRIMARY KEY,
       customer_id bigint NOT NULL REFERENCES sales.customers(id) ON DELETE CASCADE,
       status sales.status NOT NULL DEFAULT 'new',
       amount sales.positive_money NOT NULL,
       tax numeric(12,2) GENERATED ALWAYS AS (amount * 0.2) STORED,
       payload jsonb,
       secret bytea,
       note text,
       CHECK (amount < 1000000)
     );
     CREATE INDEX orders_payload_gin ON sales.orders USING gin (payload);
     CREATE INDEX orders_status_idx ON sales.orders (status) WHERE status <> 'shipped';

     CREATE TABLE sales.bookings (
       id int PRIMARY KEY,
       room int NOT NULL,
       during tstzrange NOT NULL,
       EXCLUDE USING gist (during WITH &&)
     );

     CREATE TABLE sales.audit_log (
       id bigserial PRIMARY KEY,
       order_id int,
       at timestamptz NOT NULL DEFAULT now(),
       what text
     );
     CREATE FUNCTION sales.log_order() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         INSERT INTO sales.audit_log (order_id, at, what) VALUES (NEW.id, '2026-02-02 00:00:00+00', TG_OP);
         RETURN NEW;
       END $$;
     CREATE TRIGGER orders_audit AFTER INSERT ON sales.orders FOR EACH ROW EXECUTE FUNCTION sales.log_order();
     CREATE PROCEDURE sales.mark_paid(order_id int) LANGUAGE sql AS $$ UPDATE sales.orders SET status = 'paid' WHERE id = order_id $$;

     CREATE TABLE sales.measurements (id int, at date NOT NULL, value double precision) PARTITION BY RANGE (at);
     CREATE TABLE sales.measurements_2025 PARTITION OF sales.measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
     CREATE TABLE sales.measurements_2026 PARTITION OF sales.measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');

     CREATE SEQUENCE sales.invoice_no START 1000 INCREMENT 7;
     SELECT nextval('sales.invoice_no'), nextval('sales.invoice_no'), nextval('sales.invoice_no');

     CREATE TABLE "Reporting Ω"."Monthly Ünits" ("Month" date PRIMARY KEY, "Ünits" int, "MixedCase" text);

     INSERT INTO sales.customers (email, "DisplayName", tags, attrs, home)
     SELECT 'User' || g || '@Example.com',
            CASE WHEN g % 5 = 0 THEN NULL ELSE 'Ñame ' || g END,
            ARRAY['t' || g, 'x'],
            hstore('k', g::text),
            ROW('Street ' || g, 'Zürich', lpad(g::text, 5, '0'))::sales.address
       FROM generate_series(1, 200) g;
     INSERT INTO sales.orders (customer_id, status, amount, payload, secret, note)
     SELECT 1 + g % 200, (ARRAY['new','paid','shipped'])[1 + g % 3]::sales.status, g * 3.25,
            jsonb_build_object('n', g, 'items', jsonb_build_array(g, g + 1), 'nested', jsonb_build_object('ok', g % 2 = 0)),
            CASE WHEN g % 7 = 0 THEN NULL ELSE digest(g::text, 'sha256') END,
            CASE WHEN g % 3 = 0 THEN NULL ELSE E'line1\\nline2 «quoted» ' || g END
       FROM generate_series(1, 500) g;
     CALL sales.mark_paid(1);
     INSERT INTO sales.bookings SELECT g, g % 10, tstzrange('2026-01-01'::timestamptz + g * interval '1 day', '2026-01-01'::timestamptz + g * interval '1 day' + interval '1 hour') FROM generate_series(1, 50) g;
     INSERT INTO sales.measurements SELECT g, DATE '2025-06-01' + g, g / 3.0 FROM generate_series(1, 400) g;
     INSERT INTO "Reporting Ω"."Monthly Ünits" SELECT DATE '2026-01-01' + (g || ' month')::interval, g * 10, 'Mc' || g FROM generate_series(0, 11) g;

     CREATE VIEW sales.open_orders AS SELECT id, amount FROM sales.orders WHERE status = 'new';
     CREATE MATERIALIZED VIEW sales.revenue_by_status AS SELECT status, sum(amount) AS total FROM sales.orders GROUP BY status;
     COMMENT ON MATERIALIZED VIEW sales.revenue_by_status IS 'refreshed nightly';
     SELECT lo_from_bytea(0, convert_to('large object one', 'UTF8'));
     SELECT lo_from_bytea(0, decode(repeat('ab', 5000), 'hex'));`,
  );
}

/** Every user table with a hash of its rows in a fixed order. */
export async function tableHashes(database: string): Promise<Record<string, string>> {
  const tables = await sql<{ t: string }>(
    database,
    `SELECT format('%I.%I', n.nspname, c.relname) AS t
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        AND n.nspname NOT LIKE 'pg\\_toast%'
      ORDER BY 1`,
  );
  const out: Record<string, string> = {};
  for (const { t } of tables) {
    const [row] = await sql<{ h: string | null; n: string }>(
      database,
      `SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) AS h, count(*) AS n FROM ${t} x`,
    );
    out[t] = `${row!.n}:${row!.h ?? "-"}`;
  }
  const [lo] = await sql<{ h: string | null }>(
    database,
    "SELECT md5(string_agg(encode(lo_get(oid), 'hex'), '|' ORDER BY encode(lo_get(oid), 'hex'))) AS h FROM pg_largeobject_metadata",
  );
  out["(large objects)"] = lo!.h ?? "-";
  const seqs = await sql<{ s: string; v: string }>(
    database,
    `SELECT format('%I.%I', schemaname, sequencename) AS s, coalesce(last_value, 0)::text AS v FROM pg_sequences ORDER BY 1`,
  );
  for (const { s, v } of seqs) out[`(sequence) ${s}`] = v;
  return out;
}

/** pg_dump --schema-only, without the lines that differ between any two dumps. */
export async function schemaDump(database: string): Promise<string> {
  const { stdout } = await run("pg_dump", ["--schema-only", "-h", PG_HOST, "-p", String(PG_PORT), "-U", PG_USER, database], {
    maxBuffer: 64 << 20,
  });
  return stdout
    .split("\n")
    .filter((l) => !l.startsWith("\\restrict") && !l.startsWith("\\unrestrict") && !l.startsWith("-- Dumped"))
    .join("\n");
}

/** Schema and data fingerprint of a database. */
export async function fingerprint(database: string): Promise<{ schema: string; tables: Record<string, string> }> {
  return { schema: await schemaDump(database), tables: await tableHashes(database) };
}
