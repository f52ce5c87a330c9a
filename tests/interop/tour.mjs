// examples/library/tour.py through socket.io-client, one feature after another. It prints "OK"
// once everything held. Usage: node tour.mjs <base url>
import { io } from "socket.io-client";
import assert from "node:assert/strict";

const base = process.argv[2];
setTimeout(() => { console.error("tour.mjs: timed out"); process.exit(1); }, 20_000).unref();

function open(path = "", options = {}) {
  const socket = io(base + path, {
    transports: ["websocket"], reconnection: false, forceNew: true,
    auth: { token: "secret", user: options.user ?? "ann" },
    query: { tenant: "acme", ...(options.query ?? {}) },
    extraHeaders: { "user-agent": "tour/1.0" },
    ...options.io,
  });
  return new Promise((resolve, reject) => {
    socket.on("connect", () => resolve(socket));
    socket.on("connect_error", (err) => { socket.close(); reject(err); });
  });
}
const ask = (socket, ...args) => socket.timeout(3000).emitWithAck(...args);

// Request checks and middleware.
await assert.rejects(open("", { query: { app: "banned" } }));
await assert.rejects(open("", { io: { auth: {} } }), (err) => {
  assert.equal(err.message, "unauthorized");
  assert.deepEqual(err.data, { hint: "send auth {token}" });
  return true;
});

// The handshake.
const ann = await open();
const me = await ask(ann, "whoami");
assert.deepEqual(me, { user: "ann", tenant: "acme", agent: "tour/1.0", address: "127.0.0.1", secure: false });

// Rooms, a broadcast to the sender's rooms but "quiet", and a poll with acks.
const bob = await open("", { user: "bob" });
const cid = await open("", { user: "cid" });
for (const s of [ann, bob, cid]) await ask(s, "join", "team");
await ask(cid, "join", "quiet");
const heard = new Promise((resolve) => bob.once("shout", (...args) => resolve(args)));
let cidHeard = false;
cid.on("shout", () => { cidHeard = true; });
assert.equal(await ask(ann, "shout", "hi"), 1);
assert.deepEqual(await heard, ["ann", "hi"]);
bob.on("question", (q, answer) => answer(`bob: ${q}`));
cid.on("question", (q, answer) => answer(`cid: ${q}`));
ann.on("question", () => {});  // never answers: left out after the timeout
const answers = await ask(ann, "poll", "team", "lunch?");
assert.deepEqual(Object.values(answers).sort(), ["bob: lunch?", "cid: lunch?"]);
assert.equal(Object.keys(answers).length, 2);
assert.ok(!cidHeard);

// A deferred ack, and the outgoing hook's count.
assert.equal(await ask(ann, "slow", 21), 42);
assert.ok((await ask(bob, "sent")) >= 1);

// Class-based handlers on /chat; a dynamic namespace per tenant.
const chatA = await open("/chat");
const chatB = await open("/chat", { user: "bob" });
const said = new Promise((resolve) => chatB.once("said", resolve));
assert.equal(await ask(chatA, "say", "hello"), "ok");
assert.equal(await said, "hello");
const acme = await open("/tenant-acme");
assert.equal(await ask(acme, "where"), "/tenant-acme");
await assert.rejects(open("/elsewhere"), /Invalid namespace/);

// The second app on the same port, at /echo/.
const echo = io(base, { path: "/echo/", transports: ["websocket"], reconnection: false });
assert.deepEqual(await echo.timeout(3000).emitWithAck("echo", 1, "two"), [1, "two"]);

for (const s of [ann, bob, cid, chatA, chatB, acme, echo]) s.close();
console.log("OK");
