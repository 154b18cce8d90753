// Type-checks gateway-client.d.ts against how an app uses the library
// (`npm run check-types`, which needs `npm install` for TypeScript). Never
// run: it only has to compile. `// @ts-expect-error` lines must fail.
import {
  CloseReason,
  ErrorCode,
  GatewayClient,
  PROTOCOL_VERSION,
  closeReasonOf,
  decodeFrame,
  encodeFrame,
  text,
  type AuthOk,
  type CloseDetail,
  type Frame,
  type UpstreamReply,
} from "../gateway-client.js";

export async function app(): Promise<void> {
  const gw = new GatewayClient("wss://gw.example.com/ws", {
    token: async () => "jwt",
    deviceId: "web-1",
    metadata: { app: "web 1.2" },
    resumeSeq: 5,
  });
  let stored = 0n;
  new GatewayClient("wss://gw.example.com/ws", { token: "t", resumeSeq: () => stored++ });
  gw.addEventListener("push", (e) => {
    const seq: bigint = e.detail.seq;
    const body: string = text(e.detail.payload);
    if (e.detail.ackRequired) gw.ack(seq);
    console.log(e.detail.route, body, e.detail.retransmit);
  });
  gw.addEventListener("close", (e) => {
    const d: CloseDetail = e.detail;
    const why: string = d.goAway?.message ?? d.reasonName;
    console.log(why, d.willReconnect ? d.retryAfterMs : "stays closed", CloseReason[d.reason]);
  });
  gw.addEventListener("goaway", (e) => console.log(CloseReason[e.detail.reason], e.detail.message));
  gw.addEventListener("error", (e) => console.log(ErrorCode[e.detail.code], e.detail.message));
  gw.addEventListener("tokenexpiring", (e) => console.log(e.detail.expiresAtUnixS + 1n));
  gw.addEventListener("refresh", (e) => console.log(e.detail.code === 0));
  gw.addEventListener("open", (e) => console.log(e.detail.connId + 1n));
  gw.addEventListener("custom-event", () => {});

  const ok: AuthOk = await gw.connect();
  const id: bigint = ok.connId;
  const reply: UpstreamReply = await gw.request("chat.send", JSON.stringify({ to: "bob" }), {
    clientMsgId: "m1",
    timeoutMs: 5000,
  });
  if (reply.status !== 0) console.log(ErrorCode[reply.status] ?? reply.status, reply.retryAfterMs);
  await gw.request("echo", new Uint8Array([1, 2]));
  await gw.request("echo");
  await gw.refreshToken();
  const state: "idle" | "connecting" | "open" | "closed" = gw.state;
  console.log(id, state, gw.authOk?.userId, gw.url, PROTOCOL_VERSION, closeReasonOf(4008));
  gw.close();

  // A WebSocket implementation of one's own (Node < 22: the ws package's).
  new GatewayClient("ws://x/ws", { token: "t", WebSocket: globalThis.WebSocket });

  const bytes: Uint8Array = encodeFrame({ type: "upstream", body: { correlationId: 7, route: "echo", payload: "x" } });
  encodeFrame({ type: "ack", body: { seq: 1n << 60n } });
  encodeFrame({ type: "ping" });
  const f: Frame = decodeFrame(bytes);
  if (f.type === "push") {
    const p: bigint = f.body.seq;
    console.log(p);
  } else if (f.type === "authOk") {
    console.log(f.body.frameBytesMax.toFixed());
  }
  const kicked: "KICKED" = CloseReason[8];
  const busy: "BUSY" = ErrorCode[22];
  console.log(kicked, busy);

  // @ts-expect-error: a token is required
  new GatewayClient("ws://x/ws", {});
  // @ts-expect-error: not a frame type
  encodeFrame({ type: "nope" });
  // @ts-expect-error: seq is a BigInt on output
  const n: number = f.type === "ack" ? f.body.seq : 0;
  // @ts-expect-error: the detail of "open" is an AuthOk
  gw.addEventListener("open", (e) => e.detail.seq);
  console.log(n);
}
