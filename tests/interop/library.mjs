// The library features of issue 15 through the real clients (engine.io-client and socket.io-client
// under Node), driven by tests/interop/test_library_node.py.
//
//   node library.mjs SCENARIO URL [TRANSPORT]
//
// TRANSPORT: "websocket" or "polling" (only that transport), or "default" (polling, then an
// upgrade). The script prints what it observes as JSON lines {"type": ..., ...}, bytes as
// {"$bytes": "<hex>"}; it exits 0 when the scenario ran to its end, 1 (after an {"type": "error"}
// line) when something it waited for did not happen.

import http from "node:http";
import { Socket as EngineSocket } from "engine.io-client";
import { io } from "socket.io-client";
import { WAIT, exit, next, plain, printer, within } from "./lines.mjs";
import { WebSocket } from "ws";

const [scenario, url, mode = "default"] = process.argv.slice(2);
const TRANSPORTS = { websocket: ["websocket"], polling: ["polling"], default: undefined };

function kind(v) {
  if (Buffer.isBuffer(v)) return "Buffer";
  if (v instanceof ArrayBuffer) return "ArrayBuffer";
  if (ArrayBuffer.isView(v)) return v.constructor.name;
  return typeof v;
}

const { out, fail } = printer(plain);

function client(namespace = "/", extra = {}) {
  const o = { reconnection: false, timeout: WAIT, forceNew: true, ...extra };
  if (TRANSPORTS[mode] && !o.transports) o.transports = TRANSPORTS[mode];
  return io(url + (namespace === "/" ? "" : namespace), o);
}

// How a connect attempt ended: {ok: true, id} or {ok: false, message, data, description}.
function outcome(socket) {
  return within(
    new Promise((resolve) => {
      socket.once("connect", () => resolve({ ok: true, id: socket.id }));
      socket.once("connect_error", (err) =>
        resolve({
          ok: false,
          message: err.message,
          data: err.data ?? null,
          description: typeof err.description === "number" ? err.description : null,
        }),
      );
    }),
    `connect of ${socket.nsp}`,
  );
}

async function connected(socket) {
  const result = await outcome(socket);
  if (!result.ok) throw new Error(`connect to ${socket.nsp} failed: ${result.message}`);
  return result.id;
}

// The client ended on the transport asked for (after the upgrade, in the default mode).
async function settled(socket) {
  const engine = socket.io.engine;
  if (mode === "default" && engine.transport.name !== "websocket") await next(engine, "upgrade");
  return engine.transport.name;
}

// A plain HTTP request (Node's own http module); its status, headers and body.
function httpGet(target, headers = {}) {
  return within(
    new Promise((resolve, reject) => {
      const req = http.get(new URL(target, url), { headers }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => (body += chunk));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body }));
      });
      req.on("error", reject);
    }),
    `GET ${target}`,
  );
}

const BYTES = Buffer.from([0, 1, 2, 127, 128, 254, 255]);

const scenarios = {
  // engine.io-client with forceBase64: it sends binary as "b" + base64 text (and asks, with b64=1,
  // for binary that way); the app gets and echoes bytes, the client gets them back as binary.
  async "eio-base64"() {
    const socket = new EngineSocket(url, {
      path: "/socket.io/",
      transports: TRANSPORTS[mode] ?? ["polling", "websocket"],
      forceBase64: true,
      upgrade: mode === "default",
    });
    await next(socket, "open");
    const messages = [];
    const got = within(
      new Promise((resolve) =>
        socket.on("message", (data) => {
          messages.push(data);
          if (messages.length === 3) resolve();
        }),
      ),
      "three echoes",
    );
    if (mode === "default" && socket.transport.name !== "websocket") await next(socket, "upgrade");
    socket.send(BYTES);
    socket.send("hello");
    socket.send(new Uint8Array([9, 8, 7]).buffer);
    await got;
    out("transport", { name: socket.transport.name, supportsBinary: socket.transport.supportsBinary });
    out("echoes", { kinds: messages.map(kind), values: messages });
    socket.close();
  },

  // socket.io-client with forceBase64: an event with a Buffer argument (and one nested) round trips.
  async "sio-base64"() {
    const socket = client("/", { forceBase64: true });
    await connected(socket);
    const transport = await settled(socket);
    const download = next(socket, "download");
    const answer = await within(
      new Promise((resolve) => socket.emit("echo", BYTES, { nested: Buffer.from("hi") }, (...args) => resolve(args))),
      "the echo's ack",
    );
    const [blob] = await download;
    out("echo", { transport, kinds: answer.map(kind), answer, download: blob, downloadKind: kind(blob) });
    socket.disconnect();
  },

  // What the app sees of the handshake: query, headers, cookies, address, secure, url, time.
  async handshake() {
    const socket = client("/", {
      query: { tenant: "acme" },
      extraHeaders: {
        cookie: "session=s3cr3t; theme=dark",
        "user-agent": "callbox-library-test/1.0",
        "x-forwarded-for": "203.0.113.7",
      },
    });
    const seen = next(socket, "handshake");
    await connected(socket);
    out("handshake", { transport: await settled(socket), seen: (await seen)[0] });
    socket.disconnect();
  },

  // A cookie set on the answer that opens a connection (app.initial_headers).
  async sticky() {
    // Polling: what the server answered the handshake, and engine.io-client's cookie jar (Node,
    // withCredentials), which then sends it back.
    const raw = await httpGet("/socket.io/?EIO=4&transport=polling");
    out("polling-raw", { status: raw.status, setCookie: raw.headers["set-cookie"] ?? null, tag: raw.headers["x-node"] ?? null });
    const socket = client("/", { transports: ["polling"], withCredentials: true });
    await connected(socket);
    const jar = socket.io.engine._cookieJar;
    out("polling-jar", { cookies: jar ? Object.fromEntries([...jar.cookies].map(([n, c]) => [n, c.value])) : null });
    socket.disconnect();
    // WebSocket: the 101 of a direct WebSocket (the `ws` package engine.io-client uses in Node).
    const wsUrl = url.replace(/^http/, "ws") + "/socket.io/?EIO=4&transport=websocket";
    const ws = new WebSocket(wsUrl);
    // Both listened for at once: the open packet may come in the same read as the 101.
    const [[res], [first]] = await Promise.all([next(ws, "upgrade"), next(ws, "message")]);
    out("websocket", { status: res.statusCode, setCookie: res.headers["set-cookie"] ?? null, tag: res.headers["x-node"] ?? null, first: String(first).slice(0, 1) });
    ws.close();
  },

  // A deferred ack: A asks, the server asks B, B answers, the server answers A with it.
  async deferred() {
    const a = client();
    const b = client();
    b.on("question", (q, ack) => ack(`B says: ${q}?`, 42));
    await Promise.all([connected(a), connected(b)]);
    await within(b.timeout(WAIT).emitWithAck("answerer"), "answerer registered");
    out("relayed", {
      answer: await within(new Promise((resolve) => a.emit("ask", "why", (...args) => resolve(args))), "the relayed ack"),
    });
    const started = Date.now();
    try {
      const late = await a.timeout(500).emitWithAck("never");
      out("never", { rejected: false, answer: late });
    } catch (err) {
      out("never", { rejected: true, message: err.message, ms: Date.now() - started });
    }
    a.emit("noack", "x");
    out("twice", { answer: await a.timeout(WAIT).emitWithAck("twice") });
    out("after", { answer: await a.timeout(WAIT).emitWithAck("ping") });
    a.disconnect();
    b.disconnect();
  },

  // app.allow_request: refused (403) by a query value and by a header; the async check waits.
  async refused() {
    const byQuery = client("/", { query: { deny: "1" } });
    out("by-query", { ...(await outcome(byQuery)), connected: byQuery.connected });
    byQuery.close();
    const byHeader = client("/", { extraHeaders: { "x-deny": "yes" } });
    out("by-header", { ...(await outcome(byHeader)), connected: byHeader.connected });
    byHeader.close();
    const raw = await httpGet("/socket.io/?EIO=4&transport=polling&deny=1");
    out("raw", { status: raw.status, body: raw.body, contentType: raw.headers["content-type"] });
    const started = Date.now();
    const allowed = client();
    out("allowed", { ...(await outcome(allowed)), ms: Date.now() - started, transport: await settled(allowed) });
    allowed.disconnect();
  },

  // app.use / namespace.use: order, and a refusal with data, for every namespace.
  async middleware() {
    for (const nsp of ["/", "/admin"]) {
      const ok = client(nsp, { auth: { user: "ada" } });
      out("ok", { nsp, ...(await outcome(ok)) });
      ok.disconnect();
      const refused = client(nsp, { auth: { user: "eve", deny: true } });
      out("app-refused", { nsp, ...(await outcome(refused)), connected: refused.connected });
      refused.close();
    }
    const nsRefused = client("/admin", { auth: { user: "mallory" } });
    out("ns-refused", { nsp: "/admin", ...(await outcome(nsRefused)), connected: nsRefused.connected });
    nsRefused.close();
  },

  // The connect handler's auth: {} when the client gives none, else the object.
  async auth() {
    for (const [name, extra] of [["none", {}], ["given", { auth: { token: "t", n: 1 } }]]) {
      const socket = client("/", extra);
      await connected(socket);
      out("auth", { name, seen: await socket.timeout(WAIT).emitWithAck("auth") });
      socket.disconnect();
    }
  },
};

const run = scenarios[scenario];
if (!run) {
  fail(new Error(`unknown scenario ${scenario}`));
} else {
  run().then(
    () => {
      out("end");
      exit(0);
    },
    fail,
  );
}
