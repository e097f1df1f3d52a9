import { afterAll } from "vitest";
import { removeMadeDirs } from "./helpers.js";

// Registered before the test file's own hooks, so it runs after them: a directory a service
// still used is gone only once every service of the file has closed.
afterAll(removeMadeDirs);
