// node tls_client.mjs https://127.0.0.1:PORT ca.pem websocket|polling|default
// Connects socket.io-client over TLS trusting only the given CA; prints what it saw as JSON.
import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

const [url, caFile, mode] = process.argv.slice(2);
const opts = { ca: readFileSync(caFile), reconnection: false };
if (mode !== "default") opts.transports = [mode];
const s = io(url, opts);
const timer = setTimeout(() => { console.log(JSON.stringify({ connected: false })); process.exit(1); }, 10000);
s.on("connect_error", (err) => { console.error("connect_error", err.message); process.exit(1); });
s.on("connect", async () => {
  const ack = await s.timeout(5000).emitWithAck("user:join", { userId: "tls-user" }).catch(() => null);
  await new Promise((r) => setTimeout(r, mode === "default" ? 300 : 0));
  console.log(JSON.stringify({ connected: true, ack, transport: s.io.engine.transport.name }));
  clearTimeout(timer);
  s.disconnect();
  process.exit(0);
});
