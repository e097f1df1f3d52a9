/**
 * Mints a token signed with the key the service would use: shared by
 * `npm run token` and `backupctl token`.
 */
import { loadJwtKeys } from "../auth/keys.js";
import { loadConfig } from "../config.js";

export interface MintTokenOptions {
  /** The subject the token stands for (`sub`). */
  sub: string;
  /** Value of the role claim (default `admin`). */
  role?: string;
  /** Value of the username claim (default: the subject). */
  username?: string;
  /** Lifetime, e.g. `900`, `30m`, `1h`, `7d` (default `1h`). */
  ttl?: string;
}

/** A token lifetime in seconds, from `900`, `30m`, `1h` or `7d`. */
export function ttlSeconds(text: string): number {
  const m = /^(\d+)\s*([smhd]?)$/.exec(text.trim());
  if (!m) throw new Error(`--ttl: expected a duration such as 900, 30m, 1h or 7d`);
  const unit = { "": 1, s: 1, m: 60, h: 3600, d: 86400 }[m[2] as "" | "s" | "m" | "h" | "d"];
  const n = Number(m[1]) * unit;
  if (n <= 0) throw new Error("--ttl: must be more than zero");
  return n;
}

/**
 * Signs a token with the key the service configured by `env` would verify it
 * with (generating the zero-config secret in DATA_DIR if there is none yet, as
 * the service does). Throws ConfigError, KeyConfigError or Error with a
 * message fit for one line.
 */
export async function mintServiceToken(opts: MintTokenOptions, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  if (!opts.sub) throw new Error("--sub is required (the subject the token stands for)");
  const ttl = ttlSeconds(opts.ttl ?? "1h");
  const config = loadConfig(env);
  const keys = await loadJwtKeys(config);
  if (!keys.sign) {
    throw new Error("only a public key is configured (JWT_PUBLIC_KEY_FILE): set JWT_PRIVATE_KEY_FILE to mint tokens");
  }
  const claims: Record<string, unknown> = { sub: opts.sub, [config.jwt.roleClaim]: opts.role ?? "admin" };
  claims[config.jwt.usernameClaim] = opts.username ?? opts.sub;
  return keys.sign(claims, ttl);
}
