import { readFile } from "node:fs/promises";
import { ConfigError, parseSanityQueries, type Config } from "./config.js";

/** The deep-verification sanity queries the configuration names (inline or in a file). */
export async function loadSanityQueries(config: Config): Promise<Record<string, string[]>> {
  let text = config.sanity.json;
  if (config.sanity.file !== undefined) {
    try {
      text = await readFile(config.sanity.file, "utf8");
    } catch (err) {
      throw new ConfigError(`VERIFY_SANITY_SQL_FILE: cannot read the file (${(err as NodeJS.ErrnoException).code ?? "error"})`);
    }
  }
  if (text === undefined) return {};
  const parsed = parseSanityQueries(text);
  if (typeof parsed === "string") {
    throw new ConfigError(`${config.sanity.file !== undefined ? "VERIFY_SANITY_SQL_FILE" : "VERIFY_SANITY_SQL"}: ${parsed}`);
  }
  return parsed;
}
