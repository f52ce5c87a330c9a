// Two Socket.IO servers on one port, each at its own path (issue 15): a client of each reaches its
// own app only. Usage: node mounts.mjs <base url> <transport>
import { io } from "socket.io-client";

const [base, transport] = process.argv.slice(2);
const fail = (message) => { console.error(message); process.exit(1); };
setTimeout(() => fail("mounts.mjs: timed out"), 10_000).unref();

function connect(path) {
  const socket = io(base, { path, transports: [transport], reconnection: false });
  return new Promise((resolve, reject) => {
    socket.on("connect", () => resolve(socket));
    socket.on("connect_error", (err) => reject(new Error(`${path}: ${err.message}`)));
  });
}

const main = await connect("/socket.io/");
const other = await connect("/other/");
const a = await main.timeout(2000).emitWithAck("who");
const b = await other.timeout(2000).emitWithAck("who");
if (a !== "main" || b !== "other") fail(`wrong apps: ${a} ${b}`);
// A path that serves nothing is not an Engine.IO endpoint: the client cannot connect there.
try {
  await connect("/nothing/");
  fail("connected at /nothing/");
} catch (err) {
  if (!String(err.message).startsWith("/nothing/")) throw err;
}
main.close();
other.close();
console.log("OK");
