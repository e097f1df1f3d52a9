/**
 * A lean path for gRPC calls in binary protobuf with uncompressed requests,
 * unary and server-streaming, beside connect-node's adapter, which keeps every
 * other call: Connect and gRPC-web, JSON, client and bidi streaming,
 * compressed requests, HTTP/1.1.
 *
 * Why, for unary calls: a unary call through connect-node's adapter runs its
 * whole streaming pipeline (async generators for one message each way) and
 * makes three AbortSignals, one aborted without a reason (which builds a
 * DOMException with a stack trace). Node keeps AbortSignals alive through
 * young-generation collections, so each call's garbage was promoted and
 * collected only by full collections, whose pauses set the listing's p99 (see
 * bench/NOTES.md, "Listing latency").
 *
 * Why, for server streams: a download's 1 MiB chunks. connect-node encodes
 * each reply with protobuf-es (a writer grown to 2 MiB, then a copy of what it
 * wrote) and copies it again into its envelope: about 4 MiB of buffers per
 * chunk besides the file's own read. Here a reply whose wire form was given in
 * parts (withWireParts: a few bytes of tags and lengths, then the chunk's
 * buffer itself) is written as those parts, nothing copied.
 *
 * What stays the same: the call runs through the same interceptors (metrics,
 * token check, audit, errors) and handlers, with connect's own request,
 * response and handler-context shapes, as connect's invokeUnaryImplementation
 * and invokeStreamImplementation run them; the deadline comes from connect's
 * `parseTimeout`, the error trailers from its `setTrailerStatus`, and the
 * errors for malformed requests are connect's, raised at the same point: before
 * the interceptors for a unary call, inside them (when the handler takes its
 * message) for a server stream; a `requestGate` runs where connect runs its own, before
 * the body is read. Only the framing of the request and the
 * replies is done here, on node:http2's compatibility API.
 * test/clients.test.ts and test/rpc-edges.test.ts send the same bytes down this
 * path and connect-node's and compare what comes back.
 */
import http2 from "node:http2";
import { create, fromBinary, toBinary, type DescMessage, type DescService, type Message } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createServiceImplSpec,
  type ContextValues,
  type HandlerContext,
  type Interceptor,
  type MethodImplSpec,
  type ServiceImpl,
  type StreamRequest,
  type StreamResponse,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import { parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";

type UnarySpec = Extract<MethodImplSpec, { kind: "unary" }>;
type ServerStreamSpec = Extract<MethodImplSpec, { kind: "server_streaming" }>;

/** gRPC's usual limit on a received message (grpc-go and grpc-js use 4 MiB too). */
export const READ_MAX_BYTES = 4 * 1024 * 1024;

const CONTENT_TYPES = new Set(["application/grpc", "application/grpc+proto"]);

/** The reason a finished call's signal is aborted with: one object, so no DOMException per call. */
const CALL_ENDED = new ConnectError("the call has ended", Code.Canceled);

const encodedReplies = new WeakMap<object, Uint8Array>();
const wireParts = new WeakMap<object, { parts: readonly Uint8Array[]; written?: () => void }>();

/**
 * Gives the lean path `message` already encoded (`bytes` must be its protobuf binary form),
 * so that a reply shared by many callers is encoded once rather than per call. The message
 * must not change afterwards. Other paths (connect-node) encode the message as usual.
 */
export function withEncodedReply<T extends object>(message: T, bytes: Uint8Array): T {
  encodedReplies.set(message, bytes);
  return message;
}

/**
 * Gives the lean path a reply's binary form as parts to be written one after another
 * (their concatenation must be what toBinary makes of `message`), so that a big bytes
 * field goes out as the buffer it is, not copied. The parts must not change until the
 * reply has been written to the connection, which `written` is told (then, or when the
 * stream is gone, never before). Other paths encode the message as usual and never call
 * `written`.
 */
export function withWireParts<T extends object>(message: T, parts: readonly Uint8Array[], written?: () => void): T {
  wireParts.set(message, { parts, written });
  return message;
}

export interface LeanGrpcPath {
  /** Takes the call and returns true if it is a gRPC call this path serves; false leaves it untouched. */
  handle(req: http2.Http2ServerRequest, res: http2.Http2ServerResponse): boolean;
}

export function createLeanGrpcPath<S extends DescService>(opts: {
  service: S;
  impl: Partial<ServiceImpl<S>>;
  interceptors: Interceptor[];
  contextValues: (req: http2.Http2ServerRequest) => ContextValues;
  readMaxBytes?: number;
  /** As connect's `requestGate`: runs before the request's body is read; throwing refuses the call. */
  requestGate?: (ctx: HandlerContext) => void | Promise<void>;
}): LeanGrpcPath {
  const readMaxBytes = opts.readMaxBytes ?? READ_MAX_BYTES;
  const spec = createServiceImplSpec(opts.service, opts.impl);
  const byPath = new Map<string, UnarySpec | ServerStreamSpec>();
  for (const m of Object.values(spec.methods)) {
    if (m.kind === "unary" || m.kind === "server_streaming") byPath.set(`/${opts.service.typeName}/${m.method.name}`, m);
  }

  return {
    handle(req, res) {
      if (req.httpVersionMajor !== 2 || req.method !== "POST") return false;
      const method = byPath.get(req.url);
      if (method === undefined) return false;
      const type = req.headers["content-type"];
      if (type === undefined || !CONTENT_TYPES.has(type)) return false;
      const encoding = req.headers["grpc-encoding"];
      if (encoding !== undefined && encoding !== "identity") return false;
      // The call turns every failure into a gRPC status; should writing the reply itself
      // throw, the stream is reset rather than the rejection left to end the process.
      const env: CallEnv = { interceptors: opts.interceptors, contextValues: opts.contextValues(req), readMaxBytes, requestGate: opts.requestGate };
      const served = method.kind === "unary" ? serveUnary(method, req, res, env) : serveStream(method, req, res, env);
      served.catch((err: unknown) => res.stream.destroy(err instanceof Error ? err : new Error(String(err))));
      return true;
    },
  };
}

/** What a call runs with besides its request. */
interface CallEnv {
  interceptors: Interceptor[];
  contextValues: ContextValues;
  readMaxBytes: number;
  requestGate: ((ctx: HandlerContext) => void | Promise<void>) | undefined;
}

/** What both kinds of call start with: the deadline, the call's state, and a client that goes away. */
function startCall(req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) {
  const timeout = parseTimeout(headerValue(req.headers["grpc-timeout"]), Number.MAX_SAFE_INTEGER);
  const call = new CallState(timeout.timeoutMs);
  // The client went away (or reset the stream) before the end: tell the handler, as connect does.
  const onClose = () => {
    if (!call.ended) call.abort(resetError(req.stream.rstCode));
  };
  res.once("close", onClose);
  return {
    call,
    timeoutError: timeout.error,
    finish() {
      call.ended = true;
      res.off("close", onClose);
      call.end();
    },
  };
}

/**
 * A request of either shape with the fields they share, as connect's requestCommon makes
 * them. One literal with the signal as its own getter: spreading an object with a getter
 * would read it, making every call's AbortSignal (see CallState), and a literal built by
 * spreading then adding a getter costs several times as much to make.
 */
function callRequest<R extends UnaryRequest | StreamRequest>(
  stream: R["stream"],
  method: R["method"],
  message: R["message"],
  req: http2.Http2ServerRequest,
  contextValues: ContextValues,
  call: CallState,
): R {
  return {
    stream,
    method,
    message,
    service: method.parent,
    requestMethod: "POST",
    url: `http://${req.authority}${req.url}`,
    header: webHeaders(req.headers),
    contextValues,
    get signal() {
      return call.signal;
    },
  } as R;
}

/** The handler's context for request `r`, as connect's mergeRequest makes it. */
function handlerContext(r: UnaryRequest | StreamRequest, call: CallState): HandlerContext {
  return {
    method: r.method,
    service: r.service,
    requestMethod: r.requestMethod,
    protocolName: "grpc",
    url: r.url,
    requestHeader: r.header,
    values: r.contextValues,
    timeoutMs: () => call.timeoutMs(),
    get signal() {
      return r.signal;
    },
    get responseHeader() {
      return call.responseHeader;
    },
    get responseTrailer() {
      return call.responseTrailer;
    },
  };
}

async function serveUnary(
  spec: UnarySpec,
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
  { interceptors, contextValues, readMaxBytes, requestGate }: CallEnv,
): Promise<void> {
  const { call, timeoutError, finish } = startCall(req, res);
  let reply: Uint8Array | undefined;
  let header: Headers | undefined;
  let trailer: Headers | undefined;
  try {
    // The message is set once read: the gate runs first, before the body is read (as
    // connect's, which also raises a malformed timeout only after it).
    const request = callRequest<UnaryRequest>(false, spec.method, undefined as never, req, contextValues, call);
    const gated = requestGate?.(handlerContext(request, call));
    if (gated) await gated;
    if (timeoutError) throw timeoutError;
    (request as { message: Message }).message = parse(
      spec.method.input,
      singleMessage(await readBody(req, readMaxBytes, call), readMaxBytes, "unary"),
    );
    // As connect's invokeUnaryImplementation, with the signal and response headers made on demand.
    let made: UnaryResponse | undefined;
    const response = await applyInterceptors(async (r: UnaryRequest | StreamRequest): Promise<UnaryResponse> => {
      const message = create(spec.method.output, await spec.impl(r.message as Message, handlerContext(r, call)));
      return (made = {
        stream: false,
        service: r.service,
        method: spec.method,
        message,
        get header() {
          return call.responseHeader;
        },
        get trailer() {
          return call.responseTrailer;
        },
      });
    }, interceptors)(request);
    reply = envelope(encodedReplies.get(response.message) ?? serialize(spec.method.output, response.message));
    // An interceptor may answer with headers of its own; otherwise they are the call's, if made.
    const own = response !== made || call.touched;
    header = own ? response.header : undefined;
    trailer = own ? response.trailer : undefined;
  } catch (err) {
    header = call.touched ? call.responseHeader : undefined;
    trailer = errorTrailer(call, err);
  } finally {
    finish();
  }
  if (gone(res) || res.writableEnded) return;
  res.writeHead(200, header ? nodeHeaders(header) : REPLY_HEADERS);
  res.addTrailers(trailer ? nodeHeaders(trailer) : OK_TRAILERS);
  if (reply) res.end(reply);
  else res.end();
}

/**
 * A server-streaming call: the headers go with the first reply (or with the trailers, if
 * there is none), each reply is written once the one before it has been taken by the
 * stream (HTTP/2 flow control holds a slow client's replies here, not in memory), and the
 * status follows in the trailers. A client that goes away ends the handler's stream as
 * connect's does: its signal aborts, and the stream is closed (return()) after the reply
 * being written. A client that stops reading but keeps the stream open no longer holds the
 * handler (a download's file lock and buffer) once the call is aborted (its deadline
 * passed): the reason is thrown into the handler's stream, and the stream is reset
 * (CANCEL), as the trailers could only follow the replies the client does not take.
 */
async function serveStream(
  spec: ServerStreamSpec,
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
  { interceptors, contextValues, readMaxBytes, requestGate }: CallEnv,
): Promise<void> {
  const { call, timeoutError, finish } = startCall(req, res);
  let headSent = false;
  let stalled = false;
  let trailer: Headers | undefined;
  let response: StreamResponse | undefined;
  let made: StreamResponse | undefined;
  // An interceptor may answer with headers of its own; otherwise they are the call's, if made.
  const own = () => response !== undefined && (response !== made || call.touched);
  const sendHead = () => {
    if (headSent) return;
    headSent = true;
    const header = own() ? response!.header : call.touched ? call.responseHeader : undefined;
    res.writeHead(200, header ? nodeHeaders(header) : REPLY_HEADERS);
  };
  try {
    // The request's message is read when the handler asks for it, inside the interceptors,
    // as connect-node reads a stream's input: a call the token check refuses is answered
    // without its body being read (nor waited for), and a malformed body fails a call that
    // was let in, audited and counted as connect-node's path does.
    const input = streamInput(spec.method.input, req, call, timeoutError, readMaxBytes);
    const request = callRequest<StreamRequest>(true, spec.method, input, req, contextValues, call);
    const gated = requestGate?.(handlerContext(request, call));
    if (gated) await gated;
    // As connect's invokeStreamImplementation for a server stream.
    response = await applyInterceptors(async (r: UnaryRequest | StreamRequest): Promise<StreamResponse> => {
      const message = await single(r.message as AsyncIterable<Message>);
      const output = spec.impl(message, handlerContext(r, call));
      return (made = {
        stream: true,
        service: r.service,
        method: spec.method,
        message: normalized(spec.method.output, output),
        get header() {
          return call.responseHeader;
        },
        get trailer() {
          return call.responseTrailer;
        },
      });
    }, interceptors)(request);
    const replies = response.message[Symbol.asyncIterator]();
    for await (const message of { [Symbol.asyncIterator]: () => replies }) {
      if (gone(res)) break;
      sendHead();
      const wire = wireParts.get(message);
      const parts = wire?.parts ?? [encodedReplies.get(message) ?? serialize(spec.method.output, message)];
      const aborted = await writeReply(res, call, parts, wire?.written);
      if (gone(res)) break;
      if (aborted !== undefined) {
        // As connect-node does with a write that failed: the reason goes into the handler's
        // stream, so that the call is audited and counted with it (DEADLINE_EXCEEDED).
        stalled = true;
        await replies.throw?.(aborted);
        throw aborted;
      }
    }
    trailer = own() ? response!.trailer : call.touched ? call.responseTrailer : undefined;
  } catch (err) {
    trailer = errorTrailer(call, err);
  } finally {
    finish();
  }
  if (gone(res) || res.writableEnded) return;
  if (stalled && res.stream.writableNeedDrain) {
    res.stream.close(http2.constants.NGHTTP2_CANCEL);
    return;
  }
  sendHead();
  res.addTrailers(trailer ? nodeHeaders(trailer) : OK_TRAILERS);
  res.end();
}

/** The trailers that report `err` (the call's own trailers, if a handler set any). */
function errorTrailer(call: CallState, err: unknown): Headers {
  const trailer = call.responseTrailer;
  setTrailerStatus(
    trailer,
    err instanceof ConnectError ? err : new ConnectError("internal error", Code.Internal, undefined, undefined, err),
  );
  return trailer;
}

/**
 * Writes one enveloped reply of the given parts; resolves once the stream has taken it
 * (at once while it is under its buffer's mark, otherwise at "drain"), or when the stream
 * is closed, or with the reason when the call is aborted first (its deadline passed while
 * the client was not reading). `written` is called once the last part has gone to the
 * connection (node's http2 holds a written buffer, uncopied, until its socket write
 * completes) or failed.
 */
function writeReply(
  res: http2.Http2ServerResponse,
  call: CallState,
  parts: readonly Uint8Array[],
  written?: () => void,
): Promise<unknown> {
  let length = 0;
  for (const p of parts) length += p.length;
  const first = parts[0] ?? new Uint8Array(0);
  // The envelope goes with the first part when that is small (a reply's tags and lengths).
  const small = first.length <= 256;
  const head = Buffer.allocUnsafe(5 + (small ? first.length : 0));
  head[0] = 0;
  head.writeUInt32BE(length, 1);
  if (small) head.set(first, 5);
  const from = small ? 1 : 0;
  let ok = res.write(head, from === parts.length ? written : undefined);
  for (let i = from; i < parts.length; i++) ok = res.write(parts[i]!, i === parts.length - 1 ? written : undefined);
  if (ok || gone(res)) return Promise.resolve(undefined);
  return new Promise((resolve) => {
    const done = (reason?: unknown) => {
      res.off("drain", taken);
      res.off("close", taken);
      call.whenAborted(undefined);
      resolve(reason);
    };
    const taken = () => done();
    res.on("drain", taken);
    res.on("close", taken);
    call.whenAborted(done);
  });
}

/**
 * Whether the call's stream is closed (the client reset it, or it ended). Node's
 * Http2ServerResponse has no `destroyed`; a write to a closed stream returns false and
 * no "drain" or "close" follows it, so this is asked before waiting on one.
 */
function gone(res: http2.Http2ServerResponse): boolean {
  return res.stream.destroyed || res.stream.closed;
}

/**
 * A server stream's input as connect-node's is: nothing happens until the first next(),
 * which raises the call's malformed timeout (connect raises it on reading the input, too),
 * then reads and checks the body, with the same errors as a unary call's.
 */
async function* streamInput(
  schema: DescMessage,
  req: http2.Http2ServerRequest,
  call: CallState,
  timeoutError: ConnectError | undefined,
  readMaxBytes: number,
): AsyncGenerator<Message> {
  if (timeoutError) throw timeoutError;
  yield parse(schema, singleMessage(await readBody(req, readMaxBytes, call), readMaxBytes, "server-streaming"));
}

/** The one message of a server-streaming request, with connect's errors for none or more. */
async function single(messages: AsyncIterable<Message>): Promise<Message> {
  const it = messages[Symbol.asyncIterator]();
  const first = await it.next();
  if (first.done === true) {
    throw new ConnectError("protocol error: missing input message for server-streaming method", Code.Unimplemented);
  }
  const second = await it.next();
  if (second.done !== true) {
    throw new ConnectError("protocol error: received extra input message for server-streaming method", Code.Unimplemented);
  }
  return first.value;
}

/**
 * The handler's replies as messages of the method's output (connect's normalizeIterable,
 * which it does not export); closing this closes the handler's stream.
 */
async function* normalized(schema: DescMessage, replies: AsyncIterable<unknown>): AsyncGenerator<Message> {
  for await (const r of replies) yield create(schema, r as never) as Message;
}

const REPLY_HEADERS = { "content-type": "application/grpc+proto" } as const;
const OK_TRAILERS = { "grpc-status": "0" } as const;

/** `next` wrapped in the interceptors, the first outermost (connect's applyInterceptors). */
function applyInterceptors<Req extends UnaryRequest | StreamRequest, Res extends UnaryResponse | StreamResponse>(
  next: (req: UnaryRequest | StreamRequest) => Promise<Res>,
  interceptors: Interceptor[],
): (req: Req) => Promise<Res> {
  let fn = next as unknown as Parameters<Interceptor>[0];
  for (let i = interceptors.length - 1; i >= 0; i--) fn = interceptors[i]!(fn);
  return fn as unknown as (req: Req) => Promise<Res>;
}

/**
 * What a call holds that is costly to make and seldom used. Node keeps every AbortSignal
 * through young-generation collections until a full one (measured: a signal made and
 * dropped per call promoted nearly all of it), and connect made three a call; here the
 * signal is made only when something asks for it (a long handler, or the error
 * interceptor after a failure), already aborted if the call was. The same for the
 * response headers and trailers, which nothing sets on most calls.
 */
class CallState {
  private controller: AbortController | undefined;
  private reason: unknown;
  private timer: NodeJS.Timeout | undefined;
  private readonly deadline: number | undefined;
  private header: Headers | undefined;
  private trailer: Headers | undefined;
  private onAbort: ((reason: unknown) => void) | undefined;
  touched = false;
  /** Set when the call's outcome is decided: a stream closing after that is no cancellation. */
  ended = false;

  constructor(timeoutMs: number | undefined) {
    if (timeoutMs !== undefined) {
      this.deadline = Date.now() + timeoutMs;
      const expire = () => this.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
      if (timeoutMs <= 0) expire();
      else this.timer = setTimeout(expire, timeoutMs);
    }
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.reason !== undefined) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  timeoutMs(): number | undefined {
    return this.deadline === undefined ? undefined : this.deadline - Date.now();
  }

  get responseHeader(): Headers {
    this.touched = true;
    return (this.header ??= new Headers(REPLY_HEADERS));
  }

  get responseTrailer(): Headers {
    this.touched = true;
    return (this.trailer ??= new Headers(OK_TRAILERS));
  }

  abort(reason: unknown): void {
    if (this.reason !== undefined) return;
    this.reason = reason;
    clearTimeout(this.timer);
    this.controller?.abort(reason);
    const onAbort = this.onAbort;
    this.onAbort = undefined;
    onAbort?.(reason);
  }

  /**
   * Calls `fn` with the reason once the call is aborted (at once if it already was), or no
   * longer if `fn` is undefined: one listener at a time, for readBody or writeReply (never
   * both: a call's body is read before its replies), without making the signal (see above).
   */
  whenAborted(fn: ((reason: unknown) => void) | undefined): void {
    if (fn !== undefined && this.reason !== undefined) fn(this.reason);
    else this.onAbort = fn;
  }

  /** The call is over: whatever still listens is told so, and the deadline timer goes. */
  end(): void {
    this.abort(CALL_ENDED);
  }
}

/**
 * Reads the request body, refusing more than one message of at most readMaxBytes can need.
 * Gives up when the call is aborted (its deadline passed, or the client went away), so a
 * client that never ends its request holds nothing past its deadline; what it has not sent
 * is left unread, for HTTP/2 flow control to hold back.
 */
function readBody(req: http2.Http2ServerRequest, readMaxBytes: number, call: CallState): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      req.off("close", onClose);
      call.whenAborted(undefined);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      // Room for the message, its header and the header of a second message (refused later).
      if (size > readMaxBytes + 10) {
        done();
        req.resume();
        reject(new ConnectError(`message size is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      done();
      resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    const onError = (err: Error) => {
      done();
      reject(err);
    };
    // A stream reset before the request's end emits neither "end" nor "error".
    const onClose = () => {
      done();
      reject(new ConnectError("the client closed the stream before its request ended", Code.Canceled));
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
    req.on("close", onClose);
    call.whenAborted((reason) => {
      done();
      req.pause();
      reject(reason);
    });
  });
}

/** The one enveloped message of a request, with connect's errors for anything else. */
function singleMessage(body: Buffer, readMaxBytes: number, kind: "unary" | "server-streaming"): Uint8Array {
  if (body.length === 0) {
    throw new ConnectError(`protocol error: missing input message for ${kind} method`, Code.Unimplemented);
  }
  if (body.length < 5) throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  const flags = body[0]!;
  const length = body.readUInt32BE(1);
  if (length > readMaxBytes) {
    throw new ConnectError(`message size ${length} is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted);
  }
  if (body.length < 5 + length) throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  if (body.length > 5 + length) {
    const rest = body.length - 5 - length;
    if (rest < 5 || rest < 5 + body.readUInt32BE(5 + length + 1)) {
      throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
    }
    throw new ConnectError(`protocol error: received extra input message for ${kind} method`, Code.Unimplemented);
  }
  if ((flags & 0b01) === 0b01) {
    throw new ConnectError("received compressed envelope, but do not know how to decompress", Code.Internal);
  }
  return body.subarray(5);
}

function parse(schema: DescMessage, data: Uint8Array) {
  try {
    return fromBinary(schema, data);
  } catch (e) {
    throw new ConnectError(`parse binary: ${e instanceof Error ? e.message : String(e)}`, Code.Internal);
  }
}

function serialize(schema: DescMessage, message: Parameters<typeof toBinary>[1]): Uint8Array {
  try {
    return toBinary(schema, message);
  } catch (e) {
    throw new ConnectError(`serialize binary: ${e instanceof Error ? e.message : String(e)}`, Code.Internal);
  }
}

function envelope(data: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + data.length);
  out[0] = 0;
  out.writeUInt32BE(data.length, 1);
  out.set(data, 5);
  return out;
}

function resetError(rstCode: number | undefined): ConnectError {
  // 8 is CANCEL, what a client sends when it gives up or its deadline passes.
  const name = rstCode === undefined ? "none" : `0x${rstCode.toString(16)}`;
  return new ConnectError(`http/2 stream closed by the client (reset code ${name})`, rstCode === 8 || rstCode === undefined ? Code.Canceled : Code.Internal);
}

function headerValue(v: string | string[] | undefined): string | null {
  return v === undefined ? null : Array.isArray(v) ? v.join(", ") : v;
}

function webHeaders(incoming: http2.IncomingHttpHeaders): Headers {
  const h = new Headers();
  for (const [k, v] of Object.entries(incoming)) {
    if (k.startsWith(":") || v === undefined) continue;
    if (Array.isArray(v)) for (const item of v) h.append(k, item);
    else h.append(k, v);
  }
  return h;
}

function nodeHeaders(h: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  h.forEach((value, key) => (out[key] = value));
  return out;
}
