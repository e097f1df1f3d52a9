import { checkServiceFiles, ConfigError, dropLibpqEnvironment, loadConfig } from "./config.js";
import { createApp } from "./app.js";
import { createLogger } from "./logger.js";

let config;
try {
  config = loadConfig();
  checkServiceFiles(config);
} catch (err) {
  if (!(err instanceof ConfigError)) throw err;
  process.stderr.write(`${err.message}\n`);
  process.exit(2);
}
const logger = createLogger(config.logLevel);
const ignored = dropLibpqEnvironment();
if (ignored.length > 0) {
  logger.warn(
    { variables: ignored },
    "ignoring libpq's environment variables: connections use CONTROL_DATABASE_URL and TARGET_DATABASE_URL alone (put a password or sslmode in the URL)",
  );
}

try {
  const app = await createApp(config, logger);
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down");
    app.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} catch (err) {
  logger.fatal({ err: { message: (err as Error).message, name: (err as Error).name } }, "start-up failed");
  process.exit(1);
}
