// Signalling scenarios with the real socket.io-client, driven by tests/interop/test_signalling_node.py.
//
//   node signalling.mjs URL SCENARIO [MODE]
//
// Each scenario plays two or three users (one client each, the way an app would use the library)
// and checks with node:assert what every one of them receives. MODE: "websocket" (default),
// "polling" or "default" (polling, then the upgrade). Exit 0 when the scenario held; 1, with the
// failure on stderr, when it did not. "victim" is not a scenario: it is the peer that the "killed"
// scenario runs in a child process and kills.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { Connection, QUIET, play, sleep } from "./user.mjs";

const [url, scenario, mode = "websocket"] = process.argv.slice(2);

// A real browser offer, as RTCPeerConnection.createOffer() gives it (CRLF line ends and all).
const SDP = [
  "v=0",
  "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
  "s=-",
  "t=0 0",
  "a=group:BUNDLE 0 1",
  "a=msid-semantic: WMS stream",
  "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
  "c=IN IP4 0.0.0.0",
  "a=rtcp:9 IN IP4 0.0.0.0",
  "a=ice-ufrag:Wxzq",
  "a=ice-pwd:kB6a+d1MNJu5fJ7tiaC6YmTD",
  "a=fingerprint:sha-256 4C:3E:9B:7A:21:5D:0E:58:AA:12:B1:63:9F:2A:77:0C:55:DE:31:8B:6F:40:92:1D:E8:03:BC:6A:5F:19:44:E2",
  "a=setup:actpass",
  "a=mid:0",
  "a=sendrecv",
  "a=rtpmap:111 opus/48000/2",
  "a=fmtp:111 minptime=10;useinbandfec=1",
  "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
  "a=mid:1",
  "a=rtpmap:96 VP8/90000",
  "a=rtcp-fb:96 nack pli",
  "",
].join("\r\n");
const OFFER = { type: "offer", sdp: SDP };
const ANSWER = { type: "answer", sdp: SDP.replace("actpass", "active") };
const CANDIDATE = (port) => ({
  candidate: `candidate:842163049 1 udp 1677729535 203.0.113.7 ${port} typ srflx raddr 10.0.0.2 rport ${port} generation 0 ufrag Wxzq network-cost 999`,
  sdpMid: "0",
  sdpMLineIndex: 0,
  usernameFragment: "Wxzq",
});

// -- a user: one socket.io-client and what it received ---------------------------------------------

const everyone = [];

class User extends Connection {
  constructor(name) {
    super(name, url, mode);
    everyone.push(this);
  }

  // Connect and user:join as an app does (no ack): user:joined carries our socket id.
  async join(userId = this.name) {
    await this.connected();
    this.emit("user:join", { userId });
    const { resumeToken, ...joined } = await this.next("user:joined");
    assert.deepEqual(joined, { userId, socketId: this.socket.id });
    // with a reconnect grace (the default), a secret to resume this session from a new connection
    if (resumeToken !== undefined) assert.match(resumeToken, /^[A-Za-z0-9_-]{16,}$/);
    this.resumeToken = resumeToken;
    return this;
  }
}

async function users(...names) {
  return Promise.all(names.map((n) => new User(n).join()));
}

// caller calls callee: both told; the call id.
async function ring(caller, callee, callType = "video") {
  caller.emit("call:initiate", { to: callee.name, callType });
  const incoming = await callee.next("call:incoming");
  assert.deepEqual(incoming, { from: caller.name, callType, callId: incoming.callId });
  assert.deepEqual(await caller.next("call:initiated"), { callId: incoming.callId, to: callee.name });
  return incoming.callId;
}

async function connect(caller, callee) {
  const callId = await ring(caller, callee);
  callee.emit("call:accept", { callId, from: caller.name });
  for (const u of [caller, callee]) assert.deepEqual(await u.next("call:accepted"), { callId, by: callee.name });
  return callId;
}

// -- scenarios ------------------------------------------------------------------------------------

const scenarios = {
  // join, initiate, accept, offer, answer, ICE both ways (and the end of candidates), end
  async call() {
    const [alice, bob] = await users("alice", "bob");
    const callId = await connect(alice, bob);
    alice.emit("call:offer", { to: "bob", offer: OFFER });
    assert.deepEqual(await bob.next("call:offer"), { offer: OFFER, from: "alice", callType: "video", callId });
    bob.emit("call:answer", { to: "alice", answer: ANSWER });
    assert.deepEqual(await alice.next("call:answer"), { answer: ANSWER, from: "bob", callId });
    for (const port of [50000, 50001]) alice.emit("ice:candidate", { to: "bob", candidate: CANDIDATE(port) });
    alice.emit("ice:candidate", { to: "bob", candidate: null });
    bob.emit("ice:candidate", { to: "alice", candidate: CANDIDATE(60000) });
    for (const port of [50000, 50001]) {
      assert.deepEqual(await bob.next("ice:candidate"), { candidate: CANDIDATE(port), from: "alice", callId });
    }
    assert.deepEqual(await bob.next("ice:candidate"), { candidate: null, from: "alice", callId });
    assert.deepEqual(await alice.next("ice:candidate"), { candidate: CANDIDATE(60000), from: "bob", callId });
    alice.emit("call:end", { callId });
    for (const u of [alice, bob]) {
      assert.deepEqual(await u.next("call:ended"), { callId, by: "alice", reason: "hangup" });
      await u.nothing();
    }
    // both free again: bob calls back
    await ring(bob, alice, "audio");
  },

  async reject() {
    const [alice, bob] = await users("alice", "bob");
    const callId = await ring(alice, bob);
    bob.emit("call:reject", { callId, from: "alice" });
    for (const u of [alice, bob]) assert.deepEqual(await u.next("call:rejected"), { callId, by: "bob" });
    bob.emit("call:accept", { callId, from: "alice" });
    await bob.error("CALL_NOT_FOUND", "Call not found or expired");
    for (const u of [alice, bob]) await u.nothing();
  },

  async cancel() {
    const [alice, bob] = await users("alice", "bob");
    const callId = await ring(alice, bob);
    alice.emit("call:end", { callId });
    for (const u of [alice, bob]) assert.deepEqual(await u.next("call:ended"), { callId, by: "alice", reason: "cancelled" });
    bob.emit("call:accept", { callId });
    await bob.error("CALL_NOT_FOUND");
  },

  // the server runs with a short --ring-timeout
  async timeout() {
    const [alice, bob] = await users("alice", "bob");
    const started = Date.now();
    const callId = await ring(alice, bob);
    for (const u of [alice, bob]) assert.deepEqual(await u.next("call:timeout"), { callId });
    assert.ok(Date.now() - started >= 400, "timed out too early");
    bob.emit("call:accept", { callId, from: "alice" });
    await bob.error("CALL_NOT_FOUND", "Call not found or expired");
    for (const u of [alice, bob]) await u.nothing();
  },

  async busy() {
    const [alice, bob, carol] = await users("alice", "bob", "carol");
    await ring(alice, bob);
    for (const to of ["bob", "alice"]) {
      carol.emit("call:initiate", { to, callType: "audio" });
      await carol.error("USER_BUSY", "User not available");
    }
    bob.emit("call:initiate", { to: "carol", callType: "audio" });
    await bob.error("ALREADY_IN_CALL");
    for (const u of [alice, bob, carol]) await u.nothing();
  },

  async offline() {
    const [alice, bob] = await users("alice", "bob");
    alice.emit("call:initiate", { to: "nobody", callType: "video" });
    await alice.error("USER_OFFLINE", "User not available");
    bob.close();
    await sleep(QUIET);
    alice.emit("call:initiate", { to: "bob", callType: "video" });
    await alice.error("USER_OFFLINE", "User not available");
    alice.emit("call:initiate", { to: "alice", callType: "video" });
    await alice.error("INVALID_TARGET");
    await alice.nothing();
  },

  // alice runs in a child process that is killed (SIGKILL) in the middle of the call
  async killed() {
    const [bob] = await users("bob");
    const child = spawn(process.execPath, [fileURLToPath(import.meta.url), url, "victim", mode], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const live = new Promise((resolve) => child.stdout.on("data", (d) => String(d).includes("live") && resolve()));
    const incoming = await bob.next("call:incoming");
    bob.emit("call:accept", { callId: incoming.callId });
    await bob.next("call:accepted");
    await bob.next("call:offer");
    await live;
    child.kill("SIGKILL");
    // the server sees the TCP connection drop (or, over polling, the client miss its heartbeat);
    // the call waits for alice through the reconnect grace, then ends
    assert.deepEqual(await bob.next("call:reconnecting", 15000), { callId: incoming.callId, userId: "alice" });
    assert.deepEqual(await bob.next("call:ended", 15000), {
      callId: incoming.callId,
      by: "alice",
      reason: "disconnected",
    });
    // alice is offline now
    bob.emit("call:initiate", { to: "alice", callType: "audio" });
    await bob.error("USER_OFFLINE");
  },

  async victim() {
    const [alice] = await users("alice");
    alice.emit("call:initiate", { to: "bob", callType: "video" });
    await alice.next("call:initiated");
    await alice.next("call:accepted");
    alice.emit("call:offer", { to: "bob", offer: OFFER });
    process.stdout.write("live\n");
    await sleep(60000);
  },

  // relays pass only between the two parties of one call
  async relays() {
    const [alice, bob, carol] = await users("alice", "bob", "carol");
    carol.emit("call:offer", { to: "alice", offer: OFFER });
    await carol.error("NOT_IN_CALL");
    await connect(alice, bob);
    const tries = [
      [carol, "call:offer", { to: "alice", offer: OFFER }, "NOT_IN_CALL"],
      [carol, "call:answer", { to: "bob", answer: ANSWER }, "NOT_IN_CALL"],
      [carol, "ice:candidate", { to: "bob", candidate: null }, "NOT_IN_CALL"],
      [alice, "call:offer", { to: "carol", offer: OFFER }, "NOT_IN_CALL"],
      [bob, "ice:candidate", { to: "carol", candidate: CANDIDATE(1) }, "NOT_IN_CALL"],
      [alice, "call:offer", { to: "alice", offer: OFFER }, "NOT_IN_CALL"],
    ];
    for (const [who, event, payload, code] of tries) {
      who.emit(event, payload);
      await who.error(code);
    }
    alice.emit("ice:candidate", { to: "ghost", candidate: null });
    await alice.error("NOT_IN_CALL", "User not found");
    for (const u of [alice, bob, carol]) await u.nothing();
  },

  // a second connection joins as alice: the first is told and disconnected, its call ends
  async takeover() {
    const [alice, bob] = await users("alice", "bob");
    const callId = await connect(alice, bob);
    const alice2 = await new User("alice").join();
    await alice.error("SESSION_REPLACED");
    assert.equal(await alice.next("disconnect"), "io server disconnect");
    assert.deepEqual(await bob.next("call:ended"), { callId, by: "alice", reason: "replaced" });
    assert.equal(alice.socket.connected, false);
    // the new connection is alice now
    const again = await ring(bob, alice2);
    assert.notEqual(again, callId);
    await alice2.nothing();
  },

  // requests with an ack get the result in it
  async acks() {
    const alice = new User("alice");
    await alice.connected();
    assert.deepEqual(await alice.ack("call:initiate", { to: "bob", callType: "audio" }), {
      ok: false,
      code: "NOT_JOINED",
      message: "Join first with user:join",
    });
    assert.deepEqual(await alice.ack("user:join", {}), { ok: false, code: "INVALID_PAYLOAD", message: "User ID is required" });
    assert.deepEqual(await alice.ack("user:join", { userId: "alice" }), { ok: true, userId: "alice", socketId: alice.socket.id });
    await alice.next("user:joined");
    const [bob] = await users("bob");
    const initiated = await alice.ack("call:initiate", { to: "bob", callType: "video" });
    assert.equal(initiated.ok, true);
    assert.equal(typeof initiated.callId, "string");
    const { callId } = initiated;
    assert.deepEqual(await bob.next("call:incoming"), { from: "alice", callType: "video", callId });
    assert.deepEqual(await alice.next("call:initiated"), { callId, to: "bob" });
    assert.deepEqual(await alice.ack("call:initiate", { to: "bob", callType: "video" }), {
      ok: false,
      code: "ALREADY_IN_CALL",
      message: "You are already in a call",
    });
    const wrong = await alice.ack("call:accept", { callId });
    assert.deepEqual(wrong, { ok: false, code: "CALL_NOT_FOUND", message: "Call not found or expired" });
    assert.deepEqual(await bob.ack("call:accept", { callId, from: "alice" }), { ok: true, callId });
    assert.deepEqual(await alice.ack("call:offer", { to: "bob", offer: OFFER }), { ok: true, callId });
    assert.deepEqual(await bob.ack("ice:candidate", { to: "alice", candidate: null }), { ok: true, callId });
    const unknown = await alice.ack("call:dance", { to: "bob" });
    assert.deepEqual(unknown, { ok: false, code: "INVALID_PAYLOAD", message: "Unknown event 'call:dance'" });
    const malformed = await alice.ack("call:end", { callId: 42 });
    assert.equal(malformed.code, "INVALID_PAYLOAD");
    assert.match(malformed.message, /callId/);
    assert.deepEqual(await alice.ack("call:end", { callId }), { ok: true, callId });
    assert.equal(alice.socket.connected, true);
  },

  // the same refusals with an ack: no separate error event (see the note in test_signalling_node.py)
  async "acks-only"() {
    const [alice] = await users("alice");
    const refused = await alice.ack("call:initiate", { to: "nobody", callType: "audio" });
    assert.equal(refused.code, "USER_OFFLINE");
    await alice.nothing();
  },

  // bad input is answered, and the connection stays up
  async invalid() {
    const stranger = new User("stranger");
    await stranger.connected();
    stranger.emit("call:offer", { to: "bob", offer: OFFER });
    await stranger.error("NOT_JOINED");
    stranger.emit("user:join", { userId: "not valid!" });
    await stranger.error("INVALID_PAYLOAD", "User ID must be 1-128 characters: ASCII letters, digits and _ - . @ : +");
    const [alice] = await users("alice");
    stranger.emit("user:join", "alice");
    await stranger.error("INVALID_PAYLOAD", "User ID is required");
    alice.emit("call:dance", {});
    await alice.error("INVALID_PAYLOAD", "Unknown event 'call:dance'");
    alice.emit("call:initiate", { to: "bob", callType: "fax" });
    await alice.error("INVALID_PAYLOAD");
    alice.socket.emit("call:initiate");
    await alice.error("INVALID_PAYLOAD", "A payload object is required");
    alice.emit("call:initiate", null);
    await alice.error("INVALID_PAYLOAD", "Expected `object`, got `null`");
    alice.emit("call:end", { callId: "x".repeat(65) });
    await alice.error("INVALID_PAYLOAD");
    for (const u of [alice, stranger]) assert.equal(u.socket.connected, true);
    await stranger.join("stranger"); // still usable
  },

  // the server runs with --initiate-burst 2
  async ratelimit() {
    const [alice] = await users("alice");
    for (let i = 0; i < 2; i++) {
      alice.emit("call:initiate", { to: "nobody", callType: "audio" });
      await alice.error("USER_OFFLINE");
    }
    alice.emit("call:initiate", { to: "nobody", callType: "audio" });
    await alice.error("RATE_LIMITED");
  },
};

// -- run -------------------------------------------------------------------------------------------

await play(scenarios, scenario, 30000, () => {
  // Leave as an app does: a clean disconnect, everyone at once (the server must cope with a
  // client closing while a call:ended for it is on its way), then a moment for it to arrive.
  for (const u of everyone) u.close();
});
