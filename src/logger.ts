import { pino, type Logger } from "pino";

export type { Logger };

/**
 * Structured JSON logs on stdout. Anything that may carry a secret is
 * redacted by key wherever it appears.
 */
export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "backup-service" },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: {
        paths: [
          "password",
          "*.password",
          "token",
          "*.token",
          "authorization",
          "*.authorization",
          "secret",
          "*.secret",
          "connectionString",
          "*.connectionString",
          "env.PGPASSWORD",
        ],
        censor: "[redacted]",
      },
    },
    destination,
  );
}
