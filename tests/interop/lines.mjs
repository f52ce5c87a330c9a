// For the scripts that print what they observe as JSON lines {"type": ..., ...} (library.mjs,
// scenarios.mjs, admin_ui.mjs, rooms.mjs): the output, waiting with a deadline, and the commands
// that drive a set of named clients.

export const WAIT = 5000; // ms: the longest any single step may take

// `v` with its bytes (Buffer, ArrayBuffer, typed arrays) as {"$bytes": "<hex>"}, for JSON.
export function plain(v) {
  if (Buffer.isBuffer(v)) return { $bytes: v.toString("hex") };
  if (v instanceof ArrayBuffer) return { $bytes: Buffer.from(v).toString("hex") };
  if (ArrayBuffer.isView(v)) return { $bytes: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("hex") };
  if (Array.isArray(v)) return v.map(plain);
  if (v !== null && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

// Exit once what was printed has been written (process.exit() alone may drop queued output).
export function exit(code) {
  process.stdout.write("", () => process.exit(code));
}

// out(type, fields): one line {type, ...fields}, made JSON by `encode` first (plain, for scripts
// that print bytes); fail(err): an "error" line, then exit 1.
export function printer(encode = (v) => v) {
  const out = (type, fields = {}) => {
    process.stdout.write(JSON.stringify(encode({ type, ...fields })) + "\n");
  };
  const fail = (err) => {
    out("error", { message: String(err && err.message), stack: String(err && err.stack) });
    exit(1);
  };
  return { out, fail };
}

// `promise`, or a rejection once `ms` have passed ("timed out waiting for `what`").
export function within(promise, what, ms = WAIT) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// The arguments of the next `event` on `emitter`.
export function next(emitter, event, ms = WAIT) {
  return within(new Promise((resolve) => emitter.once(event, (...args) => resolve(args))), event, ms);
}

// The commands that act on named clients (`sockets`, name -> socket), printing with `out`:
//   emit {name, event, args, ack}: name emits event (with ack: an "ack" line, or "ack_timeout")
//   close {name}: name disconnects
//   end: every client disconnects, "end", exit 0
export function clientCommands(sockets, out) {
  function emit({ name, event, args = [], ack = false }) {
    const socket = sockets.get(name);
    if (socket === undefined) throw new Error(`no client ${name}`);
    if (!ack) {
      socket.emit(event, ...args);
      return;
    }
    socket.timeout(WAIT).emit(event, ...args, (err, ...answer) => {
      if (err) out("ack_timeout", { name, event });
      else out("ack", { name, event, answer });
    });
  }
  function end() {
    for (const socket of sockets.values()) socket.disconnect();
    out("end");
    exit(0);
  }
  return { emit, close: ({ name }) => sockets.get(name).disconnect(), end };
}
