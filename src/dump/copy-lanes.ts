import type pg from "pg";
import { CopyIn } from "./copy-in.js";

/**
 * COPY text into one table over several sessions at once ("lanes"), so that
 * more than one server process parses and stores the rows of a big table: a
 * logical restore waits on the server's CPU, and one table's COPY is one
 * process.
 *
 * Data arrives in pieces that ignore row boundaries. A table starts on one
 * lane; once it has sent `splitAfter` bytes, it is spread over all of them.
 * In COPY text format a row ends at a newline byte (newlines inside values
 * are escaped), so a piece is cut there: the bytes up to its first newline
 * finish the row the previous piece left open, on that row's lane, and the
 * rest goes to the next lane in turn that is not behind. Nothing is copied;
 * rows keep their bytes, not their order on disk.
 */

/** What a lane may hold unsent (in Node) before the loader waits for it. */
const LANE_BUFFER = 1 << 20;
const NEWLINE = 0x0a;

export interface LanesOptions {
  /** A table is spread over the lanes once it has sent this many bytes. */
  splitAfter: number;
  /** Called for each piece a lane writes; the function it returns, once the lane has sent the piece. */
  hold?: (piece: Buffer) => () => void;
}

/** Loads tables' COPY data over the given sessions (already set up for the load). */
export function createCopyLanes(clients: pg.Client[], options: LanesOptions) {
  return {
    /**
     * One table's data: `feed` hands each piece to the function it is given,
     * waiting on it. Resolves once every lane's COPY has committed, with the
     * rows each lane loaded; rejects
     * with the first failure, leaving the other lanes' COPY as they are (the
     * caller ends the sessions and drops the database being loaded).
     */
    async table(copyStmt: string, feed: (send: (piece: Buffer) => Promise<void>) => Promise<unknown>): Promise<number[]> {
      const lanes: CopyIn[] = [CopyIn.on(clients[0]!, copyStmt)];
      let sent = 0;
      /** The lane holding a row that the next piece finishes, if any. */
      let openRow: CopyIn | null = null;
      let turn = 0;
      const send = async (piece: Buffer) => {
        if (lanes.length === 1 && clients.length > 1 && sent >= options.splitAfter) {
          for (const c of clients.slice(1)) lanes.push(CopyIn.on(c, copyStmt));
        }
        sent += piece.length;
        let rest = piece;
        if (openRow && lanes.length > 1) {
          const end = piece.indexOf(NEWLINE);
          if (end < 0) {
            await openRow.write(piece, options.hold?.(piece));
            return;
          }
          const row = piece.subarray(0, end + 1);
          await openRow.write(row, options.hold?.(row));
          rest = piece.subarray(end + 1);
          openRow = null;
          if (rest.length === 0) return;
        }
        // Lanes in turn, passing over one that holds LANE_BUFFER unsent (its server process is
        // behind); when all do, the first to catch up.
        let lane: CopyIn | undefined;
        while (!lane) {
          for (let i = 0; i < lanes.length && !lane; i++) {
            const l = lanes[(turn + i) % lanes.length]!;
            if (l.backlog < LANE_BUFFER) lane = l;
          }
          if (!lane) await Promise.race(lanes.map((l) => l.drained()));
        }
        turn = (lanes.indexOf(lane) + 1) % lanes.length;
        await lane.write(rest, options.hold?.(rest));
        openRow = rest[rest.length - 1] === NEWLINE ? null : lane;
      };
      await feed(send);
      await Promise.all(lanes.map((l) => l.end()));
      return lanes.map((l) => l.rowCount);
    },
  };
}
