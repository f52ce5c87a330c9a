// Issue 14, a rolling deploy with real browsers: two headless Chromium pages (examples/browser) in a
// video call through two callbox nodes on one Redis, behind a round-robin TCP proxy; the node bob's
// page is on gets SIGTERM. Driven by tests/multinode/test_handover.py, inside a loopback-only network
// namespace (tests/browser/in_netns.py): redis-server, both nodes, the proxy and Chromium are all
// started from here, so every address is 127.0.0.1.
//
//   node handover_browser.mjs --callbox .venv/bin/callbox --static examples/browser --artifacts DIR
//                             [--chromium /usr/bin/chromium] [--redis-server redis-server]
//
// Prints one JSON object per line: {"step": ...} as it goes, then {"result": "pass" | "fail", ...};
// exits 0 on a pass.
//
// The proxy sends each WebSocket (an HTTP request with "Upgrade: websocket") to the next node in
// turn, skipping one that refuses the connection; plain HTTP (the page and its scripts) goes to the
// first node that accepts. The pages use ?transport=websocket: a load balancer without affinity
// serves WebSocket clients only (long-polling needs sticky sessions).

import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import path from "node:path";
import { parseArgs } from "node:util";
import { STEP_TIMEOUT, User as PageUser, allFrames, check, framesDecoded, waitConnected } from "../browser/page.mjs";

// playwright-core is installed in tests/browser (npm ci there).
const { chromium } = createRequire(new URL("../browser/", import.meta.url))("playwright-core");

const { values: opt } = parseArgs({
  options: {
    callbox: { type: "string" },
    static: { type: "string" },
    artifacts: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    "redis-server": { type: "string", default: "redis-server" },
  },
});

const SCENARIO_TIMEOUT = 60_000;
const SHUTDOWN_TIMEOUT = 5; // s: the nodes' --shutdown-timeout
const NODE_ARGS = ["--reconnect-grace", "10", "--shutdown-timeout", String(SHUTDOWN_TIMEOUT), "--node-timeout", "2",
  "--log-format", "json"];

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const step = (what, extra = {}) => out({ step: what, t: Math.round(performance.now()), ...extra });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen({ host: "127.0.0.1", port: 0 }, resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

// -- processes: redis-server and the callbox nodes ------------------------------------------------

function ping(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port }, () => s.write("*1\r\n$4\r\nPING\r\n"));
    s.setTimeout(500, () => s.destroy());
    s.on("data", (d) => {
      resolve(d.toString().startsWith("+PONG"));
      s.destroy();
    });
    s.on("error", () => resolve(false));
    s.on("close", () => resolve(false));
  });
}

async function startRedis() {
  const port = await freePort();
  const proc = spawn(opt["redis-server"], ["--bind", "127.0.0.1", "--port", String(port), "--save", "",
    "--appendonly", "no", "--databases", "1"], { stdio: ["ignore", "pipe", "pipe"] });
  const redis = { proc, port, output: [], url: `redis://127.0.0.1:${port}/0` };
  proc.stdout.on("data", (d) => redis.output.push(d.toString()));
  proc.stderr.on("data", (d) => redis.output.push(d.toString()));
  const deadline = Date.now() + 10_000;
  while (!(await ping(port))) {
    check(proc.exitCode === null, `redis-server exited: ${redis.output.join("")}`);
    check(Date.now() < deadline, `redis-server did not answer PING: ${redis.output.join("")}`);
    await sleep(20);
  }
  step("redis started", { url: redis.url });
  return redis;
}

async function startNode(id, redisUrl) {
  const argv = ["--host", "127.0.0.1", "--port", "0", "--static", opt.static, "--redis-url", redisUrl,
    "--node-id", id, ...NODE_ARGS];
  const proc = spawn(opt.callbox, argv, { stdio: ["ignore", "pipe", "pipe"] });
  const node = { id, proc, argv, output: [], exit: null };
  proc.stderr.on("data", (d) => node.output.push(d.toString()));
  node.exited = new Promise((resolve) => proc.on("exit", (code, signal) => {
    node.exit = { code, signal, at: performance.now() };
    resolve(node.exit);
  }));
  node.url = await new Promise((resolve, reject) => {
    let seen = "";
    const timer = setTimeout(() => reject(new Error(`node ${id} did not start: ${seen}${node.output.join("")}`)), 20_000);
    proc.stdout.on("data", (d) => {
      seen += d.toString();
      node.output.push(d.toString());
      const m = seen.match(/listening on (https?:\/\/[^\s/]+)\//);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    node.exited.then((e) => reject(new Error(`node ${id} exited (${JSON.stringify(e)}): ${seen}${node.output.join("")}`)));
  });
  node.port = Number(new URL(node.url).port);
  // It listens at once and is ready once Redis answers.
  const deadline = Date.now() + 20_000;
  for (;;) {
    const status = await fetch(`${node.url}/readyz`).then((r) => r.status, (e) => String(e));
    if (status === 200) break;
    check(Date.now() < deadline, `node ${id}: /readyz ${status}: ${node.output.join("")}`);
    await sleep(50);
  }
  step(`node ${id} started`, { url: node.url });
  return node;
}

async function stop(proc) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once("exit", r));
  proc.kill("SIGKILL");
  await exited;
}

// -- the load balancer ----------------------------------------------------------------------------

const WEBSOCKET = /^upgrade:\s*websocket\s*$/im;

class RoundRobinProxy {
  constructor(ports) {
    this.ports = ports;
    this.turn = 0;
    this.sockets = new Set();
    this.websockets = []; // the node port each WebSocket went to, in order
    this.skipped = 0;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async listen() {
    this.server = net.createServer((client) => this.accept(client));
    await new Promise((resolve) => this.server.listen({ host: "127.0.0.1", port: 0 }, resolve));
    this.port = this.server.address().port;
  }

  connect(port) {
    return new Promise((resolve) => {
      const s = net.connect({ host: "127.0.0.1", port });
      s.once("connect", () => {
        s.removeAllListeners("error");
        resolve(s);
      });
      s.once("error", () => resolve(null));
    });
  }

  // The first node that accepts, from `order`.
  async pick(order) {
    for (const port of order) {
      const s = await this.connect(port);
      if (s) return { s, port };
      this.skipped += 1;
    }
    return null;
  }

  accept(client) {
    this.sockets.add(client);
    client.on("close", () => this.sockets.delete(client));
    client.on("error", () => client.destroy());
    client.pause();
    let head = Buffer.alloc(0);
    const onData = async (chunk) => {
      head = Buffer.concat([head, chunk]);
      if (!head.includes("\r\n\r\n") && head.length < 16384) return;
      client.off("data", onData);
      client.pause();
      let order = this.ports;
      const ws = WEBSOCKET.test(head.toString("latin1"));
      if (ws) {
        const n = this.ports.length;
        order = Array.from({ length: n }, (_, i) => this.ports[(this.turn + i) % n]);
        this.turn += 1;
      }
      const picked = await this.pick(order);
      if (!picked) {
        client.destroy();
        return;
      }
      const { s: server, port } = picked;
      if (ws) this.websockets.push(port);
      this.sockets.add(server);
      server.on("close", () => this.sockets.delete(server));
      server.on("error", () => client.destroy());
      client.on("error", () => server.destroy());
      server.write(head);
      client.pipe(server);
      server.pipe(client);
      client.resume();
    };
    client.on("data", onData);
    client.resume();
  }

  async close() {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

// -- pages (as tests/browser/run.mjs) -------------------------------------------------------------

class User extends PageUser {
  socket() {
    return this.page.evaluate(() => ({
      id: window.demo.socket.id,
      transport: window.demo.socket.io.engine?.transport?.name,
      connected: window.demo.socket.connected,
      recovered: window.demo.socket.recovered,
    }));
  }
}

async function openUser(browser, base, name, peer) {
  const context = await browser.newContext({ viewport: { width: 760, height: 820 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  const user = new User(name, page);
  await page.goto(`${base}/index.html?${new URLSearchParams({ user: name, peer, transport: "websocket" })}`);
  await page.click("#join");
  await page.waitForFunction((n) => window.demo?.me === n, name);
  await user.waitState("idle");
  step(`${name} joined`, await user.socket());
  return user;
}

// Frames decoded rise by more than `more` on each side, within STEP_TIMEOUT (polled from here:
// getStats() is async, and waitForFunction takes a promise for a truthy value).
async function framesRise(users, from, more) {
  for (const u of users) {
    const deadline = Date.now() + STEP_TIMEOUT;
    let now = await framesDecoded(u);
    while (now <= from[u.name] + more) {
      check(Date.now() < deadline, `${u.name}: video frames decoded ${from[u.name]} -> ${now} in ${STEP_TIMEOUT} ms`);
      await sleep(100);
      now = await framesDecoded(u);
    }
  }
}

// Both pages show the call: connected, nobody away, the media connected.
async function callAsBefore(users, timeout) {
  await Promise.all(users.map((u) => u.waitFor("in the call as before", () => window.demo.socket.connected
    && document.body.dataset.state === "in-call" && !document.body.dataset.reconnecting
    && window.demo.pc?.connectionState === "connected", null, timeout)));
}

// Poll `node`'s /metrics until callbox_cluster_nodes is `want` (within `ms`).
async function clusterNodes(node, want, ms) {
  const deadline = Date.now() + ms;
  let last = null;
  for (;;) {
    try {
      const body = await (await fetch(`${node.url}/metrics`, { signal: AbortSignal.timeout(2000) })).text();
      const line = body.split("\n").find((l) => l.startsWith("callbox_cluster_nodes "));
      last = line === undefined ? undefined : Number(line.split(" ")[1]);
    } catch (err) {
      last = String(err);
    }
    if (last === want) return;
    check(Date.now() < deadline, `${node.id}: callbox_cluster_nodes is ${last}, not ${want}, after ${ms} ms`);
    await sleep(50);
  }
}

const nodeOf = (socketId) => socketId.slice(0, socketId.indexOf("."));

// -- the scenario ---------------------------------------------------------------------------------

// What each page was told about the call since the SIGTERM.
const told = ["call:reconnecting", "call:reconnected", "call:ended"];

async function handover(ctx) {
  const [n1, n2] = ctx.nodes;
  const proxy = ctx.proxy;
  const a = await ctx.user("alice", "bob");
  const b = await ctx.user("bob", "alice");
  const before = { alice: await a.socket(), bob: await b.socket() };
  check(nodeOf(before.alice.id) === "n1" && nodeOf(before.bob.id) === "n2", `sockets ${JSON.stringify(before)}`);
  await a.recordEvents();
  await b.recordEvents();
  await a.page.click("#video-call");
  await b.waitState("ringing");
  await b.page.click("#accept");
  await Promise.all([waitConnected(a), waitConnected(b)]);
  const f0 = await allFrames([a, b]);
  await framesRise([a, b], f0, 10);
  const callId = await a.page.evaluate(() => window.demo.call.id);
  step("in a video call, alice on n1, bob on n2", { callId, frames: await allFrames([a, b]) });

  // The rolling deploy: n2 drains.
  const frames = [await allFrames([a, b])];
  const termAt = performance.now();
  n2.proc.kill("SIGTERM");
  step("SIGTERM n2");
  // bob's page reconnects through the proxy to n1 and takes its call back; both are in the call.
  await callAsBefore([a, b], STEP_TIMEOUT);
  for (const u of [a, b]) {
    await u.waitFor("told bob reconnected", () => window.testEvents.some((e) => e.event === "call:reconnected" && e.payload?.userId === "bob"), null, 5000);
  }
  const backAfter = Math.round(performance.now() - termAt);
  const after = await b.socket();
  check(after.connected && after.transport === "websocket", `bob: ${JSON.stringify(after)}`);
  if (!after.recovered) {
    check(nodeOf(after.id) === "n1", `bob is back on ${after.id}, not on n1`);
    const joined = (await b.events("user:joined")).map((e) => e.payload);
    check(joined.length === 1 && joined[0].resumed === true && joined[0].call?.callId === callId && joined[0].call?.peer === "alice"
      && joined[0].call?.role === "callee" && joined[0].socketId === after.id, `bob's user:joined on his return: ${JSON.stringify(joined)}`);
  }
  const events = {};
  // what each page was told about the call since the SIGTERM
  for (const u of [a, b]) events[u.name] = (await u.events()).map((e) => e.event).filter((e) => told.includes(e));
  check(JSON.stringify(events.alice) === JSON.stringify(["call:reconnecting", "call:reconnected"]),
    `alice's call events: ${JSON.stringify(events.alice)}`);
  for (const u of ["alice", "bob"]) check(!events[u].includes("call:ended"), `${u} got call:ended: ${events[u]}`);
  check(proxy.websockets.length === 3 && proxy.websockets[2] === n1.port, `WebSockets went to ${proxy.websockets}`);
  step("both back in the call", { afterMs: backAfter, bob: after, events });

  // The media never stopped: frames decoded kept rising on both sides, and still do.
  frames.push(await allFrames([a, b]));
  await framesRise([a, b], frames[1], 10);
  frames.push(await allFrames([a, b]));
  for (const u of ["alice", "bob"]) {
    const [x, y, z] = frames.map((f) => f[u]);
    check(y > x && z > y, `${u}: video frames decoded ${[x, y, z]}`);
  }
  step("video kept flowing", { frames });

  // n2 exits 0 within --shutdown-timeout.
  const exit = await Promise.race([n2.exited, sleep((SHUTDOWN_TIMEOUT + 2) * 1000).then(() => null)]);
  check(exit !== null, `n2 still running ${SHUTDOWN_TIMEOUT + 2} s after SIGTERM`);
  const exitSeconds = Math.round(exit.at - termAt) / 1000;
  check(exit.code === 0, `n2 exited ${JSON.stringify(exit)}`);
  check(exitSeconds <= SHUTDOWN_TIMEOUT, `n2 took ${exitSeconds} s to exit (> --shutdown-timeout ${SHUTDOWN_TIMEOUT})`);
  step("n2 exited 0", { seconds: exitSeconds });

  // Once n2 is gone from the cluster (claimed by n1), the call goes on: nobody was told bob is away
  // again or that the call ended. (That each party is told exactly once that bob is back is
  // test_handover.py's Node scenario's to check.)
  await clusterNodes(n1, 1, 8000);
  for (const u of [a, b]) {
    const later = (await u.events()).map((e) => e.event).filter((e) => told.includes(e));
    check(later.filter((e) => e === "call:reconnecting").length === events[u.name].filter((e) => e === "call:reconnecting").length
      && !later.includes("call:ended"), `${u.name}, after n2 left the cluster: ${JSON.stringify(later)}`);
  }
  await callAsBefore([a, b], STEP_TIMEOUT);

  // Signalling works: alice hangs up, bob is told.
  await a.page.click("#hangup");
  const ended = { alice: await a.waitOutcome("hangup"), bob: await b.waitOutcome("hangup") };
  check(ended.alice === "You hung up." && ended.bob === "alice hung up.", `ended: ${JSON.stringify(ended)}`);
  return { backAfterMs: backAfter, exitSeconds, recovered: after.recovered, frames, events, ended };
}

// -- main -----------------------------------------------------------------------------------------

async function main() {
  const args = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
  ];
  const ctx = { users: [], nodes: [], redis: null, browser: null, proxy: null };
  let failure = null;
  let detail = null;
  try {
    ctx.redis = await startRedis();
    ctx.nodes = await Promise.all(["n1", "n2"].map((id) => startNode(id, ctx.redis.url)));
    ctx.proxy = new RoundRobinProxy(ctx.nodes.map((n) => n.port));
    await ctx.proxy.listen();
    ctx.browser = await chromium.launch({ executablePath: opt.chromium, headless: true, args });
    step("chromium started", { version: ctx.browser.version() });
    ctx.user = async (user, peer) => {
      const u = await openUser(ctx.browser, ctx.proxy.url, user, peer);
      ctx.users.push(u);
      return u;
    };
    let timer;
    const overall = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`scenario took over ${SCENARIO_TIMEOUT / 1000} s`)), SCENARIO_TIMEOUT);
    });
    try {
      detail = await Promise.race([handover(ctx), overall]);
    } finally {
      clearTimeout(timer);
    }
    for (const u of ctx.users) check(u.problems.length === 0, `${u.name}: errors in the page: ${u.problems.join("; ")}`);
  } catch (err) {
    failure = err;
  }
  const report = { scenario: "handover" };
  if (failure) {
    report.result = "fail";
    report.error = String(failure.stack ?? failure);
    report.pages = {};
    for (const u of ctx.users) {
      const page = { problems: u.problems, console: u.console.slice(-40) };
      try {
        page.words = await u.words();
        page.log = await u.log();
        mkdirSync(opt.artifacts, { recursive: true });
        page.screenshot = path.join(opt.artifacts, `handover-failed-${u.name}.png`);
        await u.page.screenshot({ path: page.screenshot, fullPage: true });
      } catch (e) {
        page.unavailable = String(e);
      }
      report.pages[u.name] = page;
    }
    report.nodes = Object.fromEntries(ctx.nodes.map((n) => [n.id, { exit: n.exit, log: n.output.join("").slice(-6000) }]));
  } else {
    report.result = "pass";
    report.detail = detail;
  }
  await ctx.browser?.close().catch(() => {});
  await ctx.proxy?.close().catch(() => {});
  for (const n of ctx.nodes) await stop(n.proc);
  await stop(ctx.redis?.proc);
  out(report);
  process.exitCode = failure ? 1 : 0;
}

main().catch((err) => {
  out({ result: "fail", scenario: "handover", error: String(err.stack ?? err) });
  process.exitCode = 1;
});
