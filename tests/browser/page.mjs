// For the browser scripts (run.mjs, tests/multinode/handover_browser.mjs): one user of the demo page
// in a Playwright page, and how a script waits on what the page shows.

export const STEP_TIMEOUT = 15_000; // ms any one wait may take

export class User {
  constructor(name, page) {
    this.name = name;
    this.page = page;
    this.problems = []; // uncaught page errors: app.js bugs fail the scenario
    this.console = [];
    page.on("pageerror", (e) => this.problems.push(`${e.name}: ${e.message}`));
    page.on("console", (m) => this.console.push(`${m.type()}: ${m.text()}`));
  }

  state() {
    return this.page.evaluate(() => document.body.dataset.state);
  }

  async waitState(state) {
    try {
      await this.page.waitForFunction((s) => document.body.dataset.state === s, state, { timeout: STEP_TIMEOUT });
    } catch {
      throw new Error(`${this.name}: state stayed ${await this.state()}, wanted ${state}; it says: ${await this.words()}`);
    }
  }

  // The outcome line, and its tag, once it has the tag we wait for.
  async waitOutcome(code) {
    try {
      await this.page.waitForFunction((c) => document.body.dataset.outcome === c, code, { timeout: STEP_TIMEOUT });
    } catch {
      throw new Error(`${this.name}: outcome ${JSON.stringify(await this.page.evaluate(() => document.body.dataset.outcome))}, wanted ${code}; it says: ${await this.words()}`);
    }
    return this.page.textContent("#outcome");
  }

  // Wait until fn(arg) is true in the page; `what` says what we waited for when it is not.
  async waitFor(what, fn, arg = null, timeout = STEP_TIMEOUT) {
    try {
      await this.page.waitForFunction(fn, arg, { timeout });
    } catch {
      throw new Error(`${this.name}: not ${what} within ${timeout} ms; it says: ${await this.words()} (state ${await this.state()})`);
    }
  }

  // Every Socket.IO event the page gets from now on, with its first argument (the payload; with
  // connection state recovery the server adds the offset as a last one).
  recordEvents() {
    return this.page.evaluate(() => {
      window.testEvents = [];
      window.demo.socket.onAny((event, payload) => window.testEvents.push({ event, payload, at: Date.now() }));
    });
  }

  events(name) {
    return this.page.evaluate((n) => window.testEvents.filter((e) => !n || e.event === n), name);
  }

  words() {
    return this.page.evaluate(() => [
      document.getElementById("status").textContent,
      document.getElementById("outcome").hidden ? "" : document.getElementById("outcome").textContent,
    ].filter(Boolean).join(" / "));
  }

  log() {
    return this.page.evaluate(() => [...document.querySelectorAll("#log li")].map((li) => li.textContent).reverse());
  }
}

// A check of a scenario: fails it with `message` unless `ok`.
export function check(ok, message) {
  if (!ok) throw new Error(message);
}

// The call is up: RTCPeerConnection connected, the page in the call.
export async function waitConnected(user) {
  try {
    await user.page.waitForFunction(() => window.demo.pc?.connectionState === "connected", null, { timeout: STEP_TIMEOUT });
  } catch {
    const pcState = await user.page.evaluate(() => window.demo.pc?.connectionState ?? "no RTCPeerConnection");
    throw new Error(`${user.name}: RTCPeerConnection is ${pcState}; it says: ${await user.words()}`);
  }
  await user.waitState("in-call");
}

// Video frames each side has decoded so far (the inbound video stream of its RTCPeerConnection).
export function framesDecoded(user) {
  return user.page.evaluate(async () => {
    const stats = [...(await window.demo.pc.getStats()).values()];
    return stats.filter((s) => s.type === "inbound-rtp" && s.kind === "video").reduce((n, s) => n + (s.framesDecoded ?? 0), 0);
  });
}

// framesDecoded of each of `users`, by name.
export async function allFrames(users) {
  const frames = {};
  for (const u of users) frames[u.name] = await framesDecoded(u);
  return frames;
}
