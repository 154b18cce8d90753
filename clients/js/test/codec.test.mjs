// Unit tests of the client's protobuf codec: `node --test clients/js/test/`.
// The hex vectors were encoded by prost (the gateway's own codec) from the
// messages written next to them, so the JS codec is checked against the
// reference encoding, 64-bit edge values included.
import { test } from "node:test";
import assert from "node:assert/strict";
import { encodeFrame, decodeFrame, closeReasonOf, CloseReason, ErrorCode } from "../gateway-client.js";

const hex = (b) => Buffer.from(b).toString("hex");
const bytes = (h) => new Uint8Array(Buffer.from(h, "hex"));

const vectors = {
  // Auth { protocol_version: 1, token: "t.k.n", device_id: "d1", resume_seq: u64::MAX, metadata: {app: web}, heartbeat_interval_ms: 30000 }
  auth: "0a2808011205742e6b2e6e1a02643120ffffffffffffffffff012a0a0a03617070120377656230b0ea01",
  // Upstream { correlation_id: 7, route: "room.send", client_msg_id: "m1", payload: "x" }
  upstream: "321408071209726f6f6d2e73656e641a026d31220178",
  // Ack { seq: 2^60 }
  ack: "4a0a08808080808080808010",
  // Ping {} (all defaults)
  ping: "2200",
};

test("client frames encode exactly as prost encodes them", () => {
  const auth = { protocolVersion: 1, token: "t.k.n", deviceId: "d1", resumeSeq: 18446744073709551615n, metadata: { app: "web" }, heartbeatIntervalMs: 30000 };
  assert.equal(hex(encodeFrame({ type: "auth", body: auth })), vectors.auth);
  const up = { correlationId: 7n, route: "room.send", clientMsgId: "m1", payload: "x" };
  assert.equal(hex(encodeFrame({ type: "upstream", body: up })), vectors.upstream);
  assert.equal(hex(encodeFrame({ type: "ack", body: { seq: 1n << 60n } })), vectors.ack);
  assert.equal(hex(encodeFrame({ type: "ping", body: {} })), vectors.ping);
  // Numbers are accepted where BigInt is expected.
  assert.equal(hex(encodeFrame({ type: "upstream", body: { ...up, correlationId: 7 } })), vectors.upstream);
});

test("server frames decode with 64-bit values intact", () => {
  // AuthOk { protocol_version: 1, conn_id: 2^53 + 1, user_id: "alice", device_id: "d1", heartbeat 30000, idle 90000, frame_bytes_max 65536, node_id: "n1" }
  const ok = decodeFrame(bytes("122608011081808080808080101a05616c6963652202643128b0ea013090bf053880800442026e31"));
  assert.equal(ok.type, "authOk");
  assert.equal(ok.body.connId, 9007199254740993n);
  assert.deepEqual([ok.body.userId, ok.body.deviceId, ok.body.nodeId], ["alice", "d1", "n1"]);
  assert.deepEqual([ok.body.heartbeatIntervalMs, ok.body.idleTimeoutMs, ok.body.frameBytesMax], [30000, 90000, 65536]);

  // Push { seq: 2^53 + 1, route: "chat.msg", payload: {"t":"é"}, ack_required, priority HIGH, retransmit }
  const push = decodeFrame(bytes("42250881808080808080101208636861742e6d73671a0a7b2274223a22c3a9227d200128013001"));
  assert.equal(push.type, "push");
  assert.equal(push.body.seq, 9007199254740993n);
  assert.equal(new TextDecoder().decode(push.body.payload), '{"t":"é"}');
  assert.deepEqual([push.body.ackRequired, push.body.priority, push.body.retransmit], [true, 1, true]);

  // UpstreamReply { correlation_id: u64::MAX - 1, status: 22, payload: [0,1,2], retry_after_ms: 100 }
  const reply = decodeFrame(bytes("3a1408feffffffffffffffff0110161a030001022064"));
  assert.equal(reply.body.correlationId, 18446744073709551614n);
  assert.deepEqual([reply.body.status, [...reply.body.payload], reply.body.retryAfterMs], [22, [0, 1, 2], 100]);

  // GoAway { reason: DRAIN, retry_after_ms: 5000, endpoints: ["a:1", "b:2"], message: "bye" }
  const bye = decodeFrame(bytes("521408091088271a03613a311a03623a322203627965"));
  assert.deepEqual(bye.body, { reason: 9, retryAfterMs: 5000, endpoints: ["a:1", "b:2"], message: "bye" });
  assert.equal(CloseReason[bye.body.reason], "DRAIN");

  // Error { code: BUSY, message: "busy", retry_after_ms: 250 }
  const err = decodeFrame(bytes("5a0b081612046275737918fa01"));
  assert.deepEqual(err.body, { code: 22, message: "busy", retryAfterMs: 250 });
  assert.equal(ErrorCode[err.body.code], "BUSY");
});

test("defaults fill absent fields and unknown fields are skipped", () => {
  const f = decodeFrame(bytes("4200"));
  assert.deepEqual(f.body, { seq: 0n, route: "", payload: new Uint8Array(0), ackRequired: false, priority: 0, retransmit: false, batch: [], room: "", dropped: 0 });
  // Push with an unknown varint field 15 and an unknown fixed64 field 16.
  const g = decodeFrame(bytes("420e0805780181010102030405060708"));
  assert.equal(g.body.seq, 5n);
});

test("malformed frames throw instead of producing garbage", () => {
  for (const bad of ["", "42", "4205080512", "08", "4202ff", "42020801ff", "4a0b08ffffffffffffffffffff01", "4202120c", "47", "42031201ff"]) {
    assert.throws(() => decodeFrame(bytes(bad)), undefined, bad);
  }
  assert.throws(() => encodeFrame({ type: "nope", body: {} }));
});

test("close codes carry the typed reason", () => {
  assert.equal(closeReasonOf(4009), 9);
  assert.equal(CloseReason[closeReasonOf(4007)], "SLOW_CONSUMER");
  assert.equal(CloseReason[closeReasonOf(1000)], "CLIENT_CLOSED");
  assert.equal(closeReasonOf(1006), 0);
});

test("a hot room's batch decodes as a push carrying pushes, and upstream names a room", () => {
  // Push { batch: [Push { route: "like", payload: "1", priority: LOW }, Push { route: "gift", payload: "rose" }], room: "live-1", dropped: 3 } (prost)
  const f = decodeFrame(bytes("42253a0b12046c696b651a013128023a0c1204676966741a04726f736542066c6976652d314803"));
  assert.equal(f.type, "push");
  assert.equal(f.body.room, "live-1");
  assert.equal(f.body.dropped, 3);
  assert.equal(f.body.seq, 0n);
  assert.deepEqual(f.body.batch.map((p) => [p.route, new TextDecoder().decode(p.payload), p.priority]), [["like", "1", 2], ["gift", "rose", 0]]);
  // Upstream { correlation_id: 7, route: "quiz.answer", payload: "B", room: "quiz" } (prost)
  const up = { correlationId: 7n, route: "quiz.answer", payload: "B", room: "quiz" };
  assert.equal(hex(encodeFrame({ type: "upstream", body: up })), "32180807120b7175697a2e616e737765722201422a047175697a");
});
