import { defineConfig } from "drizzle-kit";

// Only `drizzle-kit generate` is used: it reads the schema and writes SQL
// migrations into drizzle/, without a database. The service applies them itself
// at start-up (src/db/migrate.ts), under an advisory lock.
export default defineConfig({
  dialect: "postgresql",
  schema: "./src/db/schema.ts",
  out: "./drizzle",
  migrations: { schema: "backup_service_migrations", table: "__drizzle_migrations" },
});
