import type { Socket } from "node:net";
import type pg from "pg";

/**
 * One `COPY ... FROM STDIN` on a node-postgres client, as a "submittable"
 * (what `client.query(x)` accepts: pg calls `submit`, then the handle*
 * methods as the server answers). Data goes straight onto the connection's
 * socket as CopyData messages.
 *
 * Written here rather than taken from pg-copy-streams: when the server ended
 * a session in the middle of a COPY (pg_terminate_backend, a restart), that
 * library went on flushing its buffered writes into the connection it had
 * already dropped, and the TypeError ended the whole process. Here a failure
 * is recorded once and every later call rejects with it.
 */
export class CopyIn {
  private socket: Socket | null = null;
  private connection: { stream: Socket } | null = null;
  private failure: Error | null = null;
  private readonly started: Promise<void>;
  private readonly finished: Promise<void>;
  private onStarted!: () => void;
  private onStartFailed!: (err: Error) => void;
  private onFinished!: () => void;
  private onFinishFailed!: (err: Error) => void;
  /** Those waiting in drained(), woken by a failure too. */
  private readonly waiters = new Set<() => void>();
  rowCount = 0;

  constructor(readonly text: string) {
    this.started = new Promise((resolve, reject) => {
      this.onStarted = resolve;
      this.onStartFailed = reject;
    });
    this.finished = new Promise((resolve, reject) => {
      this.onFinished = resolve;
      this.onFinishFailed = reject;
    });
    // Observed through write() and end(); a COPY given up on may fail unobserved.
    this.started.catch(() => undefined);
    this.finished.catch(() => undefined);
  }

  /** Starts this COPY on a client. */
  static on(client: pg.Client, text: string): CopyIn {
    const copy = new CopyIn(text);
    client.query(copy as unknown as pg.Submittable);
    return copy;
  }

  // --- pg's side of the interface

  submit(connection: { stream: Socket; query(text: string): void }): void {
    this.connection = connection;
    connection.query(this.text);
  }

  handleCopyInResponse(): void {
    this.socket = this.connection!.stream;
    this.onStarted();
  }

  handleCommandComplete(msg: { text?: string }): void {
    const m = /^COPY (\d+)/.exec(msg.text ?? "");
    if (m) this.rowCount = Number(m[1]);
  }

  handleReadyForQuery(): void {
    if (this.failure) return;
    this.onFinished();
  }

  handleError(err: Error): void {
    this.failure ??= err;
    this.socket = null;
    this.onStartFailed(this.failure);
    this.onFinishFailed(this.failure);
    for (const wake of this.waiters) wake();
  }

  /** pg sets and calls this for query timeouts; nothing to do. */
  callback(): void {}

  // --- ours

  /** Bytes written to the connection and not yet handed to the kernel. */
  get backlog(): number {
    return this.socket?.writableLength ?? 0;
  }

  /**
   * Sends bytes as one CopyData message; resolves once the server accepts COPY
   * data. `sent`, if given, is called once the socket no longer needs `data`
   * (sent, or the connection gone), whether or not this resolves.
   */
  async write(data: Buffer, sent?: () => void): Promise<void> {
    try {
      if (!this.socket) await this.started;
      if (this.failure) throw this.failure;
    } catch (err) {
      sent?.();
      throw err;
    }
    const header = Buffer.allocUnsafe(5);
    header[0] = 0x64; // 'd'
    header.writeUInt32BE(data.length + 4, 1);
    this.socket!.write(header);
    this.socket!.write(data, sent);
  }

  /** Resolves when what was written has gone to the kernel (or the COPY has failed). */
  async drained(): Promise<void> {
    if (!this.socket) await this.started;
    const socket = this.socket;
    if (this.failure) throw this.failure;
    if (!socket || !socket.writableNeedDrain) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        socket.off("drain", done);
        socket.off("close", done);
        this.waiters.delete(done);
        resolve();
      };
      socket.on("drain", done);
      socket.on("close", done);
      // A failure reported by message rather than by the socket closing.
      this.waiters.add(done);
    });
    if (this.failure) throw this.failure;
  }

  /** Ends the data; resolves when the server has committed the COPY. */
  async end(): Promise<void> {
    if (!this.socket) await this.started;
    if (this.failure) throw this.failure;
    this.socket!.write(Buffer.from([0x63, 0, 0, 0, 4])); // CopyDone
    await this.finished;
  }
}
