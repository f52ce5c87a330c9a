// For the scenario scripts (signalling.mjs, devices.mjs, cluster.mjs, recovery.mjs and
// tests/multinode/ops_cluster.mjs): one connection of a user, which each script extends with its own
// join and checks — a Connection (a socket.io-client, no reconnection, and in a queue what it
// received, taken one event at a time) or a Recorder (an app that reconnects, its queue timed
// entries); and how a script runs its scenario. Scripts outside this folder import it by path: its
// socket.io-client is the one installed here.

import assert from "node:assert/strict";
import { performance } from "node:perf_hooks";
import readline from "node:readline";
import { io } from "socket.io-client";

export const TRANSPORTS = { websocket: ["websocket"], polling: ["polling"], default: undefined };
export const WAIT = 5000; // ms: the longest one expected event may take
export const QUIET = 150; // ms: how long "nothing arrives" is watched

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const now = () => performance.now();

// Resolves once `socket` is connected (at once when it is), rejects on a connect_error.
export function connected(socket) {
  if (socket.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
}

export class Connection {
  // name: how failures call it; url: the server; mode: a key of TRANSPORTS
  constructor(name, url, mode) {
    this.name = name;
    this.queue = []; // [event, payload] not yet taken
    this.wake = null;
    this.socket = io(url, { transports: TRANSPORTS[mode], reconnection: false, forceNew: true });
    this.socket.onAny((event, payload) => this.push(event, payload));
    this.socket.on("disconnect", (reason) => this.push("disconnect", reason));
  }

  push(event, payload) {
    this.queue.push([event, payload]);
    if (this.wake) this.wake();
  }

  connected() {
    return connected(this.socket);
  }

  // Until the queue is woken (something arrived) or `left` ms have passed.
  woken(left) {
    return new Promise((resolve) => {
      this.wake = resolve;
      setTimeout(resolve, left);
    });
  }

  // The next `event` received (waiting for it), out of the queue.
  async next(event, ms = WAIT) {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.queue.findIndex(([e]) => e === event);
      if (i >= 0) return this.queue.splice(i, 1)[0][1];
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no ${event} within ${ms} ms; got ${JSON.stringify(this.queue)}`);
      await this.woken(left);
    }
  }

  // The next `n` events, whatever they are, in the order they came.
  async take(n, ms = WAIT) {
    const deadline = now() + ms;
    while (this.queue.length < n) {
      const left = deadline - now();
      if (left <= 0) throw new Error(`${this.name}: ${n} events not within ${ms} ms; got ${JSON.stringify(this.queue)}`);
      await this.woken(left);
    }
    return this.queue.splice(0, n);
  }

  // Nothing (else) arrived: after a quiet while, the queue is empty.
  async nothing() {
    await sleep(QUIET);
    assert.deepEqual(this.queue, [], `${this.name} received more than expected`);
  }

  emit(event, payload) {
    this.socket.emit(event, payload);
  }

  ack(event, payload) {
    return this.socket.timeout(WAIT).emitWithAck(event, payload);
  }

  // The next "error" event: its code is `code` (and its message `message`, when given).
  async error(code, message) {
    const err = await this.next("error");
    assert.equal(err.code, code, `${this.name}: ${JSON.stringify(err)}`);
    if (message !== undefined) assert.equal(err.message, message);
    assert.equal(typeof err.message, "string");
    return err;
  }

  close() {
    this.socket.disconnect();
  }
}

// A socket.io-client app (WebSocket unless `options` say otherwise, reconnecting unless they say
// not) that keeps, in order, what it received as entries {event, payload, at}, "#connect" ({id,
// recovered}) and "#disconnect" (the reason) among them, and takes them out one at a time.
// recovery.mjs and tests/multinode/ops_cluster.mjs extend it with their join and checks.
export class Recorder {
  static QUIET = 200; // ms: how long "nothing arrives" is watched

  // name: how failures call it; url: the server; options: io()'s, over forceNew
  constructor(name, url, options) {
    this.name = name;
    this.queue = []; // entries not yet taken
    this.waiters = new Set();
    this.socket = io(url, { forceNew: true, ...options });
    this.socket.onAny((event, ...args) => this.received(event, args));
    this.socket.on("connect", () =>
      this.push({ event: "#connect", payload: { id: this.socket.id, recovered: this.socket.recovered } }),
    );
    this.socket.on("disconnect", (reason) => this.push({ event: "#disconnect", payload: reason }));
  }

  // An event the server sent, with its arguments: queued (its payload is the first).
  received(event, args) {
    this.push({ event, payload: args[0] });
  }

  push(entry) {
    this.queue.push({ ...entry, at: now() });
    for (const wake of this.waiters) wake();
  }

  // What found() returns once it is not undefined (asked again each time something arrives).
  async until(found, what, ms = WAIT) {
    const deadline = now() + ms;
    for (;;) {
      const result = found();
      if (result !== undefined) return result;
      const left = deadline - now();
      if (left <= 0) throw new Error(`${this.name}: ${what} not within ${ms} ms; got ${this.show()}`);
      await new Promise((resolve) => {
        const timer = setTimeout(done, left);
        const self = this;
        function done() {
          clearTimeout(timer);
          self.waiters.delete(done);
          resolve();
        }
        this.waiters.add(done);
      });
    }
  }

  show() {
    return JSON.stringify(this.queue.map(({ event, payload }) => [event, payload]));
  }

  // The next `event` received (waiting for it), out of the queue: the whole entry.
  async nextEntry(event, ms = WAIT) {
    return this.until(
      () => {
        const i = this.queue.findIndex((e) => e.event === event);
        return i >= 0 ? this.queue.splice(i, 1)[0] : undefined;
      },
      event,
      ms,
    );
  }

  async next(event, ms = WAIT) {
    return (await this.nextEntry(event, ms)).payload;
  }

  // The next `n` entries, whatever they are, in the order they came.
  async take(n, ms = WAIT) {
    await this.until(() => (this.queue.length >= n ? true : undefined), `${n} events`, ms);
    return this.queue.splice(0, n);
  }

  // Nothing (else) arrived: after a quiet while, the queue is empty.
  async nothing(ms = Recorder.QUIET) {
    await sleep(ms);
    const when = this.queue.map((e) => `${e.event} at ${Math.round(e.at)} ms`).join(", ");
    assert.equal(this.show(), "[]", `${this.name} received more than expected (${when})`);
  }

  connected() {
    return connected(this.socket);
  }

  emit(event, payload) {
    this.socket.emit(event, payload);
  }

  ack(event, payload, ms = WAIT) {
    return this.socket.timeout(ms).emitWithAck(event, payload);
  }

  close() {
    this.socket.disconnect();
  }
}

// The control channel to the test that runs the script: control(COMMAND) writes "@@ COMMAND" on
// stdout and reads the answer, "ok [JSON]" or "fail WHY", from stdin; it resolves to the JSON (null
// without), and throws on a "fail". Call once, at the start (stdin is read from then on).
export function controlChannel() {
  const answers = [];
  const asking = [];
  readline.createInterface({ input: process.stdin }).on("line", (line) => {
    const waiter = asking.shift();
    if (waiter) waiter(line);
    else answers.push(line);
  });
  return async function control(command) {
    process.stdout.write(`@@ ${command}\n`);
    const line = answers.length ? answers.shift() : await new Promise((resolve) => asking.push(resolve));
    const space = line.indexOf(" ");
    const [status, body] = space < 0 ? [line, ""] : [line.slice(0, space), line.slice(space + 1)];
    if (status !== "ok") throw new Error(`the test could not ${command}: ${body}`);
    return body ? JSON.parse(body) : null;
  };
}

// A measurement for the test to print: a line "TIME {...what, and the fields of `about`}".
export const measurer = (about) => (what) => console.log(`TIME ${JSON.stringify({ ...about, ...what })}`);

// Run scenarios[name] (within limitMs), then leave(): exit 0, "ok" on stdout, when both held; 1, with
// the failure on stderr, when not; 2 for an unknown scenario. queues, when given, describes what the
// users have not taken: it goes to stderr with a failure.
export async function play(scenarios, name, limitMs, leave, queues) {
  const run = scenarios[name];
  if (!run) {
    console.error(`unknown scenario ${name}`);
    process.exit(2);
  }
  const killer = setTimeout(() => {
    console.error(`scenario ${name} did not finish${queues ? `; queues: ${queues()}` : ""}`);
    process.exit(1);
  }, limitMs);
  try {
    await run();
    clearTimeout(killer);
    await leave();
    await sleep(50);
    console.log("ok");
    process.exit(0);
  } catch (err) {
    console.error(err && err.stack ? err.stack : err);
    if (queues) console.error(`queues: ${queues()}`);
    process.exit(1);
  }
}
