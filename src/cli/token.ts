/**
 * Prints a token signed with the key the service would use:
 *   npm run -s token -- --sub alice --role admin [--username alice] [--ttl 1h]
 */
import { parseArgs } from "node:util";
import { mintServiceToken } from "./mint-token.js";

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
  const token = await mintServiceToken({ sub: values.sub ?? "", role: values.role, username: values.username, ttl: values.ttl });
  process.stdout.write(`${token}\n`);
} catch (err) {
  const msg = err instanceof Error ? err.message : String(err);
  process.stderr.write(`token: ${msg}\n`);
  process.exit(2);
}
