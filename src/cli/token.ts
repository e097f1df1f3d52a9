/**
 * Prints a token signed with the key the service would use:
 *   npm run -s token -- --sub alice --role admin [--username alice] [--ttl 1h]
 */
import { parseArgs } from "node:util";
import { loadJwtKeys } from "../auth/keys.js";
import { ConfigError, loadConfig } from "../config.js";

function ttlSeconds(text: string): number {
  const m = /^(\d+)\s*([smhd]?)$/.exec(text.trim());
  if (!m) throw new Error(`--ttl: expected a duration such as 900, 30m, 1h or 7d`);
  const unit = { "": 1, s: 1, m: 60, h: 3600, d: 86400 }[m[2] as "" | "s" | "m" | "h" | "d"];
  const n = Number(m[1]) * unit;
  if (n <= 0) throw new Error("--ttl: must be more than zero");
  return n;
}

try {
  const { values } = parseArgs({
    options: {
      sub: { type: "string" },
      role: { type: "string", default: "admin" },
      username: { type: "string" },
      ttl: { type: "string", default: "1h" },
    },
    strict: true,
  });
  if (!values.sub) throw new Error("--sub is required (the subject the token stands for)");
  const config = loadConfig();
  const keys = await loadJwtKeys(config);
  if (!keys.sign) {
    throw new Error("only a public key is configured (JWT_PUBLIC_KEY_FILE): set JWT_PRIVATE_KEY_FILE to mint tokens");
  }
  const claims: Record<string, unknown> = { sub: values.sub, [config.jwt.roleClaim]: values.role };
  claims[config.jwt.usernameClaim] = values.username ?? values.sub;
  process.stdout.write(`${await keys.sign(claims, ttlSeconds(values.ttl!))}\n`);
} catch (err) {
  const msg = err instanceof ConfigError || err instanceof Error ? err.message : String(err);
  process.stderr.write(`token: ${msg}\n`);
  process.exit(2);
}
