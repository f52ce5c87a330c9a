// Two headless Chromium pages place calls through a real callbox process, one scenario per run.
//
//   node run.mjs --scenario call --callbox .venv/bin/callbox --static examples/browser --artifacts DIR
//                [--tls-cert F --tls-key F --spki HASH] [--screenshot-copy PATH]
//
// Run it inside a loopback-only network namespace (tests/browser/in_netns.py; tests/browser/test_browser.py
// does): callbox and Chromium are started from here, so they are in it too, and every ICE
// candidate is 127.0.0.1. Prints one JSON object per line: {"step": ...} as it goes, then
// {"result": "pass" | "fail", ...}; exits 0 on a pass.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";
import { STEP_TIMEOUT, User, allFrames, check, waitConnected } from "./page.mjs";
import { TcpProxy } from "./tcpproxy.mjs";

const { values: opt } = parseArgs({
  options: {
    scenario: { type: "string" },
    callbox: { type: "string" },
    static: { type: "string" },
    artifacts: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    "tls-cert": { type: "string" },
    "tls-key": { type: "string" },
    spki: { type: "string" },
    "screenshot-copy": { type: "string" },
  },
});

const RING_TIMEOUT = 2; // seconds, for the timeout scenario's server
const AUTH_SECRET = "e2e-auth-secret-of-at-least-32-bytes"; // HS256 wants 32 bytes or more
const SCENARIO_TIMEOUT = 60_000;

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const step = (what, extra = {}) => out({ step: what, t: Math.round(performance.now()), ...extra });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// -- callbox ---------------------------------------------------------------------------------

async function startCallbox(extra = []) {
  const argv = ["--host", "127.0.0.1", "--port", "0", "--static", opt.static, ...extra];
  const proc = spawn(opt.callbox, argv, { stdio: ["ignore", "pipe", "pipe"] });
  const server = { proc, argv, output: [] };
  proc.stderr.on("data", (d) => server.output.push(d.toString()));
  server.url = await new Promise((resolve, reject) => {
    let seen = "";
    const timer = setTimeout(() => reject(new Error(`callbox did not start: ${seen}${server.output.join("")}`)), 10_000);
    proc.stdout.on("data", (d) => {
      seen += d.toString();
      server.output.push(d.toString());
      const m = seen.match(/listening on (https?:\/\/[^\s/]+)\//);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    proc.on("exit", (code) => reject(new Error(`callbox exited (${code}): ${seen}${server.output.join("")}`)));
  });
  proc.removeAllListeners("exit");
  step("callbox started", { url: server.url, argv });
  return server;
}

async function stopCallbox(server) {
  if (!server || server.proc.exitCode !== null) return;
  const exited = new Promise((r) => server.proc.once("exit", r));
  server.proc.kill("SIGTERM");
  const timer = setTimeout(() => server.proc.kill("SIGKILL"), 5_000);
  await exited;
  clearTimeout(timer);
}

// -- pages -----------------------------------------------------------------------------------

// Each user is a page in a browser context of its own: another browser profile, so another device
// (the page keeps its deviceId in the profile's localStorage). `label` names a second device of one
// user in the report (the user id is `name`).
async function openUser(browser, base, name, peer, { transport, token, join = true, via, label } = {}) {
  if (via) base = via.url; // through a TcpProxy
  const context = await browser.newContext({ viewport: { width: 760, height: 820 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  const user = new User(label ?? name, page);
  const query = new URLSearchParams({ user: name, peer });
  if (transport) query.set("transport", transport);
  if (token) query.set("token", token);
  await page.goto(`${base}/index.html?${query}`);
  if (!join) return user;
  await page.click("#join");
  await page.waitForFunction((n) => window.demo?.me === n, name);
  await user.waitState("idle");
  step(`${user.name} joined`, { transport: await page.evaluate(() => window.demo.socket.io.engine.transport.name) });
  return user;
}

// -- the checks of a live call ---------------------------------------------------------------

// The remote <video> shows frames: a size, and a clock that moves.
async function checkRemoteFrames(user) {
  const video = () => {
    const v = document.getElementById("remote-video");
    return { width: v.videoWidth, height: v.videoHeight, time: v.currentTime, paused: v.paused };
  };
  try {
    await user.page.waitForFunction(() => {
      const v = document.getElementById("remote-video");
      return v.videoWidth > 0 && v.currentTime > 0;
    }, null, { timeout: STEP_TIMEOUT });
  } catch {
    throw new Error(`${user.name}: the remote video shows no frames: ${JSON.stringify(await user.page.evaluate(video))}`);
  }
  const first = await user.page.evaluate(video);
  await sleep(1000);
  const second = await user.page.evaluate(video);
  check(second.time - first.time > 0.4, `${user.name}: the remote video does not advance: ${JSON.stringify([first, second])}`);
  return second;
}

// Every ICE candidate either side gathered, and the pair in use, are on loopback.
async function checkLoopback(user) {
  const report = await user.page.evaluate(async () => {
    const stats = [...(await window.demo.pc.getStats()).values()];
    const byId = new Map(stats.map((s) => [s.id, s]));
    const transport = stats.find((s) => s.type === "transport" && s.selectedCandidatePairId);
    const pair = transport && byId.get(transport.selectedCandidatePairId);
    return {
      candidates: stats.filter((s) => s.type === "local-candidate" || s.type === "remote-candidate")
        .map((s) => `${s.type === "local-candidate" ? "local" : "remote"} ${s.candidateType} ${s.protocol} ${s.address}:${s.port}`),
      selected: pair ? [byId.get(pair.localCandidateId)?.address, byId.get(pair.remoteCandidateId)?.address] : null,
    };
  });
  const loopback = (a) => /^127\./.test(a) || a === "::1";
  check(report.candidates.length > 0, `${user.name}: no ICE candidates in the stats`);
  for (const c of report.candidates) check(loopback(c.split(" ").at(-1).replace(/:\d+$/, "").replace(/^\[|\]$/g, "")), `${user.name}: a candidate off loopback: ${c}`);
  check(report.selected && report.selected.every(loopback), `${user.name}: selected pair ${JSON.stringify(report.selected)}`);
  return report;
}

// What callbox logged (--log-format json) when an Engine.IO session ended: its close reason, which
// is the Socket.IO disconnect reason ("client close": a close packet or WebSocket close frame came;
// "transport close", "ping timeout": the connection was lost).
function closeReasonLogged(server, sid) {
  for (const line of server.output.join("").split("\n")) {
    const brace = line.indexOf("{");
    if (brace < 0 || !line.includes("session closed") || !line.includes(sid)) continue;
    try {
      const entry = JSON.parse(line.slice(brace));
      if (entry.msg === "session closed" && entry.sid === sid) return entry.reason;
    } catch {
      // not a whole JSON line
    }
  }
  return null;
}

async function serverCloseReason(server, sid, timeout = STEP_TIMEOUT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const reason = closeReasonLogged(server, sid);
    if (reason !== null) return reason;
    if (Date.now() > deadline) throw new Error(`callbox logged no end of session ${sid} within ${timeout} ms`);
    await sleep(50);
  }
}

// A video call from alice (straight to callbox) to bob (through `proxy`, so that his signalling
// can be cut), connected, frames arriving both ways, every event recorded.
async function liveCallThroughProxy(ctx, proxy) {
  const a = await ctx.user("alice", "bob");
  const b = await ctx.user("bob", "alice", { via: proxy });
  await a.recordEvents();
  await b.recordEvents();
  await a.page.click("#video-call");
  await b.waitState("ringing");
  await b.page.click("#accept");
  await Promise.all([waitConnected(a), waitConnected(b)]);
  await checkRemoteFrames(a);
  await checkRemoteFrames(b);
  step("connected, video both ways");
  return { a, b };
}

const socketOf = (user) => user.page.evaluate(() => ({
  id: window.demo.socket.id,
  engine: window.demo.socket.io.engine?.id,
  transport: window.demo.socket.io.engine?.transport?.name,
  connected: window.demo.socket.connected,
  recovered: window.demo.socket.recovered,
}));

// Both pages show the call as before: connected, nobody away, the media connected.
async function callAsBefore(users, timeout) {
  await Promise.all(users.map((u) => u.waitFor("back in the call as before", () => window.demo.socket.connected
    && document.body.dataset.state === "in-call" && !document.body.dataset.reconnecting
    && window.demo.pc?.connectionState === "connected", null, timeout)));
}

const RECONNECTING_WORDS = (who) => `${who} is reconnecting…`;

// One picture of the users' pages side by side (and each page alone, next to it).
async function screenshotPages(browser, users, file) {
  const shots = [];
  for (const u of users) shots.push(await u.page.screenshot({ fullPage: true }));
  const page = await browser.newPage({ viewport: { width: 16 + 776 * users.length, height: 400 } });
  const tile = (user, png) => `<figure><figcaption>${user.name}'s tab</figcaption><img src="data:image/png;base64,${png.toString("base64")}"></figure>`;
  await page.setContent(`<!doctype html><style>
      body { margin: 0; padding: 12px; background: #c9ced8; display: flex; gap: 16px; font: 15px system-ui, sans-serif; }
      figure { margin: 0; } figcaption { margin: 0 0 6px 4px; color: #333; }
      img { display: block; width: 760px; box-shadow: 0 1px 6px #0005; }
    </style>${users.map((u, i) => tile(u, shots[i])).join("")}`);
  mkdirSync(path.dirname(file), { recursive: true });
  await page.screenshot({ path: file, fullPage: true });
  await page.close();
  users.forEach((u, i) => writeFileSync(file.replace(/\.png$/, `-${u.name}.png`), shots[i]));
  step("screenshot", { path: file });
  return file;
}

// -- scenarios -------------------------------------------------------------------------------

// A calls B, B accepts, media flows both ways, A hangs up.
async function completeCall(ctx, { transport } = {}) {
  const a = await ctx.user("alice", "bob", { transport });
  const b = await ctx.user("bob", "alice", { transport });
  await a.page.click("#video-call");
  await a.waitState("calling");
  await b.waitState("ringing");
  check((await b.page.textContent("#caller")) === "alice", "bob: the incoming call is not from alice");
  // The caller sees itself while it rings.
  await a.page.waitForFunction(() => document.getElementById("local-video").videoWidth > 0);
  step("ringing");
  await screenshotPages(ctx.browser, [a, b], path.join(opt.artifacts, `${ctx.name}-ringing.png`));
  await b.page.click("#accept");
  await Promise.all([waitConnected(a), waitConnected(b)]);
  step("connected");
  const frames = { alice: await checkRemoteFrames(a), bob: await checkRemoteFrames(b) };
  step("remote video plays", frames);
  const ice = { alice: await checkLoopback(a), bob: await checkLoopback(b) };
  step("ICE on loopback only", ice);
  const transports = {};
  for (const u of [a, b]) transports[u.name] = await u.page.evaluate(() => window.demo.socket.io.engine.transport.name);
  if (transport) check(Object.values(transports).every((t) => t === transport), `transports ${JSON.stringify(transports)}`);
  step("signalling transports", transports);
  const words = { alice: await a.words(), bob: await b.words() };
  const screenshot = await screenshotPages(ctx.browser, [a, b], path.join(opt.artifacts, `${ctx.name}-mid-call.png`));
  if (opt["screenshot-copy"]) copyFileSync(screenshot, opt["screenshot-copy"]);
  await a.page.click("#hangup");
  const ended = { alice: await a.waitOutcome("hangup"), bob: await b.waitOutcome("hangup") };
  await Promise.all([a.waitState("idle"), b.waitState("idle")]);
  check(ended.alice === "You hung up." && ended.bob === "alice hung up.", `ended: ${JSON.stringify(ended)}`);
  for (const u of [a, b]) {
    const left = await u.page.evaluate(() => ({ pc: window.demo.pc, remote: document.getElementById("remote-video").srcObject }));
    check(left.pc === null && left.remote === null, `${u.name}: media left after the call`);
  }
  return { frames, transports, midCall: words, ended, screenshot, ice };
}

// An HS256 JWT, as an app's login would issue for callbox --auth-secret.
function jwt(sub, secret) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, exp: Math.floor(Date.now() / 1000) + 600 })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

// Audio only, on a server with token auth and STUN/TURN settings (its ICE servers are on loopback
// and nothing answers there: the call connects on host candidates all the same). A page without a
// token is refused in words; then bob closes his tab mid-call, and alice is told.
async function audioCall(ctx) {
  const stranger = await ctx.user("mallory", "bob", { join: false });
  const refused = await stranger.waitOutcome("CONNECT_REFUSED");
  check(refused.includes("sign-in token"), `mallory: ${refused}`);
  const a = await ctx.user("alice", "bob", { token: jwt("alice", AUTH_SECRET) });
  const b = await ctx.user("bob", "alice", { token: jwt("bob", AUTH_SECRET) });
  const given = await a.page.evaluate(() => window.demo.iceServers);
  const urls = given.flatMap((s) => [s.urls].flat());
  check(urls.includes("stun:127.0.0.1:3478") && urls.includes("turn:127.0.0.1:3478?transport=udp")
    && given.some((s) => s.username?.endsWith(":alice") && s.credential), `iceServers from user:joined: ${JSON.stringify(given)}`);
  await a.page.click("#audio-call");
  await b.waitState("ringing");
  await b.page.click("#accept");
  await Promise.all([waitConnected(a), waitConnected(b)]);
  const received = async (u) => u.page.evaluate(async () => {
    const stats = [...(await window.demo.pc.getStats()).values()];
    const inbound = stats.filter((s) => s.type === "inbound-rtp");
    return {
      kinds: inbound.map((s) => s.kind),
      audioPackets: inbound.filter((s) => s.kind === "audio").reduce((n, s) => n + (s.packetsReceived ?? 0), 0),
      remoteTracks: document.getElementById("remote-video").srcObject?.getTracks().map((t) => `${t.kind}:${t.readyState}`),
    };
  });
  const config = await b.page.evaluate(() => window.demo.pc.getConfiguration().iceServers);
  check(JSON.stringify(config).includes(":bob"), `bob's RTCPeerConnection does not use the ICE servers: ${JSON.stringify(config)}`);
  const first = { alice: await received(a), bob: await received(b) };
  await sleep(1000);
  const second = { alice: await received(a), bob: await received(b) };
  for (const u of ["alice", "bob"]) {
    check(second[u].kinds.join() === "audio", `${u}: receives ${second[u].kinds}, not audio alone`);
    check(second[u].audioPackets > first[u].audioPackets, `${u}: no audio arriving: ${JSON.stringify([first[u], second[u]])}`);
  }
  step("audio flows both ways", second);
  await screenshotPages(ctx.browser, [a, b], path.join(opt.artifacts, `${ctx.name}-mid-call.png`));
  await b.page.close();
  ctx.users.splice(ctx.users.indexOf(b), 1);
  const words = await a.waitOutcome("disconnected");
  await a.waitState("idle");
  check(words === "bob lost the connection; the call ended.", `alice: ${words}`);
  return { refused, iceServers: given, audio: second, alice: words };
}

// bob's signalling goes for 5 s (his TCP connections through the proxy are cut and new ones
// refused) while the media, peer to peer, goes on: alice is told bob is reconnecting, the video
// keeps arriving on both sides, and when the network is back socket.io-client recovers bob's
// session (same socket id) and both pages are in the call as before. Nobody gets call:ended.
//
// With `recovery: false` (callbox --recovery-window 0: a server, or a client, without connection state
// recovery) bob comes back as a new socket, and the page takes its session and call back with the
// resumeToken of user:joined instead.
async function blip(ctx, { recovery = true, CUT = 5000 } = {}) {
  const proxy = await ctx.proxy();
  const { a, b } = await liveCallThroughProxy(ctx, proxy);
  const before = await socketOf(b);
  const frames = [await allFrames([a, b])];
  await proxy.cut();
  const cutAt = Date.now();
  step("bob's signalling cut", { bob: before });
  await a.waitFor("saying bob is reconnecting", () => document.body.dataset.reconnecting === "bob", null, CUT - 1000);
  const toldAfter = Date.now() - cutAt;
  await b.waitFor("saying it is reconnecting", () => !window.demo.socket.connected && document.body.dataset.reconnecting === "bob", null, CUT - 1000);
  const during = { alice: await a.words(), bob: await b.words() };
  check(during.alice === RECONNECTING_WORDS("bob"), `alice: ${during.alice}`);
  check(during.bob.startsWith("Reconnecting…"), `bob: ${during.bob}`);
  for (const u of [a, b]) {
    const kept = await u.page.evaluate(() => [document.body.dataset.state, window.demo.pc?.connectionState]);
    check(kept.join() === "in-call,connected", `${u.name}: the call was not kept while away: ${kept}`);
  }
  step("alice says bob is reconnecting", { afterMs: toldAfter, words: during });
  const shot = await screenshotPages(ctx.browser, [a, b], path.join(opt.artifacts, `${ctx.name}-reconnecting.png`));
  if (opt["screenshot-copy"]) copyFileSync(shot.replace(/\.png$/, "-alice.png"), opt["screenshot-copy"]);
  // The media goes on through the cut: frames decoded keep rising on both sides.
  for (const at of [1000, CUT - 500]) {
    await sleep(cutAt + at - Date.now());
    frames.push(await allFrames([a, b]));
  }
  for (const u of ["alice", "bob"]) {
    const [f0, f1, f2] = frames.map((f) => f[u]);
    check(f1 > f0 + 10 && f2 > f1 + 10, `${u}: video frames decoded stalled during the cut: ${[f0, f1, f2]}`);
  }
  check(!(await socketOf(b)).connected, "bob got through while the proxy refused him");
  step("video kept flowing during the cut", { frames });
  await sleep(cutAt + CUT - Date.now());
  await proxy.resume();
  const backAt = Date.now();
  await callAsBefore([a, b], 10_000);
  for (const u of [a, b]) {
    await u.waitFor("told bob reconnected", () => window.testEvents.some((e) => e.event === "call:reconnected" && e.payload?.userId === "bob"), null, 5000);
  }
  const recoveredAfter = Date.now() - backAt;
  const after = await socketOf(b);
  if (recovery) {
    check(after.recovered === true && after.id === before.id, `bob's session was not recovered: before ${JSON.stringify(before)}, after ${JSON.stringify(after)}`);
  } else {
    check(!after.recovered && after.id !== before.id, `bob's socket: before ${JSON.stringify(before)}, after ${JSON.stringify(after)}`);
    const joined = (await b.events("user:joined")).map((e) => e.payload);
    const callId = await a.page.evaluate(() => window.demo.call.id);
    check(joined.length === 1 && joined[0].resumed === true && joined[0].call?.callId === callId && joined[0].call?.peer === "alice"
      && joined[0].call?.role === "callee" && joined[0].socketId === after.id, `bob's user:joined on his return: ${JSON.stringify(joined)}`);
  }
  const lost = await serverCloseReason(ctx.server, before.engine);
  check(["transport close", "transport error", "ping timeout"].includes(lost), `callbox saw bob's cut connection end with ${lost}`);
  const events = {};
  for (const u of [a, b]) events[u.name] = (await u.events()).map((e) => e.event).filter((e) => e.startsWith("call:"));
  const alicePeer = (await a.events("call:reconnecting")).map((e) => e.payload);
  check(alicePeer.length === 1 && alicePeer[0].userId === "bob" && alicePeer[0].callId === (await a.page.evaluate(() => window.demo.call.id)),
    `alice's call:reconnecting: ${JSON.stringify(alicePeer)}`);
  for (const u of ["alice", "bob"]) check(!events[u].includes("call:ended"), `${u} got call:ended: ${events[u]}`);
  check((await b.events("call:reconnecting")).length === 0, "bob was told about himself reconnecting");
  step("both back in the call as before", { afterMs: recoveredAfter, bob: after, serverSaw: lost, events });
  frames.push(await allFrames([a, b]));
  const playing = { alice: await checkRemoteFrames(a), bob: await checkRemoteFrames(b) };
  // Signalling works again: alice hangs up, bob is told.
  await a.page.click("#hangup");
  const ended = { alice: await a.waitOutcome("hangup"), bob: await b.waitOutcome("hangup") };
  return { toldAfterMs: toldAfter, recoveredAfterMs: recoveredAfter, during, frames, playing, serverSaw: lost, ended, screenshot: shot };
}

// What Chromium sends, and what callbox sees, when the network goes and when a tab closes.
// - The network goes (Chromium's offline emulation, shorter than the heartbeat): Chromium sends
//   nothing, no close frame; the WebSocket stays open and callbox sees nothing.
// - bob closes his tab during a video call, without running "beforeunload" (as when a page gets no
//   time to say goodbye): Chromium itself sends a close frame with 1001 (going away), callbox sees
//   "client close", and alice's call ends at once, not after the reconnect grace.
// - carol, on HTTP long-polling, closes her tab while alice's call rings her (a user closing a tab
//   runs "beforeunload"): the page sends a Socket.IO disconnect there, so that call ends at once too
//   (polling has no close frame: without it callbox would see its requests dropped, a lost connection).
async function leave(ctx) {
  const proxy = await ctx.proxy();
  const { a, b } = await liveCallThroughProxy(ctx, proxy);
  await b.waitFor("on WebSocket", () => window.demo.socket.io.engine?.transport?.name === "websocket");
  const open = proxy.websockets.filter((w) => w.ended === null);
  check(open.length === 1, `bob has ${open.length} WebSockets open through the proxy`);
  const ws = open[0];
  const sid = (await socketOf(b)).engine;

  await b.page.context().setOffline(true);
  await sleep(1500);
  const offline = { closeFrame: ws.closeFrame, ended: ws.ended, bobConnected: (await socketOf(b)).connected };
  await b.page.context().setOffline(false);
  check(offline.closeFrame === null && offline.ended === null, `Chromium sent something when the network went: ${JSON.stringify(offline)}`);
  const closed = closeReasonLogged(ctx.server, sid);
  check(closed === null, `callbox ended bob's session (${closed}) when his network went for 1.5 s`);
  check((await a.events("call:reconnecting")).length === 0, "alice was told bob is reconnecting");
  step("bob offline for 1.5 s: Chromium sent nothing", offline);

  const closedAt = Date.now();
  await b.page.close(); // no "beforeunload": Chromium's own goodbye
  ctx.users.splice(ctx.users.indexOf(b), 1);
  const words = await a.waitOutcome("disconnected");
  const endedAfter = Date.now() - closedAt;
  await a.waitState("idle");
  check(words === "bob lost the connection; the call ended.", `alice: ${words}`);
  const tabClose = { closeFrame: ws.closeFrame, serverSaw: await serverCloseReason(ctx.server, sid), endedAfterMs: endedAfter };
  check(tabClose.closeFrame?.code === 1001, `Chromium's close frame when the tab closed: ${JSON.stringify(tabClose.closeFrame)}`);
  check(tabClose.serverSaw === "client close", `callbox saw ${tabClose.serverSaw} when bob's tab closed`);
  check(endedAfter < 2000, `alice was told the call ended ${endedAfter} ms after bob's tab closed`);
  const ended = (await a.events("call:ended")).map((e) => e.payload);
  check(ended.length === 1 && ended[0].by === "bob" && ended[0].reason === "disconnected", `alice's call:ended: ${JSON.stringify(ended)}`);
  check((await a.events("call:reconnecting")).length === 0, "alice was told bob is reconnecting when his tab closed");
  step("bob closed his tab", tabClose);

  const c = await ctx.user("carol", "alice", { transport: "polling" });
  await a.page.fill("#peer-id", "carol");
  await a.page.click("#audio-call");
  await c.waitState("ringing");
  const pollingAt = Date.now();
  await c.page.close({ runBeforeUnload: true });
  ctx.users.splice(ctx.users.indexOf(c), 1);
  // The outcome's tag is "disconnected" already (bob's call): wait for the words about carol.
  await a.waitFor("told carol's call ended", () => document.getElementById("outcome").textContent.startsWith("carol "));
  const pollingEndedAfter = Date.now() - pollingAt;
  const pollingWords = await a.waitOutcome("disconnected");
  check(pollingWords === "carol lost the connection; the call ended.", `alice: ${pollingWords}`);
  check(pollingEndedAfter < 2000, `alice was told the call ended ${pollingEndedAfter} ms after carol's tab closed`);
  check((await a.events("call:reconnecting")).length === 0, "alice was told carol is reconnecting when her tab closed");
  step("carol (polling) closed her tab", { endedAfterMs: pollingEndedAfter });
  return { chromium: ctx.browser.version(), offline, tabClose, pollingTabClose: { endedAfterMs: pollingEndedAfter } };
}

// Several devices (issue 13, callbox --max-devices 2): bob is signed in on two pages (two browser
// profiles, so two deviceIds), alice on one. A call rings both of bob's pages. bob declines on one:
// the other stops ringing and says "declined on another device". alice calls again and bob answers
// on the first: the second stops ringing and says "answered on another device", and the call
// connects with video both ways between alice and the page that answered. The second page, reloaded,
// is the same device (its deviceId kept in localStorage): the call on the first goes on.
async function devices(ctx) {
  const a = await ctx.user("alice", "bob");
  const b1 = await ctx.user("bob", "alice", { label: "bob-1" });
  const b2 = await ctx.user("bob", "alice", { label: "bob-2" });
  const bobs = [b1, b2];
  const deviceOf = (u) => u.page.evaluate(() => [window.demo.deviceId, localStorage.getItem("callbox.deviceId")]);
  const ids = { "bob-1": await deviceOf(b1), "bob-2": await deviceOf(b2) };
  for (const [who, [id, stored]] of Object.entries(ids)) check(id && id === stored, `${who}: deviceId ${id}, stored ${stored}`);
  check(ids["bob-1"][0] !== ids["bob-2"][0], `both bob pages are device ${ids["bob-1"][0]}`);
  check(await b1.state() === "idle", `bob-1 was signed out when bob-2 joined: ${await b1.words()}`);
  for (const u of [a, ...bobs]) await u.recordEvents();

  await a.page.click("#audio-call");
  await Promise.all(bobs.map((u) => u.waitState("ringing")));
  await b2.page.click("#reject");
  const declined = { alice: await a.waitOutcome("rejected"), "bob-2": await b2.waitOutcome("rejected"),
    "bob-1": await b1.waitOutcome("rejected_elsewhere") };
  await Promise.all([a, ...bobs].map((u) => u.waitState("idle")));
  check(declined.alice === "bob declined the call." && declined["bob-2"] === "You declined the call from alice."
    && declined["bob-1"] === "The call from alice was declined on another device.", `declined: ${JSON.stringify(declined)}`);
  step("declined on one device", declined);

  await a.page.click("#video-call");
  await Promise.all(bobs.map((u) => u.waitState("ringing")));
  const rung = await Promise.all([a, ...bobs].map((u) => u.page.evaluate(() => window.demo.call?.id)));
  check(rung[0] && rung.every((id) => id === rung[0]), `not one call id on the three pages: ${rung}`);
  check((await b2.page.textContent("#caller")) === "alice", "bob-2: the incoming call is not from alice");
  await b1.page.click("#accept");
  const elsewhere = await b2.waitOutcome("answered_elsewhere");
  await b2.waitState("idle");
  check(elsewhere === "The call from alice was answered on another device.", `bob-2: ${elsewhere}`);
  const left = await b2.page.evaluate(() => ({ pc: window.demo.pc, incomingHidden: document.getElementById("incoming-panel").hidden,
    local: document.getElementById("local-video").srcObject }));
  check(left.pc === null && left.incomingHidden && left.local === null, `bob-2 still rings or holds media: ${JSON.stringify(left)}`);
  const ended = (await b2.events("call:ended")).map((e) => e.payload);
  check(ended.length === 1 && ended[0].callId === rung[0] && ended[0].by === "bob" && ended[0].reason === "answered_elsewhere",
    `bob-2's call:ended: ${JSON.stringify(ended)}`);
  step("answered on another device", { words: elsewhere });

  await Promise.all([waitConnected(a), waitConnected(b1)]);
  const frames = [await allFrames([a, b1])];
  await sleep(1000);
  frames.push(await allFrames([a, b1]));
  for (const u of ["alice", "bob-1"]) check(frames[1][u] > frames[0][u] + 10, `${u}: video frames decoded do not rise: ${frames.map((f) => f[u])}`);
  const ice = { alice: await checkLoopback(a), "bob-1": await checkLoopback(b1) };
  step("alice and bob-1 connected, video both ways", { frames });
  const accepted = (await a.events("call:accepted")).map((e) => e.payload);
  check(accepted.length === 1 && accepted[0].callId === rung[0] && accepted[0].by === "bob" && !accepted[0].merged,
    `alice's call:accepted: ${JSON.stringify(accepted)}`);
  const screenshot = await screenshotPages(ctx.browser, [a, b1, b2], path.join(opt.artifacts, `${ctx.name}-answered-elsewhere.png`));
  if (opt["screenshot-copy"]) copyFileSync(screenshot.replace(/\.png$/, "-bob-2.png"), opt["screenshot-copy"]);

  // A reload of bob-2 is the same device again: it replaces only itself; bob-1's call goes on.
  await b2.page.reload();
  await b2.page.click("#join");
  await b2.page.waitForFunction(() => window.demo?.me === "bob");
  await b2.waitState("idle");
  const reloaded = await deviceOf(b2);
  check(reloaded[0] === ids["bob-2"][0], `bob-2 is device ${reloaded[0]} after a reload, ${ids["bob-2"][0]} before`);
  check((await b1.events("error")).length === 0, `bob-1 got errors: ${JSON.stringify(await b1.events("error"))}`);
  await callAsBefore([a, b1], 2000);

  await a.page.click("#hangup");
  const hungUp = { alice: await a.waitOutcome("hangup"), "bob-1": await b1.waitOutcome("hangup") };
  await Promise.all([a.waitState("idle"), b1.waitState("idle")]);
  check(hungUp["bob-1"] === "alice hung up.", `bob-1: ${hungUp["bob-1"]}`);
  return { deviceIds: ids, declined, answeredElsewhere: elsewhere, frames, ice, hungUp, screenshot };
}

// Glare (issue 13): alice and bob call each other at the same moment, and get one call. bob's
// signalling goes through a TcpProxy that holds what callbox sends him, so that alice's call, which
// rings his pages, is still on its way to this one when he presses "video call": the server merges
// his call:initiate into alice's call (kept: the server had it first). alice, its caller, makes the
// offer; bob, its callee, answers it. bob's other page (--max-devices 2) stops ringing, answered on
// another device: the one that called.
async function glare(ctx) {
  const proxy = await ctx.proxy();
  const a = await ctx.user("alice", "bob");
  const b1 = await ctx.user("bob", "alice", { via: proxy, label: "bob-1" });
  const b2 = await ctx.user("bob", "alice", { label: "bob-2" });
  for (const u of [a, b1, b2]) await u.recordEvents();
  await b1.waitFor("on WebSocket", () => window.demo.socket.io.engine?.transport?.name === "websocket");
  proxy.hold();
  await a.page.click("#video-call");
  await b2.waitState("ringing"); // and bob-1 rings too, but has not heard yet
  check(await b1.state() === "idle", `bob-1 heard of alice's call through the held proxy: ${await b1.words()}`);
  await b1.page.click("#video-call");
  const elsewhere = await b2.waitOutcome("answered_elsewhere"); // the server merged the calls
  await a.waitState("connecting");
  const held = proxy.release();
  step("bob-1 called alice while her call was on its way to him", { heldChunks: held });
  await Promise.all([waitConnected(a), waitConnected(b1)]);
  const frames = [await allFrames([a, b1])];
  await sleep(1000);
  frames.push(await allFrames([a, b1]));
  for (const u of ["alice", "bob-1"]) check(frames[1][u] > frames[0][u] + 10, `${u}: video frames decoded do not rise: ${frames.map((f) => f[u])}`);
  const callId = await a.page.evaluate(() => window.demo.call.id);
  const got = {};
  for (const u of [a, b1]) {
    got[u.name] = {
      accepted: (await u.events("call:accepted")).map((e) => e.payload),
      initiated: (await u.events("call:initiated")).map((e) => e.payload),
      incoming: (await u.events("call:incoming")).map((e) => e.payload),
      offersSent: (await u.log()).filter((line) => line.includes("→ call:offer")).length,
      call: await u.page.evaluate(() => ({ id: window.demo.call.id, role: window.demo.call.role })),
    };
  }
  for (const u of ["alice", "bob-1"]) {
    const { accepted } = got[u];
    check(accepted.length === 1 && accepted[0].callId === callId && accepted[0].by === "bob" && accepted[0].merged === true,
      `${u}'s call:accepted: ${JSON.stringify(accepted)}`);
  }
  check(got.alice.call.role === "caller" && got.alice.offersSent === 1 && got.alice.initiated.length === 1,
    `alice (the kept call's caller): ${JSON.stringify(got.alice)}`);
  check(got["bob-1"].call.role === "callee" && got["bob-1"].call.id === callId && got["bob-1"].offersSent === 0
    && got["bob-1"].initiated.length === 0 && got["bob-1"].incoming.length === 1, `bob-1 (its callee, polite): ${JSON.stringify(got["bob-1"])}`);
  check(elsewhere === "The call from alice was answered on another device.", `bob-2: ${elsewhere}`);
  step("one call, alice offered, bob answered", { frames, got });
  await b1.page.click("#hangup");
  const hungUp = { alice: await a.waitOutcome("hangup"), "bob-1": await b1.waitOutcome("hangup") };
  check(hungUp.alice === "bob hung up.", `alice: ${hungUp.alice}`);
  return { frames, got, elsewhere, hungUp };
}

const SCENARIOS = {
  devices,
  glare,
  blip: (ctx) => blip(ctx),
  "blip-resume": (ctx) => blip(ctx, { recovery: false, CUT: 3000 }),
  leave,
  audio: audioCall,
  call: (ctx) => completeCall(ctx),
  "call-polling": (ctx) => completeCall(ctx, { transport: "polling" }),
  "call-wss": (ctx) => completeCall(ctx, { transport: "websocket" }),

  async reject(ctx) {
    const a = await ctx.user("alice", "bob");
    const b = await ctx.user("bob", "alice");
    await a.page.click("#audio-call");
    await b.waitState("ringing");
    check((await b.page.textContent("#incoming-type")) === "(audio call)", "bob: not shown as an audio call");
    await b.page.click("#reject");
    const words = { alice: await a.waitOutcome("rejected"), bob: await b.waitOutcome("rejected") };
    await Promise.all([a.waitState("idle"), b.waitState("idle")]);
    check(words.alice === "bob declined the call." && words.bob === "You declined the call from alice.", JSON.stringify(words));
    return words;
  },

  async cancel(ctx) {
    const a = await ctx.user("alice", "bob");
    const b = await ctx.user("bob", "alice");
    await a.page.click("#video-call");
    await b.waitState("ringing");
    check((await a.page.textContent("#hangup")) === "Cancel", "alice: no Cancel button while ringing");
    await a.page.click("#hangup");
    const words = { alice: await a.waitOutcome("cancelled"), bob: await b.waitOutcome("cancelled") };
    await Promise.all([a.waitState("idle"), b.waitState("idle")]);
    check(words.alice === "You cancelled the call." && words.bob === "alice cancelled the call.", JSON.stringify(words));
    return words;
  },

  async timeout(ctx) {
    const a = await ctx.user("alice", "bob");
    const b = await ctx.user("bob", "alice");
    const started = Date.now();
    await a.page.click("#video-call");
    await b.waitState("ringing");
    const words = { alice: await a.waitOutcome("timeout"), bob: await b.waitOutcome("timeout") };
    const rang = (Date.now() - started) / 1000;
    await Promise.all([a.waitState("idle"), b.waitState("idle")]);
    check(words.alice === "bob did not answer." && words.bob === "You missed a call from alice.", JSON.stringify(words));
    check(rang >= RING_TIMEOUT - 0.5, `the call timed out after ${rang} s, before --ring-timeout ${RING_TIMEOUT}`);
    return { ...words, rang };
  },

  // Calling someone who is not there, and someone who is in another call; a user id taken over.
  async "busy-offline-takeover"(ctx) {
    const a = await ctx.user("alice", "carol");
    const b = await ctx.user("bob", "alice");
    await a.page.click("#video-call");
    const offline = await a.waitOutcome("USER_OFFLINE");
    await a.waitState("idle");
    check(offline === "carol is not online.", `offline: ${offline}`);
    await b.page.click("#audio-call");
    await a.waitState("ringing");
    const c = await ctx.user("carol", "bob");
    await c.page.click("#video-call");
    const busy = await c.waitOutcome("USER_BUSY");
    await c.waitState("idle");
    check(busy === "bob is busy in another call.", `busy: ${busy}`);
    await a.page.click("#reject");
    await Promise.all([a.waitOutcome("rejected"), b.waitOutcome("rejected")]);
    // carol again, in another tab: the first tab is signed out, and says so.
    const c2 = await ctx.user("carol", "bob");
    c2.name = "carol-2nd-tab";
    const replaced = await c.waitOutcome("SESSION_REPLACED");
    await c.waitState("offline");
    check(replaced === "You joined as carol in another tab or window; this one is signed out.", `replaced: ${replaced}`);
    // Join again in the first tab: it connects again and takes the id back.
    await c.page.click("#join");
    await c.waitState("idle");
    await c2.waitOutcome("SESSION_REPLACED");
    await c2.waitState("offline");
    return { offline, busy, replaced };
  },
};

// -- main ------------------------------------------------------------------------------------

async function main() {
  const name = opt.scenario;
  check(SCENARIOS[name], `unknown scenario ${name}; known: ${Object.keys(SCENARIOS).join(", ")}`);
  const tls = name === "call-wss";
  const serverArgs = [];
  if (name === "timeout") serverArgs.push("--ring-timeout", String(RING_TIMEOUT));
  // The reconnect grace and connection state recovery are on by default (30 s); the logs say how
  // each session ended.
  if (["blip", "blip-resume", "leave"].includes(name)) serverArgs.push("--log-format", "json");
  if (name === "blip-resume") serverArgs.push("--recovery-window", "0");
  if (["devices", "glare"].includes(name)) serverArgs.push("--max-devices", "2");
  if (name === "audio") {
    serverArgs.push("--auth-secret", AUTH_SECRET, "--stun-urls", "stun:127.0.0.1:3478",
      "--turn-urls", "turn:127.0.0.1:3478?transport=udp", "--turn-secret", "e2e-turn-secret");
  }
  if (tls) serverArgs.push("--tls-cert", opt["tls-cert"], "--tls-key", opt["tls-key"]);

  const args = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
  ];
  // Trust exactly the test certificate (its public key's SHA-256), not any certificate.
  if (tls) args.push(`--ignore-certificate-errors-spki-list=${opt.spki}`);

  const ctx = { name, users: [], browser: null, server: null, proxies: [] };
  let failure = null;
  let detail = null;
  try {
    ctx.server = await startCallbox(serverArgs);
    if (tls) check(ctx.server.url.startsWith("https://"), `callbox is not serving https: ${ctx.server.url}`);
    ctx.browser = await chromium.launch({ executablePath: opt.chromium, headless: true, args });
    step("chromium started", { version: ctx.browser.version() });
    ctx.user = async (user, peer, opts) => {
      const u = await openUser(ctx.browser, ctx.server.url, user, peer, opts);
      ctx.users.push(u);
      return u;
    };
    ctx.proxy = async () => {
      const proxy = new TcpProxy(ctx.server.url);
      ctx.proxies.push(proxy);
      await proxy.listen();
      return proxy;
    };
    let timer;
    const overall = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`scenario took over ${SCENARIO_TIMEOUT / 1000} s`)), SCENARIO_TIMEOUT);
    });
    try {
      detail = await Promise.race([SCENARIOS[name](ctx), overall]);
    } finally {
      clearTimeout(timer); // a failed scenario's report need not wait for it
    }
    // How every page looks at the end, for people to check what it says.
    await screenshotPages(ctx.browser, ctx.users, path.join(opt.artifacts, `${name}-end.png`));
    for (const u of ctx.users) check(u.problems.length === 0, `${u.name}: errors in the page: ${u.problems.join("; ")}`);
  } catch (err) {
    failure = err;
  }
  const report = { scenario: name };
  if (failure) {
    report.result = "fail";
    report.error = String(failure.stack ?? failure);
    report.pages = {};
    for (const u of ctx.users) {
      const page = { problems: u.problems, console: u.console };
      try {
        page.words = await u.words();
        page.log = await u.log();
        mkdirSync(opt.artifacts, { recursive: true });
        page.screenshot = path.join(opt.artifacts, `${name}-failed-${u.name}.png`);
        await u.page.screenshot({ path: page.screenshot, fullPage: true });
      } catch (e) {
        page.unavailable = String(e);
      }
      report.pages[u.name] = page;
    }
  } else {
    report.result = "pass";
    report.detail = detail;
  }
  await ctx.browser?.close().catch(() => {});
  for (const proxy of ctx.proxies) await proxy.close().catch(() => {});
  await stopCallbox(ctx.server);
  if (failure && ctx.server) report.server = ctx.server.output.join("").slice(-8000);
  out(report);
  process.exitCode = failure ? 1 : 0;
}

main().catch((err) => {
  out({ result: "fail", scenario: opt.scenario, error: String(err.stack ?? err) });
  process.exitCode = 1;
});
