// Issue 12 with the real socket.io-client: a call that survives a network blip (connection state
// recovery and the reconnect grace), driven by tests/interop/test_recovery_node.py.
//
//   node recovery.mjs URL PROXY_URL SCENARIO [MODE]
//
// alice connects to URL (the server), bob to PROXY_URL (tests/_tcpproxy.py in the test's process,
// forwarding to the server), so that the test can cut bob's connection under him. The script asks
// the test for a cut (and other things only the server side can see) with a line on stdout
// "@@ COMMAND", and reads the answer, "ok [JSON]" or "fail WHY", from stdin. Lines "TIME {...}" are
// measurements the test prints. MODE: "websocket" (default), "polling" or "default" (polling,
// then the upgrade). Exit 0 when the scenario held; 1, with the failure on stderr, when it did not.
//
// socket.io-client appends the offset of each event (recovery on) as one more last argument: the
// listeners here take the payload from the first argument and keep the offset apart.

import assert from "node:assert/strict";
import { Recorder, TRANSPORTS, WAIT, controlChannel, measurer, now, play } from "./user.mjs";

const [url, proxyUrl, scenario, mode = "websocket"] = process.argv.slice(2);
const RETRY = 100; // ms: bob's reconnection delay (no randomization), small so a blip is short

const control = controlChannel();
const measured = measurer({ scenario, mode });

// -- payloads -------------------------------------------------------------------------------------

const sdp = (ufrag, pwd, setup) =>
  [
    "v=0",
    "o=- 4611731400430051336 3 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS stream",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    `a=ice-ufrag:${ufrag}`,
    `a=ice-pwd:${pwd}`,
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 4C:3E:9B:7A:21:5D:0E:58:AA:12:B1:63:9F:2A:77:0C:55:DE:31:8B:6F:40:92:1D:E8:03:BC:6A:5F:19:44:E2",
    `a=setup:${setup}`,
    "a=mid:0",
    "a=sendrecv",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    `a=ice-ufrag:${ufrag}`,
    `a=ice-pwd:${pwd}`,
    "a=mid:1",
    "a=rtpmap:96 VP8/90000",
    "a=rtcp-fb:96 nack pli",
    "",
  ].join("\r\n");
const OFFER = { type: "offer", sdp: sdp("Wxzq", "kB6a+d1MNJu5fJ7tiaC6YmTD", "actpass") };
const ANSWER = { type: "answer", sdp: sdp("Pq7r", "Zt0c/9yyQm3LqV1dXo2Hg4Ue", "active") };
// An ICE restart: the same session, a new ufrag and password (RTCPeerConnection.restartIce()).
const RESTART_OFFER = { type: "offer", sdp: sdp("N3wU", "r3start+Pwd/0123456789ab", "actpass") };
const RESTART_ANSWER = { type: "answer", sdp: sdp("N3wA", "answer+Pwd/0123456789abcd", "active") };
const CANDIDATE = (port, ufrag = "N3wU") => ({
  candidate: `candidate:842163049 1 udp 1677729535 203.0.113.7 ${port} typ srflx raddr 10.0.0.2 rport ${port} generation 0 ufrag ${ufrag} network-cost 999`,
  sdpMid: "0",
  sdpMLineIndex: 0,
  usernameFragment: ufrag,
});

// -- a user: one socket.io-client and, in order, what it received ----------------------------------

const everyone = [];

class User extends Recorder {
  constructor(name, { viaProxy = false, reconnection = true } = {}) {
    super(name, viaProxy ? proxyUrl : url, {
      transports: TRANSPORTS[mode],
      reconnection,
      reconnectionDelay: RETRY,
      reconnectionDelayMax: RETRY,
      randomizationFactor: 0,
    });
    everyone.push(this);
    this.offsets = []; // every offset received, in order, for the socket's whole life
  }

  // Entries carry an offset too: {event, payload, offset, at}. The offset, when the server sends
  // one, is the extra last argument: a string after the payload (our events have exactly one
  // payload argument).
  received(event, args) {
    const offset = args.length > 1 ? args[args.length - 1] : undefined;
    if (offset !== undefined) this.offsets.push(offset);
    this.push({ event, payload: args[0], offset });
  }

  show() {
    return JSON.stringify(this.queue.map(({ event, payload, offset }) => [event, payload, offset]));
  }

  // Connect and user:join as an app does (no ack): user:joined carries our socket id and, the
  // grace being on, a resume token.
  async join() {
    await this.connected();
    const connect = await this.next("#connect");
    assert.ok(!connect.recovered, `${this.name}: a first connection is not recovered`);
    assert.equal(typeof this.socket._pid, "string", `${this.name}: the CONNECT answer has no pid (recovery off?)`);
    this.emit("user:join", { userId: this.name });
    const joined = await this.next("user:joined");
    assert.equal(typeof joined.resumeToken, "string", `${this.name}: user:joined ${JSON.stringify(joined)}`);
    assert.ok(joined.resumeToken.length > 0);
    assert.deepEqual(joined, { userId: this.name, socketId: this.socket.id, resumeToken: joined.resumeToken });
    return this;
  }

  // The transport bob is on is the one the mode ends on (after the upgrade in "default").
  async settledTransport() {
    const want = mode === "polling" ? "polling" : "websocket";
    await this.until(
      () => (this.socket.io.engine?.transport?.name === want && this.socket.connected ? true : undefined),
      `the ${want} transport`,
    );
  }

  // Offsets are a count of this socket's events: "1", "2", ... each once, none missing.
  checkOffsets() {
    assert.ok(this.offsets.length > 0, `${this.name}: no offsets (is recovery on?)`);
    assert.deepEqual(
      this.offsets,
      this.offsets.map((_, i) => String(i + 1)),
      `${this.name}: offsets received`,
    );
  }
}

// caller calls callee and callee accepts, the offer and the answer pass: a live call; its id.
async function liveCall(caller, callee) {
  caller.emit("call:initiate", { to: callee.name, callType: "video" });
  const incoming = await callee.next("call:incoming");
  const { callId } = incoming;
  assert.deepEqual(incoming, { from: caller.name, callType: "video", callId });
  assert.deepEqual(await caller.next("call:initiated"), { callId, to: callee.name });
  callee.emit("call:accept", { callId, from: caller.name });
  for (const u of [caller, callee]) assert.deepEqual(await u.next("call:accepted"), { callId, by: callee.name });
  assert.deepEqual(await caller.ack("call:offer", { to: callee.name, offer: OFFER }), { ok: true, callId });
  assert.deepEqual(await callee.next("call:offer"), { offer: OFFER, from: caller.name, callType: "video", callId });
  assert.deepEqual(await callee.ack("call:answer", { to: caller.name, answer: ANSWER }), { ok: true, callId });
  assert.deepEqual(await caller.next("call:answer"), { answer: ANSWER, from: callee.name, callId });
  return callId;
}

// The call goes on after it all: the parties still reach each other, and a hang-up ends it.
async function stillLive(alice, bob, callId) {
  assert.deepEqual(await bob.ack("ice:candidate", { to: "alice", candidate: CANDIDATE(61000, "N3wA") }), {
    ok: true,
    callId,
  });
  assert.deepEqual(await alice.next("ice:candidate"), { candidate: CANDIDATE(61000, "N3wA"), from: "bob", callId });
  assert.deepEqual(await alice.ack("call:end", { callId }), { ok: true, callId });
  for (const u of [alice, bob]) assert.deepEqual(await u.next("call:ended"), { callId, by: "alice", reason: "hangup" });
}

// Cut bob's connections. With the network held down, he may have had none open at that instant
// (a polling client between two requests): his next request fails instead.
async function cut(how, { held = false } = {}) {
  const { links } = await control(`cut ${how}`);
  assert.ok(links > 0 || held, `the proxy had no connection of bob's to cut (${how})`);
}

// bob's own socket.io-client came back by itself: the same socket, recovered.
async function recovered(bob, id) {
  const back = await bob.nextEntry("#connect");
  assert.deepEqual(back.payload, { id, recovered: true }, "bob came back as a new socket");
  return back;
}

// -- scenarios ------------------------------------------------------------------------------------

const scenarios = {
  // Two blips in a live call, bob's client reconnecting by itself each time:
  //  A. a reset and nothing else: the time from the cut to call:reconnected is measured;
  //  B. a cut (FIN both ways), the network kept down while alice sends an ICE restart offer and
  //     three candidates; bob then gets exactly those, in order, byte for byte, once.
  async blip() {
    const alice = await new User("alice").join();
    const bob = await new User("bob", { viaProxy: true }).join();
    const id = bob.socket.id;
    const callId = await liveCall(alice, bob);
    await bob.settledTransport();
    for (const u of [alice, bob]) await u.nothing();

    // A: a bare blip.
    const cutA = now();
    await cut("reset");
    const awayA = await alice.nextEntry("call:reconnecting");
    assert.deepEqual(awayA.payload, { callId, userId: "bob" });
    assert.equal((await bob.nextEntry("#disconnect")).event, "#disconnect");
    const backA = await recovered(bob, id);
    const bobA = await bob.nextEntry("call:reconnected");
    const aliceA = await alice.nextEntry("call:reconnected");
    for (const e of [bobA, aliceA]) assert.deepEqual(e.payload, { callId, userId: "bob" });
    assert.ok(awayA.at < aliceA.at, "alice was told bob is back before she was told he was away");
    for (const u of [alice, bob]) await u.nothing();
    measured({
      blip: "A (reset, bob retries after 100 ms)",
      cutToServerNoticed: Math.round(awayA.at - cutA),
      cutToBobRecovered: Math.round(backA.at - cutA),
      cutToBobReconnected: Math.round(bobA.at - cutA),
      cutToAliceReconnected: Math.round(aliceA.at - cutA),
    });
    await bob.settledTransport();

    // B: four relays while bob is away.
    await control("hold");
    const cutB = now();
    await cut("close");
    const awayB = await alice.nextEntry("call:reconnecting");
    assert.deepEqual(awayB.payload, { callId, userId: "bob" });
    assert.equal((await bob.nextEntry("#disconnect")).event, "#disconnect");
    const sent = [
      ["call:offer", { to: "bob", offer: RESTART_OFFER }],
      ...[50000, 50001, 50002].map((port) => ["ice:candidate", { to: "bob", candidate: CANDIDATE(port) }]),
    ];
    for (const [event, payload] of sent) assert.deepEqual(await alice.ack(event, payload), { ok: true, callId });
    const released = now();
    await control("release");
    const backB = await recovered(bob, id);
    // then exactly: the four, in order, then call:reconnected
    const got = await bob.take(5);
    assert.deepEqual(
      got.map((e) => e.event),
      ["call:offer", "ice:candidate", "ice:candidate", "ice:candidate", "call:reconnected"],
      bob.show(),
    );
    assert.deepEqual(got[0].payload, { offer: RESTART_OFFER, from: "alice", callType: "video", callId });
    assert.equal(JSON.stringify(got[0].payload.offer), JSON.stringify(RESTART_OFFER), "the offer, byte for byte");
    for (let i = 1; i <= 3; i++) {
      assert.deepEqual(got[i].payload, { candidate: sent[i][1].candidate, from: "alice", callId });
      assert.equal(JSON.stringify(got[i].payload.candidate), JSON.stringify(sent[i][1].candidate), "byte for byte");
    }
    assert.deepEqual(got[4].payload, { callId, userId: "bob" });
    const aliceB = await alice.nextEntry("call:reconnected");
    assert.deepEqual(aliceB.payload, { callId, userId: "bob" });
    for (const u of [alice, bob]) await u.nothing();
    measured({
      blip: "B (close, network down until alice's four relays were acked)",
      down: Math.round(released - cutB),
      releaseToBobRecovered: Math.round(backB.at - released),
      releaseToBobReconnected: Math.round(got[4].at - released),
      releaseToAliceReconnected: Math.round(aliceB.at - released),
    });

    // bob answers the restart: the call goes on
    assert.deepEqual(await bob.ack("call:answer", { to: "alice", answer: RESTART_ANSWER }), { ok: true, callId });
    assert.deepEqual(await alice.next("call:answer"), { answer: RESTART_ANSWER, from: "bob", callId });
    await stillLive(alice, bob, callId);
    for (const u of [alice, bob]) {
      await u.nothing();
      u.checkOffsets();
    }
    await control("sessions 2 0");
  },

  // The grace (1 s here) passes with bob away (the network down from the cut until his old socket
  // has gone): alice is told the call ended when it passes; bob, connecting again later, is a new
  // socket. AWAY: "manual" (bob's client does not reconnect by itself; it is told to connect again
  // then) or "held" (it keeps trying all along).
  async grace() {
    const grace = Number(process.env.GRACE) * 1000;
    const detect = Number(process.env.DETECT) * 1000; // the longest the server may take to notice
    const held = process.env.AWAY === "held";
    const alice = await new User("alice").join();
    const bob = await new User("bob", { viaProxy: true, reconnection: held }).join();
    const { id } = bob.socket;
    const callId = await liveCall(alice, bob);
    await bob.settledTransport();
    for (const u of [alice, bob]) await u.nothing();

    await control("hold");
    const cutAt = now();
    await cut("close", { held: true });
    await bob.next("#disconnect");
    // The server noticed the drop when alice is told (the same path carries call:ended to her,
    // so what it costs cancels out of the difference below).
    const away = await alice.nextEntry("call:reconnecting", detect + WAIT);
    assert.deepEqual(away.payload, { callId, userId: "bob" });
    const ended = await alice.nextEntry("call:ended", grace + detect + WAIT);
    assert.deepEqual(ended.payload, { callId, by: "bob", reason: "disconnected" });
    const afterNoticed = ended.at - away.at;
    const afterCut = ended.at - cutAt;
    measured({
      grace,
      cutToServerNoticed: Math.round(away.at - cutAt),
      noticedToEnded: Math.round(afterNoticed),
      cutToEnded: Math.round(afterCut),
    });
    // Not before the grace: the server cannot have noticed the drop before the cut (cutAt is
    // taken before the cut is asked for), and its grace starts then.
    assert.ok(afterCut >= grace - 1, `call:ended ${afterCut} ms after the cut: before the grace`);
    // Within 0.5 s of the grace's end, counted from when the server noticed; and from the cut,
    // within that plus the longest the server may take to notice (a missed heartbeat).
    assert.ok(afterNoticed <= grace + 500, `call:ended ${afterNoticed} ms after the drop was noticed: > grace + 0.5 s`);
    assert.ok(afterCut <= grace + 500 + detect, `call:ended ${afterCut} ms after the cut`);
    await alice.nothing();
    // bob is offline now
    const refused = await alice.ack("call:initiate", { to: "bob", callType: "audio" });
    assert.equal(refused.code, "USER_OFFLINE", JSON.stringify(refused));

    // bob's old socket goes when the recovery window passes; then his client connects again and,
    // offering the old pid and offset, gets a new socket
    await control(`socket-gone ${id}`);
    const pid = bob.socket._pid;
    assert.equal(typeof pid, "string");
    await control("release");
    if (!held) bob.socket.connect();
    const back = await bob.next("#connect");
    assert.equal(back.recovered, false, "bob's expired socket was recovered");
    assert.notEqual(back.id, id);
    assert.notEqual(bob.socket._pid, pid, "a new socket has a new pid");
    await bob.nothing();
    bob.emit("user:join", { userId: "bob" });
    const joined = await bob.next("user:joined");
    assert.deepEqual(joined, { userId: "bob", socketId: back.id, resumeToken: joined.resumeToken });
    // and can be called again
    alice.emit("call:initiate", { to: "bob", callType: "audio" });
    const incoming = await bob.next("call:incoming");
    assert.notEqual(incoming.callId, callId);
    assert.deepEqual(await alice.next("call:initiated"), { callId: incoming.callId, to: "bob" });
    for (const u of [alice, bob]) await u.nothing();
  },

  // Half-open: the server keeps bob's old connection (the proxy keeps it open and silent), bob's
  // client reconnects on a new one. Three blips in a row: each recovers the same socket with what
  // alice sent meanwhile, and the server closes the old session.
  async halfopen() {
    const alice = await new User("alice").join();
    const bob = await new User("bob", { viaProxy: true }).join();
    const id = bob.socket.id;
    const callId = await liveCall(alice, bob);
    for (let blip = 1; blip <= 3; blip++) {
      await bob.settledTransport();
      for (const u of [alice, bob]) await u.nothing();
      await control("hold");
      const cutAt = now();
      await cut("half-open");
      assert.equal((await bob.nextEntry("#disconnect")).event, "#disconnect");
      // to the server bob is still there: this goes down the old connection, into the void
      const candidate = CANDIDATE(52000 + blip);
      assert.deepEqual(await alice.ack("ice:candidate", { to: "bob", candidate }), { ok: true, callId });
      await control("release");
      const back = await recovered(bob, id);
      assert.deepEqual(await bob.next("ice:candidate"), { candidate, from: "alice", callId }, `blip ${blip}`);
      // the old session is closed by the server (not by a heartbeat: pings are far apart here)
      const server = await control(`sessions 2 ${blip}`);
      measured({ blip, cutToBobRecovered: Math.round(back.at - cutAt), server });
      // To the server bob never went away (his old connection looked alive until his socket moved
      // off it): nobody is told he is reconnecting or back, and the call goes on.
      for (const u of [alice, bob]) await u.nothing();
    }
    await stillLive(alice, bob, callId);
    for (const u of [alice, bob]) {
      await u.nothing();
      u.checkOffsets();
    }
  },

  // A clean leave ends the call at once, recovery on or not: bob's disconnect() (a Socket.IO
  // DISCONNECT), or his Engine.IO session closed by the client (a close packet or close frame).
  async leave() {
    const how = process.env.LEAVE;
    const alice = await new User("alice").join();
    const bob = await new User("bob", { viaProxy: true, reconnection: false }).join();
    const callId = await liveCall(alice, bob);
    await bob.settledTransport();
    for (const u of [alice, bob]) await u.nothing();
    const left = now();
    if (how === "disconnect") bob.socket.disconnect();
    else bob.socket.io.engine.close();
    const ended = await alice.nextEntry("call:ended");
    assert.deepEqual(ended.payload, { callId, by: "bob", reason: "disconnected" });
    measured({ leave: how, leftToEnded: Math.round(ended.at - left) });
    assert.ok(ended.at - left < 500, `call:ended ${ended.at - left} ms after bob left`);
    await alice.nothing(); // and no call:reconnecting before or after
    const refused = await alice.ack("call:initiate", { to: "bob", callType: "audio" });
    assert.equal(refused.code, "USER_OFFLINE", JSON.stringify(refused));
  },
};

// -- run -------------------------------------------------------------------------------------------

await play(
  scenarios,
  scenario,
  45000,
  async () => {
    // Leave as an app does, and wait until the server has let go of every socket (a lost
    // DISCONNECT would leave one detached for the recovery window).
    for (const u of everyone) u.close();
    await control("all-gone");
  },
  () => everyone.map((u) => `${u.name} ${u.show()}`).join("; "),
);
