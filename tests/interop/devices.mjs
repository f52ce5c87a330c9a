// Issue 13 with the real socket.io-client: several devices per user (ring all, first accept wins,
// reject everywhere, relays to the answering device only, device replacement) and glare merged by
// the server. Driven by tests/interop/test_devices_node.py.
//
//   node devices.mjs URL SCENARIO [MODE] [ROUNDS]
//
// Every client is one socket.io-client connection, the way an app on one device uses the library;
// "bob on d1" is a connection that joined as {userId: "bob", deviceId: "device-d1"}. MODE:
// "websocket" (default) or "polling". ROUNDS: how many times the racing scenarios race (200).
// Exit 0 when the scenario held (stdout: "ok" and a line "STATS {...}" for the races); 1, with the
// failure on stderr, when it did not.
//
// Races: two emits "in the same tick" are two emitWithAck calls made synchronously one after the
// other (in alternate order from round to round), so both packets are written before either answer
// can come back; which one the server reads first is up to it, and the scenario accepts either
// outcome but checks it is consistent. STATS counts the outcomes.

import assert from "node:assert/strict";
import { Connection, QUIET, play, sleep } from "./user.mjs";

const [url, scenario, mode = "websocket", roundsArg = "200"] = process.argv.slice(2);
const ROUNDS = Number(roundsArg);
const DEVICE = (d) => `device-${d}`; // deviceIds: never to be seen by any client (checked at the end)

const OFFER = { type: "offer", sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=setup:actpass\r\n" };
const ANSWER = { type: "answer", sdp: OFFER.sdp.replace("actpass", "active") };
const CANDIDATE = (port) => ({
  candidate: `candidate:842163049 1 udp 1677729535 203.0.113.7 ${port} typ srflx raddr 10.0.0.2 rport ${port} generation 0 ufrag Wxzq`,
  sdpMid: "0",
  sdpMLineIndex: 0,
  usernameFragment: "Wxzq",
});

// -- a client: one connection of a user (on a device), and what it received -------------------------

const everyone = [];

class Client extends Connection {
  // name: how failures call it ("bob/d2"); userId; device: "d1".. or undefined (no deviceId sent)
  constructor(name, userId, device) {
    super(name, url, mode);
    everyone.push(this);
    this.userId = userId;
    this.device = device;
    this.log = []; // everything received, for the deviceId check
  }

  push(event, payload) {
    this.log.push([event, payload]);
    super.push(event, payload);
  }

  // Nothing is waiting in the queue right now (no quiet period: for what ordering already settles).
  empty(when) {
    assert.deepEqual(this.queue, [], `${this.name} received more than expected ${when}`);
  }

  async refused(event, payload, code) {
    const answer = await this.ack(event, payload);
    assert.equal(answer.ok, false, `${this.name} ${event}: ${JSON.stringify(answer)}`);
    assert.equal(answer.code, code, `${this.name} ${event}: ${JSON.stringify(answer)}`);
    assert.equal(typeof answer.message, "string");
    return answer;
  }

  // Connect and user:join as an app does (no ack): user:joined is as without devices.
  async join() {
    await this.connected();
    const request = { userId: this.userId };
    if (this.device !== undefined) request.deviceId = DEVICE(this.device);
    this.emit("user:join", request);
    const { resumeToken, ...joined } = await this.next("user:joined");
    assert.deepEqual(joined, { userId: this.userId, socketId: this.socket.id }, this.name);
    return this;
  }
}

// Nothing more arrives at any of these (one shared quiet while).
async function nothing(...clients) {
  await sleep(QUIET);
  for (const c of clients) c.empty("after a quiet while");
}

// Make the requests in the same tick, alternately in order and in reverse order (so that either
// one is written first); the answers in the order given.
function together(round, ...requests) {
  const order = round % 2 === 0 ? requests.map((_, i) => i) : requests.map((_, i) => requests.length - 1 - i);
  const answers = [];
  for (const i of order) answers[i] = requests[i]();
  return Promise.all(answers);
}

async function joined(...clients) {
  for (const c of clients) await c.join(); // in order: the order is the devices' "last active"
  return clients;
}

function bobs(...devices) {
  return devices.map((d) => new Client(`bob/${d}`, "bob", d));
}

// alice calls bob, every device in `devices` rings with the same callId: the call id.
async function ringAll(alice, devices, callType = "video") {
  const initiated = await alice.ack("call:initiate", { to: "bob", callType });
  assert.equal(initiated.ok, true, JSON.stringify(initiated));
  const { callId } = initiated;
  assert.deepEqual(initiated, { ok: true, callId });
  assert.deepEqual(await alice.next("call:initiated"), { callId, to: "bob" });
  for (const d of devices) assert.deepEqual(await d.next("call:incoming"), { from: "alice", callType, callId }, d.name);
  return callId;
}

// alice hangs up: she and the answering device are told; nobody else.
async function hangUp(alice, answering, callId) {
  assert.deepEqual(await alice.ack("call:end", { callId }), { ok: true, callId });
  for (const c of [alice, answering]) {
    assert.deepEqual(await c.next("call:ended"), { callId, by: "alice", reason: "hangup" }, c.name);
  }
}

const elsewhere = (callId, reason) => ({ callId, by: "bob", reason });

// -- scenarios ------------------------------------------------------------------------------------

const scenarios = {
  // Ring all; d2 answers; the others are told; relays go to d2 only; late ones are refused.
  async ringall() {
    const [alice, carol] = await joined(new Client("alice", "alice"), new Client("carol", "carol"));
    const [d1, d2, d3] = await joined(...bobs("d1", "d2", "d3"));
    const callId = await ringAll(alice, [d1, d2, d3]);

    // while ringing: the caller's early offer and candidates reach every ringing device
    assert.deepEqual(await alice.ack("call:offer", { to: "bob", offer: OFFER }), { ok: true, callId });
    assert.deepEqual(await alice.ack("ice:candidate", { to: "bob", candidate: CANDIDATE(50000) }), { ok: true, callId });
    for (const d of [d1, d2, d3]) {
      assert.deepEqual(await d.next("call:offer"), { offer: OFFER, from: "alice", callType: "video", callId }, d.name);
      assert.deepEqual(await d.next("ice:candidate"), { candidate: CANDIDATE(50000), from: "alice", callId }, d.name);
    }

    // busy per user while ringing: a caller gets USER_BUSY, another device of bob ALREADY_IN_CALL
    await carol.refused("call:initiate", { to: "bob", callType: "audio" }, "USER_BUSY");
    await d3.refused("call:initiate", { to: "carol", callType: "audio" }, "ALREADY_IN_CALL");

    // d2 answers: first accept wins
    assert.deepEqual(await d2.ack("call:accept", { callId, from: "alice" }), { ok: true, callId });
    for (const c of [alice, d2]) assert.deepEqual(await c.next("call:accepted"), { callId, by: "bob" }, c.name);
    for (const d of [d1, d3]) {
      assert.deepEqual(await d.next("call:ended"), elsewhere(callId, "answered_elsewhere"), d.name);
    }

    // relays: alice's candidates reach d2 only, d2's answer and candidates reach alice
    assert.deepEqual(await alice.ack("ice:candidate", { to: "bob", candidate: CANDIDATE(50001) }), { ok: true, callId });
    assert.deepEqual(await d2.next("ice:candidate"), { candidate: CANDIDATE(50001), from: "alice", callId });
    assert.deepEqual(await d2.ack("call:answer", { to: "alice", answer: ANSWER }), { ok: true, callId });
    assert.deepEqual(await alice.next("call:answer"), { answer: ANSWER, from: "bob", callId });
    assert.deepEqual(await d2.ack("ice:candidate", { to: "alice", candidate: CANDIDATE(60000) }), { ok: true, callId });
    assert.deepEqual(await alice.next("ice:candidate"), { candidate: CANDIDATE(60000), from: "bob", callId });

    // another device of bob is no party: its relays are refused
    await d1.refused("ice:candidate", { to: "alice", candidate: CANDIDATE(1) }, "NOT_IN_CALL");
    await d1.refused("call:answer", { to: "alice", answer: ANSWER }, "NOT_IN_CALL");
    await d3.refused("call:offer", { to: "alice", offer: OFFER }, "NOT_IN_CALL");
    // late accept and reject: the ringing is over
    await d3.refused("call:accept", { callId, from: "alice" }, "CALL_NOT_FOUND");
    await d1.refused("call:reject", { callId, from: "alice" }, "CALL_NOT_FOUND");
    // nor may they end the call
    await d3.refused("call:end", { callId }, "CALL_NOT_FOUND");
    // busy per user while in the call
    await carol.refused("call:initiate", { to: "bob", callType: "audio" }, "USER_BUSY");
    await d1.refused("call:initiate", { to: "carol", callType: "audio" }, "ALREADY_IN_CALL");
    await nothing(alice, carol, d1, d2, d3);

    await hangUp(alice, d2, callId);
    await nothing(alice, carol, d1, d2, d3);
    // all free again: bob's d3 calls alice
    assert.equal((await d3.ack("call:initiate", { to: "alice", callType: "audio" })).ok, true);
    const incoming = await alice.next("call:incoming");
    assert.equal(incoming.from, "bob");
  },

  // d1 and d3 accept in the same tick, ROUNDS times: exactly one wins each time.
  async race() {
    const [alice] = await joined(new Client("alice", "alice"));
    const [d1, d2, d3] = await joined(...bobs("d1", "d2", "d3"));
    const wins = { d1: 0, d3: 0 };
    for (let round = 0; round < ROUNDS; round++) {
      const callId = await ringAll(alice, [d1, d2, d3]);
      const accept = { callId, from: "alice" };
      const answers = await together(round, () => d1.ack("call:accept", accept), () => d3.ack("call:accept", accept));
      const ok = answers.filter((a) => a.ok === true);
      assert.equal(ok.length, 1, `round ${round}: ${JSON.stringify(answers)}`);
      const [winner, loser] = answers[0].ok ? [d1, d3] : [d3, d1];
      const lost = answers[winner === d1 ? 1 : 0];
      assert.deepEqual(ok[0], { ok: true, callId });
      assert.equal(lost.ok, false);
      assert.equal(lost.code, "CALL_NOT_FOUND", `round ${round}: ${JSON.stringify(lost)}`);
      wins[winner.device]++;
      for (const c of [alice, winner]) {
        assert.deepEqual(await c.next("call:accepted"), { callId, by: "bob" }, `round ${round}: ${c.name}`);
      }
      for (const d of [loser, d2]) {
        assert.deepEqual(await d.next("call:ended"), elsewhere(callId, "answered_elsewhere"), `round ${round}: ${d.name}`);
      }
      await hangUp(alice, winner, callId);
      // per connection the server's events are in order: nothing else was sent to these before
      for (const c of [alice, winner]) c.empty(`in round ${round}`);
    }
    await nothing(alice, d1, d2, d3);
    console.log(`STATS ${JSON.stringify({ scenario, mode, rounds: ROUNDS, wins })}`);
  },

  // A reject from d1 ends the ringing everywhere; so do the caller's cancel.
  async reject() {
    const [alice] = await joined(new Client("alice", "alice"));
    const [d1, d2, d3] = await joined(...bobs("d1", "d2", "d3"));
    let callId = await ringAll(alice, [d1, d2, d3]);
    assert.deepEqual(await d1.ack("call:reject", { callId, from: "alice" }), { ok: true, callId });
    for (const c of [alice, d1]) assert.deepEqual(await c.next("call:rejected"), { callId, by: "bob" }, c.name);
    for (const d of [d2, d3]) {
      assert.deepEqual(await d.next("call:ended"), elsewhere(callId, "rejected_elsewhere"), d.name);
    }
    await d2.refused("call:accept", { callId, from: "alice" }, "CALL_NOT_FOUND");
    await d3.refused("call:reject", { callId, from: "alice" }, "CALL_NOT_FOUND");
    await nothing(alice, d1, d2, d3);

    // cancel: every ringing device hears it
    callId = await ringAll(alice, [d1, d2, d3]);
    assert.deepEqual(await alice.ack("call:end", { callId }), { ok: true, callId });
    for (const c of [alice, d1, d2, d3]) {
      assert.deepEqual(await c.next("call:ended"), { callId, by: "alice", reason: "cancelled" }, c.name);
    }
    await d2.refused("call:accept", { callId, from: "alice" }, "CALL_NOT_FOUND");
    await nothing(alice, d1, d2, d3);
  },

  // the server runs with a short --ring-timeout: every ringing device times out with the caller
  async timeout() {
    const [alice] = await joined(new Client("alice", "alice"));
    const [d1, d2, d3] = await joined(...bobs("d1", "d2", "d3"));
    const callId = await ringAll(alice, [d1, d2, d3]);
    for (const c of [alice, d1, d2, d3]) assert.deepEqual(await c.next("call:timeout"), { callId }, c.name);
    await d3.refused("call:accept", { callId, from: "alice" }, "CALL_NOT_FOUND");
    await nothing(alice, d1, d2, d3);
  },

  // Devices come and go: one joining while a call rings is rung; a same-deviceId rejoin replaces
  // that device only; a device past --max-devices (3) replaces the least recently active one not in
  // the call; the device in the call rejoining ends the call (reason replaced, as today).
  async joining() {
    const [alice] = await joined(new Client("alice", "alice"));
    const [d1, d2] = await joined(...bobs("d1", "d2"));

    // a deviceId out of the alphabet or too long is refused, and nobody is replaced
    const stranger = new Client("stranger", "bob");
    await stranger.connected();
    for (const deviceId of ["x".repeat(65), "", "not valid!"]) {
      await stranger.refused("user:join", { userId: "bob", deviceId }, "INVALID_PAYLOAD");
    }
    stranger.close();

    const callId = await ringAll(alice, [d1, d2]);
    const [d3] = bobs("d3");
    await d3.join();
    assert.deepEqual(await d3.next("call:incoming"), { from: "alice", callType: "video", callId });
    // the late device is a ringing device like the others: early candidates reach it too
    assert.deepEqual(await alice.ack("ice:candidate", { to: "bob", candidate: CANDIDATE(50000) }), { ok: true, callId });
    for (const d of [d1, d2, d3]) {
      assert.deepEqual(await d.next("ice:candidate"), { candidate: CANDIDATE(50000), from: "alice", callId }, d.name);
    }

    // d1 reloads: the old connection is replaced and cut, the new one rings; the call rings on
    const [d1b] = bobs("d1");
    await d1b.join();
    await d1.error("SESSION_REPLACED");
    assert.equal(await d1.next("disconnect"), "io server disconnect");
    assert.equal(d1.socket.connected, false);
    assert.deepEqual(await d1b.next("call:incoming"), { from: "alice", callType: "video", callId });
    await nothing(alice, d2, d3, d1b);
    d1.queue.length = 0; // (whatever the cut connection got after its error is no matter)

    // d1 (reloaded) answers
    assert.deepEqual(await d1b.ack("call:accept", { callId, from: "alice" }), { ok: true, callId });
    for (const c of [alice, d1b]) assert.deepEqual(await c.next("call:accepted"), { callId, by: "bob" }, c.name);
    for (const d of [d2, d3]) {
      assert.deepEqual(await d.next("call:ended"), elsewhere(callId, "answered_elsewhere"), d.name);
    }

    // d3 reloads during the call: only d3 is replaced; the call goes on, and d3 is not rung
    const [d3b] = bobs("d3");
    await d3b.join();
    await d3.error("SESSION_REPLACED");
    assert.equal(await d3.next("disconnect"), "io server disconnect");
    await nothing(alice, d1b, d2, d3b);

    // a fourth device: d2 (joined before d3b, and not in the call) is the least recently active
    const [d4] = bobs("d4");
    await d4.join();
    await d2.error("SESSION_REPLACED");
    assert.equal(await d2.next("disconnect"), "io server disconnect");
    assert.deepEqual(await alice.ack("ice:candidate", { to: "bob", candidate: CANDIDATE(50001) }), { ok: true, callId });
    assert.deepEqual(await d1b.next("ice:candidate"), { candidate: CANDIDATE(50001), from: "alice", callId });
    await nothing(alice, d1b, d3b, d4);

    // the device in the call reloads: the call ends for alice as a take-over does today
    const [d1c] = bobs("d1");
    await d1c.join();
    await d1b.error("SESSION_REPLACED");
    assert.equal(await d1b.next("disconnect"), "io server disconnect");
    assert.deepEqual(await alice.next("call:ended"), { callId, by: "bob", reason: "replaced" });
    await nothing(alice, d1c, d3b, d4);

    // bob is free on all three devices
    const again = await ringAll(alice, [d1c, d3b, d4], "audio");
    assert.notEqual(again, callId);
  },

  // alice and bob call each other in the same tick, ROUNDS times: one call every time.
  async glare() {
    const [alice, bob] = await joined(new Client("alice", "alice"), new Client("bob", "bob"));
    const kept = { alice: 0, bob: 0 };
    for (let round = 0; round < ROUNDS; round++) {
      const at = `round ${round}`;
      const [a, b] = await together(
        round,
        () => alice.ack("call:initiate", { to: "bob", callType: "video" }),
        () => bob.ack("call:initiate", { to: "alice", callType: "video" }),
      );
      assert.equal(a.ok && b.ok, true, `${at}: ${JSON.stringify([a, b])}`);
      const { callId } = a;
      assert.equal(b.callId, callId, `${at}: two calls: ${JSON.stringify([a, b])}`);
      const merged = [a, b].filter((x) => x.merged === true);
      assert.equal(merged.length, 1, `${at}: ${JSON.stringify([a, b])}`);
      // the kept call's caller got a plain ack, the other one's initiate was its accept
      const [caller, callee] = a.merged ? [bob, alice] : [alice, bob];
      assert.deepEqual(a.merged ? b : a, { ok: true, callId }, at);
      assert.deepEqual(a.merged ? a : b, { ok: true, callId, merged: true }, at);
      kept[caller.userId]++;
      assert.deepEqual(await caller.next("call:initiated"), { callId, to: callee.userId }, at);
      assert.deepEqual(await callee.next("call:incoming"), { from: caller.userId, callType: "video", callId }, at);
      for (const c of [alice, bob]) {
        assert.deepEqual(await c.next("call:accepted"), { callId, by: callee.userId, merged: true }, `${at}: ${c.name}`);
      }
      // the caller of the kept call makes the offer
      assert.deepEqual(await caller.ack("call:offer", { to: callee.userId, offer: OFFER }), { ok: true, callId });
      assert.deepEqual(await callee.next("call:offer"), { offer: OFFER, from: caller.userId, callType: "video", callId });
      assert.deepEqual(await caller.ack("call:end", { callId }), { ok: true, callId });
      for (const c of [alice, bob]) {
        assert.deepEqual(await c.next("call:ended"), { callId, by: caller.userId, reason: "hangup" }, `${at}: ${c.name}`);
        // in order per connection: had a second call (or anything else) been told, it is here by now
        c.empty(`in ${at}`);
      }
    }
    await nothing(alice, bob);
    console.log(`STATS ${JSON.stringify({ scenario, mode, rounds: ROUNDS, kept })}`);
  },

  // Glare with devices (--max-devices 3): bob's d1 and alice call each other in the same tick
  // while bob's d2 is also online. The device that initiated answers the merged call; d2, if it
  // was rung by alice's call, hears answered_elsewhere.
  async "glare-devices"() {
    const [alice] = await joined(new Client("alice", "alice"));
    const [d1, d2] = await joined(...bobs("d1", "d2"));
    const kept = { alice: 0, bob: 0 };
    for (let round = 0; round < ROUNDS; round++) {
      const at = `round ${round}`;
      const [a, b] = await together(
        round,
        () => alice.ack("call:initiate", { to: "bob", callType: "audio" }),
        () => d1.ack("call:initiate", { to: "alice", callType: "audio" }),
      );
      assert.equal(a.ok && b.ok, true, `${at}: ${JSON.stringify([a, b])}`);
      const { callId } = a;
      assert.equal(b.callId, callId, `${at}: two calls: ${JSON.stringify([a, b])}`);
      let caller;
      if (b.merged) {
        // alice's call was kept: it rang d1 and d2; d1's initiate answered it
        assert.deepEqual([a, b], [{ ok: true, callId }, { ok: true, callId, merged: true }], at);
        caller = alice;
        assert.deepEqual(await alice.next("call:initiated"), { callId, to: "bob" }, at);
        for (const d of [d1, d2]) assert.deepEqual(await d.next("call:incoming"), { from: "alice", callType: "audio", callId }, at);
        for (const c of [alice, d1]) {
          assert.deepEqual(await c.next("call:accepted"), { callId, by: "bob", merged: true }, `${at}: ${c.name}`);
        }
        assert.deepEqual(await d2.next("call:ended"), elsewhere(callId, "answered_elsewhere"), at);
      } else {
        // d1's call was kept; alice's initiate answered it; d2 never rang
        assert.deepEqual([a, b], [{ ok: true, callId, merged: true }, { ok: true, callId }], at);
        caller = d1;
        assert.deepEqual(await d1.next("call:initiated"), { callId, to: "alice" }, at);
        assert.deepEqual(await alice.next("call:incoming"), { from: "bob", callType: "audio", callId }, at);
        for (const c of [alice, d1]) {
          assert.deepEqual(await c.next("call:accepted"), { callId, by: "alice", merged: true }, `${at}: ${c.name}`);
        }
      }
      kept[caller.userId]++;
      // d2 is no party either way
      await d2.refused("ice:candidate", { to: "alice", candidate: null }, "NOT_IN_CALL");
      assert.deepEqual(await alice.ack("ice:candidate", { to: "bob", candidate: null }), { ok: true, callId });
      assert.deepEqual(await d1.next("ice:candidate"), { candidate: null, from: "alice", callId }, at);
      assert.deepEqual(await caller.ack("call:end", { callId }), { ok: true, callId });
      for (const c of [alice, d1]) {
        assert.deepEqual(await c.next("call:ended"), { callId, by: caller.userId, reason: "hangup" }, `${at}: ${c.name}`);
        c.empty(`in ${at}`);
      }
      d2.empty(`in ${at}`);
    }
    await nothing(alice, d1, d2);
    console.log(`STATS ${JSON.stringify({ scenario, mode, rounds: ROUNDS, kept })}`);
  },
};

// -- run -------------------------------------------------------------------------------------------

await play(scenarios, scenario, 60000, () => {
  // deviceId never leaves the server
  for (const c of everyone) {
    assert.ok(!JSON.stringify(c.log).includes(DEVICE("")), `${c.name} was told a deviceId: ${JSON.stringify(c.log)}`);
  }
  for (const c of everyone) c.close();
});
