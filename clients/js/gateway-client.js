// gateway-client.js: a small browser client for the gateway (PROTOCOL.md).
// One protobuf `Frame` (proto/proto/gateway.proto) per binary WebSocket
// message. No dependencies; an ES module for browsers (and Node >= 22,
// which has a global WebSocket; older Node: pass `options.WebSocket`, e.g.
// the `ws` package's). Types: gateway-client.d.ts; guide: README.md.
//
// 64-bit fields (conn_id, correlation_id, seq, resume_seq) are BigInt, so
// no id above 2^53 loses precision. Everything else is a Number or string.
//
//   import { GatewayClient } from "/gateway-client.js";
//   const gw = new GatewayClient("wss://host/ws", { token: async () => fetchToken() });
//   gw.addEventListener("push", (e) => console.log(e.detail.route, e.detail.payload));
//   const ok = await gw.connect();                 // AuthOk
//   const reply = await gw.request("echo", "hi");  // UpstreamReply
//
// Events: "open" (AuthOk), "push" (Push; ack-required pushes are acked after
// the listeners ran, duplicates of a retransmission are not dispatched
// again), "goaway" (GoAway), "error" (Error frame), "close" ({code,
// reason, reasonName, willReconnect, retryAfterMs, goAway}),
// "tokenexpiring" (TokenExpiring), "refresh" (RefreshReply).

export const PROTOCOL_VERSION = 1;

// ---- protobuf wire format: the subset gateway.proto uses ----

const VARINT = 0;
const I64 = 1;
const LEN = 2;
const I32 = 5;

const utf8enc = new TextEncoder();
const utf8dec = new TextDecoder("utf-8", { fatal: true });

class Writer {
  constructor() {
    this.buf = new Uint8Array(64);
    this.len = 0;
  }
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
  byte(b) {
    this.reserve(1);
    this.buf[this.len++] = b;
  }
  varint(v) {
    let x = BigInt.asUintN(64, BigInt(v));
    while (x >= 0x80n) {
      this.byte(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    this.byte(Number(x));
  }
  tag(field, wire) {
    this.varint((field << 3) | wire);
  }
  raw(bytes) {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }
  lenDelimited(field, bytes) {
    this.tag(field, LEN);
    this.varint(bytes.length);
    this.raw(bytes);
  }
  finish() {
    return this.buf.slice(0, this.len);
  }
}

class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.pos = 0;
  }
  varint() {
    let x = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (this.pos >= this.b.length) throw new Error("truncated varint");
      const byte = this.b[this.pos++];
      x |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return BigInt.asUintN(64, x);
    }
    throw new Error("varint longer than 10 bytes");
  }
  take(n) {
    if (n > this.b.length - this.pos) throw new Error("truncated field");
    const out = this.b.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  // Calls f(field, wireType, value) for every field; value is a BigInt for
  // varints and a Uint8Array for length-delimited fields.
  each(f) {
    while (this.pos < this.b.length) {
      const key = this.varint();
      const field = Number(key >> 3n);
      const wire = Number(key & 7n);
      if (field === 0) throw new Error("field number 0");
      if (wire === VARINT) f(field, wire, this.varint());
      else if (wire === LEN) f(field, wire, this.take(Number(this.varint())));
      else if (wire === I64) this.take(8);
      else if (wire === I32) this.take(4);
      else throw new Error(`unsupported wire type ${wire}`);
    }
  }
}

// Field kinds.
const U32 = "u32";
const U64 = "u64";
const BOOL = "bool";
const ENUM = "enum";
const STR = "str";
const BYTES = "bytes";
const STRS = "strs"; // repeated string
const MAP = "map"; // map<string, string>
const PUSHES = "pushes"; // repeated Push (a batch)

const SCHEMA = {
  auth: { 1: ["protocolVersion", U32], 2: ["token", STR], 3: ["deviceId", STR], 4: ["resumeSeq", U64], 5: ["metadata", MAP], 6: ["heartbeatIntervalMs", U32], 7: ["pushBatches", BOOL] },
  authOk: { 1: ["protocolVersion", U32], 2: ["connId", U64], 3: ["userId", STR], 4: ["deviceId", STR], 5: ["heartbeatIntervalMs", U32], 6: ["idleTimeoutMs", U32], 7: ["frameBytesMax", U32], 8: ["nodeId", STR], 9: ["tokenExpiresAtUnixS", U64] },
  authError: { 1: ["code", ENUM], 2: ["message", STR] },
  ping: { 1: ["heartbeatIntervalMs", U32] },
  pong: { 1: ["heartbeatIntervalMs", U32] },
  upstream: { 1: ["correlationId", U64], 2: ["route", STR], 3: ["clientMsgId", STR], 4: ["payload", BYTES], 5: ["room", STR] },
  upstreamReply: { 1: ["correlationId", U64], 2: ["status", U32], 3: ["payload", BYTES], 4: ["retryAfterMs", U32] },
  push: { 1: ["seq", U64], 2: ["route", STR], 3: ["payload", BYTES], 4: ["ackRequired", BOOL], 5: ["priority", ENUM], 6: ["retransmit", BOOL], 7: ["batch", PUSHES], 8: ["room", STR], 9: ["dropped", U32] },
  ack: { 1: ["seq", U64] },
  goAway: { 1: ["reason", ENUM], 2: ["retryAfterMs", U32], 3: ["endpoints", STRS], 4: ["message", STR] },
  error: { 1: ["code", ENUM], 2: ["message", STR], 3: ["retryAfterMs", U32] },
  refresh: { 1: ["token", STR] },
  refreshReply: { 1: ["code", ENUM], 2: ["message", STR], 3: ["expiresAtUnixS", U64] },
  tokenExpiring: { 1: ["expiresAtUnixS", U64] },
};
// Frame.body field numbers: 1 = auth ... 14 = tokenExpiring.
const BODIES = ["auth", "authOk", "authError", "ping", "pong", "upstream", "upstreamReply", "push", "ack", "goAway", "error", "refresh", "refreshReply", "tokenExpiring"];

function defaultOf(kind) {
  switch (kind) {
    case U64: return 0n;
    case U32: case ENUM: return 0;
    case BOOL: return false;
    case STR: return "";
    case BYTES: return new Uint8Array(0);
    case STRS: case PUSHES: return [];
    case MAP: return {};
  }
}

function bytesOf(v) {
  if (v === undefined || v === null) return new Uint8Array(0);
  if (typeof v === "string") return utf8enc.encode(v);
  if (v instanceof Uint8Array) return v;
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  throw new TypeError("payload must be a string, Uint8Array or ArrayBuffer");
}

function encodeMessage(schema, msg) {
  const w = new Writer();
  for (const [num, [name, kind]] of Object.entries(schema)) {
    const v = msg[name];
    if (v === undefined || v === null) continue;
    const field = Number(num);
    switch (kind) {
      case U32: case U64: case ENUM:
        if (BigInt(v) !== 0n) { w.tag(field, VARINT); w.varint(kind === ENUM ? BigInt.asUintN(64, BigInt(v)) : v); }
        break;
      case BOOL:
        if (v) { w.tag(field, VARINT); w.byte(1); }
        break;
      case STR: case BYTES: {
        const b = bytesOf(v);
        if (b.length) w.lenDelimited(field, b);
        break;
      }
      case STRS:
        for (const s of v) w.lenDelimited(field, utf8enc.encode(s));
        break;
      case PUSHES:
        for (const p of v) w.lenDelimited(field, encodeMessage(SCHEMA.push, p));
        break;
      case MAP:
        for (const [k, val] of Object.entries(v)) {
          const e = new Writer();
          e.lenDelimited(1, utf8enc.encode(k));
          e.lenDelimited(2, utf8enc.encode(String(val)));
          w.lenDelimited(field, e.finish());
        }
        break;
    }
  }
  return w.finish();
}

function decodeMessage(schema, bytes) {
  const out = {};
  for (const [name, kind] of Object.values(schema)) out[name] = defaultOf(kind);
  new Reader(bytes).each((field, wire, v) => {
    const spec = schema[field];
    if (!spec) return; // unknown field: skipped, as protobuf requires
    const [name, kind] = spec;
    const want = kind === U32 || kind === U64 || kind === BOOL || kind === ENUM ? VARINT : LEN;
    if (wire !== want) throw new Error(`field ${name}: wire type ${wire}`);
    switch (kind) {
      case U64: out[name] = v; break;
      case U32: out[name] = Number(BigInt.asUintN(32, v)); break;
      case ENUM: out[name] = Number(BigInt.asIntN(32, v)); break;
      case BOOL: out[name] = v !== 0n; break;
      case STR: out[name] = utf8dec.decode(v); break;
      case BYTES: out[name] = v.slice(); break;
      case STRS: out[name].push(utf8dec.decode(v)); break;
      case PUSHES: out[name].push(decodeMessage(SCHEMA.push, v)); break;
      case MAP: {
        let k = "", val = "";
        new Reader(v).each((f, wt, x) => {
          if (wt !== LEN) return;
          if (f === 1) k = utf8dec.decode(x);
          if (f === 2) val = utf8dec.decode(x);
        });
        out[name][k] = val;
        break;
      }
    }
  });
  return out;
}

// Encodes a frame given as `{ type: "upstream", body: {...} }`.
export function encodeFrame({ type, body }) {
  const index = BODIES.indexOf(type);
  if (index < 0) throw new TypeError(`unknown frame type ${type}`);
  const w = new Writer();
  w.lenDelimited(index + 1, encodeMessage(SCHEMA[type], body || {}));
  return w.finish();
}

// Decodes one frame into `{ type, body }`; throws on malformed input or a
// frame without a body. If several bodies are present the last one wins, as
// protobuf's oneof rules say.
export function decodeFrame(bytes) {
  let type = null;
  let inner = null;
  new Reader(bytes).each((field, wire, v) => {
    const name = BODIES[field - 1];
    if (!name) return;
    if (wire !== LEN) throw new Error(`frame body ${name}: wire type ${wire}`);
    type = name;
    inner = v;
  });
  if (type === null) throw new Error("frame without a body");
  return { type, body: decodeMessage(SCHEMA[type], inner) };
}

// ---- names of the enums, for logs and UIs ----

export const CloseReason = ["UNSPECIFIED", "CLIENT_CLOSED", "AUTH_TIMEOUT", "AUTH_FAILED", "STALE_HEARTBEAT", "BAD_FRAME", "FRAME_TOO_LARGE", "SLOW_CONSUMER", "KICKED", "DRAIN", "SHUTDOWN", "IO_ERROR", "CONN_LIMIT", "PROTOCOL_VIOLATION", "DUPLICATE_LOGIN", "TLS_FAILED", "HTTP_ANSWERED", "NODE_UNAVAILABLE", "TOKEN_EXPIRED", "PREAUTH_LIMIT"];
export const ErrorCode = { 0: "UNSPECIFIED", 1: "BAD_FRAME", 2: "FRAME_TOO_LARGE", 3: "UNEXPECTED_FRAME", 4: "UNSUPPORTED_VERSION", 10: "AUTH_REQUIRED", 11: "TOKEN_INVALID", 12: "TOKEN_EXPIRED", 13: "TOKEN_NOT_YET_VALID", 14: "ALGORITHM_REJECTED", 20: "UNKNOWN_ROUTE", 21: "BAD_REQUEST", 22: "BUSY", 23: "TIMEOUT", 24: "BACKEND_UNAVAILABLE", 25: "INTERNAL", 30: "SERVER_FULL" };

// The typed close reason inside a WebSocket close code: 4000 + reason from
// the gateway; 1000 when the client closed; anything else is UNSPECIFIED
// (1006: the connection dropped without a close frame).
const KICKED = 8;

export function closeReasonOf(code) {
  if (code === 1000) return 1;
  return code >= 4000 && code < 5000 ? code - 4000 : 0;
}

export function text(bytes) {
  return new TextDecoder().decode(bytes);
}

// ---- the client ----

const DEFAULTS = {
  deviceId: "",
  resumeSeq: 0n,
  metadata: {},
  heartbeatIntervalMs: 0,
  pushBatches: true,
  autoAck: true,
  reconnect: true,
  connectTimeoutMs: 10000,
  requestTimeoutMs: 10000,
  pendingRequestsMax: 1024,
  reconnectDelayMinMs: 500,
  reconnectDelayMaxMs: 30000,
  WebSocket: null, // the WebSocket constructor; null: globalThis.WebSocket
};

export class GatewayClient extends EventTarget {
  // `token`: a string, or a function (possibly async) called before every
  // connect so that a reconnect can use a fresh token.
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.opts = { ...DEFAULTS, ...options };
    this.state = "idle"; // idle | connecting | open | closed
    this.authOk = null;
    this.ws = null;
    this.nextCorrelation = 1n;
    this.pending = new Map(); // correlation id -> { resolve, reject, timer }
    this.lastSeq = 0n; // highest ack-required seq seen on this connection
    this.ackTimer = null;
    this.heartbeat = null;
    this.retryAfterMs = 0;
    this.backoffMs = this.opts.reconnectDelayMinMs;
    this.reconnectTimer = null;
    this.stopped = false;
    this.connecting = null;
    this.everOpened = false; // reconnects only after a first successful connect
    this.goAway = null; // the GoAway of the current connection, if any
  }

  // Opens the WebSocket and authenticates; resolves with AuthOk, rejects
  // with an Error carrying `.code` (an ErrorCode) on AuthError.
  // A connect already under way (or an open connection) is returned, not
  // doubled: two sockets would mix their push sequences.
  connect() {
    if (this.state === "open") return Promise.resolve(this.authOk);
    if (!this.connecting) {
      this.connecting = this.connectOnce().finally(() => {
        this.connecting = null;
      });
    }
    return this.connecting;
  }

  async connectOnce() {
    this.stopped = false;
    clearTimeout(this.reconnectTimer);
    let token;
    try {
      token = typeof this.opts.token === "function" ? await this.opts.token() : this.opts.token;
      if (!token) throw new Error("no token");
    } catch (e) {
      this.scheduleReconnect(); // only after a connection was once open
      throw e;
    }
    const WS = this.opts.WebSocket || globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new Error("no WebSocket here: pass options.WebSocket (on Node < 22, the ws package's)");
    }
    this.state = "connecting";
    return new Promise((resolve, reject) => {
      const ws = new WS(this.url);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      let settled = false;
      const timer = setTimeout(() => fail(new Error("connect timed out")), this.opts.connectTimeoutMs);
      const fail = (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(err);
        ws.close();
      };
      ws.onopen = () => {
        this.sendFrame("auth", {
          protocolVersion: PROTOCOL_VERSION,
          token,
          deviceId: this.opts.deviceId,
          // A function: asked on every (re)connect for the app's latest.
          resumeSeq: typeof this.opts.resumeSeq === "function" ? this.opts.resumeSeq() : this.opts.resumeSeq,
          metadata: this.opts.metadata,
          heartbeatIntervalMs: this.opts.heartbeatIntervalMs,
          pushBatches: this.opts.pushBatches,
        });
      };
      ws.onmessage = (ev) => {
        if (this.ws !== ws) return; // an older socket's leftovers
        let frame;
        try {
          frame = decodeFrame(new Uint8Array(ev.data));
        } catch (e) {
          // The server only sends well-formed frames; anything else is a bug
          // or a man in the middle: give up on this connection.
          ws.close(1002, "undecodable frame");
          return;
        }
        if (!settled && frame.type === "authOk") {
          settled = true;
          clearTimeout(timer);
          this.opened(frame.body);
          resolve(frame.body);
        } else if (!settled && frame.type === "authError") {
          const err = new Error(`auth failed: ${ErrorCode[frame.body.code] || frame.body.code}: ${frame.body.message}`);
          err.code = frame.body.code;
          this.stopped = !this.canRetryAuth(frame.body.code);
          fail(err);
        } else {
          this.handle(frame);
        }
      };
      ws.onclose = (ev) => {
        if (this.ws !== ws) return;
        fail(new Error(`connection closed during connect (code ${ev.code})`));
        this.closed(ev);
      };
    });
  }

  // Sends an Upstream; resolves with its UpstreamReply ({status, payload,
  // retryAfterMs, correlationId}); status 0 is OK. Rejects when not
  // connected, when too many requests are pending, on timeout, or when the
  // connection closes first (the request may or may not have been served:
  // resend with the same clientMsgId so the backend can deduplicate).
  request(route, payload, { clientMsgId = "", timeoutMs = this.opts.requestTimeoutMs, room = "" } = {}) {
    if (this.state !== "open") return Promise.reject(new Error("not connected"));
    if (this.pending.size >= this.opts.pendingRequestsMax) return Promise.reject(new Error("too many pending requests"));
    const correlationId = this.nextCorrelation++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(correlationId);
        reject(new Error(`request ${route} timed out`));
      }, timeoutMs);
      this.pending.set(correlationId, { resolve, reject, timer });
      try {
        this.sendFrame("upstream", { correlationId, route, clientMsgId, payload: bytesOf(payload), room });
      } catch (e) {
        clearTimeout(timer);
        this.pending.delete(correlationId);
        reject(e);
      }
    });
  }

  // Acknowledges every ack-required push up to `seq` (cumulative).
  ack(seq) {
    if (this.state === "open") this.sendFrame("ack", { seq });
  }

  // Closes for good (no reconnect).
  close() {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    if (this.ws) this.ws.close(1000, "client closed");
  }

  // ---- internals ----

  sendFrame(type, body) {
    const bytes = encodeFrame({ type, body });
    const max = this.authOk ? this.authOk.frameBytesMax : 0;
    if (max && bytes.length > max) throw new Error(`frame of ${bytes.length} bytes is over frame_bytes_max ${max}`);
    this.ws.send(bytes);
  }

  canRetryAuth(code) {
    // The node cannot reach NATS (BACKEND_UNAVAILABLE): try again later,
    // maybe on another node.
    if (code === 24) return true;
    // An expired token can be replaced when tokens come from a function.
    return typeof this.opts.token === "function" && (code === 12 || code === 13);
  }

  opened(authOk) {
    this.authOk = authOk;
    this.state = "open";
    this.everOpened = true;
    this.lastSeq = 0n; // seq starts again at 1 on every connection
    this.goAway = null;
    this.backoffMs = this.opts.reconnectDelayMinMs;
    this.retryAfterMs = 0;
    this.startHeartbeat(authOk.heartbeatIntervalMs);
    this.dispatchEvent(new CustomEvent("open", { detail: authOk }));
  }

  startHeartbeat(ms) {
    clearInterval(this.heartbeat);
    if (ms > 0) this.heartbeat = setInterval(() => this.state === "open" && this.sendFrame("ping", {}), ms);
  }

  handle({ type, body }) {
    switch (type) {
      case "upstreamReply": {
        const p = this.pending.get(body.correlationId);
        if (!p) return; // timed out already
        this.pending.delete(body.correlationId);
        clearTimeout(p.timer);
        p.resolve(body);
        break;
      }
      case "push":
        if (body.batch.length || body.room) {
          // A hot room's batch (PROTOCOL.md §7.5): never acked. A "batch"
          // event, then each push as a "push" event naming its room.
          this.dispatchEvent(new CustomEvent("batch", { detail: body }));
          for (const p of body.batch) {
            p.room = body.room;
            this.dispatchEvent(new CustomEvent("push", { detail: p }));
          }
        } else if (body.ackRequired) {
          const dup = body.seq <= this.lastSeq;
          if (!dup) this.lastSeq = body.seq;
          if (!dup) this.dispatchEvent(new CustomEvent("push", { detail: body }));
          if (this.opts.autoAck) this.scheduleAck();
        } else {
          this.dispatchEvent(new CustomEvent("push", { detail: body }));
        }
        break;
      case "pong":
        if (body.heartbeatIntervalMs && body.heartbeatIntervalMs !== this.authOk.heartbeatIntervalMs) {
          this.authOk.heartbeatIntervalMs = body.heartbeatIntervalMs;
          this.startHeartbeat(body.heartbeatIntervalMs);
        }
        break;
      case "goAway":
        this.goAway = body;
        this.retryAfterMs = body.retryAfterMs;
        // Kicked: the server wants this client gone, not back.
        if (body.reason === KICKED) this.stopped = true;
        this.dispatchEvent(new CustomEvent("goaway", { detail: body }));
        break;
      case "error":
        this.dispatchEvent(new CustomEvent("error", { detail: body }));
        break;
      case "tokenExpiring":
        // The session ends with its token: with a token function, send a
        // fresh one in band so the connection stays.
        this.dispatchEvent(new CustomEvent("tokenexpiring", { detail: body }));
        if (typeof this.opts.token === "function") this.refreshToken().catch(() => {});
        break;
      case "refreshReply":
        if (body.code === 0 && this.authOk) this.authOk.tokenExpiresAtUnixS = body.expiresAtUnixS;
        this.dispatchEvent(new CustomEvent("refresh", { detail: body }));
        break;
    }
  }

  // Sends a fresh token for this session (Refresh); the answer comes as a
  // "refresh" event ({code, message, expiresAtUnixS}, code 0 = OK).
  async refreshToken() {
    const token = typeof this.opts.token === "function" ? await this.opts.token() : this.opts.token;
    if (!token) throw new Error("no token");
    if (this.state !== "open") throw new Error("not connected");
    this.sendFrame("refresh", { token });
  }

  // One cumulative Ack for all pushes that arrived in the same task.
  scheduleAck() {
    if (this.ackTimer !== null) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      this.ack(this.lastSeq);
    }, 0);
  }

  closed(ev) {
    clearInterval(this.heartbeat);
    clearTimeout(this.ackTimer);
    this.ackTimer = null;
    this.ws = null;
    this.state = "closed";
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error("connection closed"));
    }
    this.pending.clear();
    const reason = closeReasonOf(ev.code);
    if (reason === KICKED) this.stopped = true;
    const willReconnect = this.willReconnect();
    const delay = this.reconnectDelay();
    const goAway = this.goAway;
    this.goAway = null;
    // retryAfterMs: when the reconnect will be tried; 0 when there is none.
    this.dispatchEvent(new CustomEvent("close", {
      detail: { code: ev.code, reason, reasonName: CloseReason[reason] || String(reason), willReconnect, retryAfterMs: willReconnect ? delay : 0, goAway },
    }));
    this.scheduleReconnect(delay);
  }

  willReconnect() {
    return this.opts.reconnect && !this.stopped && this.everOpened;
  }

  // Full jitter over the back-off, never sooner than the server's hint.
  reconnectDelay() {
    return Math.max(this.retryAfterMs, Math.round(this.backoffMs * (0.5 + Math.random() / 2)));
  }

  scheduleReconnect(delay = this.reconnectDelay()) {
    if (!this.willReconnect()) return;
    this.state = "closed";
    this.backoffMs = Math.min(this.backoffMs * 2, this.opts.reconnectDelayMaxMs);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect().catch(() => {}), delay);
  }
}
