import { statfs } from "node:fs/promises";

/** Free (available to this process) and total bytes of the file system holding `dir`. */
export async function diskSpace(dir: string): Promise<{ freeBytes: number; totalBytes: number }> {
  const s = await statfs(dir);
  return { freeBytes: s.bavail * s.bsize, totalBytes: s.blocks * s.bsize };
}
