import { createContextKey } from "@connectrpc/connect";
import type { Actor } from "../domain/backup.js";

/** The authenticated caller, set by the auth interceptor. */
export const kActor = createContextKey<Actor | undefined>(undefined, { description: "authenticated actor" });

/** The peer's address, set from the Node request by the adapter. */
export const kClientAddress = createContextKey<string | undefined>(undefined, { description: "client address" });
