// Types of gateway-client.js (PROTOCOL.md §16; clients/js/README.md).
//
// 64-bit fields (connection ids, correlation ids, seqs, unix times of token
// expiry) are BigInt on output; where they are inputs they accept a Number
// or a BigInt. Every other number is a Number.

/** The protocol version the client speaks (`Auth.protocol_version`). */
export declare const PROTOCOL_VERSION: 1;

/** A 64-bit input: a Number (exact up to 2^53) or a BigInt. */
export type U64Input = number | bigint;

/** A payload on input: a string is sent as UTF-8. */
export type PayloadInput = string | Uint8Array | ArrayBuffer;

// ---- frame bodies, as decoded (every field present, defaults filled in) ----

export interface Auth {
  protocolVersion: number;
  token: string;
  deviceId: string;
  resumeSeq: bigint;
  metadata: Record<string, string>;
  heartbeatIntervalMs: number;
  /** The client reads a hot room's batches (PROTOCOL.md §7.5). */
  pushBatches: boolean;
}

export interface AuthOk {
  protocolVersion: number;
  connId: bigint;
  userId: string;
  deviceId: string;
  heartbeatIntervalMs: number;
  idleTimeoutMs: number;
  frameBytesMax: number;
  nodeId: string;
  /** 0 when the token does not expire. */
  tokenExpiresAtUnixS: bigint;
}

export interface AuthError {
  /** An `ErrorCode` value. */
  code: number;
  message: string;
}

export interface Ping {
  heartbeatIntervalMs: number;
}

export interface Pong {
  heartbeatIntervalMs: number;
}

export interface Upstream {
  correlationId: bigint;
  route: string;
  clientMsgId: string;
  payload: Uint8Array;
  /** The room the request is about, or "" (PROTOCOL.md §2, Upstream.room). */
  room: string;
}

export interface UpstreamReply {
  correlationId: bigint;
  /** 0 = OK; an `ErrorCode` value, or a backend's own status (>= 1000). */
  status: number;
  payload: Uint8Array;
  /** For retryable statuses: wait this long before trying again, ms. */
  retryAfterMs: number;
}

export interface Push {
  /** 0 for pushes that need no ack. */
  seq: bigint;
  route: string;
  payload: Uint8Array;
  ackRequired: boolean;
  /** 0 NORMAL, 1 HIGH, 2 LOW (gateway.proto `Priority`). */
  priority: number;
  /** A resend of a push not acked in time. */
  retransmit: boolean;
  /**
   * A batch (hot rooms, PROTOCOL.md §7.5): the room's pushes gathered over
   * one window, in order. The client also dispatches each of them as a
   * "push" event (with `room` set), after a "batch" event for the whole.
   */
  batch: Push[];
  /** The room of a batch (and of each push dispatched from one). */
  room: string;
  /** Pushes of the room the gateway dropped since its last batch (shedding). */
  dropped: number;
}

export interface Ack {
  seq: bigint;
}

export interface GoAway {
  /** A `CloseReason` value (index of `CloseReason`). */
  reason: number;
  retryAfterMs: number;
  endpoints: string[];
  message: string;
}

/** The `Error` frame (named so as not to shadow the global `Error`). */
export interface ErrorFrame {
  /** An `ErrorCode` value. */
  code: number;
  message: string;
  retryAfterMs: number;
}

export interface Refresh {
  token: string;
}

export interface RefreshReply {
  /** 0 = OK, else an `ErrorCode` value. */
  code: number;
  message: string;
  expiresAtUnixS: bigint;
}

export interface TokenExpiring {
  expiresAtUnixS: bigint;
}

/** Frame type names, as `encodeFrame` takes and `decodeFrame` returns them. */
export interface FrameBodies {
  auth: Auth;
  authOk: AuthOk;
  authError: AuthError;
  ping: Ping;
  pong: Pong;
  upstream: Upstream;
  upstreamReply: UpstreamReply;
  push: Push;
  ack: Ack;
  goAway: GoAway;
  error: ErrorFrame;
  refresh: Refresh;
  refreshReply: RefreshReply;
  tokenExpiring: TokenExpiring;
}

export type FrameType = keyof FrameBodies;

/** A decoded frame. */
export type Frame = { [K in FrameType]: { type: K; body: FrameBodies[K] } }[FrameType];

/** A body to encode: every field optional (absent = the protobuf default). */
export type BodyInput<T> = {
  [F in keyof T]?: T[F] extends bigint
    ? U64Input
    : T[F] extends Uint8Array
      ? PayloadInput
      : T[F] extends number
        ? number | bigint
        : T[F];
};

/** A frame to encode. */
export type FrameInput = {
  [K in FrameType]: { type: K; body?: BodyInput<FrameBodies[K]> };
}[FrameType];

/** Encodes one protobuf `Frame`. Throws a TypeError on an unknown type. */
export declare function encodeFrame(frame: FrameInput): Uint8Array;

/**
 * Decodes one protobuf `Frame`. Throws on malformed input or a frame
 * without a body; unknown fields are skipped.
 */
export declare function decodeFrame(bytes: Uint8Array): Frame;

/** Names of the close reasons (gateway.proto `CloseReason`), by value. */
export declare const CloseReason: readonly [
  "UNSPECIFIED",
  "CLIENT_CLOSED",
  "AUTH_TIMEOUT",
  "AUTH_FAILED",
  "STALE_HEARTBEAT",
  "BAD_FRAME",
  "FRAME_TOO_LARGE",
  "SLOW_CONSUMER",
  "KICKED",
  "DRAIN",
  "SHUTDOWN",
  "IO_ERROR",
  "CONN_LIMIT",
  "PROTOCOL_VIOLATION",
  "DUPLICATE_LOGIN",
  "TLS_FAILED",
  "HTTP_ANSWERED",
  "NODE_UNAVAILABLE",
  "TOKEN_EXPIRED",
  "PREAUTH_LIMIT",
];

/** Names of the error codes (gateway.proto `ErrorCode`), by value. */
export declare const ErrorCode: {
  readonly [code: number]: string | undefined;
  readonly 0: "UNSPECIFIED";
  readonly 1: "BAD_FRAME";
  readonly 2: "FRAME_TOO_LARGE";
  readonly 3: "UNEXPECTED_FRAME";
  readonly 4: "UNSUPPORTED_VERSION";
  readonly 10: "AUTH_REQUIRED";
  readonly 11: "TOKEN_INVALID";
  readonly 12: "TOKEN_EXPIRED";
  readonly 13: "TOKEN_NOT_YET_VALID";
  readonly 14: "ALGORITHM_REJECTED";
  readonly 20: "UNKNOWN_ROUTE";
  readonly 21: "BAD_REQUEST";
  readonly 22: "BUSY";
  readonly 23: "TIMEOUT";
  readonly 24: "BACKEND_UNAVAILABLE";
  readonly 25: "INTERNAL";
  readonly 30: "SERVER_FULL";
};

/**
 * The close reason inside a WebSocket close code: 4000 + reason from the
 * gateway, 1 (CLIENT_CLOSED) for 1000, else 0 (UNSPECIFIED; 1006 is a
 * connection dropped without a close frame).
 */
export declare function closeReasonOf(code: number): number;

/** Decodes UTF-8 bytes (a payload) to a string. */
export declare function text(bytes: Uint8Array | ArrayBuffer): string;

/** What the client needs of a WebSocket: the browser's, or the `ws` package's. */
export interface WebSocketLike {
  binaryType: string;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: any) => any) | null;
  onclose: ((ev: any) => any) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface GatewayClientOptions {
  /**
   * The JWT, or a function (possibly async) called before every connect and
   * on `refreshToken()`, so that reconnects and refreshes use a fresh token.
   */
  token: string | (() => string | Promise<string>);
  /** `Auth.device_id`; the token's `did` claim wins. Default "". */
  deviceId?: string;
  /**
   * `Auth.resume_seq`: the highest backend-defined sequence the app has
   * stored, for the backend to back-fill from (PROTOCOL.md §7.4). A function
   * is called on every connect and reconnect. Default 0.
   */
  resumeSeq?: U64Input | (() => U64Input);
  /** `Auth.metadata`, for the backend. Default {}. */
  metadata?: Record<string, string>;
  /** Heartbeat interval to ask for, ms; 0 = the server's. Default 0. */
  heartbeatIntervalMs?: number;
  /**
   * `Auth.push_batches`: take a hot room's pushes as batches (one frame
   * for many; each still dispatched as a "push" event). Default true.
   */
  pushBatches?: boolean;
  /** Ack ack-required pushes after the listeners ran. Default true. */
  autoAck?: boolean;
  /** Reconnect after a connection that was once open closes. Default true. */
  reconnect?: boolean;
  /** From opening the socket to AuthOk, ms. Default 10000. */
  connectTimeoutMs?: number;
  /** Default timeout of `request()`, ms. Default 10000. */
  requestTimeoutMs?: number;
  /** Requests awaiting replies at once. Default 1024. */
  pendingRequestsMax?: number;
  /** Reconnect back-off, ms (doubles, with jitter). Default 500. */
  reconnectDelayMinMs?: number;
  /** Default 30000. */
  reconnectDelayMaxMs?: number;
  /** The WebSocket constructor; default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor | null;
}

export interface RequestOptions {
  /** Sent as `Upstream.client_msg_id`: reuse it when resending. */
  clientMsgId?: string;
  /** Default: the `requestTimeoutMs` option. */
  timeoutMs?: number;
  /**
   * `Upstream.room`: the room this request is about (a quiz answer, a
   * like); it counts against the room's upstream rate (BUSY over it).
   */
  room?: string;
}

export interface CloseDetail {
  /** The WebSocket close code. */
  code: number;
  /** The `CloseReason` value (`closeReasonOf(code)`). */
  reason: number;
  /** Its name, e.g. "KICKED". */
  reasonName: string;
  /** Whether the client will reconnect by itself. */
  willReconnect: boolean;
  /** When it will try, ms from now; 0 when it will not. */
  retryAfterMs: number;
  /** The GoAway that announced this close (its `message` says why), or null. */
  goAway: GoAway | null;
}

export interface GatewayClientEventMap {
  /** Authenticated (after every connect and reconnect). */
  open: CustomEvent<AuthOk>;
  /** A push; ack-required ones are acked after the listeners ran. */
  push: CustomEvent<Push>;
  /** A hot room's batch, before its pushes are dispatched one by one. */
  batch: CustomEvent<Push>;
  goaway: CustomEvent<GoAway>;
  /** An `Error` frame from the gateway. */
  error: CustomEvent<ErrorFrame>;
  close: CustomEvent<CloseDetail>;
  tokenexpiring: CustomEvent<TokenExpiring>;
  /** The answer to a `Refresh`. */
  refresh: CustomEvent<RefreshReply>;
}

export type ClientState = "idle" | "connecting" | "open" | "closed";

export declare class GatewayClient extends EventTarget {
  constructor(url: string, options: GatewayClientOptions);

  /** The WebSocket URL, e.g. "wss://gw.example.com/ws". */
  readonly url: string;
  readonly state: ClientState;
  /** The AuthOk of the current connection (kept after it closes), or null. */
  readonly authOk: AuthOk | null;

  /**
   * Opens the WebSocket and authenticates. Resolves with the AuthOk; rejects
   * on failure, with `code` (an `ErrorCode` value) on an AuthError. A
   * connect under way, or an open connection, is shared, not doubled.
   */
  connect(): Promise<AuthOk>;

  /**
   * Sends an Upstream; resolves with its UpstreamReply whatever its status.
   * Rejects when not connected, over `pendingRequestsMax`, on timeout, or
   * when the connection closes first (resend with the same `clientMsgId`).
   * Throws before sending a frame over `AuthOk.frame_bytes_max`.
   */
  request(route: string, payload?: PayloadInput | null, options?: RequestOptions): Promise<UpstreamReply>;

  /** Acknowledges every ack-required push up to `seq` (cumulative). */
  ack(seq: U64Input): void;

  /** Closes for good: no reconnect. */
  close(): void;

  /**
   * Sends a fresh token (`Refresh`); the answer comes as a "refresh" event.
   * Rejects when there is no token or no open connection.
   */
  refreshToken(): Promise<void>;

  addEventListener<K extends keyof GatewayClientEventMap>(
    type: K,
    listener: (this: GatewayClient, ev: GatewayClientEventMap[K]) => any,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof GatewayClientEventMap>(
    type: K,
    listener: (this: GatewayClient, ev: GatewayClientEventMap[K]) => any,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}
