// Real socket.io-client sockets under Node, driven line by line by
// tests/interop/test_admin_ui_node.py: an admin client connected as the Socket.IO Admin UI connects
// (its ui/src/App.vue: forceNew, no reconnection, withCredentials, polling then websocket, the
// default path and parser, auth {username, password} or {sessionId}), and application clients.
//
//   node admin_ui.mjs URL
//
// Commands come on stdin, one JSON object a line:
//   {"cmd": "admin", "name": N, "nsp": "/admin", "auth": {...}}       an admin client, the UI's options
//   {"cmd": "connect", "name": N, "nsp": "/", "query": {...}, "headers": {...}, "transports": [...]}
//                                                                       an application client
//   {"cmd": "emit", "name": N, "event": E, "args": [...], "ack": true} N emits E (with "ack": an "ack" line)
//   {"cmd": "close", "name": N}                                         N disconnects
//   {"cmd": "end"}                                                      every client disconnects, "end", exit 0
// What the clients see goes to stdout, one JSON object a line, {"type": ..., "name": N, ...}:
//   connected {id, nsp, transport}, connect_error {message}, got {event, args},
//   upgrade {transport}, ack {event, answer}, disconnect {reason}, end; and error (then exit 1).

import { io } from "socket.io-client";
import readline from "node:readline";
import { WAIT, clientCommands, exit, printer } from "./lines.mjs";

const [url] = process.argv.slice(2);
const LIFETIME = 60000; // ms: a script the test forgot never outlives this

const sockets = new Map();

const { out, fail } = printer();

function listen(name, socket) {
  sockets.set(name, socket);
  socket.on("connect", () =>
    out("connected", { name, id: socket.id, nsp: socket.nsp, transport: socket.io.engine.transport.name }),
  );
  socket.on("connect_error", (err) => out("connect_error", { name, message: err.message }));
  socket.on("disconnect", (reason) => out("disconnect", { name, reason }));
  socket.io.on("open", () => socket.io.engine.on("upgrade", (t) => out("upgrade", { name, transport: t.name })));
  socket.onAny((event, ...args) => {
    if (typeof args[args.length - 1] === "function") args.pop()(); // an ack asked for: an empty one
    out("got", { name, event, args });
  });
}

// The options of the Admin UI's tryConnect() (socket.io-admin-ui ui/src/App.vue), with its
// defaults: the path /socket.io, the default parser, both transports.
function admin({ name, nsp = "/admin", auth }) {
  const socket = io(url + nsp, {
    forceNew: true,
    reconnection: false,
    withCredentials: true,
    transports: ["polling", "websocket"],
    path: "/socket.io",
    parser: null,
    auth,
    timeout: WAIT,
  });
  listen(name, socket);
}

function connect({ name, nsp = "/", query, headers, transports }) {
  const options = { forceNew: true, reconnection: false, timeout: WAIT };
  if (query) options.query = query;
  if (headers) options.extraHeaders = headers;
  if (transports) options.transports = transports;
  listen(name, io(url + (nsp === "/" ? "" : nsp), options));
}

const { emit, close, end } = clientCommands(sockets, out);

setTimeout(() => fail(new Error(`still running after ${LIFETIME} ms`)), LIFETIME).unref();

const commands = { admin, connect, emit, close, end };
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  try {
    const command = JSON.parse(line);
    const run = commands[command.cmd];
    if (run === undefined) throw new Error(`unknown command ${command.cmd}`);
    run(command);
  } catch (err) {
    fail(err);
  }
});
process.stdin.on("end", () => exit(0));
