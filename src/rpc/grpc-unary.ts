/**
 * A lean path for unary gRPC calls (binary protobuf, no request compression),
 * beside connect-node's adapter, which keeps every other call: Connect and
 * gRPC-web, JSON, streaming, compressed requests, HTTP/1.1.
 *
 * Why: a unary call through connect-node's adapter runs its whole streaming
 * pipeline (async generators for one message each way) and makes three
 * AbortSignals, one aborted without a reason (which builds a DOMException with
 * a stack trace). Node keeps AbortSignals alive through young-generation
 * collections, so each call's garbage was promoted and collected only by full
 * collections, whose pauses set the listing's p99 (see bench/NOTES.md, "Listing
 * latency").
 *
 * What stays the same: the call runs through the same interceptors (metrics,
 * token check, audit, errors) and handlers, with connect's own request,
 * response and handler-context shapes, as connect's invokeUnaryImplementation
 * runs them; the deadline comes from connect's `parseTimeout`, the error
 * trailers from its `setTrailerStatus`, and the errors for malformed requests
 * are connect's. Only the framing of one request and one reply is done here,
 * on node:http2's compatibility API. test/clients.test.ts sends the same bytes
 * down this path and connect-node's and compares what comes back.
 */
import type http2 from "node:http2";
import { create, fromBinary, toBinary, type DescMessage, type DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createServiceImplSpec,
  type ContextValues,
  type HandlerContext,
  type Interceptor,
  type MethodImplSpec,
  type ServiceImpl,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import { parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";

type UnarySpec = Extract<MethodImplSpec, { kind: "unary" }>;

/** gRPC's usual limit on a received message (grpc-go and grpc-js use 4 MiB too). */
export const READ_MAX_BYTES = 4 * 1024 * 1024;

const CONTENT_TYPES = new Set(["application/grpc", "application/grpc+proto"]);

/** The reason a finished call's signal is aborted with: one object, so no DOMException per call. */
const CALL_ENDED = new ConnectError("the call has ended", Code.Canceled);

const encodedReplies = new WeakMap<object, Uint8Array>();

/**
 * Gives the lean path `message` already encoded (`bytes` must be its protobuf binary form),
 * so that a reply shared by many callers is encoded once rather than per call. The message
 * must not change afterwards. Other paths (connect-node) encode the message as usual.
 */
export function withEncodedReply<T extends object>(message: T, bytes: Uint8Array): T {
  encodedReplies.set(message, bytes);
  return message;
}

export interface UnaryGrpcPath {
  /** Takes the call and returns true if it is a unary gRPC call this path serves; false leaves it untouched. */
  handle(req: http2.Http2ServerRequest, res: http2.Http2ServerResponse): boolean;
}

export function createUnaryGrpcPath<S extends DescService>(opts: {
  service: S;
  impl: Partial<ServiceImpl<S>>;
  interceptors: Interceptor[];
  contextValues: (req: http2.Http2ServerRequest) => ContextValues;
  readMaxBytes?: number;
}): UnaryGrpcPath {
  const readMaxBytes = opts.readMaxBytes ?? READ_MAX_BYTES;
  const spec = createServiceImplSpec(opts.service, opts.impl);
  const byPath = new Map<string, UnarySpec>();
  for (const m of Object.values(spec.methods)) {
    if (m.kind === "unary") byPath.set(`/${opts.service.typeName}/${m.method.name}`, m);
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
      // serve() turns every failure of the call into a gRPC status; should writing the reply
      // itself throw, the stream is reset rather than the rejection left to end the process.
      serve(method, req, res, opts.interceptors, opts.contextValues(req), readMaxBytes).catch((err: unknown) =>
        res.stream.destroy(err instanceof Error ? err : new Error(String(err))),
      );
      return true;
    },
  };
}

async function serve(
  spec: UnarySpec,
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
  interceptors: Interceptor[],
  contextValues: ContextValues,
  readMaxBytes: number,
): Promise<void> {
  const timeout = parseTimeout(headerValue(req.headers["grpc-timeout"]), Number.MAX_SAFE_INTEGER);
  const call = new CallState(timeout.timeoutMs);
  let ended = false;
  // The client went away (or reset the stream) before the reply: tell the handler, as connect does.
  const onClose = () => {
    if (!ended) call.abort(resetError(req.stream.rstCode));
  };
  res.once("close", onClose);
  let reply: Uint8Array | undefined;
  let header: Headers | undefined;
  let trailer: Headers | undefined;
  try {
    if (timeout.error) throw timeout.error;
    const input = parse(spec.method.input, singleMessage(await readBody(req, readMaxBytes), readMaxBytes));
    const request: UnaryRequest = {
      stream: false,
      service: spec.method.parent,
      method: spec.method,
      requestMethod: "POST",
      url: `http://${req.authority}${req.url}`,
      header: webHeaders(req.headers),
      contextValues,
      message: input,
      get signal() {
        return call.signal;
      },
    };
    // As connect's invokeUnaryImplementation, with the signal and response headers made on demand.
    let made: UnaryResponse | undefined;
    const response = await applyInterceptors(async (r: UnaryRequest): Promise<UnaryResponse> => {
      const context: HandlerContext = {
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
      const message = create(spec.method.output, await spec.impl(r.message, context));
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
    trailer = call.responseTrailer;
    setTrailerStatus(
      trailer,
      err instanceof ConnectError ? err : new ConnectError("internal error", Code.Internal, undefined, undefined, err),
    );
  } finally {
    ended = true;
    res.off("close", onClose);
    call.end();
  }
  if (res.destroyed || res.writableEnded) return;
  res.writeHead(200, header ? nodeHeaders(header) : REPLY_HEADERS);
  res.addTrailers(trailer ? nodeHeaders(trailer) : OK_TRAILERS);
  if (reply) res.end(reply);
  else res.end();
}

const REPLY_HEADERS = { "content-type": "application/grpc+proto" } as const;
const OK_TRAILERS = { "grpc-status": "0" } as const;

function applyInterceptors(next: UnaryFn, interceptors: Interceptor[]): UnaryFn {
  for (let i = interceptors.length - 1; i >= 0; i--) next = interceptors[i]!(next as never) as unknown as UnaryFn;
  return next;
}

type UnaryFn = (req: UnaryRequest) => Promise<UnaryResponse>;

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
  touched = false;

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
  }

  /** The call is over: whatever still listens is told so, and the deadline timer goes. */
  end(): void {
    this.abort(CALL_ENDED);
  }
}

/** Reads the request body, refusing more than one message of at most readMaxBytes can need. */
function readBody(req: http2.Http2ServerRequest, readMaxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      req.off("close", onClose);
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
  });
}

/** The one enveloped message of a unary request, with connect's errors for anything else. */
function singleMessage(body: Buffer, readMaxBytes: number): Uint8Array {
  if (body.length === 0) {
    throw new ConnectError("protocol error: missing input message for unary method", Code.Unimplemented);
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
    throw new ConnectError("protocol error: received extra input message for unary method", Code.Unimplemented);
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
