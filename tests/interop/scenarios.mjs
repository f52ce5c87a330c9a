// The real socket.io-client, driven by tests/interop/test_interop_node.py.
//
//   node scenarios.mjs SCENARIO URL MODE
//
// MODE: "websocket", "polling" (only that transport) or "default" (the client's own choice:
// polling, then an upgrade to WebSocket). The script prints what it observes as JSON lines
// {"type": ..., ...}: bytes as {"$bytes": "<hex>"}. It exits 0 when the scenario ran to its end,
// 1 (after an {"type": "error"} line) when something it waited for did not happen.

import { io, Manager } from "socket.io-client";
import { WAIT, exit, next, plain, printer, within } from "./lines.mjs";

const [scenario, url, mode] = process.argv.slice(2);
const TRANSPORTS = { websocket: ["websocket"], polling: ["polling"], default: undefined };

// -- output -------------------------------------------------------------------------------------

const { out, fail } = printer(plain);

// -- helpers ------------------------------------------------------------------------------------

function options(extra = {}) {
  const o = { reconnection: false, timeout: WAIT, ...extra };
  if (TRANSPORTS[mode]) o.transports = TRANSPORTS[mode];
  return o;
}

// A new client (its own Engine.IO session) on a namespace.
function client(namespace = "/", extra = {}) {
  return io(url + (namespace === "/" ? "" : namespace), options({ forceNew: true, ...extra }));
}

// How a connect attempt ended: {ok: true, id} or {ok: false, message, data}.
function outcome(socket) {
  return within(
    new Promise((resolve) => {
      socket.once("connect", () => resolve({ ok: true, id: socket.id }));
      socket.once("connect_error", (err) => resolve({ ok: false, message: err.message, data: err.data ?? null }));
    }),
    `connect of ${socket.nsp}`,
  );
}

async function connected(socket) {
  const result = await outcome(socket);
  if (!result.ok) throw new Error(`connect to ${socket.nsp} failed: ${result.message}`);
  return result.id;
}

// The transport the client ended on (after the upgrade, in the default mode) and the one the
// server says this socket uses.
async function finish(socket) {
  const engine = socket.io.engine;
  if (mode === "default" && engine.transport.name !== "websocket") await next(engine, "upgrade");
  const server = await socket.timeout(WAIT).emitWithAck("transport");
  out("transport", { nsp: socket.nsp, client: engine.transport.name, server });
}

// -- scenarios ----------------------------------------------------------------------------------

const scenarios = {
  // 1, 2: namespaces, auth, refusals.
  async connect() {
    const manager = new Manager(url, options());
    const root = manager.socket("/", { auth: { token: "t-root", user: "alice" } });
    const admin = manager.socket("/admin", { auth: { token: "t-admin", level: 7 } });
    const [r, a] = await Promise.all([outcome(root), outcome(admin)]);
    out("connect", { nsp: "/", ...r, engine: manager.engine.id });
    out("connect", { nsp: "/admin", ...a, engine: manager.engine.id });

    const refused = client("/", { auth: { token: "bad" } });
    out("refused", { ...(await outcome(refused)), connected: refused.connected });
    refused.close();

    const nowhere = client("/nope", { auth: { token: "t-root" } });
    out("invalid", { ...(await outcome(nowhere)), connected: nowhere.connected });
    nowhere.close();

    await finish(root);
    await finish(admin);
    out("whoami", { nsp: "/admin", answer: await admin.timeout(WAIT).emitWithAck("whoami") });
    manager.engine.close();
  },

  // 3, 4, 5: events, acks and binary, both ways.
  async events() {
    const socket = client();
    socket.on("question", (q, ack) => ack(`yes: ${q}`, Buffer.from([9, 8, 7])));
    out("connect", { id: await connected(socket) });

    socket.emit("hello", "world", 42, { nested: [1, null, true], text: "é€😀" });
    const greeting = next(socket, "greeting");
    socket.emit("poke", "please");
    out("greeting", { args: await greeting });

    out("ack", { value: await socket.timeout(WAIT).emitWithAck("add", 2, 3) });
    out("ack-tuple", {
      args: await within(new Promise((resolve) => socket.emit("pair", (...args) => resolve(args))), "pair ack"),
    });
    out("ack-none", {
      args: await within(new Promise((resolve) => socket.emit("nothing", (...args) => resolve(args))), "ack"),
    });

    const got = next(socket, "got");
    socket.emit("ask");
    out("got", { args: await got });

    const download = next(socket, "download");
    socket.emit("upload", Buffer.from([0, 1, 2, 255]), {
      name: "f.bin",
      blob: Buffer.from("hi"),
      list: [Buffer.from([7]), "x"],
    });
    out("download", { args: await download });
    out("echo", { value: await socket.timeout(WAIT).emitWithAck("echo", { data: Buffer.from([1, 2, 3]), n: 1 }) });
    const big = Buffer.alloc(256 * 800);
    for (let i = 0; i < big.length; i++) big[i] = i % 256;
    const back = await socket.timeout(WAIT).emitWithAck("echo", big);
    out("echo-big", { bytes: Buffer.isBuffer(back) || back instanceof ArrayBuffer, length: back.byteLength, equal: Buffer.from(back).equals(big) });

    await finish(socket);
    socket.disconnect();
  },

  // 6: a thousand events each way, in order, at once. The server starts sending when the socket
  // connects (in the default mode, while the transport is upgraded).
  async flood() {
    const socket = client();
    const n = 1000;
    const received = [];
    const all = new Promise((resolve) => {
      socket.on("n", (i) => {
        received.push(i);
        if (received.length === n) resolve();
      });
    });
    const end = next(socket, "flood-end");
    await connected(socket);
    for (let i = 0; i < n; i++) socket.emit("seq", i);
    out("seq-done", { count: await socket.timeout(WAIT).emitWithAck("seq-done") });
    await within(Promise.all([all, end]), `${n} events`);
    out("flood", { received });
    await finish(socket);
    socket.disconnect();
  },

  // 7: rooms. A and B join "r", C does not; A says something to the room (skipping itself)
  // and the server also emits to the whole room; then B leaves and it happens again.
  async rooms() {
    const names = ["A", "B", "C"];
    const sockets = Object.fromEntries(names.map((name) => [name, client()]));
    const logs = Object.fromEntries(names.map((name) => [name, []]));
    for (const name of names) sockets[name].onAny((event, ...args) => logs[name].push([event, ...args]));
    await Promise.all(names.map((name) => connected(sockets[name])));
    const barrier = (tag) =>
      Promise.all(
        names.map((name) =>
          within(
            new Promise((resolve) => {
              const check = (event, t) => {
                if (event === "barrier" && t === tag) {
                  sockets[name].offAny(check);
                  resolve();
                }
              };
              sockets[name].onAny(check);
            }),
            `barrier ${tag} at ${name}`,
          ),
        ),
      );

    out("joined", {
      A: await sockets.A.timeout(WAIT).emitWithAck("join", "r"),
      B: await sockets.B.timeout(WAIT).emitWithAck("join", "r"),
    });
    let done = barrier(1);
    sockets.A.emit("say", "r", "one", 1);
    await done;

    out("left", { B: await sockets.B.timeout(WAIT).emitWithAck("leave", "r") });
    done = barrier(2);
    sockets.A.emit("say", "r", "two", 2);
    await done;

    out("logs", { ...logs });
    for (const name of names) await finish(sockets[name]);
    for (const name of names) sockets[name].disconnect();
  },

  // 8: disconnects and their reasons. The test kills this process after "ready".
  async disconnect() {
    const manager = new Manager(url, options());
    const root = manager.socket("/");
    const admin = manager.socket("/admin");
    const [rootId, adminId] = await Promise.all([connected(root), connected(admin)]);
    out("ids", { root: rootId, admin: adminId });
    const rootGone = next(root, "disconnect");
    root.disconnect();
    out("root-disconnect", { reason: (await rootGone)[0] });
    // The session stays: the other namespace still answers.
    out("admin-alive", { answer: await admin.timeout(WAIT).emitWithAck("whoami") });

    const closing = client();
    out("closing", { id: await connected(closing) });
    const closingGone = next(closing, "disconnect");
    closing.io.engine.close();
    out("closing-disconnect", { reason: (await closingGone)[0] });

    const kicked = client();
    out("kicked", { id: await connected(kicked) });
    const kickedGone = next(kicked, "disconnect");
    kicked.emit("kick-me");
    out("kicked-disconnect", { reason: (await kickedGone)[0] });

    await finish(admin);
    // Idle for a moment first: a long-polling client then has its next GET pending, and the
    // server sees that request's connection close when the process dies. (Killed between two
    // polls, it could only be noticed by the heartbeat, as with any Engine.IO server.)
    await new Promise((resolve) => setTimeout(resolve, 200));
    out("ready");
    await new Promise(() => {}); // until killed
  },

  // 9: a client that stops answering pings.
  async silent() {
    const socket = client();
    out("connect", { id: await connected(socket) });
    const engine = socket.io.engine;
    // Several heartbeats answered: the session must survive them.
    await new Promise((resolve) => setTimeout(resolve, 1200));
    out("alive", { connected: socket.connected, answer: await socket.timeout(WAIT).emitWithAck("transport") });
    await finish(socket);
    const gone = next(socket, "disconnect", 3 * WAIT);
    const send = engine._sendPacket;
    engine._sendPacket = function (type, ...rest) {
      if (type === "pong") return;
      return send.call(this, type, ...rest);
    };
    out("silenced", { transport: engine.transport.name });
    out("disconnect", { reason: (await gone)[0] });
  },
};

if (!(mode in TRANSPORTS)) fail(new Error(`unknown mode ${mode}`));
else if (!(scenario in scenarios)) fail(new Error(`unknown scenario ${scenario}`));
else
  scenarios[scenario]().then(() => {
    out("end");
    exit(0);
  }, fail);
