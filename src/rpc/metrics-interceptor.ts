import { ConnectError, type Interceptor } from "@connectrpc/connect";
import { codeName } from "./errors.js";

/**
 * Outermost: reports every call's method, status code and duration, denied
 * calls included. Codes are named as the audit log names them: "OK",
 * "UNAUTHENTICATED", "NOT_FOUND", "CANCELED"...
 *
 * A server-streaming call (RestoreBackup, DownloadBackup) is over when its
 * last message is sent or it fails, not when the handler returns its stream:
 * the stream is wrapped and the call is reported when it ends, with the code
 * of the error that ended it, or CANCELED when the client went away and the
 * stream was closed before its end.
 */
export function createMetricsInterceptor(observe: (method: string, code: string, seconds: number) => void): Interceptor {
  const codeOf = (err: unknown) => codeName(ConnectError.from(err).code);
  return (next) => async (req) => {
    const started = performance.now();
    const done = (code: string) => observe(req.method.name, code, (performance.now() - started) / 1000);
    let res;
    try {
      res = await next(req);
    } catch (err) {
      done(codeOf(err));
      throw err;
    }
    if (!res.stream) {
      done("OK");
      return res;
    }
    const inner = res.message;
    return {
      ...res,
      message: (async function* () {
        let code = "CANCELED";
        try {
          yield* inner;
          code = "OK";
        } catch (err) {
          code = codeOf(err);
          throw err;
        } finally {
          done(code);
        }
      })(),
    };
  };
}
