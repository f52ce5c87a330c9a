// Several real socket.io-client sockets under Node, driven line by line by
// tests/interop/test_rooms_node.py (rooms, broadcasts, broadcast acks, server-wide operations,
// class-based and dynamic namespaces).
//
//   node rooms.mjs URL MODE
//
// MODE: "websocket", "polling" (only that transport) or "default" (polling, then an upgrade).
// Commands come on stdin, one JSON object a line:
//   {"cmd": "connect", "name": N, "nsp": "/", "auth": {...}, "answer": true}
//       a new client (its own Engine.IO session) named N; "answer": false makes it never call the
//       callback of an event the server sends with an ack (by default it answers [N, ...args])
//   {"cmd": "emit", "name": N, "event": E, "args": [...], "ack": true}
//       N emits E; with "ack", it waits for the answer (an "ack" line, or "ack_timeout")
//   {"cmd": "close", "name": N}      N disconnects
//   {"cmd": "end"}                   every client disconnects, "end", exit 0
// What the clients see goes to stdout, one JSON object a line, {"type": ..., "name": N, ...}:
//   connected {id, nsp}, connect_error {message, data}, got {event, args, acked},
//   ack {event, answer}, ack_timeout {event}, disconnect {reason}, end; and error (then exit 1).

import { io } from "socket.io-client";
import readline from "node:readline";
import { WAIT, clientCommands, exit, printer } from "./lines.mjs";

const [url, mode] = process.argv.slice(2);
const TRANSPORTS = { websocket: ["websocket"], polling: ["polling"], default: undefined };
const LIFETIME = 60000; // ms: a script the test forgot never outlives this

const sockets = new Map();

const { out, fail } = printer();

function connect({ name, nsp = "/", auth, answer = true }) {
  const options = { forceNew: true, reconnection: false, timeout: WAIT };
  if (TRANSPORTS[mode]) options.transports = TRANSPORTS[mode];
  if (auth !== undefined) options.auth = auth;
  const socket = io(url + (nsp === "/" ? "" : nsp), options);
  sockets.set(name, socket);
  socket.on("connect", () => out("connected", { name, id: socket.id, nsp: socket.nsp }));
  socket.on("connect_error", (err) => out("connect_error", { name, message: err.message, data: err.data ?? null }));
  socket.on("disconnect", (reason) => out("disconnect", { name, reason }));
  // onAny gets the ack callback, if the server asked for one, as the last argument.
  socket.onAny((event, ...args) => {
    const callback = typeof args[args.length - 1] === "function" ? args.pop() : null;
    out("got", { name, event, args, acked: callback !== null });
    if (callback !== null && answer) callback(name, ...args);
  });
}

const { emit, close, end } = clientCommands(sockets, out);

setTimeout(() => fail(new Error(`still running after ${LIFETIME} ms`)), LIFETIME).unref();

const commands = { connect, emit, close, end };
const input = readline.createInterface({ input: process.stdin });
input.on("line", (line) => {
  if (!line.trim()) return;
  try {
    const command = JSON.parse(line);
    const run = commands[command.cmd];
    if (run === undefined) throw new Error(`unknown command ${line}`);
    run(command);
  } catch (err) {
    fail(err);
  }
});
input.on("close", () => end()); // the test went away: leave
