// Scenarios for tests/operations/test_operations_signalling.py against a real callbox process.
//   node ops_client.mjs URL auth TOKEN_JSON_LIST   -> one JSON line per token: what connect/join gave
//   node ops_client.mjs URL calls                  -> a scripted set of calls, then {"done": true}
//   node ops_client.mjs URL shutdown               -> prints "incall", then what each party saw
import { io } from "socket.io-client";

const [url, mode, arg] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const client = (opts = {}) => io(url, { transports: ["websocket"], reconnection: false, forceNew: true, ...opts });
const connected = (s) => new Promise((res, rej) => { s.once("connect", res); s.once("connect_error", rej); });
const once = (s, ev) => new Promise((res) => s.once(ev, res));
setTimeout(() => { console.error("scenario timed out"); process.exit(3); }, 20000);

async function user(id) {
  const s = client();
  await connected(s);
  const joined = once(s, "user:joined");
  s.emit("user:join", { userId: id });
  await joined;
  return s;
}

if (mode === "auth") {
  for (const { token, userId } of JSON.parse(arg)) {
    const s = client(token === null ? {} : { auth: { token } });
    const seen = {};
    try {
      await connected(s);
      seen.connected = true;
      seen.join = await s.timeout(3000).emitWithAck("user:join", { userId });
    } catch (err) {
      seen.connected = false;
      seen.error = err.message;
    }
    console.log(JSON.stringify(seen));
    s.close();
  }
  process.exit(0);
}

if (mode === "calls") {
  const [a, b, c] = [await user("alice"), await user("bob"), await user("carol")];
  // 1. answered, with relays, then hung up
  let incoming = once(b, "call:incoming");
  const { callId } = await a.emitWithAck("call:initiate", { to: "bob", callType: "video" });
  await incoming;
  let ended = once(b, "call:ended");
  await b.emitWithAck("call:accept", { callId, from: "alice" });
  await a.emitWithAck("call:offer", { to: "bob", offer: { type: "offer", sdp: "v=0 SECRET-SDP-BODY" } });
  await b.emitWithAck("call:answer", { to: "alice", answer: { type: "answer", sdp: "v=0" } });
  for (let i = 0; i < 3; i++) await a.emitWithAck("ice:candidate", { to: "bob", candidate: { candidate: "candidate:SECRET-CANDIDATE" } });
  await sleep(50);
  await a.emitWithAck("call:end", { callId });
  await ended;
  // 2. rejected
  incoming = once(b, "call:incoming");
  const second = await a.emitWithAck("call:initiate", { to: "bob", callType: "audio" });
  await incoming;
  await b.emitWithAck("call:reject", { callId: second.callId, from: "alice" });
  // 3. offline callee
  const off = await a.emitWithAck("call:initiate", { to: "nobody", callType: "audio" });
  // 4. busy: alice calls bob (ringing), carol calls bob -> busy; alice cancels
  incoming = once(b, "call:incoming");
  const third = await a.emitWithAck("call:initiate", { to: "bob", callType: "audio" });
  await incoming;
  const busy = await c.emitWithAck("call:initiate", { to: "bob", callType: "audio" });
  await a.emitWithAck("call:end", { callId: third.callId });
  // 5. an unknown event and a malformed join (errors by code)
  await c.emitWithAck("no:such-event", {});
  await sleep(100);
  console.log(JSON.stringify({ done: true, offline: off.code, busy: busy.code }));
  process.exit(0);
}

if (mode === "shutdown") {
  const [a, b] = [await user("alice"), await user("bob")];
  const seen = { alice: [], bob: [] };
  for (const [name, s] of [["alice", a], ["bob", b]]) {
    s.on("call:ended", (e) => seen[name].push(["call:ended", e.reason, e.by ?? null]));
    s.on("disconnect", (reason) => {
      seen[name].push(["disconnect", reason]);
      if (seen.alice.length === 2 && seen.bob.length === 2) { console.log(JSON.stringify(seen)); process.exit(0); }
    });
  }
  const incoming = once(b, "call:incoming");
  const { callId } = await a.emitWithAck("call:initiate", { to: "bob", callType: "video" });
  await incoming;
  await b.emitWithAck("call:accept", { callId, from: "alice" });
  console.log("incall");
}
