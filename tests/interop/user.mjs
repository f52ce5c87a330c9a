// For the scenario scripts signalling.mjs and devices.mjs: one connection of a user (a
// socket.io-client, no reconnection, and in a queue what it received, taken one event at a time),
// which each script extends with its own join and checks; and how a script runs its scenario.

import assert from "node:assert/strict";
import { io } from "socket.io-client";

export const TRANSPORTS = { websocket: ["websocket"], polling: ["polling"], default: undefined };
export const WAIT = 5000; // ms: the longest one expected event may take
export const QUIET = 150; // ms: how long "nothing arrives" is watched

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

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
    if (this.socket.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.socket.once("connect", resolve);
      this.socket.once("connect_error", reject);
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
      await new Promise((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, left);
      });
    }
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

// Run scenarios[name] (within limitMs), then leave(): exit 0, "ok" on stdout, when both held; 1, with
// the failure on stderr, when not; 2 for an unknown scenario.
export async function play(scenarios, name, limitMs, leave) {
  const run = scenarios[name];
  if (!run) {
    console.error(`unknown scenario ${name}`);
    process.exit(2);
  }
  const killer = setTimeout(() => {
    console.error(`scenario ${name} did not finish`);
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
    process.exit(1);
  }
}
