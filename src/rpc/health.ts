import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
  type HealthCheckRequest,
} from "../../gen/health/v1/health_pb.js";

/** Serves `grpc.health.v1.Health` and lets the process flip its serving status. */
export interface HealthController {
  /**
   * Marks the server (the "" service and every named service) as SERVING or
   * NOT_SERVING. Open Watch calls receive the new status; setting the
   * current status again sends nothing.
   */
  setServing(serving: boolean): void;
  /** Adds the Health service (Check, Watch, List) to the router. */
  register(router: ConnectRouter): void;
}

/**
 * Creates the health service for the given fully-qualified service names.
 * The empty name "" stands for the whole server and is always known.
 * Starts SERVING.
 */
export function createHealth(serviceNames: string[]): HealthController {
  const known = new Set(["", ...serviceNames]);
  const listeners = new Set<() => void>();
  let serving = true;

  const statusOf = (service: string): ServingStatus => {
    if (!known.has(service)) {
      return ServingStatus.SERVICE_UNKNOWN;
    }
    return serving ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
  };

  async function* watch(req: HealthCheckRequest, ctx: HandlerContext) {
    // One wake-up slot per call, fed by status changes and by the end of the
    // call (ctx.signal also fires when the client cancels), so the loop
    // sleeps instead of polling and always leaves through `finally`.
    let wake: (() => void) | undefined;
    const notify = () => wake?.();
    listeners.add(notify);
    ctx.signal.addEventListener("abort", notify);
    try {
      let sent: ServingStatus | undefined;
      while (!ctx.signal.aborted) {
        // Compare with what this call last sent rather than counting events:
        // changes made while the client was slow to read collapse into the
        // latest status, and nothing is lost between a yield and the wait.
        const current = statusOf(req.service);
        if (current !== sent) {
          sent = current;
          yield { status: current };
          continue;
        }
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = undefined;
      }
    } finally {
      listeners.delete(notify);
      ctx.signal.removeEventListener("abort", notify);
    }
  }

  return {
    setServing(next) {
      if (next === serving) {
        return;
      }
      serving = next;
      for (const listener of listeners) {
        listener();
      }
    },
    register(router) {
      router.service(Health, {
        check(req) {
          if (!known.has(req.service)) {
            throw new ConnectError(`unknown service ${req.service}`, Code.NotFound);
          }
          return { status: statusOf(req.service) };
        },
        watch,
        list() {
          const statuses: Record<string, { status: ServingStatus }> = {};
          for (const name of known) {
            statuses[name] = { status: statusOf(name) };
          }
          return { statuses };
        },
      });
    },
  };
}
