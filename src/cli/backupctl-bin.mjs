#!/usr/bin/env node
// The `backupctl` executable (package.json "bin"): runs src/cli/backupctl.ts
// from source through tsx (a runtime dependency), so it works right after
// `npm ci`, with no build step and from any working directory.
import { register } from "tsx/esm/api";

register();
await import("./backupctl.ts");
