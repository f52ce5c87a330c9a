// Load generator of the callbox benchmark: speaks Engine.IO v4 / Socket.IO v5 over WebSocket itself
// (the `ws` package for the socket, no socket.io-client), one scenario per run, one JSON line out.
//
//   node gen.mjs SCENARIO --port P --pid SERVER_PID [options]
//
// Scenarios (see bench/README.md): ramp, flows, relay, fixed, check.
// Every loop is bounded in count and time; everything goes to 127.0.0.1.
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { randomBytes } from "node:crypto";
import net from "node:net";
import zlib from "node:zlib";
import { createRequire } from "node:module";
import WebSocket from "ws";

const bufferutil = createRequire(import.meta.url)("bufferutil");

// -- options --------------------------------------------------------------------------------------

const scenario = process.argv[2];
const opts = {
  host: "127.0.0.1", port: 3000, pid: 0, n: 1000, concurrency: 100, deflate: false,
  calls: 20, ice: 10, pairs: 20, window: 4, rate: 4000, warmup: 1, duration: 5, settle: 2,
  timeout: 120, client: "raw", tag: "b" + process.pid.toString(36), write: "batched",
  // Several nodes (bench/cluster.py): more processes whose CPU counts as the server's (comma
  // separated pids: the other node, redis-server), and where clients connect: "one" (all on
  // --port), "cross" (the second user of each pair, and y in the check, on --port2: every call
  // spans the two nodes), "split" (pair i on --port when i is even, else --port2: every call
  // within one node, half of them on each).
  pids: "", port2: 0, layout: "one",
};
for (let i = 3; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, "");
  if (!(key in opts)) throw new Error(`unknown option --${key}`);
  const raw = process.argv[i + 1];
  opts[key] = typeof opts[key] === "number" ? Number(raw) : typeof opts[key] === "boolean" ? raw === "1" || raw === "true" : raw;
}
if (opts.write !== "batched" && opts.write !== "each") throw new Error(`--write is batched or each, not ${opts.write}`);
if (!["one", "cross", "split"].includes(opts.layout)) throw new Error(`--layout is one, cross or split, not ${opts.layout}`);
if (opts.layout !== "one" && !opts.port2) throw new Error(`--layout ${opts.layout} needs --port2`);
const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// -- what the server process uses: CPU seconds and RSS, from /proc ---------------------------------

// The server's processes: --pid, and with several nodes the others of --pids.
const PIDS = [opts.pid, ...String(opts.pids).split(",").filter(Boolean).map(Number)].filter((p) => p > 0);

function cpuOf(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, in clock ticks of 1/100 s
}
function serverCpu() {
  let total = 0;
  for (const pid of PIDS) total += cpuOf(pid);
  return total;
}
// Read-family and write-family system calls (/proc/PID/io's syscr and syscw), summed over the
// server's processes; null if any can not be read (not Linux, another user's process). These count
// read/readv/pread and write/writev/pwrite (on sockets too), not recv*/send* (recvfrom,
// recvmsg, sendto, sendmsg): a server that moves bytes with those shows fewer than it makes.
function ioOf(pid) {
  try {
    const io = readFileSync(`/proc/${pid}/io`, "latin1");
    const r = /^syscr:\s*(\d+)/m.exec(io);
    const w = /^syscw:\s*(\d+)/m.exec(io);
    return r && w ? { reads: Number(r[1]), writes: Number(w[1]) } : null;
  } catch {
    return null;
  }
}
function serverIo() {
  const total = { reads: 0, writes: 0 };
  for (const pid of PIDS) {
    const io = ioOf(pid);
    if (!io) return null;
    total.reads += io.reads;
    total.writes += io.writes;
  }
  return PIDS.length ? total : null;
}
function serverRss() {
  if (!opts.pid) return 0;
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${opts.pid}/status`, "latin1"));
  return m ? Number(m[1]) * 1024 : 0;
}
const ownCpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };
const ownSys = () => process.cpuUsage().system / 1e6;

// What the lean client sent: WebSocket frames, and the socket writes they went out in (a write of
// the TCP socket, that is `socket.write` in --write each, an uncork in --write batched).
const sent = { frames: 0, writes: 0 };

// A measurement window: wall time, the server's CPU and read/write system calls, and the
// generator's own CPU.
class Window {
  constructor() {
    this.each = PIDS.map(cpuOf);
    this.io = serverIo();
    this.t = now(); this.s = serverCpu(); this.g = ownCpu(); this.k = ownSys();
    this.f = sent.frames; this.w = sent.writes;
  }
  close() {
    const wall = (now() - this.t) / 1000;
    const frames = sent.frames - this.f;
    const each = PIDS.map(cpuOf);
    const writes = sent.writes - this.w;
    const io = this.io && serverIo();
    return {
      wall, server_cpu: serverCpu() - this.s, gen_cpu: ownCpu() - this.g, gen_sys_cpu: ownSys() - this.k,
      server_reads: io ? io.reads - this.io.reads : null, server_writes: io ? io.writes - this.io.writes : null,
      // each server process's own share (several nodes: which one is the limit)
      cpu_by_pid: PIDS.length > 1 ? Object.fromEntries(PIDS.map((p, i) => [p, each[i] - this.each[i]])) : undefined,
      write: opts.client === "raw" ? opts.write : null, frames_sent: frames, socket_writes: writes,
      frames_per_write: writes ? frames / writes : null,
    };
  }
}

function percentiles(samples) {
  const a = Float64Array.from(samples).sort();
  const at = (q) => (a.length ? a[Math.min(a.length - 1, Math.floor(a.length * q))] : null);
  return { count: a.length, p50_ms: at(0.5), p99_ms: at(0.99), max_ms: a.length ? a[a.length - 1] : null };
}

// -- a lean WebSocket client on a plain TCP socket ----------------------------------------------------
//
// The hot paths of the scenarios (handshakes, relays) cost the generator far less this way than
// through `ws` (see bench/README.md): one write of a prepared upgrade request, no verification of
// the accept key, frames built and parsed by hand, and incoming text handed over as the Buffer it
// arrived in. How frames go out (--write):
//   batched (the default): the frames a socket sends in one event-loop turn (say the 4 candidates
//     answering the 4 relayed ones that came in one TCP read, or call:answer and its 10 candidates)
//     are corked and leave in one write (Node's uncork -> one writev), so the server often reads
//     several frames in one recv;
//   each: every frame is its own socket.write, right away, as a browser's WebSocket.send() does
//     (TCP_NODELAY is on either way): one frame per write, and per TCP segment unless the socket
//     is backed up (then Node, like a browser, queues the writes and flushes them together).
// With --deflate it offers permessage-deflate as browsers do ("permessage-deflate;
// client_max_window_bits") and, if the server takes it, compresses what it sends and inflates what
// the server compresses, keeping the server's window across messages (context takeover).

const MASK_POOL = randomBytes(4096);
let maskAt = 0;
const FIN_TEXT = 0x81;

const DEFLATE_TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);
const SYNC = { finishFlush: zlib.constants.Z_SYNC_FLUSH };
const WINDOW = 32768;

class RawSocket {
  constructor(onText, onClose, onError, deflate, port) {
    this.deflate = deflate; // offer permessage-deflate, as browsers do
    this.history = null; // the server's compression window (context takeover), for the next message
    this.onText = onText; // (buffer, start, end) => void
    this.onClose = onClose;
    this.onError = onError;
    this.extensions = "";
    this.upgraded = false;
    this.pending = null; // bytes of an incomplete frame (or of the response head)
    this.fragments = null;
    this.corked = false;
    const sock = net.connect({ host: opts.host, port });
    this.sock = sock;
    sock.setNoDelay(true);
    sock.on("connect", () => {
      const key = randomBytes(16).toString("base64");
      sock.write(
        `GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: ${opts.host}:${port}\r\n` +
          `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\n` +
          "Sec-WebSocket-Version: 13\r\n" +
          (deflate ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" : "") + "\r\n",
      );
    });
    sock.on("data", (chunk) => this.data(chunk));
    sock.on("error", (err) => this.onError(err));
    sock.on("close", () => this.onClose());
  }

  data(chunk) {
    let buf = this.pending === null ? chunk : Buffer.concat([this.pending, chunk]);
    this.pending = null;
    let at = 0;
    if (!this.upgraded) {
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) { this.pending = buf; return; }
      const head = buf.toString("latin1", 0, end);
      if (!head.startsWith("HTTP/1.1 101")) {
        this.onError(new Error(`upgrade refused: ${head.split("\r\n")[0]}`));
        this.sock.destroy();
        return;
      }
      this.upgraded = true;
      const ext = /\r\nsec-websocket-extensions: *([^\r]*)/i.exec(head);
      this.extensions = ext ? ext[1] : "";
      this.takeover = !/server_no_context_takeover/.test(this.extensions);
      at = end + 4;
    }
    const len = buf.length;
    while (at + 2 <= len) {
      const b0 = buf[at];
      let size = buf[at + 1] & 0x7f;
      let head = 2;
      if (size === 126) {
        if (at + 4 > len) break;
        size = buf.readUInt16BE(at + 2);
        head = 4;
      } else if (size === 127) {
        if (at + 10 > len) break;
        size = Number(buf.readBigUInt64BE(at + 2));
        head = 10;
      }
      if (at + head + size > len) break;
      const start = at + head;
      at = start + size;
      const opcode = b0 & 0x0f;
      if (b0 & 0x40) this.compressed(b0, buf.subarray(start, at));
      else if (opcode === 1 && b0 & 0x80) this.onText(buf, start, at);
      else if (opcode === 1 || opcode === 0) {
        // a fragmented message: gathered, then handed over whole
        this.fragments = this.fragments === null ? [buf.subarray(start, at)] : [...this.fragments, buf.subarray(start, at)];
        if (b0 & 0x80) {
          const whole = Buffer.concat(this.fragments);
          this.fragments = null;
          this.onText(whole, 0, whole.length);
        }
      } else if (opcode === 9) this.frame(0x8a, buf.subarray(start, at));
      else if (opcode === 8) { this.frame(0x88, buf.subarray(start, Math.min(at, start + 2))); this.sock.end(); }
    }
    if (at < len) this.pending = buf.subarray(at);
  }

  // A compressed message (RSV1): inflated with the server's window so far as the dictionary.
  compressed(b0, payload) {
    if (!(b0 & 0x80)) throw new Error("fragmented compressed messages are not handled");
    const input = Buffer.concat([payload, DEFLATE_TAIL]);
    const out = zlib.inflateRawSync(input, this.history ? { ...SYNC, dictionary: this.history } : SYNC);
    if (this.takeover) {
      const all = this.history ? Buffer.concat([this.history, out]) : out;
      this.history = all.length > WINDOW ? all.subarray(all.length - WINDOW) : all;
    }
    this.onText(out, 0, out.length);
  }

  // One masked frame, written now (--write each) or with the rest of this event-loop turn's frames.
  frame(b0, payload) {
    const size = payload.length;
    const head = size < 126 ? 6 : size < 65536 ? 8 : 14;
    const out = Buffer.allocUnsafe(head + size);
    out[0] = b0;
    if (size < 126) out[1] = 0x80 | size;
    else if (size < 65536) { out[1] = 0x80 | 126; out.writeUInt16BE(size, 2); }
    else { out[1] = 0x80 | 127; out.writeBigUInt64BE(BigInt(size), 2); }
    if (maskAt > MASK_POOL.length - 4) maskAt = 0;
    MASK_POOL.copy(out, head - 4, maskAt, maskAt + 4);
    const key = out.subarray(head - 4, head);
    maskAt += 4;
    bufferutil.mask(payload, key, out, head, size);
    this.write(out);
  }

  send(text) {
    if (this.extensions) {
      // compressed, without context takeover on our side (allowed, and all the server needs)
      const packed = zlib.deflateRawSync(text, SYNC);
      return this.frame(0xc1, packed.subarray(0, packed.length - 4));
    }
    const size = Buffer.byteLength(text);
    const head = size < 126 ? 6 : size < 65536 ? 8 : 14;
    const out = Buffer.allocUnsafe(head + size);
    out[0] = FIN_TEXT;
    if (size < 126) out[1] = 0x80 | size;
    else if (size < 65536) { out[1] = 0x80 | 126; out.writeUInt16BE(size, 2); }
    else { out[1] = 0x80 | 127; out.writeBigUInt64BE(BigInt(size), 2); }
    if (maskAt > MASK_POOL.length - 4) maskAt = 0;
    MASK_POOL.copy(out, head - 4, maskAt, maskAt + 4);
    maskAt += 4;
    out.write(text, head, "utf8");
    bufferutil.unmask(out.subarray(head), out.subarray(head - 4, head)); // XOR: masks in place
    this.write(out);
  }

  write(out) {
    sent.frames++;
    if (opts.write === "each") {
      sent.writes++;
      this.sock.write(out);
      return;
    }
    if (!this.corked) {
      this.corked = true;
      sent.writes++;
      this.sock.cork();
      process.nextTick(() => { this.corked = false; this.sock.uncork(); });
    }
    this.sock.write(out);
  }

  terminate() {
    this.sock.destroy();
  }
}

// The same on `ws` (--client ws): what the lean client is measured against.
class WsSocket {
  constructor(onText, onClose, onError, deflate, port) {
    this.ws = new WebSocket(`ws://${opts.host}:${port}/socket.io/?EIO=4&transport=websocket`, {
      perMessageDeflate: deflate, skipUTF8Validation: true,
    });
    this.ws.on("message", (data) => { const b = Buffer.isBuffer(data) ? data : Buffer.concat(data); onText(b, 0, b.length); });
    this.ws.on("error", onError);
    this.ws.on("close", onClose);
  }
  get extensions() { return this.ws.extensions; }
  send(text) { this.ws.send(text); }
  terminate() { this.ws.terminate(); }
}

// -- one Socket.IO client ------------------------------------------------------------------------

const failures = [];
function fail(message) {
  if (failures.length < 20) failures.push(message);
}

const ICE_PREFIX = Buffer.from('42["ice:candidate"');

class Client {
  constructor(name, port = opts.port) {
    this.name = name; // the user id it joins as
    this.port = port; // the server (node) it connects to
    this.sid = null;
    this.onEvent = null; // (event, payload) => void, for every event but fast-path ICE
    this.onIce = null; // (buffer, start, end) => void: ice:candidate relays, unparsed
    this.errors = 0;
    this.lastError = null;
    this.conn = null;
  }

  // Connect, CONNECT to "/", user:join; resolves when user:joined arrives.
  open(deflate) {
    return new Promise((resolve, reject) => {
      this.joined = resolve;
      const onText = (buf, start, end) => this.receive(buf, start, end);
      const onClose = () => { if (this.joined) { this.joined = null; reject(new Error(`${this.name}: closed before joining`)); } };
      const onError = (err) => { fail(`${this.name}: ${err.message}`); if (this.joined) { this.joined = null; reject(err); } };
      this.conn = new (opts.client === "ws" ? WsSocket : RawSocket)(onText, onClose, onError, deflate, this.port);
    });
  }

  receive(buf, start, end) {
    const type = buf[start];
    if (type === 52 /* 4: message */) {
      const kind = buf[start + 1];
      if (kind === 50 /* 2: EVENT */) {
        if (this.onIce !== null && end - start > 18 && buf.compare(ICE_PREFIX, 0, 18, start, start + 18) === 0) {
          return this.onIce(buf, start, end);
        }
        const [event, payload] = JSON.parse(buf.toString("utf8", start + 2, end));
        if (event === "user:joined" && this.joined) {
          const done = this.joined;
          this.joined = null;
          this.sid = payload.socketId;
          return done();
        }
        if (event === "error") {
          this.errors++;
          this.lastError = payload;
        }
        if (this.onEvent !== null) this.onEvent(event, payload);
        else if (event === "error") fail(`${this.name} got error ${JSON.stringify(payload)}`);
      } else if (kind === 48 /* 0: CONNECT */) {
        this.conn.send(`42["user:join",{"userId":"${this.name}"}]`);
      } else if (kind === 52 /* 4: CONNECT_ERROR */) {
        fail(`${this.name}: connect error ${buf.toString("utf8", start, end)}`);
      }
    } else if (type === 50 /* 2: ping */) {
      this.conn.send("3");
    } else if (type === 48 /* 0: open */) {
      this.conn.send("40");
    }
  }

  send(text) {
    this.conn.send(text);
  }

  emit(event, payload) {
    this.conn.send("42" + JSON.stringify([event, payload]));
  }

  close() {
    if (this.conn) this.conn.terminate();
  }
}

// Connect and join `names`, at most `concurrency` handshakes at once; per-client latency in ms.
async function openAll(names, concurrency, deflate, deadline, ports = null) {
  const clients = names.map((n, i) => new Client(n, ports ? ports[i] : opts.port));
  const latencies = new Array(clients.length);
  let next = 0;
  let negotiated = 0;
  async function worker() {
    while (next < clients.length) {
      if (now() > deadline) throw new Error("connect ramp: time limit reached");
      const i = next++;
      const t = now();
      await clients[i].open(deflate);
      latencies[i] = now() - t;
      if (clients[i].conn.extensions) negotiated++;
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, clients.length) }, worker));
  return { clients, latencies, negotiated };
}

function closeAll(clients) {
  for (const c of clients) c.close();
}

// -- payloads: an ICE candidate of about 200 bytes, SDPs of a couple of KB -----------------------

const CANDIDATE_HEAD =
  '{"candidate":"candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 10.0.0.5 rport 46154 ' +
  'generation 0 ufrag sH2k network-cost 999","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"';
const STAMP = '"usernameFragment":"';
// A relayed candidate carries its send time (ms, performance.now()) in usernameFragment.
function iceMessage(to) {
  const head = `42["ice:candidate",{"to":"${to}","candidate":${CANDIDATE_HEAD}`;
  return (t) => `${head}${t.toFixed(3)}"}}]`;
}
const STAMP_BUF = Buffer.from(STAMP);
// The send time in a relayed candidate, read from the bytes as they arrived.
function stampOf(buf, start, end) {
  let i = buf.indexOf(STAMP_BUF, start) + STAMP_BUF.length;
  let ms = 0;
  let scale = 0;
  for (; i < end; i++) {
    const c = buf[i];
    if (c === 46) scale = 1;
    else if (c >= 48 && c <= 57) { ms = ms * 10 + (c - 48); if (scale) scale *= 10; }
    else break;
  }
  return scale ? ms / scale : ms;
}

function sdp(kind) {
  const lines = ["v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "a=extmap-allow-mixed", "a=msid-semantic: WMS stream"];
  for (const [mid, media] of [["0", "audio"], ["1", "video"]]) {
    lines.push(`m=${media} 9 UDP/TLS/RTP/SAVPF 111 63 103 104 9 0 8 106 105 13 110 112 113 126`,
      "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0", "a=ice-ufrag:sH2k", "a=ice-pwd:q1Tl6a0pKzqY5nVw5g3m9yR2",
      "a=ice-options:trickle", "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:" +
        "1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08", `a=setup:${kind === "offer" ? "actpass" : "active"}`, `a=mid:${mid}`,
      "a=sendrecv", "a=msid:stream track", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2", "a=rtcp-fb:111 transport-cc",
      "a=fmtp:111 minptime=10;useinbandfec=1", "a=rtpmap:63 red/48000/2", "a=fmtp:63 111/111",
      "a=rtpmap:103 ISAC/16000", "a=rtpmap:104 ISAC/32000", "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000",
      "a=rtpmap:8 PCMA/8000", "a=rtpmap:106 CN/32000", "a=rtpmap:105 CN/16000", "a=rtpmap:13 CN/8000",
      "a=rtpmap:110 telephone-event/48000", "a=ssrc:3735928559 cname:4TOk42mSjXCkVIa6");
  }
  return { type: kind, sdp: lines.join("\r\n") + "\r\n" };
}

// -- call set-up between two joined clients --------------------------------------------------------

// caller calls callee, callee accepts, caller offers, callee answers: resolves once the caller has
// the answer (the call is CONNECTED).
function establish(caller, callee, offer, answer) {
  return new Promise((resolve) => {
    callee.onEvent = (event, p) => {
      if (event === "call:incoming") callee.emit("call:accept", { callId: p.callId, from: caller.name });
      else if (event === "call:offer") callee.emit("call:answer", { to: caller.name, answer });
      else if (event === "error") fail(`callee ${callee.name}: ${JSON.stringify(p)}`);
    };
    caller.onEvent = (event, p) => {
      if (event === "call:initiated") caller.callId = p.callId;
      else if (event === "call:accepted") caller.emit("call:offer", { to: callee.name, offer });
      else if (event === "call:answer") resolve();
      else if (event === "error") fail(`caller ${caller.name}: ${JSON.stringify(p)}`);
    };
    caller.emit("call:initiate", { to: callee.name, callType: "video" });
  });
}

async function openPairs(count, deadline) {
  const names = [];
  const ports = [];
  for (let i = 0; i < count; i++) {
    names.push(`${opts.tag}-a${i}`, `${opts.tag}-b${i}`);
    if (opts.layout === "cross") ports.push(opts.port, opts.port2);
    else if (opts.layout === "split") ports.push(...(i % 2 ? [opts.port2, opts.port2] : [opts.port, opts.port]));
    else ports.push(opts.port, opts.port);
  }
  const { clients } = await openAll(names, 50, false, deadline, ports);
  const pairs = [];
  for (let i = 0; i < count; i++) pairs.push([clients[2 * i], clients[2 * i + 1]]);
  return { clients, pairs };
}

function withTimeout(promise, seconds, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer in ${seconds} s`)), seconds * 1000); }),
  ]).finally(() => clearTimeout(timer));
}

// -- scenarios -------------------------------------------------------------------------------------

// Connect + user:join ramp to N clients, `concurrency` handshakes in flight; then the server's RSS
// per connection once they are all idle.
async function ramp() {
  const deadline = now() + opts.timeout * 1000;
  const names = Array.from({ length: opts.n }, (_, i) => `${opts.tag}-u${i}`);
  await sleep(200);
  const rssBefore = serverRss();
  const w = new Window();
  const { clients, latencies, negotiated } = await openAll(names, opts.concurrency, opts.deflate, deadline);
  const m = w.close();
  await sleep(opts.settle * 1000);
  const rssAfter = serverRss();
  const errors = clients.reduce((s, c) => s + c.errors, 0);
  closeAll(clients);
  return {
    n: opts.n, concurrency: opts.concurrency, deflate_offered: opts.deflate, deflate_negotiated: negotiated,
    rate: opts.n / m.wall, ...percentiles(latencies), ...m,
    rss_before: rssBefore, rss_after: rssAfter, rss_per_conn: (rssAfter - rssBefore) / opts.n, errors,
  };
}

// Full call flows, `calls` at once: initiate, accept, offer, answer, `ice` candidates each way, end.
async function flows() {
  const deadline = now() + opts.timeout * 1000;
  const { clients, pairs } = await openPairs(opts.calls, deadline);
  const offer = sdp("offer");
  const answer = sdp("answer");
  let measuring = false;
  let running = true;
  let done = 0;
  const setup = [];
  const relay = [];
  let active = 0;
  let drained;

  const stop = () => { if (--active === 0 && drained) drained(); };
  // A refused step stops its slot (the run then reports the failure) rather than hang.
  const refused = (who, p) => { fail(`${who}: ${JSON.stringify(p)}`); stop(); };
  function startFlow(caller, callee, iceToCallee, iceToCaller) {
    if (!running || now() > deadline) return stop();
    const flow = { t0: now(), gotByCaller: 0, gotByCallee: 0, ended: 0, callId: null };
    const maybeEnd = () => {
      if (flow.gotByCaller === opts.ice && flow.gotByCallee === opts.ice) caller.emit("call:end", { callId: flow.callId });
    };
    const onIce = (who) => (buf, start, end) => {
      if (measuring) relay.push(now() - stampOf(buf, start, end));
      if (who === caller) flow.gotByCaller++;
      else flow.gotByCallee++;
      maybeEnd();
    };
    caller.onIce = onIce(caller);
    callee.onIce = onIce(callee);
    const ended = () => {
      if (++flow.ended < 2) return;
      if (measuring) done++;
      startFlow(caller, callee, iceToCallee, iceToCaller);
    };
    callee.onEvent = (event, p) => {
      if (event === "call:incoming") callee.emit("call:accept", { callId: p.callId, from: caller.name });
      else if (event === "call:offer") {
        callee.emit("call:answer", { to: caller.name, answer });
        for (let i = 0; i < opts.ice; i++) callee.send(iceToCaller(now()));
      } else if (event === "call:ended") ended();
      else if (event === "error") refused(`callee ${callee.name}`, p);
    };
    caller.onEvent = (event, p) => {
      if (event === "call:initiated") flow.callId = p.callId;
      else if (event === "call:accepted") caller.emit("call:offer", { to: callee.name, offer });
      else if (event === "call:answer") {
        if (measuring) setup.push(now() - flow.t0);
        for (let i = 0; i < opts.ice; i++) caller.send(iceToCallee(now()));
      } else if (event === "call:ended") ended();
      else if (event === "error") refused(`caller ${caller.name}`, p);
    };
    caller.emit("call:initiate", { to: callee.name, callType: "video" });
  }

  for (const [caller, callee] of pairs) {
    active++;
    startFlow(caller, callee, iceMessage(callee.name), iceMessage(caller.name));
  }
  await sleep(opts.warmup * 1000);
  measuring = true;
  const w = new Window();
  await sleep(opts.duration * 1000);
  measuring = false;
  const m = w.close();
  running = false;
  await withTimeout(new Promise((r) => { drained = r; if (active === 0) r(); }), 10, "flows: draining");
  closeAll(clients);
  return {
    calls: opts.calls, ice: opts.ice, flows: done, flows_per_s: done / m.wall, ...m,
    setup: percentiles(setup), relay: percentiles(relay),
  };
}

// Relays between `pairs` connected calls. With `fixedRate` 0: each direction keeps `window`
// candidates in flight (saturation); else candidates go out at that total rate (open loop).
async function pump(fixedRate) {
  const deadline = now() + opts.timeout * 1000;
  const { clients, pairs } = await openPairs(opts.pairs, deadline);
  const offer = sdp("offer");
  const answer = sdp("answer");
  await withTimeout(Promise.all(pairs.map(([a, b]) => establish(a, b, offer, answer))), 30, "call set-up");
  let measuring = false;
  let running = true;
  let received = 0;
  let sent = 0;
  let inFlight = 0;
  const lat = [];
  // A sender: a client with the message it sends its partner.
  const senders = [];
  for (const [a, b] of pairs) {
    const toB = { from: a, msg: iceMessage(b.name) };
    const toA = { from: b, msg: iceMessage(a.name) };
    senders.push(toB, toA);
    // What b receives came from a: in saturation, a sends the next one.
    b.onIce = (buf, start, end) => {
      inFlight--;
      if (measuring) { received++; lat.push(now() - stampOf(buf, start, end)); }
      if (!fixedRate && running) { inFlight++; sent++; a.send(toB.msg(now())); }
    };
    a.onIce = (buf, start, end) => {
      inFlight--;
      if (measuring) { received++; lat.push(now() - stampOf(buf, start, end)); }
      if (!fixedRate && running) { inFlight++; sent++; b.send(toA.msg(now())); }
    };
  }
  let ticker = null;
  if (!fixedRate) {
    for (const s of senders) for (let i = 0; i < opts.window; i++) { inFlight++; sent++; s.from.send(s.msg(now())); }
  } else {
    // Open loop: every millisecond, send what is due since the start, round robin over the senders.
    const t0 = now();
    let next = 0;
    ticker = setInterval(() => {
      if (!running) return;
      const due = Math.floor(((now() - t0) / 1000) * fixedRate) - sent;
      for (let i = 0; i < due && i < 1000; i++) {
        const s = senders[next];
        next = (next + 1) % senders.length;
        inFlight++;
        sent++;
        s.from.send(s.msg(now()));
      }
    }, 1);
  }
  await sleep(opts.warmup * 1000);
  measuring = true;
  const w = new Window();
  await sleep(opts.duration * 1000);
  measuring = false;
  const m = w.close();
  running = false;
  if (ticker) clearInterval(ticker);
  const drainUntil = now() + 5000;
  while (inFlight > 0 && now() < drainUntil) await sleep(20);
  const errors = clients.reduce((s, c) => s + c.errors, 0);
  closeAll(clients);
  return {
    pairs: opts.pairs, window: fixedRate ? null : opts.window, target_rate: fixedRate || null,
    relayed: received, rate: received / m.wall, per_server_cpu_s: m.server_cpu > 0 ? received / m.server_cpu : null,
    ...percentiles(lat), ...m, lost: inFlight, errors,
  };
}

// The protocol rules a peer must keep, checked on every server (the smoke run fails on any).
async function check() {
  const deadline = now() + opts.timeout * 1000;
  const t = opts.tag;
  // across two nodes (--layout cross): y on the second, so every rule holds between nodes, and y's
  // take-over below comes from the first
  const other = opts.layout === "cross" ? opts.port2 : opts.port;
  const { clients } = await openAll([`${t}-x`, `${t}-y`, `${t}-z`], 3, false, deadline, [opts.port, other, opts.port]);
  const [x, y, z] = clients;
  const inbox = new Map(clients.map((c) => [c, []]));
  for (const c of clients) c.onEvent = (event, p) => inbox.get(c).push([event, p]);
  const next = async (c, what) => {
    const until = now() + 3000;
    while (inbox.get(c).length === 0) {
      if (now() > until) throw new Error(`check: ${c.name} got nothing while waiting for ${what}`);
      await sleep(5);
    }
    return inbox.get(c).shift();
  };
  const expect = async (c, event, fields, what) => {
    const [got, p] = await next(c, what);
    if (got !== event) { fail(`${what}: ${c.name} got ${got} ${JSON.stringify(p)}, expected ${event}`); return p; }
    for (const [k, v] of Object.entries(fields)) {
      if (p[k] !== v) fail(`${what}: ${event}.${k} is ${JSON.stringify(p[k])}, expected ${JSON.stringify(v)}`);
    }
    return p;
  };
  const nothing = async (c, what) => {
    await sleep(100);
    if (inbox.get(c).length) fail(`${what}: ${c.name} got ${JSON.stringify(inbox.get(c)[0])}`);
  };
  const cand = JSON.parse(CANDIDATE_HEAD + 'x"}');
  // errors
  x.emit("call:initiate", { to: `${t}-nobody`, callType: "audio" });
  await expect(x, "error", { code: "USER_OFFLINE", message: "User not available" }, "offline callee");
  x.emit("call:initiate", { to: x.name, callType: "audio" });
  await expect(x, "error", { code: "INVALID_TARGET" }, "calling yourself");
  x.emit("ice:candidate", { to: y.name, candidate: cand });
  await expect(x, "error", { code: "NOT_IN_CALL" }, "relay outside a call");
  x.emit("no:such:event", {});
  await expect(x, "error", { code: "INVALID_PAYLOAD" }, "unknown event");
  x.emit("call:accept", { callId: "nope" });
  await expect(x, "error", { code: "CALL_NOT_FOUND", message: "Call not found or expired" }, "accept unknown");
  // a call x -> y; z finds both busy
  x.emit("call:initiate", { to: y.name, callType: "video" });
  const incoming = await expect(y, "call:incoming", { from: x.name, callType: "video" }, "incoming");
  const initiated = await expect(x, "call:initiated", { to: y.name, callId: incoming.callId }, "initiated");
  const callId = initiated.callId;
  z.emit("call:initiate", { to: y.name, callType: "audio" });
  await expect(z, "error", { code: "USER_BUSY", message: "User not available" }, "busy callee");
  x.emit("call:initiate", { to: z.name, callType: "audio" });
  await expect(x, "error", { code: "ALREADY_IN_CALL" }, "caller in a call");
  x.emit("call:accept", { callId, from: x.name });
  await expect(x, "error", { code: "CALL_NOT_FOUND" }, "the caller accepting");
  z.emit("ice:candidate", { to: x.name, candidate: cand });
  await expect(z, "error", { code: "NOT_IN_CALL" }, "relay from a stranger");
  await nothing(x, "relay from a stranger");
  y.emit("call:accept", { callId, from: x.name });
  await expect(x, "call:accepted", { callId, by: y.name }, "accepted (caller)");
  await expect(y, "call:accepted", { callId, by: y.name }, "accepted (callee)");
  x.emit("call:offer", { to: y.name, offer: { type: "offer", sdp: "v=0\r\n" } });
  const o = await expect(y, "call:offer", { from: x.name, callType: "video", callId }, "offer relay");
  if (o.offer?.sdp !== "v=0\r\n") fail("offer relay: body changed");
  y.emit("call:answer", { to: x.name, answer: { type: "answer", sdp: "v=0\r\n" } });
  await expect(x, "call:answer", { from: y.name, callId }, "answer relay");
  y.emit("ice:candidate", { to: x.name, candidate: null });
  const c = await expect(x, "ice:candidate", { from: y.name, callId, candidate: null }, "null candidate relay");
  void c;
  x.emit("ice:candidate", { to: y.name, candidate: cand });
  const c2 = await expect(y, "ice:candidate", { from: x.name, callId }, "candidate relay");
  if (JSON.stringify(c2.candidate) !== JSON.stringify(cand)) fail("candidate relay: body changed");
  y.emit("call:end", { callId });
  await expect(x, "call:ended", { callId, by: y.name, reason: "hangup" }, "ended (caller)");
  await expect(y, "call:ended", { callId, by: y.name, reason: "hangup" }, "ended (callee)");
  // cancel while ringing
  x.emit("call:initiate", { to: y.name, callType: "audio" });
  const inc2 = await expect(y, "call:incoming", {}, "incoming 2");
  await expect(x, "call:initiated", {}, "initiated 2");
  x.emit("call:end", { callId: inc2.callId });
  await expect(x, "call:ended", { callId: inc2.callId, by: x.name, reason: "cancelled" }, "cancelled");
  await expect(y, "call:ended", { callId: inc2.callId, by: x.name, reason: "cancelled" }, "cancelled (callee)");
  // reject
  x.emit("call:initiate", { to: y.name, callType: "audio" });
  const inc3 = await expect(y, "call:incoming", {}, "incoming 3");
  await expect(x, "call:initiated", {}, "initiated 3");
  y.emit("call:reject", { callId: inc3.callId, from: x.name });
  await expect(x, "call:rejected", { callId: inc3.callId, by: y.name }, "rejected");
  await expect(y, "call:rejected", { callId: inc3.callId, by: y.name }, "rejected (callee)");
  // ring timeout (the server runs with a short --ring-timeout in the check)
  z.emit("call:initiate", { to: y.name, callType: "audio" });
  const inc4 = await expect(y, "call:incoming", {}, "incoming 4");
  await expect(z, "call:initiated", {}, "initiated 4");
  await expect(z, "call:timeout", { callId: inc4.callId }, "timeout (caller)");
  await expect(y, "call:timeout", { callId: inc4.callId }, "timeout (callee)");
  // a party disconnects mid-call
  x.emit("call:initiate", { to: z.name, callType: "audio" });
  const inc5 = await expect(z, "call:incoming", {}, "incoming 5");
  await expect(x, "call:initiated", {}, "initiated 5");
  z.emit("call:accept", { callId: inc5.callId });
  await expect(x, "call:accepted", {}, "accepted 5");
  await expect(z, "call:accepted", {}, "accepted 5 (callee)");
  z.close();
  await expect(x, "call:ended", { callId: inc5.callId, by: z.name, reason: "disconnected" }, "disconnected");
  x.emit("call:initiate", { to: z.name, callType: "audio" });
  await expect(x, "error", { code: "USER_OFFLINE" }, "calling a user that left");
  // take-over of a user id
  const y2 = new Client(y.name);
  inbox.set(y2, []);
  y2.onEvent = (event, p) => inbox.get(y2).push([event, p]);
  await withTimeout(y2.open(false), 5, "take-over join");
  await expect(y, "error", { code: "SESSION_REPLACED" }, "replaced");
  closeAll([x, y, y2]);
  return { checks: 27 };
}

// -- main ------------------------------------------------------------------------------------------

const scenarios = { ramp, flows, relay: () => pump(0), fixed: () => pump(opts.rate), check };
const run = scenarios[scenario];
if (!run) {
  console.error(`usage: node gen.mjs {${Object.keys(scenarios).join("|")}} --port P --pid PID [--option value]...`);
  process.exit(2);
}
const hardStop = setTimeout(() => {
  console.log(JSON.stringify({ scenario, error: `time limit of ${opts.timeout + 30} s reached`, failures }));
  process.exit(1);
}, (opts.timeout + 30) * 1000);
try {
  const result = await run();
  console.log(JSON.stringify({ scenario, ...result, failures }));
  clearTimeout(hardStop);
  process.exit(0);
} catch (err) {
  console.log(JSON.stringify({ scenario, error: String(err && err.message ? err.message : err), failures }));
  process.exit(1);
}
