// The callbox signalling protocol (issue 3) on the Node.js socket.io 4.x server: a peer of callbox in
// the benchmark. Same events, payloads, error codes and call rules; written the way a Node developer
// would (plain objects and Maps, one handler per event, setTimeout for the ringing), with the
// options a production deployment would use (bufferutil installed, no logging per message).
//
//   node server.js --host 127.0.0.1 --port 3000 [--ring-timeout 30] [--initiate-burst 10]
//                  [--initiate-per-minute 10] [--max-sdp-bytes 65536] [--max-candidate-bytes 4096]
//
// Prints "listening on http://HOST:PORT/socket.io/" once it accepts connections.
"use strict";

const http = require("http");
const crypto = require("crypto");
const { Server } = require("socket.io");

function option(name, fallback) {
  const i = process.argv.indexOf("--" + name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const HOST = option("host", "127.0.0.1");
const PORT = Number(option("port", "3000"));
const RING_TIMEOUT_MS = Number(option("ring-timeout", "30")) * 1000;
const INITIATE_BURST = Number(option("initiate-burst", "10"));
const INITIATE_RATE = Number(option("initiate-per-minute", "10")) / 60000; // tokens per ms
const MAX_SDP_BYTES = Number(option("max-sdp-bytes", "65536"));
const MAX_CANDIDATE_BYTES = Number(option("max-candidate-bytes", "4096"));

const USER_ID = /^[A-Za-z0-9_.@:+-]{1,128}$/;
const USER_ID_RULE = "User ID must be 1-128 characters: ASCII letters, digits and _ - . @ : +";
const MESSAGES = {
  INVALID_PAYLOAD: "Invalid payload",
  NOT_JOINED: "Join first with user:join",
  ALREADY_JOINED: "This connection has already joined as another user",
  SESSION_REPLACED: "This user joined from another connection",
  USER_OFFLINE: "User not available",
  USER_BUSY: "User not available",
  ALREADY_IN_CALL: "You are already in a call",
  INVALID_TARGET: "You cannot call yourself",
  CALL_NOT_FOUND: "Call not found or expired",
  NOT_IN_CALL: "You are not in a call with this user",
  RATE_LIMITED: "Too many calls started, try again later",
};
const EVENTS = new Set([
  "user:join", "call:initiate", "call:accept", "call:reject",
  "call:offer", "call:answer", "ice:candidate", "call:end",
]);

class Refused extends Error {
  constructor(code, message) {
    super(message || MESSAGES[code]);
    this.code = code;
  }
}

// userId -> {sid, callId}; callId -> call; userId -> [tokens, at]
const users = new Map();
const calls = new Map();
const buckets = new Map();

const httpServer = http.createServer();
const io = new Server(httpServer, { serveClient: false });
const sockets = io.of("/").sockets; // sid -> Socket

function send(sid, event, payload) {
  const socket = sockets.get(sid);
  if (socket) socket.emit(event, payload);
}

function isObject(p) {
  return p !== null && typeof p === "object" && !Array.isArray(p);
}

function userIdField(p, name) {
  const v = isObject(p) ? p[name] : undefined;
  if (typeof v !== "string" || !USER_ID.test(v)) throw new Refused("INVALID_PAYLOAD", `${name}: ${USER_ID_RULE}`);
  return v;
}

function callIdField(p) {
  const v = isObject(p) ? p.callId : undefined;
  if (typeof v !== "string" || v.length < 1 || v.length > 64) throw new Refused("INVALID_PAYLOAD", "callId is required");
  return v;
}

function optionalCaller(p) {
  if (p.from === undefined || p.from === null) return null;
  return userIdField(p, "from");
}

function bounded(body, limit, what, nullable) {
  if (body === undefined || (body === null && !nullable)) throw new Refused("INVALID_PAYLOAD", `${what} is required`);
  if (body !== null && JSON.stringify(body).length > limit) {
    throw new Refused("INVALID_PAYLOAD", `${what} is larger than ${limit} bytes`);
  }
}

function takeToken(userId) {
  const now = Date.now();
  const bucket = buckets.get(userId);
  let tokens = bucket ? Math.min(INITIATE_BURST, bucket[0] + (now - bucket[1]) * INITIATE_RATE) : INITIATE_BURST;
  const allowed = tokens >= 1;
  if (allowed) tokens -= 1;
  if (tokens >= INITIATE_BURST - 1e-9 && !allowed) buckets.delete(userId);
  else buckets.set(userId, [tokens, now]);
  return allowed;
}

// -- the call's end, however it ends: its timer stops, both parties are released and told ---------

function endCall(call, event, payload) {
  calls.delete(call.id);
  if (call.timer) clearTimeout(call.timer);
  call.timer = null;
  for (const party of [call.caller, call.callee]) {
    const user = users.get(party);
    if (user && user.callId === call.id) user.callId = null;
  }
  send(call.callerSid, event, payload);
  send(call.calleeSid, event, payload);
}

function dropUser(userId, reason) {
  const user = users.get(userId);
  if (user && user.callId) {
    const call = calls.get(user.callId);
    if (call) endCall(call, "call:ended", { callId: call.id, by: userId, reason });
  }
}

function holder(socket) {
  const userId = socket.data.userId;
  const user = userId === undefined ? undefined : users.get(userId);
  if (!user || user.sid !== socket.id) throw new Refused("NOT_JOINED");
  return userId;
}

function partyRole(call, userId, sid) {
  if (userId === call.caller && sid === call.callerSid) return "caller";
  if (userId === call.callee && sid === call.calleeSid) return "callee";
  return null;
}

// -- requests: each returns the ack's success body, or throws Refused -----------------------------

const handlers = {
  "user:join"(socket, p) {
    let userId;
    const given = isObject(p) ? p.userId : undefined;
    if (given === undefined || given === null || given === "") throw new Refused("INVALID_PAYLOAD", "User ID is required");
    if (typeof given !== "string" || !USER_ID.test(given)) throw new Refused("INVALID_PAYLOAD", USER_ID_RULE);
    userId = given;
    if (socket.data.userId !== undefined && socket.data.userId !== userId) throw new Refused("ALREADY_JOINED");
    const current = users.get(userId);
    if (current && current.sid !== socket.id) {
      const old = current.sid;
      send(old, "error", { message: MESSAGES.SESSION_REPLACED, code: "SESSION_REPLACED" });
      dropUser(userId, "replaced");
      users.delete(userId);
      const oldSocket = sockets.get(old);
      if (oldSocket) oldSocket.disconnect(true);
    }
    if (!current || current.sid !== socket.id) users.set(userId, { sid: socket.id, callId: null });
    socket.data.userId = userId;
    socket.emit("user:joined", { userId, socketId: socket.id });
    return { userId, socketId: socket.id };
  },

  "call:initiate"(socket, p) {
    const userId = holder(socket);
    if (!takeToken(userId)) throw new Refused("RATE_LIMITED");
    const to = userIdField(p, "to");
    const callType = p.callType;
    if (callType !== "audio" && callType !== "video") throw new Refused("INVALID_PAYLOAD", "callType must be audio or video");
    if (to === userId) throw new Refused("INVALID_TARGET");
    const me = users.get(userId);
    if (me.callId) throw new Refused("ALREADY_IN_CALL");
    const callee = users.get(to);
    if (!callee) throw new Refused("USER_OFFLINE");
    if (callee.callId) throw new Refused("USER_BUSY");
    const call = {
      id: crypto.randomBytes(16).toString("base64url"),
      caller: userId, callerSid: socket.id, callee: to, calleeSid: callee.sid,
      callType, state: "ringing", timer: null,
    };
    calls.set(call.id, call);
    me.callId = call.id;
    callee.callId = call.id;
    send(callee.sid, "call:incoming", { from: userId, callType, callId: call.id });
    socket.emit("call:initiated", { callId: call.id, to });
    call.timer = setTimeout(() => {
      call.timer = null;
      if (calls.get(call.id) === call && call.state === "ringing") endCall(call, "call:timeout", { callId: call.id });
    }, RING_TIMEOUT_MS);
    return { callId: call.id };
  },

  "call:accept"(socket, p) {
    const userId = holder(socket);
    const callId = callIdField(p);
    const caller = optionalCaller(p);
    const call = calls.get(callId);
    if (!call || (caller !== null && caller !== call.caller) || call.state !== "ringing"
        || partyRole(call, userId, socket.id) !== "callee") throw new Refused("CALL_NOT_FOUND");
    clearTimeout(call.timer);
    call.timer = null;
    call.state = "connecting";
    const accepted = { callId, by: userId };
    send(call.callerSid, "call:accepted", accepted);
    send(call.calleeSid, "call:accepted", accepted);
    return { callId };
  },

  "call:reject"(socket, p) {
    const userId = holder(socket);
    const callId = callIdField(p);
    const caller = optionalCaller(p);
    const call = calls.get(callId);
    if (!call || (caller !== null && caller !== call.caller) || call.state !== "ringing"
        || partyRole(call, userId, socket.id) !== "callee") throw new Refused("CALL_NOT_FOUND");
    endCall(call, "call:rejected", { callId, by: userId });
    return { callId };
  },

  "call:end"(socket, p) {
    const userId = holder(socket);
    const callId = callIdField(p);
    const call = calls.get(callId);
    const role = call ? partyRole(call, userId, socket.id) : null;
    if (!role) throw new Refused("CALL_NOT_FOUND", "Call not found");
    const reason = role === "caller" && call.state === "ringing" ? "cancelled" : "hangup";
    endCall(call, "call:ended", { callId, by: userId, reason });
    return { callId };
  },

  "call:offer"(socket, p) {
    const userId = holder(socket);
    const to = userIdField(p, "to");
    let callType = p.callType;
    if (callType !== undefined && callType !== null && callType !== "audio" && callType !== "video") {
      throw new Refused("INVALID_PAYLOAD", "callType must be audio or video");
    }
    bounded(p.offer, MAX_SDP_BYTES, "offer", false);
    const call = relayCall(userId, socket.id, to);
    if (callType === undefined || callType === null) callType = call.callType;
    send(call.caller === to ? call.callerSid : call.calleeSid, "call:offer",
      { offer: p.offer, from: userId, callType, callId: call.id });
    return { callId: call.id };
  },

  "call:answer"(socket, p) {
    const userId = holder(socket);
    const to = userIdField(p, "to");
    bounded(p.answer, MAX_SDP_BYTES, "answer", false);
    const call = relayCall(userId, socket.id, to);
    if (call.state === "connecting") call.state = "connected";
    send(call.caller === to ? call.callerSid : call.calleeSid, "call:answer",
      { answer: p.answer, from: userId, callId: call.id });
    return { callId: call.id };
  },

  "ice:candidate"(socket, p) {
    const userId = holder(socket);
    const to = userIdField(p, "to");
    bounded(p.candidate, MAX_CANDIDATE_BYTES, "candidate", true);
    const call = relayCall(userId, socket.id, to);
    send(call.caller === to ? call.callerSid : call.calleeSid, "ice:candidate",
      { candidate: p.candidate, from: userId, callId: call.id });
    return { callId: call.id };
  },
};

// A relay passes only between the two parties of one call, from ringing on.
function relayCall(userId, sid, to) {
  if (!users.has(to)) throw new Refused("NOT_IN_CALL", "User not found");
  const callId = users.get(userId).callId;
  const call = callId ? calls.get(callId) : undefined;
  const role = call ? partyRole(call, userId, sid) : null;
  const peer = role === "caller" ? call.callee : role === "callee" ? call.caller : null;
  if (!call || peer !== to) throw new Refused("NOT_IN_CALL");
  return call;
}

io.on("connection", (socket) => {
  for (const event of EVENTS) {
    const handler = handlers[event];
    socket.on(event, (...args) => {
      const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
      try {
        const body = handler(socket, args[0]);
        if (ack) ack({ ok: true, ...body });
      } catch (err) {
        if (!(err instanceof Refused)) throw err;
        if (ack) ack({ ok: false, code: err.code, message: err.message });
        else socket.emit("error", { message: err.message, code: err.code });
      }
    });
  }
  socket.onAny((event, ...args) => {
    if (EVENTS.has(event)) return;
    const shown = String(event).length <= 64 ? event : String(event).slice(0, 64) + "...";
    const err = new Refused("INVALID_PAYLOAD", `Unknown event '${shown}'`);
    const ack = typeof args[args.length - 1] === "function" ? args[args.length - 1] : null;
    if (ack) ack({ ok: false, code: err.code, message: err.message });
    else socket.emit("error", { message: err.message, code: err.code });
  });
  socket.on("disconnect", () => {
    const userId = socket.data.userId;
    const user = userId === undefined ? undefined : users.get(userId);
    if (!user || user.sid !== socket.id) return;
    dropUser(userId, "disconnected");
    users.delete(userId);
  });
});

httpServer.listen(PORT, HOST, () => {
  console.log(`listening on http://${HOST}:${httpServer.address().port}/socket.io/`);
});

for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(0));
