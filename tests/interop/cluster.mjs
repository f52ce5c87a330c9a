// Issue 14 with the real socket.io-client (WebSocket): two callbox nodes sharing one Redis, driven by
// tests/multinode/test_multinode.py and tests/multinode/test_edges.py.
//
//   node cluster.mjs SCENARIO URL1 URL2
//
// URL1 is node n1, URL2 node n2 (their --node-id). alice is on n1 and bob on n2 unless a scenario says
// otherwise. The script asks the test for what only it can do ("@@ kill n2": SIGKILL that node) with a
// line on stdout, and reads the answer, "ok [JSON]" or "fail WHY", from stdin. "TIME {...}" lines
// are measurements the test prints. Settings the scenarios time against come in the environment:
// NODE_TIMEOUT and RING_TIMEOUT (seconds). Exit 0 when the scenario held; 1, with the failure on
// stderr, when it did not.

import assert from "node:assert/strict";
import { Connection, QUIET, controlChannel, measurer, now, play, sleep } from "./user.mjs";

const [scenario, url1, url2] = process.argv.slice(2);
const URLS = { n1: url1, n2: url2 };
const NODE_TIMEOUT = Number(process.env.NODE_TIMEOUT ?? 2) * 1000;
const RING_TIMEOUT = Number(process.env.RING_TIMEOUT ?? 3) * 1000;
// How late past its due time a cluster-wide event may come: a claim (the spec's "+ ~1 s") or a
// ring deadline fired by a surviving node, plus a relay through Redis.
const LATE = 2000;

const control = controlChannel();
const measured = measurer({ scenario });

// -- payloads -------------------------------------------------------------------------------------

// A browser-like offer, with what a re-encoding on its way through Redis would change: non-ASCII
// (2-, 3- and 4-byte UTF-8, an astral emoji), U+2028/U+2029 and DEL (JSON.stringify leaves them
// raw), control characters, quotes, backslashes and a slash (escaped, or not, by JSON.stringify).
const sdp = (ufrag, setup) =>
  [
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=Ça sonne · 通話 · 📞 \"quoted\" back\\slash tab\there </script> \u2028\u2029\u007f\u0001\u001f",
    "i=naïve café — ünïcödé ﬁ 𝄞",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=msid-semantic: WMS stream",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 0.0.0.0",
    `a=ice-ufrag:${ufrag}`,
    "a=ice-pwd:kB6a+d1MNJu5fJ7tiaC6YmTD",
    "a=fingerprint:sha-256 4C:3E:9B:7A:21:5D:0E:58:AA:12:B1:63:9F:2A:77:0C:55:DE:31:8B:6F:40:92:1D:E8:03:BC:6A:5F:19:44:E2",
    `a=setup:${setup}`,
    "a=mid:0",
    "a=sendrecv",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    "a=mid:1",
    "a=rtpmap:96 VP8/90000",
    "",
  ].join("\r\n");
const OFFER = { type: "offer", sdp: sdp("Wxzq", "actpass") };
const ANSWER = { type: "answer", sdp: sdp("Pq7r", "active") };
const RESTART_OFFER = { type: "offer", sdp: sdp("N3wU", "actpass") };
const CANDIDATE = (port, ufrag = "Wxzq") => ({
  candidate: `candidate:842163049 1 udp 1677729535 203.0.113.7 ${port} typ srflx raddr 10.0.0.2 rport ${port} generation 0 ufrag ${ufrag} network-cost 999`,
  sdpMid: "0",
  sdpMLineIndex: 0,
  usernameFragment: ufrag,
});

// -- a user: one socket.io-client over WebSocket on one node ----------------------------------------

const everyone = [];

class User extends Connection {
  // name: the user id; node: "n1" or "n2"
  constructor(name, node) {
    super(`${name}@${node}`, URLS[node], "websocket");
    this.userId = name;
    this.node = node;
    this.frames = []; // every Socket.IO packet received, as the text it came in
    this.socket.io.on("open", () => this.socket.io.engine.on("data", (data) => this.frames.push(data)));
    everyone.push(this);
  }

  // Connect and user:join (with an ack): the socket id names this node.
  async join(extra = {}) {
    await this.connected();
    const ack = await this.ack("user:join", { userId: this.userId, ...extra });
    assert.equal(ack.ok, true, `${this.name}: user:join ${JSON.stringify(ack)}`);
    assert.equal(ack.socketId, this.socket.id);
    if (process.env.NODE_IDS !== "0") {
      assert.ok(this.socket.id.startsWith(`${this.node}.`), `${this.name}: socket id ${this.socket.id} is not ${this.node}'s`);
    }
    const joined = await this.next("user:joined");
    assert.equal(joined.userId, this.userId);
    assert.equal(joined.socketId, this.socket.id);
    this.joined = joined;
    return this;
  }

  // A request answered with an error event (no ack): its code.
  async refused(event, payload, code) {
    this.emit(event, payload);
    await this.error(code);
  }
}

const user = (name, node) => new User(name, node).join();

// caller calls callee: both told; the call id.
async function ring(caller, callee, callType = "video") {
  caller.emit("call:initiate", { to: callee.userId, callType });
  const incoming = await callee.next("call:incoming");
  const { callId } = incoming;
  assert.deepEqual(incoming, { from: caller.userId, callType, callId });
  assert.deepEqual(await caller.next("call:initiated"), { callId, to: callee.userId });
  return callId;
}

async function accept(caller, callee, callId) {
  callee.emit("call:accept", { callId, from: caller.userId });
  for (const u of [caller, callee]) assert.deepEqual(await u.next("call:accepted"), { callId, by: callee.userId });
}

// A live call: rung, accepted, the offer and the answer passed.
async function liveCall(caller, callee) {
  const callId = await ring(caller, callee);
  await accept(caller, callee, callId);
  assert.deepEqual(await caller.ack("call:offer", { to: callee.userId, offer: OFFER }), { ok: true, callId });
  assert.deepEqual(await callee.next("call:offer"), { offer: OFFER, from: caller.userId, callType: "video", callId });
  assert.deepEqual(await callee.ack("call:answer", { to: caller.userId, answer: ANSWER }), { ok: true, callId });
  assert.deepEqual(await caller.next("call:answer"), { answer: ANSWER, from: callee.userId, callId });
  return callId;
}

// The text of the one packet `u` received for `event`: it holds `value` exactly as JSON.stringify
// (what socket.io-client sent) wrote it.
function sentAsIs(u, event, value) {
  const frames = u.frames.filter((f) => f.startsWith(`2["${event}"`));
  assert.equal(frames.length, 1, `${u.name}: ${event} frames ${JSON.stringify(frames)}`);
  const text = JSON.stringify(value);
  assert.ok(frames[0].includes(text), `${u.name}: ${event} not byte for byte:\n sent ${text}\n  got ${frames[0]}`);
}

// A connection whose user id another one took: told so, its call ended (`ended`, if it had one),
// then disconnected by the server; in that order.
async function replaced(u, ended) {
  const got = await u.take(ended ? 3 : 2);
  const error = got.find(([event]) => event === "error");
  assert.ok(error, `${u.name}: ${JSON.stringify(got)}`);
  assert.equal(error[1].code, "SESSION_REPLACED", JSON.stringify(got));
  if (ended) assert.deepEqual(got.find(([event]) => event === "call:ended"), ["call:ended", ended], JSON.stringify(got));
  assert.deepEqual(got[got.length - 1], ["disconnect", "io server disconnect"], JSON.stringify(got));
}

// -- scenarios ------------------------------------------------------------------------------------

const scenarios = {
  // The whole call, alice on n1 and bob on n2: every step crosses nodes.
  async flow() {
    const alice = await user("alice", "n1");
    const bob = await user("bob", "n2");
    const callId = await ring(alice, bob);
    await accept(alice, bob, callId);

    alice.emit("call:offer", { to: "bob", offer: OFFER });
    assert.deepEqual(await bob.next("call:offer"), { offer: OFFER, from: "alice", callType: "video", callId });
    sentAsIs(bob, "call:offer", OFFER);
    bob.emit("call:answer", { to: "alice", answer: ANSWER });
    assert.deepEqual(await alice.next("call:answer"), { answer: ANSWER, from: "bob", callId });
    sentAsIs(alice, "call:answer", ANSWER);

    // 50 candidates each way, sent without waiting, then the end of candidates: each side gets the
    // other's in the order they were sent.
    const PORTS = Array.from({ length: 50 }, (_, i) => 50000 + i);
    for (const port of PORTS) {
      alice.emit("ice:candidate", { to: "bob", candidate: CANDIDATE(port) });
      bob.emit("ice:candidate", { to: "alice", candidate: CANDIDATE(port + 10000, "Pq7r") });
    }
    alice.emit("ice:candidate", { to: "bob", candidate: null });
    bob.emit("ice:candidate", { to: "alice", candidate: null });
    const [toBob, toAlice] = await Promise.all([bob.take(51), alice.take(51)]);
    assert.deepEqual(
      toBob,
      [...PORTS.map((p) => ["ice:candidate", { candidate: CANDIDATE(p), from: "alice", callId }]),
        ["ice:candidate", { candidate: null, from: "alice", callId }]],
    );
    assert.deepEqual(
      toAlice,
      [...PORTS.map((p) => ["ice:candidate", { candidate: CANDIDATE(p + 10000, "Pq7r"), from: "bob", callId }]),
        ["ice:candidate", { candidate: null, from: "bob", callId }]],
    );

    alice.emit("call:end", { callId });
    for (const u of [alice, bob]) {
      assert.deepEqual(await u.next("call:ended"), { callId, by: "alice", reason: "hangup" });
      await u.nothing();
    }
    // both are free again: bob calls back, from n2 to n1
    const back = await ring(bob, alice, "audio");
    assert.notEqual(back, callId);
    bob.emit("call:end", { callId: back });
    for (const u of [alice, bob]) assert.deepEqual(await u.next("call:ended"), { callId: back, by: "bob", reason: "cancelled" });
  },

  // Busy is known on every node: carol (n1) calls bob (n2), then alice (n1), while they ring, and
  // again once they are in the call; dave (n2) calls alice (n1) too. bob, in the call, may not call.
  async busy() {
    const alice = await user("alice", "n1");
    const bob = await user("bob", "n2");
    const carol = await user("carol", "n1");
    const dave = await user("dave", "n2");
    const callId = await ring(alice, bob);
    for (const to of ["bob", "alice"]) await carol.refused("call:initiate", { to, callType: "audio" }, "USER_BUSY");
    await accept(alice, bob, callId);
    for (const to of ["bob", "alice"]) await carol.refused("call:initiate", { to, callType: "audio" }, "USER_BUSY");
    await dave.refused("call:initiate", { to: "alice", callType: "audio" }, "USER_BUSY");
    await bob.refused("call:initiate", { to: "carol", callType: "audio" }, "ALREADY_IN_CALL");
    for (const u of [alice, bob, carol, dave]) await u.nothing();
    // once the call ends, carol reaches bob across nodes
    bob.emit("call:end", { callId });
    for (const u of [alice, bob]) assert.deepEqual(await u.next("call:ended"), { callId, by: "bob", reason: "hangup" });
    await ring(carol, bob, "audio");
  },

  // Offline is known on every node: a user nobody joined as, and bob once he has left n2.
  async offline() {
    const alice = await user("alice", "n1");
    const bob = await user("bob", "n2");
    await alice.refused("call:initiate", { to: "nobody", callType: "video" }, "USER_OFFLINE");
    // bob leaves while alice's call rings him: the call ending tells alice his leave was done
    const callId = await ring(alice, bob);
    bob.close();
    assert.deepEqual(await alice.next("call:ended"), { callId, by: "bob", reason: "disconnected" });
    const refused = await alice.ack("call:initiate", { to: "bob", callType: "video" });
    assert.equal(refused.code, "USER_OFFLINE", JSON.stringify(refused));
    await alice.nothing();
  },

  // bob joins again on n1 (no resumeToken) while in a call through n2: n2's bob is told
  // SESSION_REPLACED and disconnected, the call ends (replaced), and bob is the n1 one now.
  async takeover() {
    const alice = await user("alice", "n1");
    const bob = await user("bob", "n2");
    const callId = await liveCall(alice, bob);
    const bob2 = await user("bob", "n1");
    await replaced(bob, { callId, by: "bob", reason: "replaced" });
    assert.deepEqual(await alice.next("call:ended"), { callId, by: "bob", reason: "replaced" });
    const again = await ring(alice, bob2);
    assert.notEqual(again, callId);
    for (const u of [alice, bob, bob2]) await u.nothing();
    // and the other way: alice moves to n2 while she rings bob on n1
    const alice2 = await user("alice", "n2");
    await replaced(alice, { callId: again, by: "alice", reason: "replaced" });
    assert.deepEqual(await bob2.next("call:ended"), { callId: again, by: "alice", reason: "replaced" });
    await ring(bob2, alice2, "audio");
    for (const u of [alice, alice2, bob, bob2]) await u.nothing();
  },

  // The server runs with --initiate-burst 2: alice's two attempts on n1 and her third on n2 (after
  // taking her user id over there) draw on one allowance. bob, on n2 too, has his own.
  async ratelimit() {
    const alice = await user("alice", "n1");
    for (let i = 0; i < 2; i++) await alice.refused("call:initiate", { to: "nobody", callType: "audio" }, "USER_OFFLINE");
    const alice2 = await user("alice", "n2");
    await replaced(alice);
    const limited = await alice2.ack("call:initiate", { to: "nobody", callType: "audio" });
    assert.equal(limited.code, "RATE_LIMITED", JSON.stringify(limited));
    await alice2.refused("call:initiate", { to: "nobody", callType: "audio" }, "RATE_LIMITED");
    const bob = await user("bob", "n2");
    await bob.refused("call:initiate", { to: "nobody", callType: "audio" }, "USER_OFFLINE");
    for (const u of [alice2, bob]) await u.nothing();
  },

  // n2 dies (SIGKILL) while alice's call rings bob there: n1 fires the ring deadline on time.
  async ringkill() {
    const alice = await user("alice", "n1");
    const carol = await user("carol", "n1");
    const bob = await user("bob", "n2");
    const started = now();
    const callId = await ring(alice, bob);
    await control("kill n2");
    const killed = now();
    const timeout = await alice.next("call:timeout", RING_TIMEOUT + LATE + 1000);
    const at = now();
    assert.deepEqual(timeout, { callId });
    measured({ initiateToTimeout: Math.round(at - started), killToTimeout: Math.round(at - killed) });
    assert.ok(at - started >= RING_TIMEOUT - 50, `call:timeout ${Math.round(at - started)} ms after the initiate`);
    assert.ok(at - started <= RING_TIMEOUT + 1500, `call:timeout ${Math.round(at - started)} ms after the initiate`);
    // What else alice may have heard: that bob is away (n1 claimed n2 before the deadline).
    await sleep(QUIET);
    for (const [event, payload] of alice.queue) {
      assert.equal(event, "call:reconnecting", `alice: ${JSON.stringify(alice.queue)}`);
      assert.deepEqual(payload, { callId, userId: "bob" });
    }
    alice.queue.length = 0;
    // alice is free: she calls carol
    const next = await ring(alice, carol, "audio");
    assert.notEqual(next, callId);
    for (const u of [alice, carol]) await u.nothing();
  },

  // Grace on: n2 dies in a live call; n1 claims it and tells alice bob is reconnecting; bob comes
  // back on n1 with his resumeToken, gets what alice sent meanwhile, and the call goes on.
  async resume() {
    const alice = await user("alice", "n1");
    const bob = await user("bob", "n2");
    const token = bob.joined.resumeToken;
    assert.match(token, /^[A-Za-z0-9_-]{16,}$/);
    const callId = await liveCall(alice, bob);
    for (const u of [alice, bob]) await u.nothing();

    await control("kill n2");
    const killed = now();
    assert.equal(await bob.next("disconnect"), "transport close");
    assert.deepEqual(await alice.next("call:reconnecting", NODE_TIMEOUT + LATE), { callId, userId: "bob" });
    const noticed = now();
    measured({ killToReconnecting: Math.round(noticed - killed) });
    assert.ok(noticed - killed <= NODE_TIMEOUT + LATE, `call:reconnecting ${Math.round(noticed - killed)} ms after the kill`);

    // alice's ICE restart waits for bob
    assert.deepEqual(await alice.ack("call:offer", { to: "bob", offer: RESTART_OFFER }), { ok: true, callId });
    assert.deepEqual(await alice.ack("ice:candidate", { to: "bob", candidate: CANDIDATE(51000, "N3wU") }), {
      ok: true,
      callId,
    });

    const back = new User("bob", "n1");
    everyone.push(back);
    await back.connected();
    const ack = await back.ack("user:join", { userId: "bob", resumeToken: token });
    assert.deepEqual(ack, { ok: true, userId: "bob", socketId: back.socket.id, resumed: true });
    assert.ok(back.socket.id.startsWith("n1."), back.socket.id);
    const got = await back.take(4);
    assert.deepEqual(
      got.map(([event]) => event),
      ["user:joined", "call:offer", "ice:candidate", "call:reconnected"],
      JSON.stringify(got),
    );
    const joined = got[0][1];
    assert.match(joined.resumeToken, /^[A-Za-z0-9_-]{16,}$/);
    assert.notEqual(joined.resumeToken, token);
    assert.deepEqual(joined, {
      userId: "bob",
      socketId: back.socket.id,
      resumeToken: joined.resumeToken,
      resumed: true,
      call: { callId, peer: "alice", role: "callee", state: "connected", callType: "video" },
    });
    assert.deepEqual(got[1][1], { offer: RESTART_OFFER, from: "alice", callType: "video", callId });
    sentAsIs(back, "call:offer", RESTART_OFFER);
    assert.deepEqual(got[2][1], { candidate: CANDIDATE(51000, "N3wU"), from: "alice", callId });
    assert.deepEqual(got[3][1], { callId, userId: "bob" });
    assert.deepEqual(await alice.next("call:reconnected"), { callId, userId: "bob" });
    measured({ killToReconnected: Math.round(now() - killed) });
    for (const u of [alice, back]) await u.nothing();

    // the call goes on, both ways, now on one node
    assert.deepEqual(await back.ack("call:answer", { to: "alice", answer: ANSWER }), { ok: true, callId });
    assert.deepEqual(await alice.next("call:answer"), { answer: ANSWER, from: "bob", callId });
    assert.deepEqual(await back.ack("ice:candidate", { to: "alice", candidate: CANDIDATE(61000, "Pq7r") }), {
      ok: true,
      callId,
    });
    assert.deepEqual(await alice.next("ice:candidate"), { candidate: CANDIDATE(61000, "Pq7r"), from: "bob", callId });
    assert.deepEqual(await alice.ack("ice:candidate", { to: "bob", candidate: CANDIDATE(51001, "N3wU") }), {
      ok: true,
      callId,
    });
    assert.deepEqual(await back.next("ice:candidate"), { candidate: CANDIDATE(51001, "N3wU"), from: "alice", callId });
    assert.deepEqual(await alice.ack("call:end", { callId }), { ok: true, callId });
    for (const u of [alice, back]) {
      assert.deepEqual(await u.next("call:ended"), { callId, by: "alice", reason: "hangup" });
      await u.nothing();
    }
  },

  // Grace on: n2 dies in a live call and bob is back on n1 with his resumeToken at once, before
  // n1 has claimed n2 (as a client that reconnects through a load balancer does): the resume is the
  // half-open kind (call:reconnected, no call:reconnecting), and the claim of n2 that comes later
  // finds bob on n1: nobody is told anything, the call goes on.
  async "resume-early"() {
    const alice = await user("alice", "n1");
    const bob = await user("bob", "n2");
    const token = bob.joined.resumeToken;
    const callId = await liveCall(alice, bob);
    for (const u of [alice, bob]) await u.nothing();

    await control("kill n2");
    assert.equal(await bob.next("disconnect"), "transport close");
    const back = new User("bob", "n1");
    everyone.push(back);
    await back.connected();
    const ack = await back.ack("user:join", { userId: "bob", resumeToken: token });
    assert.deepEqual(ack, { ok: true, userId: "bob", socketId: back.socket.id, resumed: true });
    const joined = await back.next("user:joined");
    assert.deepEqual(joined, {
      userId: "bob",
      socketId: back.socket.id,
      resumeToken: joined.resumeToken,
      resumed: true,
      call: { callId, peer: "alice", role: "callee", state: "connected", callType: "video" },
    });
    for (const u of [alice, back]) assert.deepEqual(await u.next("call:reconnected"), { callId, userId: "bob" });
    for (const u of [alice, back]) await u.nothing();

    // n1 claims n2 (its gauge of nodes alive drops to 1): bob is not lost again
    await control("claimed n2 by n1");
    assert.deepEqual(await alice.ack("ice:candidate", { to: "bob", candidate: CANDIDATE(51002) }), { ok: true, callId });
    assert.deepEqual(await back.next("ice:candidate"), { candidate: CANDIDATE(51002), from: "alice", callId });
    assert.deepEqual(await back.ack("ice:candidate", { to: "alice", candidate: CANDIDATE(61002, "Pq7r") }), {
      ok: true,
      callId,
    });
    assert.deepEqual(await alice.next("ice:candidate"), { candidate: CANDIDATE(61002, "Pq7r"), from: "bob", callId });
    for (const u of [alice, back]) await u.nothing();
    assert.deepEqual(await back.ack("call:end", { callId }), { ok: true, callId });
    for (const u of [alice, back]) assert.deepEqual(await u.next("call:ended"), { callId, by: "bob", reason: "hangup" });
  },

  // Grace off: n2 dies in a live call; alice is told the call ended (disconnected) once n1 has
  // claimed n2, and bob is offline until he joins again (on n1).
  async nograce() {
    const alice = await user("alice", "n1");
    const bob = await user("bob", "n2");
    assert.equal(bob.joined.resumeToken, undefined, JSON.stringify(bob.joined));
    const callId = await liveCall(alice, bob);
    for (const u of [alice, bob]) await u.nothing();

    await control("kill n2");
    const killed = now();
    assert.deepEqual(await alice.next("call:ended", NODE_TIMEOUT + LATE), { callId, by: "bob", reason: "disconnected" });
    const ended = now();
    measured({ killToEnded: Math.round(ended - killed) });
    assert.ok(ended - killed <= NODE_TIMEOUT + LATE, `call:ended ${Math.round(ended - killed)} ms after the kill`);
    await alice.nothing(); // no call:reconnecting, before or after
    const refused = await alice.ack("call:initiate", { to: "bob", callType: "audio" });
    assert.equal(refused.code, "USER_OFFLINE", JSON.stringify(refused));

    const back = await user("bob", "n1");
    const again = await ring(alice, back, "audio");
    assert.notEqual(again, callId);
    for (const u of [alice, back]) await u.nothing();
  },

  // What an operator's /metrics show of relays between nodes: in a live call alice (n1) - bob (n2),
  // the test reads both nodes' metrics ("@@ snapshot"), alice sends bob 5 candidates (each acked,
  // each received), and the test reads them again.
  async oneway() {
    const alice = await user("alice", "n1");
    const bob = await user("bob", "n2");
    const callId = await liveCall(alice, bob);
    for (const u of [alice, bob]) await u.nothing();
    await control("snapshot");
    const PORTS = [52000, 52001, 52002, 52003, 52004];
    for (const port of PORTS) {
      assert.deepEqual(await alice.ack("ice:candidate", { to: "bob", candidate: CANDIDATE(port) }), { ok: true, callId });
    }
    assert.deepEqual(await bob.take(PORTS.length), PORTS.map((p) => ["ice:candidate", { candidate: CANDIDATE(p), from: "alice", callId }]));
    for (const u of [alice, bob]) await u.nothing();
    await control("snapshot");
    alice.emit("call:end", { callId });
    for (const u of [alice, bob]) assert.deepEqual(await u.next("call:ended"), { callId, by: "alice", reason: "hangup" });
  },

  // Both nodes started while Redis was down: alice (n1) and bob (n2) connect, and their user:join is
  // refused UNAVAILABLE; the test starts Redis ("@@ redis-start", answered once both nodes are
  // ready); on the same connections they join, and alice calls bob across the nodes.
  async "redis-late"() {
    const alice = new User("alice", "n1");
    const bob = new User("bob", "n2");
    for (const u of [alice, bob]) {
      await u.connected();
      const refused = await u.ack("user:join", { userId: u.userId });
      assert.equal(refused.ok, false, `${u.name}: ${JSON.stringify(refused)}`);
      assert.equal(refused.code, "UNAVAILABLE", `${u.name}: ${JSON.stringify(refused)}`);
      assert.equal(typeof refused.message, "string");
    }
    for (const u of [alice, bob]) await u.nothing(); // no user:joined, no disconnect
    const { seconds } = await control("redis-start");
    measured({ redisStartToReady: seconds });
    for (const u of [alice, bob]) await u.join(); // the same sockets: never disconnected
    const callId = await ring(alice, bob);
    await accept(alice, bob, callId);
    assert.deepEqual(await alice.ack("call:offer", { to: "bob", offer: OFFER }), { ok: true, callId });
    assert.deepEqual(await bob.next("call:offer"), { offer: OFFER, from: "alice", callType: "video", callId });
    alice.emit("call:end", { callId });
    for (const u of [alice, bob]) {
      assert.deepEqual(await u.next("call:ended"), { callId, by: "alice", reason: "hangup" });
      await u.nothing();
    }
  },

  // n2 is killed (-9) while bob, in a live call with alice (n1), and carol, in no call, are on it,
  // and started again under the same --node-id before n1 could claim it (n1 runs with a long
  // --node-timeout). The new n2 cleans up after the old one at its start: with GRACE=0 (the test's
  // --reconnect-grace 0) alice's call ends (disconnected) and bob and carol are offline; with a grace,
  // alice is told bob is reconnecting, carol is offline, and bob resumes on the new n2 with his token.
  // bob can join again on the new n2 either way, and calls cross the nodes as before.
  async restart() {
    const grace = process.env.GRACE !== "0";
    const alice = await user("alice", "n1");
    const bob = await user("bob", "n2");
    const carol = await user("carol", "n2");
    const dave = await user("dave", "n1");
    const token = bob.joined.resumeToken;
    assert.equal(token === undefined, !grace, JSON.stringify(bob.joined));
    const callId = await liveCall(alice, bob);
    for (const u of [alice, bob, carol, dave]) await u.nothing();
    // a last candidate reaches bob through n2 just before it dies
    assert.deepEqual(await alice.ack("ice:candidate", { to: "bob", candidate: CANDIDATE(52999) }), { ok: true, callId });
    assert.deepEqual(await bob.next("ice:candidate"), { candidate: CANDIDATE(52999), from: "alice", callId });

    await control("kill n2");
    for (const u of [bob, carol]) assert.equal(await u.next("disconnect"), "transport close");
    for (const u of [alice, dave]) await u.nothing(); // nobody has noticed: n1 would take 10 s
    const { url } = await control("restart n2");
    URLS.n2 = url;
    const restarted = now();
    if (!grace) {
      assert.deepEqual(await alice.next("call:ended", LATE), { callId, by: "bob", reason: "disconnected" });
    } else {
      assert.deepEqual(await alice.next("call:reconnecting", LATE), { callId, userId: "bob" });
    }
    measured({ grace, restartToTold: Math.round(now() - restarted) });
    // The new n2 went through every session of the old one (its users online: alice, dave, and bob
    // while he is away): dave, idle on n1, finds who is offline.
    await control(`online n2 ${grace ? 3 : 2}`);
    const gone = grace ? ["carol"] : ["bob", "carol"];
    for (const to of gone) {
      const refused = await dave.ack("call:initiate", { to, callType: "audio" });
      assert.equal(refused.code, "USER_OFFLINE", `${to}: ${JSON.stringify(refused)}`);
    }
    if (grace) {
      const busy = await dave.ack("call:initiate", { to: "bob", callType: "audio" });
      assert.equal(busy.code, "USER_BUSY", `bob: ${JSON.stringify(busy)}`);
    }
    for (const u of [alice, dave]) await u.nothing();

    let back;
    if (grace) {
      back = new User("bob", "n2");
      await back.connected();
      const ack = await back.ack("user:join", { userId: "bob", resumeToken: token });
      assert.deepEqual(ack, { ok: true, userId: "bob", socketId: back.socket.id, resumed: true });
      assert.ok(back.socket.id.startsWith("n2."), back.socket.id);
      // bob is told he is back, and nothing else: alice sent him nothing while he was away (what
      // the old n2 delivered to him before it died, up to that last candidate, does not come again)
      const got = await back.take(2);
      assert.deepEqual(got.map(([event]) => event), ["user:joined", "call:reconnected"], JSON.stringify(got));
      assert.deepEqual(got[0][1].call, { callId, peer: "alice", role: "callee", state: "connected", callType: "video" });
      assert.deepEqual(got[1][1], { callId, userId: "bob" });
      assert.deepEqual(await alice.next("call:reconnected"), { callId, userId: "bob" });
      for (const u of [alice, back]) await u.nothing();
      assert.deepEqual(await alice.ack("ice:candidate", { to: "bob", candidate: CANDIDATE(53000) }), { ok: true, callId });
      assert.deepEqual(await back.next("ice:candidate"), { candidate: CANDIDATE(53000), from: "alice", callId });
      alice.emit("call:end", { callId });
      for (const u of [alice, back]) assert.deepEqual(await u.next("call:ended"), { callId, by: "alice", reason: "hangup" });
    } else {
      back = await user("bob", "n2");
    }
    const again = await ring(alice, back, "audio");
    assert.notEqual(again, callId);
    await accept(alice, back, again);
    assert.deepEqual(await back.ack("ice:candidate", { to: "alice", candidate: CANDIDATE(63000, "Pq7r") }), { ok: true, callId: again });
    assert.deepEqual(await alice.next("ice:candidate"), { candidate: CANDIDATE(63000, "Pq7r"), from: "bob", callId: again });
    for (const u of [alice, back, dave]) await u.nothing();
  },
};

// -- run -------------------------------------------------------------------------------------------

await play(scenarios, scenario, 40000, () => {
  // Leave as an app does: a clean disconnect, everyone at once.
  for (const u of everyone) u.close();
});
