/**
 * A lean path for unary gRPC calls (binary protobuf, no request compression),
 * beside connect-node's adapter, which keeps every other call: Connect and
 * gRPC-web, JSON, streaming, compressed requests, HTTP/1.1.
 *
 * Why: a unary call through connect-node's adapter runs its whole streaming
 * pipeline (async generators for one message each way) and ends by aborting an
 * AbortController without a reason, which builds a DOMException with a stack
 * trace. Under the latency benchmark that plumbing cost about 0.55 ms of CPU a
 * call, four times node:http2's own cost, and its garbage, promoted by young
 * collections, set the listing's p99 (see the README, "Listing latency").
 *
 * What stays the same: the call runs through connect's own
 * `invokeUnaryImplementation` with the same interceptors (metrics, token check,
 * audit, errors) and a context from connect's `createHandlerContext`; the
 * deadline comes from connect's `parseTimeout` and the error trailers from its
 * `setTrailerStatus`. Only the framing of one request and one reply is done
 * here, on node:http2's compatibility API. test/grpc-unary.test.ts sends the same
 * bytes to this path and to connect-node's and compares what comes back.
 */
import type http2 from "node:http2";
import { fromBinary, toBinary, type DescMessage, type DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createHandlerContext,
  createServiceImplSpec,
  type ContextValues,
  type Interceptor,
  type MethodImplSpec,
  type ServiceImpl,
} from "@connectrpc/connect";
import { invokeUnaryImplementation } from "@connectrpc/connect/protocol";
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
      void serve(method, req, res, opts.interceptors, opts.contextValues(req), readMaxBytes);
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
  const context = createHandlerContext({
    ...spec,
    service: spec.method.parent,
    requestMethod: "POST",
    protocolName: "grpc",
    timeoutMs: timeout.timeoutMs,
    requestHeader: webHeaders(req.headers),
    url: `http://${req.authority}${req.url}`,
    responseHeader: { "content-type": "application/grpc+proto" },
    responseTrailer: { "grpc-status": "0" },
    contextValues,
  });
  let ended = false;
  // The client went away (or reset the stream) before the reply: tell the handler, as connect does.
  const onClose = () => {
    if (!ended) context.abort(resetError(req.stream.rstCode));
  };
  res.once("close", onClose);
  let reply: Uint8Array | undefined;
  try {
    if (timeout.error) throw timeout.error;
    const input = parse(spec.method.input, singleMessage(await readBody(req, readMaxBytes), readMaxBytes));
    const output = await invokeUnaryImplementation(spec, context, input, interceptors);
    reply = envelope(encodedReplies.get(output) ?? serialize(spec.method.output, output));
  } catch (err) {
    setTrailerStatus(
      context.responseTrailer,
      err instanceof ConnectError ? err : new ConnectError("internal error", Code.Internal, undefined, undefined, err),
    );
  } finally {
    ended = true;
    res.off("close", onClose);
    context.abort(CALL_ENDED);
  }
  if (res.destroyed || res.writableEnded) return;
  res.writeHead(200, nodeHeaders(context.responseHeader));
  res.addTrailers(nodeHeaders(context.responseTrailer));
  if (reply) res.end(reply);
  else res.end();
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
