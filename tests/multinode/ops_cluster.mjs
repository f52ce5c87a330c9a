// Issue 14, operations: what socket.io-client users see when the shared Redis goes away for a while
// and when a node is drained for a rolling deploy. Driven by tests/multinode/test_outage.py and
// tests/multinode/test_handover.py.
//
//   node ops_cluster.mjs SCENARIO JSON
//
// JSON: {"nodes": {"n1": "http://127.0.0.1:P1", ...}, "proxy": "http://127.0.0.1:P"} (proxy: the
// round-robin proxy in front of the nodes, for "handover"). The script asks the test for what only
// it can do (freeze Redis, SIGTERM a node, wait for its exit) with a line "@@ COMMAND" on stdout and
// reads the answer, "ok [JSON]" or "fail WHY", on stdin. Lines "TIME {...}" are measurements. Exit 0
// when the scenario held; 1, with the failure and every user's queue on stderr, when it did not.
//
// Every client is an app as the protocol asks one to be: WebSocket only, reconnecting by itself, and
// on a `connect` that was not a recovery after a first join, `user:join {userId, resumeToken}` with
// the token of its latest `user:joined`.

import assert from "node:assert/strict";
// socket.io-client is installed in tests/interop (npm ci there), which user.mjs loads it from; this
// folder has no node_modules.
import { Recorder, WAIT, controlChannel, measurer, now, play, sleep } from "../interop/user.mjs";

const [scenario, config] = process.argv.slice(2);
const { nodes, proxy } = JSON.parse(config);
const RETRY = 100; // ms: reconnection delay (no randomization), so that a hand-over is short
const LIMIT = 60000; // ms: the whole scenario

const control = controlChannel();
const measured = measurer({ scenario });

// -- what an operator sees: HTTP endpoints ----------------------------------------------------------

async function get(url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    return { status: res.status, body: await res.text() };
  } catch (err) {
    return { status: 0, body: String(err) };
  }
}

// Poll `url` until its status is `status` (within `ms`): the answer.
async function reaches(url, status, ms = WAIT) {
  const deadline = now() + ms;
  let last;
  for (;;) {
    last = await get(url);
    if (last.status === status) return last;
    if (now() > deadline) throw new Error(`${url}: not ${status} within ${ms} ms; last ${JSON.stringify(last)}`);
    await sleep(20);
  }
}

// The value of a metric without labels (Prometheus text), or undefined.
async function metric(base, name) {
  const { status, body } = await get(`${base}/metrics`);
  assert.equal(status, 200, `${base}/metrics: ${status} ${body}`);
  const line = body.split("\n").find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
}

async function metricReaches(base, name, value, ms = WAIT) {
  const deadline = now() + ms;
  for (;;) {
    const got = await metric(base, name);
    if (got === value) return;
    if (now() > deadline) throw new Error(`${base}: ${name} is ${got}, not ${value}, after ${ms} ms`);
    await sleep(50);
  }
}

// -- payloads -------------------------------------------------------------------------------------

const sdp = (ufrag, setup) =>
  [
    "v=0",
    "o=- 4611731400430051336 3 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "c=IN IP4 0.0.0.0",
    `a=ice-ufrag:${ufrag}`,
    "a=ice-pwd:kB6a+d1MNJu5fJ7tiaC6YmTD",
    "a=fingerprint:sha-256 4C:3E:9B:7A:21:5D:0E:58:AA:12:B1:63:9F:2A:77:0C:55:DE:31:8B:6F:40:92:1D:E8:03:BC:6A:5F:19:44:E2",
    `a=setup:${setup}`,
    "a=mid:0",
    "a=rtpmap:96 VP8/90000",
    "",
  ].join("\r\n");
const OFFER = { type: "offer", sdp: sdp("Wxzq", "actpass") };
const ANSWER = { type: "answer", sdp: sdp("Pq7r", "active") };
const CANDIDATE = (port) => ({
  candidate: `candidate:842163049 1 udp 1677729535 203.0.113.7 ${port} typ srflx raddr 10.0.0.2 rport ${port} generation 0`,
  sdpMid: "0",
  sdpMLineIndex: 0,
});

// -- a user: one socket.io-client app and, in order, what it received -----------------------------

const everyone = [];

class User extends Recorder {
  constructor(name, url) {
    super(name, url, {
      transports: ["websocket"],
      reconnectionDelay: RETRY,
      reconnectionDelayMax: RETRY,
      randomizationFactor: 0,
    });
    everyone.push(this);
    this.token = undefined; // the resumeToken of the latest user:joined
    this.joined = false;
    // The app's part of coming back: a new socket resumes the user with its token.
    this.socket.on("connect", () => {
      if (this.joined && !this.socket.recovered) this.emit("user:join", { userId: this.name, resumeToken: this.token });
    });
  }

  received(event, args) {
    const [payload] = args;
    if (event === "user:joined" && payload && payload.resumeToken) this.token = payload.resumeToken;
    super.received(event, args);
  }

  // Nothing arrived so far (no waiting): for checks that follow an event which came after anything
  // unwanted would have.
  none(what) {
    assert.equal(this.show(), "[]", `${this.name}: ${what}`);
  }

  // Connect and user:join (with an ack, as well as user:joined); the node it landed on.
  async join() {
    await this.connected();
    const connect = await this.next("#connect");
    assert.equal(connect.recovered, false);
    const ack = await this.ack("user:join", { userId: this.name });
    assert.deepEqual(ack, { ok: true, userId: this.name, socketId: this.socket.id }, `${this.name}'s join`);
    const joined = await this.next("user:joined");
    assert.deepEqual(joined, { userId: this.name, socketId: this.socket.id, resumeToken: joined.resumeToken });
    assert.equal(typeof joined.resumeToken, "string", `${this.name}: no resumeToken (is the grace on?)`);
    this.joined = true;
    return this;
  }

  // The node this user's socket is on: socket ids are "<node-id>.<random>".
  node() {
    const id = this.socket.id;
    assert.match(id, /^[A-Za-z0-9_-]+\./, `${this.name}: socket id ${id} names no node`);
    return id.slice(0, id.indexOf("."));
  }
}

// `res` is a refusal with `code`.
function refused(res, code, what) {
  assert.equal(res.ok, false, `${what}: ${JSON.stringify(res)}`);
  assert.equal(res.code, code, `${what}: ${JSON.stringify(res)}`);
  assert.equal(typeof res.message, "string");
}

// caller calls callee and callee accepts, the offer and the answer pass: a live call; its id.
async function liveCall(caller, callee, callType = "video") {
  const ack = await caller.ack("call:initiate", { to: callee.name, callType });
  assert.equal(ack.ok, true, `${caller.name} calls ${callee.name}: ${JSON.stringify(ack)}`);
  const { callId } = ack;
  assert.deepEqual(ack, { ok: true, callId });
  assert.deepEqual(await callee.next("call:incoming"), { from: caller.name, callType, callId });
  assert.deepEqual(await caller.next("call:initiated"), { callId, to: callee.name });
  assert.deepEqual(await callee.ack("call:accept", { callId, from: caller.name }), { ok: true, callId });
  for (const u of [caller, callee]) assert.deepEqual(await u.next("call:accepted"), { callId, by: callee.name });
  assert.deepEqual(await caller.ack("call:offer", { to: callee.name, offer: OFFER }), { ok: true, callId });
  const offer = await callee.next("call:offer");
  assert.deepEqual(offer, { offer: OFFER, from: caller.name, callType, callId });
  assert.equal(JSON.stringify(offer.offer), JSON.stringify(OFFER), "the offer, byte for byte");
  assert.deepEqual(await callee.ack("call:answer", { to: caller.name, answer: ANSWER }), { ok: true, callId });
  assert.deepEqual(await caller.next("call:answer"), { answer: ANSWER, from: callee.name, callId });
  return callId;
}

// One relay each way in a live call: acked, and received as sent.
async function relaysFlow(a, b, callId, port) {
  for (const [from, to, p] of [
    [a, b, port],
    [b, a, port + 1],
  ]) {
    const candidate = CANDIDATE(p);
    assert.deepEqual(await from.ack("ice:candidate", { to: to.name, candidate }), { ok: true, callId });
    assert.deepEqual(await to.next("ice:candidate"), { candidate, from: from.name, callId });
  }
}

async function hangUp(a, b, callId) {
  assert.deepEqual(await a.ack("call:end", { callId }), { ok: true, callId });
  for (const u of [a, b]) assert.deepEqual(await u.next("call:ended"), { callId, by: a.name, reason: "hangup" });
}

// The `ice:candidate`s `user` received, in order, up to and including `marker` (a candidate it is
// sent last), taken out of the queue (any other event stays): [payload, when it came].
async function candidatesUpTo(user, marker, ms = WAIT) {
  const isMarker = (e) => e.event === "ice:candidate" && JSON.stringify(e.payload.candidate) === JSON.stringify(marker);
  await user.until(() => (user.queue.some(isMarker) ? true : undefined), `the candidate ${marker.candidate}`, ms);
  const got = user.queue.filter((e) => e.event === "ice:candidate").map((e) => [e.payload, e.at]);
  user.queue = user.queue.filter((e) => e.event !== "ice:candidate");
  return got;
}

// -- scenarios ------------------------------------------------------------------------------------

const scenarios = {
  // Redis frozen (SIGSTOP) for at least 3 s in the middle of a live call across two nodes.
  async outage() {
    const BURST = 20;
    const [n1, n2] = [nodes.n1, nodes.n2];
    const alice = await new User("alice", n1).join();
    const bob = await new User("bob", n2).join();
    const carol = await new User("carol", n1).join();
    const dave = await new User("dave", n2).join();
    assert.deepEqual([alice, bob, carol, dave].map((u) => u.node()), ["n1", "n2", "n1", "n2"]);
    for (const base of [n1, n2]) {
      await reaches(`${base}/readyz`, 200);
      assert.equal(await metric(base, "callbox_redis_up"), 1, `${base}: callbox_redis_up`);
    }
    const callId = await liveCall(alice, bob);

    // A burst each way, every relay acked {ok: true}; Redis freezes the moment the last ack is in,
    // when some may still wait in a node's stream.
    const toBob = Array.from({ length: BURST }, (_, i) => CANDIDATE(40000 + i));
    const toAlice = Array.from({ length: BURST }, (_, i) => CANDIDATE(41000 + i));
    const acks = await Promise.all([
      ...toBob.map((candidate) => alice.ack("ice:candidate", { to: "bob", candidate })),
      ...toAlice.map((candidate) => bob.ack("ice:candidate", { to: "alice", candidate })),
    ]);
    for (const ack of acks) assert.deepEqual(ack, { ok: true, callId });
    await control("freeze");
    const frozen = now();

    // While Redis answers nothing: both nodes say they are not ready, and why.
    for (const base of [n1, n2]) {
      const notReady = await reaches(`${base}/readyz`, 503, 3000);
      assert.match(notReady.body, /redis/i, `${base}/readyz: ${notReady.body}`);
      assert.equal((await get(`${base}/healthz`)).status, 200, `${base}/healthz while Redis is away`);
      assert.equal(await metric(base, "callbox_redis_up"), 0, `${base}: callbox_redis_up`);
    }
    const noticed = now();
    // New requests are refused UNAVAILABLE, and quickly (--redis-timeout 0.5).
    const asked = now();
    refused(await carol.ack("call:initiate", { to: "dave", callType: "audio" }), "UNAVAILABLE", "carol calls dave");
    const refusedIn = now() - asked;
    refused(await alice.ack("ice:candidate", { to: "bob", candidate: CANDIDATE(49999) }), "UNAVAILABLE", "a relay");
    const erin = new User("erin", n2);
    await erin.connected();
    assert.equal((await erin.next("#connect")).recovered, false);
    refused(await erin.ack("user:join", { userId: "erin" }), "UNAVAILABLE", "erin joins");
    // Connections stay open: nobody was disconnected, and the refused call rang nowhere.
    for (const u of everyone) assert.ok(!u.queue.some((e) => e.event === "#disconnect"), `${u.name}: ${u.show()}`);
    dave.none("dave was rung while Redis was away");
    carol.none("carol got more than her refusal");
    const { seconds } = await control("thaw"); // the test keeps it frozen 3 s at least
    const thawed = now();

    // Back without a restart.
    for (const base of [n1, n2]) {
      await reaches(`${base}/readyz`, 200, 5000);
      await metricReaches(base, "callbox_redis_up", 1);
    }
    const ready = now();
    // Every relay acked before the outage arrived, once, in order, and the refused one did not: the
    // next relay of each sender comes after all of them (one sender's order is kept).
    const markBob = CANDIDATE(42000);
    const markAlice = CANDIDATE(42001);
    assert.deepEqual(await alice.ack("ice:candidate", { to: "bob", candidate: markBob }), { ok: true, callId });
    assert.deepEqual(await bob.ack("ice:candidate", { to: "alice", candidate: markAlice }), { ok: true, callId });
    const bobGot = await candidatesUpTo(bob, markBob);
    const aliceGot = await candidatesUpTo(alice, markAlice);
    const phase = (at) => (at < frozen ? "before" : at < thawed ? "frozen" : "after");
    for (const [who, got, sent, from] of [
      ["bob", bobGot, [...toBob, markBob], "alice"],
      ["alice", aliceGot, [...toAlice, markAlice], "bob"],
    ]) {
      // the ports (and whether each came before the freeze, while frozen or after the thaw), for
      // a short message when they differ
      const port = (c) => Number(c.candidate.split(" ")[5]);
      assert.deepEqual(
        got.map(([g]) => port(g.candidate)),
        sent.map(port),
        `${who} received these candidates (by port), not each of those sent once in order: ` +
          got.map(([g, at]) => `${port(g.candidate)}:${phase(at)}`).join(" "),
      );
      assert.deepEqual(got.map(([g]) => g), sent.map((candidate) => ({ candidate, from, callId })));
    }
    await relaysFlow(alice, bob, callId, 42100);

    // New work: erin joins now, and carol's call to dave (refused during the outage) rings now.
    const joined = await erin.ack("user:join", { userId: "erin" });
    assert.deepEqual(joined, { ok: true, userId: "erin", socketId: erin.socket.id });
    assert.equal((await erin.next("user:joined")).userId, "erin");
    erin.joined = true;
    const second = await liveCall(carol, dave, "audio");
    assert.notEqual(second, callId);
    await relaysFlow(carol, dave, second, 42200);
    // and calls erin, across nodes too, while both calls go on
    await hangUp(carol, dave, second);
    const third = await liveCall(erin, carol, "audio");
    await hangUp(erin, carol, third);

    // Nobody saw the outage: no call:reconnecting, no call:ended, no disconnect.
    for (const u of everyone) await u.nothing();
    await hangUp(alice, bob, callId);
    for (const u of everyone) await u.nothing();
    measured({
      frozenSeconds: seconds,
      freezeToBothNotReady: Math.round(noticed - frozen),
      refusalTook: Math.round(refusedIn),
      thawToBothReady: Math.round(ready - thawed),
    });
  },

  // A rolling deploy: SIGTERM on the node one party is on, both connected through the proxy.
  async handover() {
    const alice = await new User("alice", proxy).join();
    const bob = await new User("bob", proxy).join();
    const [aliceNode, bobNode] = [alice.node(), bob.node()];
    assert.notEqual(aliceNode, bobNode, "the proxy put alice and bob on the same node");
    const callId = await liveCall(alice, bob);
    await relaysFlow(alice, bob, callId, 43000);
    for (const u of [alice, bob]) await u.nothing();
    const oldToken = bob.token;

    const { seconds: shutdownTimeout } = await control(`sigterm ${bobNode}`);
    const term = now();
    console.log(`SIGTERM to ${bobNode} at ${Math.round(term)} ms`);
    // bob's connection closes without a Socket.IO DISCONNECT: his client reconnects by itself.
    const gone = await bob.nextEntry("#disconnect");
    assert.equal(gone.payload, "transport close");
    const away = await alice.nextEntry("call:reconnecting");
    assert.deepEqual(away.payload, { callId, userId: "bob" });
    // alice goes on while bob is away: this waits for him
    const meanwhile = CANDIDATE(43100);
    assert.deepEqual(await alice.ack("ice:candidate", { to: "bob", candidate: meanwhile }), { ok: true, callId });

    const back = await bob.nextEntry("#connect");
    assert.equal(back.payload.id, bob.socket.id);
    if (!back.payload.recovered) {
      // a new socket, on the node that is left (a recovered one keeps its id, naming the old node)
      assert.equal(bob.node(), aliceNode, `bob came back on ${bob.node()}, not on the node left`);
      // it sent user:join {userId, resumeToken} on connect (the User class does): resumed
      const joined = await bob.next("user:joined");
      assert.deepEqual(joined, {
        userId: "bob",
        socketId: bob.socket.id,
        resumeToken: joined.resumeToken,
        resumed: true,
        call: { callId, peer: "alice", role: "callee", state: "connected", callType: "video" },
      });
      assert.notEqual(joined.resumeToken, oldToken, "a resume gives a new token");
    }
    assert.deepEqual(await bob.next("ice:candidate"), { candidate: meanwhile, from: "alice", callId });
    const bobBack = await bob.nextEntry("call:reconnected");
    const aliceBack = await alice.nextEntry("call:reconnected");
    for (const e of [bobBack, aliceBack]) assert.deepEqual(e.payload, { callId, userId: "bob" });
    assert.ok(away.at < aliceBack.at);
    await relaysFlow(alice, bob, callId, 43200);
    for (const u of [alice, bob]) await u.nothing(); // told once that bob is back

    // The drained node exits 0 within --shutdown-timeout.
    const exit = await control(`exited ${bobNode}`);
    assert.equal(exit.code, 0, `${bobNode} exited ${exit.code}`);
    assert.ok(exit.seconds <= shutdownTimeout, `${bobNode} took ${exit.seconds} s (> --shutdown-timeout ${shutdownTimeout})`);
    // Once the node it left is gone from the cluster (claimed after --node-timeout: nobody of it is
    // away any more), the call goes on as before.
    await metricReaches(nodes[aliceNode], "callbox_cluster_nodes", 1, 8000);
    await relaysFlow(alice, bob, callId, 43300);
    for (const u of [alice, bob]) await u.nothing();
    await hangUp(alice, bob, callId);
    for (const u of [alice, bob]) await u.nothing();
    measured({
      recovered: back.payload.recovered,
      termToBobDisconnected: Math.round(gone.at - term),
      termToAliceReconnecting: Math.round(away.at - term),
      termToBobConnected: Math.round(back.at - term),
      termToAliceReconnected: Math.round(aliceBack.at - term),
      nodeExitSeconds: exit.seconds,
    });
  },
};

// -- run -------------------------------------------------------------------------------------------

await play(
  scenarios,
  scenario,
  LIMIT,
  () => {
    for (const u of everyone) u.close();
  },
  () => everyone.map((u) => `${u.name} ${u.show()}`).join("; "),
);
