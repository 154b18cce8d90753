// Behaviour of GatewayClient against a scripted server (a mock WebSocket):
// acks and duplicate suppression, no reconnect after KICKED, reconnect with
// back-off otherwise, one socket for concurrent connect() calls, pending
// requests rejected on close. `node --test clients/js/test/`.
import { test } from "node:test";
import assert from "node:assert/strict";

const sockets = [];
class MockWS {
  constructor(url) {
    this.url = url;
    this.sent = [];
    sockets.push(this);
  }
  send(b) {
    this.sent.push(b);
  }
  close(code = 1000) {
    if (this.closed) return;
    this.closed = true;
    setTimeout(() => this.onclose && this.onclose({ code }), 0);
  }
  open() {
    this.onopen();
  }
  recv(frame) {
    const b = encodeFrame(frame);
    this.onmessage({ data: b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) });
  }
  frames(type) {
    return this.sent.map((b) => decodeFrame(b)).filter((f) => f.type === type);
  }
}
globalThis.WebSocket = MockWS;
globalThis.CustomEvent ??= class extends Event {
  constructor(t, o) {
    super(t);
    this.detail = o?.detail;
  }
};
const { GatewayClient, encodeFrame, decodeFrame } = await import("../gateway-client.js");
const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

async function connected(opts = {}) {
  sockets.length = 0;
  const gw = new GatewayClient("ws://x/ws", { token: "t", reconnectDelayMinMs: 10, ...opts });
  const p = gw.connect();
  await tick();
  const ws = sockets.at(-1);
  ws.open();
  ws.recv({ type: "authOk", body: { connId: (1n << 60n) + 1n, frameBytesMax: 65536, heartbeatIntervalMs: 0 } });
  const ok = await p;
  return { gw, ws, ok };
}

test("auth sends the token and resolves with AuthOk, conn id exact", async () => {
  const { gw, ws, ok } = await connected();
  assert.equal(ws.frames("auth")[0].body.token, "t");
  assert.equal(ok.connId, (1n << 60n) + 1n);
  gw.close();
});

test("ack-required pushes are acked once per batch; retransmits are not dispatched again", async () => {
  const { gw, ws } = await connected();
  const seen = [];
  gw.addEventListener("push", (e) => seen.push(e.detail.seq));
  for (const seq of [1n, 2n, 3n]) ws.recv({ type: "push", body: { seq, route: "r", ackRequired: true } });
  ws.recv({ type: "push", body: { seq: 2n, route: "r", ackRequired: true, retransmit: true } });
  ws.recv({ type: "push", body: { route: "plain" } });
  await tick();
  assert.deepEqual(seen, [1n, 2n, 3n, 0n]);
  assert.deepEqual(ws.frames("ack").map((f) => f.body.seq), [3n]);
  gw.close();
});

test("requests match replies by correlation id and are rejected on close", async () => {
  const { gw, ws } = await connected();
  const a = gw.request("echo", "a");
  const b = gw.request("echo", "b");
  const [ua, ub] = ws.frames("upstream");
  ws.recv({ type: "upstreamReply", body: { correlationId: ub.body.correlationId, status: 22, retryAfterMs: 100 } });
  const rb = await b;
  assert.deepEqual([rb.status, rb.retryAfterMs], [22, 100]);
  assert.equal(new TextDecoder().decode(ua.body.payload), "a");
  gw.close();
  await assert.rejects(a, /connection closed/);
  await assert.rejects(gw.request("echo", "c"), /not connected/);
});

test("after KICKED the client stays away", async () => {
  const { gw, ws } = await connected();
  let detail;
  gw.addEventListener("close", (e) => (detail = e.detail));
  ws.recv({ type: "goAway", body: { reason: 8, message: "kicked" } });
  ws.close(4008);
  await tick(50);
  assert.equal(detail.reasonName, "KICKED");
  assert.equal(detail.willReconnect, false);
  assert.equal(detail.retryAfterMs, 0, "no reconnect: no delay to announce");
  assert.equal(detail.goAway.message, "kicked", "the GoAway that said why");
  assert.equal(sockets.length, 1, "no new socket");
});

test("after a drain GoAway it reconnects, no sooner than retry_after_ms", async () => {
  const { gw, ws } = await connected();
  let detail;
  gw.addEventListener("close", (e) => (detail = e.detail));
  ws.recv({ type: "goAway", body: { reason: 9, retryAfterMs: 30 } });
  ws.close(4009);
  await tick(10);
  assert.equal(detail.reasonName, "DRAIN");
  assert.equal(detail.willReconnect, true);
  assert.ok(detail.retryAfterMs >= 30);
  assert.equal(detail.goAway.reason, 9);
  assert.equal(sockets.length, 1, "not before retry_after_ms");
  await tick(60);
  assert.equal(sockets.length, 2, "reconnected");
  gw.close();
});

test("concurrent connect() calls share one socket", async () => {
  sockets.length = 0;
  const gw = new GatewayClient("ws://x/ws", { token: async () => { await tick(); return "t"; } });
  const p1 = gw.connect();
  const p2 = gw.connect();
  await tick(20);
  assert.equal(sockets.length, 1);
  sockets[0].open();
  sockets[0].recv({ type: "authOk", body: { connId: 7n } });
  const [a, b] = await Promise.all([p1, p2]);
  assert.equal(a, b);
  assert.equal(await gw.connect(), a, "open: the same AuthOk");
  gw.close();
});

test("an auth error with a fixed token does not retry", async () => {
  sockets.length = 0;
  const gw = new GatewayClient("ws://x/ws", { token: "bad" });
  const p = gw.connect();
  await tick();
  sockets[0].open();
  sockets[0].recv({ type: "authError", body: { code: 11, message: "bad signature" } });
  await assert.rejects(p, (e) => e.code === 11);
  await tick(50);
  assert.equal(sockets.length, 1);
});

test("a token function refreshes the session in band on TokenExpiring", async () => {
  let n = 0;
  const { gw, ws } = await connected({ token: async () => `token-${++n}` });
  const events = [];
  gw.addEventListener("refresh", (e) => events.push(e.detail));
  ws.recv({ type: "tokenExpiring", body: { expiresAtUnixS: 1000n } });
  await tick();
  assert.deepEqual(ws.frames("refresh").map((f) => f.body.token), ["token-2"]);
  ws.recv({ type: "refreshReply", body: { code: 0, expiresAtUnixS: 5000n } });
  assert.equal(events[0].code, 0);
  assert.equal(gw.authOk.tokenExpiresAtUnixS, 5000n);
  gw.close();
});

test("a fixed token cannot be refreshed: the notice is only an event", async () => {
  const { gw, ws } = await connected();
  let seen = null;
  gw.addEventListener("tokenexpiring", (e) => (seen = e.detail));
  ws.recv({ type: "tokenExpiring", body: { expiresAtUnixS: 1000n } });
  await tick();
  assert.equal(seen.expiresAtUnixS, 1000n);
  assert.equal(ws.frames("refresh").length, 0);
  gw.close();
});

test("options.WebSocket replaces the global one (Node < 22: the ws package)", async () => {
  let made = 0;
  class Other extends MockWS {
    constructor(url) {
      super(url);
      made++;
    }
  }
  const { gw, ws } = await connected({ WebSocket: Other });
  assert.equal(made, 1);
  assert.ok(ws instanceof Other);
  gw.close();
  await tick();
  const gw2 = new GatewayClient("ws://x/ws", { token: "t", WebSocket: undefined });
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = undefined;
  try {
    await assert.rejects(gw2.connect(), /pass options.WebSocket/);
  } finally {
    globalThis.WebSocket = saved;
  }
});

test("a close without a GoAway has goAway null; a new connection forgets the old GoAway", async () => {
  const { gw, ws } = await connected();
  let detail;
  gw.addEventListener("close", (e) => (detail = e.detail));
  ws.close(1006);
  await tick();
  assert.equal(detail.goAway, null);
  assert.equal(detail.reasonName, "UNSPECIFIED");
  assert.equal(detail.willReconnect, true);
  assert.ok(detail.retryAfterMs > 0);
  gw.close();
});

test("resumeSeq given as a function is asked on every connect", async () => {
  let stored = 41n;
  const { gw, ws } = await connected({ resumeSeq: () => stored });
  assert.equal(ws.frames("auth")[0].body.resumeSeq, 41n);
  stored = 42n;
  ws.close(1006);
  await tick(30); // the reconnect (back-off from 10 ms)
  const next = sockets.at(-1);
  assert.notEqual(next, ws);
  next.open();
  assert.equal(next.frames("auth")[0].body.resumeSeq, 42n);
  gw.close();
});

test("a hot room's batch is one 'batch' event, then each push in order, never acked", async () => {
  const { gw, ws } = await connected();
  assert.equal(ws.frames("auth")[0].body.pushBatches, true, "the client asks for batches");
  const batches = [];
  const seen = [];
  gw.addEventListener("batch", (e) => batches.push([e.detail.room, e.detail.dropped, e.detail.batch.length]));
  gw.addEventListener("push", (e) => seen.push(`${e.detail.room}:${e.detail.route}`));
  ws.recv({ type: "push", body: { room: "live", dropped: 4, batch: [{ route: "like" }, { route: "gift", priority: 1 }] } });
  ws.recv({ type: "push", body: { route: "after" } });
  await tick();
  assert.deepEqual(batches, [["live", 4, 2]]);
  assert.deepEqual(seen, ["live:like", "live:gift", ":after"]);
  assert.deepEqual(ws.frames("ack"), []);
  // A request can name its room (the room's upstream rate).
  const r = gw.request("quiz.answer", "B", { room: "quiz" });
  await tick();
  assert.equal(ws.frames("upstream")[0].body.room, "quiz");
  ws.recv({ type: "upstreamReply", body: { correlationId: ws.frames("upstream")[0].body.correlationId } });
  await r;
  gw.close();
});
