import { once } from "node:events";
import net from "node:net";
import type { Readable } from "node:stream";

/**
 * A child process's output, read into a few reused buffers ("slabs") instead
 * of a new buffer for every read.
 *
 * Why: a restore pushes the whole uncompressed archive (1.2 GB for the
 * benchmark database) from the decompressor through the service into the
 * COPY sessions. Read from a pipe the usual way, every read is a new 64 KiB
 * buffer; V8 counts those as external memory and, past its limit, runs full
 * collections: about 55 of them per restore of the benchmark database, over a
 * second of the service's CPU on a machine whose two cores the server's COPY
 * processes need. A socket with `onread` reads into memory we hand it, so the
 * same slabs go round and round.
 *
 * The child writes into a Unix socket (in a private directory: nobody else
 * can connect) whose other end is ours. Each read lands in the current slab
 * after the previous one; a region is in use from its read until the reader
 * asks for the next one, and a piece of it handed on (to a COPY session) until
 * `hold`'s release is called, when the socket has sent it. A slab is written
 * again only when nothing in it is in use.
 */

/** A slab's size: a read takes what is left of it (at least `MIN_READ`). */
const SLAB = 1 << 20;
const MIN_READ = 64 << 10;
/** Bytes read and not yet taken by the reader before the socket is paused. */
const QUEUE_LIMIT = 4 << 20;
/**
 * The longest socket path used: sun_path holds 108 bytes on Linux, 104 on
 * macOS, and Node shortens a longer one without a word (binding a socket
 * somewhere else).
 */
const MAX_SOCKET_PATH = 100;

interface Slab {
  buf: Buffer;
  /** Regions and pieces of it still in use. */
  refs: number;
}

export class SlabSource implements AsyncIterator<Buffer> {
  private readonly slabs: Slab[] = [];
  private readonly byMemory = new Map<ArrayBufferLike, Slab>();
  private current!: Slab;
  private offset = 0;
  private readonly queue: { region: Buffer; slab: Slab }[] = [];
  private queued = 0;
  /** The region the reader has now, released when it asks for the next. */
  private taken: Slab | null = null;
  private ended = false;
  /** Reading stopped by returning false from onRead (the socket does not say so: isPaused() stays false). */
  private paused = false;
  private failure: Error | null = null;
  private wake: (() => void) | null = null;
  private socket!: net.Socket;

  private constructor() {
    this.current = this.newSlab();
  }

  /**
   * Listens on `socketPath` and connects to it; resolves with the source and
   * the socket end to give the child as its stdout (to be destroyed here once
   * the child has it).
   */
  static async open(socketPath: string): Promise<{ source: SlabSource; childEnd: net.Socket }> {
    if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH) {
      throw new Error(`the socket path ${socketPath} is longer than ${MAX_SOCKET_PATH} bytes`);
    }
    const source = new SlabSource();
    const server = net.createServer({ pauseOnConnect: true });
    server.listen(socketPath);
    await once(server, "listening");
    try {
      const accepted = once(server, "connection") as Promise<[net.Socket]>;
      const socket = net.connect({
        path: socketPath,
        onread: {
          buffer: () => source.nextRegion(),
          callback: (n: number, buf: Uint8Array) => source.onRead(n, buf),
        },
      });
      source.socket = socket;
      const connected = once(socket, "connect");
      socket.on("end", () => {
        source.ended = true;
        source.notify();
      });
      socket.on("error", (err) => {
        source.failure ??= err;
        source.notify();
      });
      const [[childEnd]] = await Promise.all([accepted, connected]);
      return { source, childEnd };
    } finally {
      server.close();
    }
  }

  private newSlab(): Slab {
    const slab = { buf: Buffer.allocUnsafeSlow(SLAB), refs: 0 };
    this.slabs.push(slab);
    this.byMemory.set(slab.buf.buffer, slab);
    return slab;
  }

  /** Where the next read goes: the rest of the current slab, or a slab nothing uses. */
  private nextRegion(): Buffer {
    if (SLAB - this.offset < MIN_READ) {
      this.current = this.slabs.find((s) => s !== this.current && s.refs === 0) ?? this.newSlab();
      this.offset = 0;
    }
    return this.current.buf.subarray(this.offset);
  }

  private onRead(n: number, buf: Uint8Array): boolean {
    const region = Buffer.from(buf.buffer, buf.byteOffset, n);
    this.offset += n;
    this.current.refs++;
    this.queue.push({ region, slab: this.current });
    this.queued += n;
    this.notify();
    if (this.queued < QUEUE_LIMIT) return true;
    this.paused = true;
    return false;
  }

  private resume(): void {
    this.paused = false;
    this.socket.resume();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /**
   * Keeps the slab under `piece` (a view of a region this source gave out)
   * from being read into again until the returned function is called; for a
   * buffer that is not ours, does nothing.
   */
  hold(piece: Buffer): () => void {
    const slab = this.byMemory.get(piece.buffer);
    if (!slab) return noop;
    slab.refs++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      slab.refs--;
    };
  }

  async next(): Promise<IteratorResult<Buffer>> {
    if (this.taken) {
      this.taken.refs--;
      this.taken = null;
    }
    for (;;) {
      const item = this.queue.shift();
      if (item) {
        this.queued -= item.region.length;
        if (this.paused && this.queued < QUEUE_LIMIT) this.resume();
        this.taken = item.slab;
        return { value: item.region, done: false };
      }
      if (this.failure) throw this.failure;
      if (this.ended) return { value: undefined, done: true };
      if (this.paused) this.resume();
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  /**
   * Stops reading (the child writing into it gets EPIPE) and lets go of the
   * slabs: what was read and not taken is dropped, and a piece a socket is
   * still sending keeps its own reference to its memory.
   */
  destroy(): void {
    this.socket.destroy();
    this.ended = true;
    this.queue.length = 0;
    this.queued = 0;
    this.slabs.length = 0;
    this.byMemory.clear();
    this.notify();
  }

  /** Slabs allocated so far (for tests: they are reused, not piled up). */
  get slabCount(): number {
    return this.slabs.length;
  }
}

function noop(): void {}

/** A child's stdout, read through a SlabSource where one can be made, else through a pipe. */
export interface ChildOutput {
  /** For the spawn's stdio. */
  readonly stdio: net.Socket | "pipe";
  /** The slabs, to hold pieces handed on; null on a pipe, whose buffers are not reused. */
  readonly slabs: SlabSource | null;
  /**
   * Once the child has started (given its stdout, for a pipe): lets go of our copy of the
   * socket's child end, which would keep the socket from ending, and returns the output.
   */
  attach(stdout: Readable | null): AsyncIterator<Buffer>;
  /** Stops reading (the child gets EPIPE) and lets go of the slabs; for a child never started too. */
  stop(): void;
}

/**
 * Where a child writes its output: a SlabSource's socket at `socketPath`, or a pipe where none
 * can be made (no private directory for it, or a path too long for a socket's name).
 */
export async function childOutput(socketPath: string | null): Promise<ChildOutput> {
  const opened = socketPath === null ? null : await SlabSource.open(socketPath).catch(() => null);
  let pipe: Readable | null = null;
  return {
    stdio: opened ? opened.childEnd : "pipe",
    slabs: opened?.source ?? null,
    attach(stdout) {
      if (opened) {
        opened.childEnd.destroy();
        return opened.source;
      }
      pipe = stdout!;
      // Until the first read listens, a read error must not go unhandled; the reader still gets it.
      pipe.on("error", () => undefined);
      return pipe[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
    },
    stop() {
      if (opened) {
        opened.childEnd.destroy();
        opened.source.destroy();
      } else {
        pipe?.destroy();
      }
    },
  };
}
