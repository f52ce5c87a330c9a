// callbox browser call: one user per tab. Join with a user id, call another user, accept or
// reject, talk, hang up. The server owns the call (ids, ringing, timeout); this page asks and
// follows what it is told. WebRTC: the caller offers once the callee has accepted; SDPs and ICE
// candidates go through the server to the other party.
//
// A network blip does not end a call: the media goes peer to peer and keeps flowing, socket.io-client
// reconnects by itself, and callbox (its reconnect grace and connection state recovery) keeps the
// call and sends what was missed. While the other party is away the server says
// `call:reconnecting`, and `call:reconnected` when it is back; while our own connection is down
// the page says "reconnecting…". Only a clean leave (hang-up, a closed tab) or the grace running
// out ends the call.
//
// Several devices (a phone and a laptop): the page joins with a `deviceId` of its own, made once
// per browser profile and kept in localStorage, so a server run with --max-devices N > 1 lets the
// same user id be signed in here and elsewhere at once. A call rings every device; when another one
// answers or declines it, the ringing stops here and the page says so ("answered on another
// device", "declined on another device"). Glare: when two people call each other at the same
// moment the server merges the two calls into one (`call:accepted {merged: true}`, and the ack of
// `call:initiate` may say `merged: true`); the caller of the call it kept makes the offer, the other
// side (its callee, `by`) waits for it, as protocol/signalling.md (Glare) says.
//
// Query options: ?user=alice&peer=bob prefill the two ids; ?device=ID uses that device id instead of
// this profile's (several devices in one browser); ?transport=polling (or websocket)
// forces socket.io-client's transports; ?token=JWT is sent at connect, for a server run with
// --auth-secret (the token's `sub` is the user id it may join as).
"use strict";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const ui = {
  connection: $("connection"),
  joinForm: $("join-form"), userId: $("user-id"), joinButton: $("join"), whoami: $("whoami"),
  dialForm: $("dial-form"), peerId: $("peer-id"),
  incoming: $("incoming-panel"), caller: $("caller"), incomingType: $("incoming-type"),
  accept: $("accept"), reject: $("reject"),
  callPanel: $("call-panel"), callWords: $("call-words"), hangup: $("hangup"),
  status: $("status"), outcome: $("outcome"),
  remoteVideo: $("remote-video"), localVideo: $("local-video"),
  remoteLabel: $("remote-label"), localLabel: $("local-label"), remoteAway: $("remote-away"),
  log: $("log"),
};

// What the page knows. `call` is the one call this tab takes part in, or null.
let me = null; // our user id, once the server said user:joined
let wantedId = null; // the id we asked for
let rejoin = null; // the id we held when the connection dropped: joined again on reconnect
let resumeToken = null; // from user:joined: takes our session (and call) back from a new connection
let away = false; // our connection to the server dropped during a call; socket.io-client is getting it back
let iceServers = []; // from user:joined when the server gives them; none needed on one machine or LAN
let call = null; // {id, peer, type, role: "caller"|"callee", pc, local, queued, ending, cancelWanted, peerAway}
let shown = "offline"; // the state on screen (body[data-state])
let lastPeer = ""; // whom the last call was with (for words about a refusal that comes after it)
let lastAckRefusal = { code: "", at: 0 }; // a server that also sends the ack's refusal as `error`
let crossed = null; // {callId, from, callType}: a call:incoming that came while we were placing a call

// This browser's device id: made once, kept in localStorage. A reload is the same device (it replaces
// its old connection, nothing else); another browser or profile is another device. Two tabs of one
// profile signed in as the same user are one device too: the newer replaces the older, as a reload
// would. The server never sends it to anyone.
const DEVICE_KEY = "callbox.deviceId";
const DEVICE_ID = /^[A-Za-z0-9_.@:+-]{1,64}$/; // the user-id alphabet, 1-64 characters
const deviceId = params.get("device") ?? profileDeviceId();

function profileDeviceId() {
  const fresh = () => `web-${[...crypto.getRandomValues(new Uint8Array(12))].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
  try {
    let id = localStorage.getItem(DEVICE_KEY);
    if (!id || !DEVICE_ID.test(id)) {
      id = fresh();
      localStorage.setItem(DEVICE_KEY, id);
    }
    return id;
  } catch {
    return fresh(); // no storage here (blocked, a file: page): a device for this page only
  }
}

const transport = params.get("transport");
const token = params.get("token");
const socket = io({
  transports: transport === "polling" ? ["polling"] : transport === "websocket" ? ["websocket"] : undefined,
  auth: token ? { token } : undefined,
  // A call waits for us (the server's reconnect grace, 30 s by default): try again often.
  reconnectionDelayMax: 2000,
});

// -- what the person sees --------------------------------------------------------------------

const STATE_WORDS = {
  offline: () => (socket.connected ? "Not joined yet." : "Not connected to the server."),
  idle: () => `Ready. Call someone, or wait for a call.`,
  calling: () => `Calling ${call.peer}… (ringing)`,
  ringing: () => `${call.peer} is calling you.`,
  connecting: () => `Call accepted. Connecting the media with ${call.peer}…`,
  "in-call": () => `In ${call.type === "audio" ? "an audio" : "a video"} call with ${call.peer}.`,
  ending: () => `Ending the call…`,
};

// Who is away from a call we are in: us (our connection dropped) or the other party (the server
// said call:reconnecting); null when both are there.
function awayUser() {
  if (!call) return null;
  if (away) return me ?? wantedId;
  return call.peerAway ? call.peer : null;
}

function setState(state) {
  shown = state;
  document.body.dataset.state = state;
  const gone = awayUser();
  if (gone) document.body.dataset.reconnecting = gone;
  else delete document.body.dataset.reconnecting;
  ui.status.textContent = !gone ? STATE_WORDS[state]()
    : away ? "Reconnecting… (the connection to the server dropped; the call goes on)"
      : `${call.peer} is reconnecting…`;
  ui.remoteAway.hidden = !gone;
  ui.remoteAway.textContent = away ? "Reconnecting to the server…" : `${call?.peer} is reconnecting…`;
  const inCall = call !== null;
  ui.dialForm.querySelectorAll("input, button").forEach((el) => (el.disabled = !me || inCall));
  ui.incoming.hidden = state !== "ringing";
  ui.callPanel.hidden = !["calling", "connecting", "in-call", "ending"].includes(state);
  ui.hangup.textContent = state === "calling" ? "Cancel" : "Hang up";
  ui.hangup.disabled = state === "ending";
  ui.accept.disabled = ui.reject.disabled = false;
  if (call) {
    ui.callWords.textContent = state === "calling"
      ? `Ringing ${call.peer} (${call.type} call)…`
      : `${call.type === "video" ? "Video" : "Audio"} call with ${call.peer}`;
    ui.remoteLabel.textContent = call.type === "audio" ? `${call.peer} (audio only)` : call.peer;
    document.body.dataset.callType = call.type;
  }
}

// The last thing that happened, in plain words: `kind` is "info" or "error", `code` a stable tag
// (a call:ended reason, "rejected", "timeout", or the server's error code).
function tell(words, kind = "info", code = "") {
  if (!ui.outcome.hidden && ui.outcome.textContent === words && document.body.dataset.outcome === code) return;
  ui.outcome.hidden = false;
  ui.outcome.textContent = words;
  ui.outcome.className = kind;
  document.body.dataset.outcome = code;
  log(`» ${words}`);
}

function log(line) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${line}`;
  ui.log.prepend(item);
  while (ui.log.children.length > 200) ui.log.lastChild.remove();
}

function errorWords(code, message, peer) {
  switch (code) {
    case "USER_OFFLINE": return `${peer} is not online.`;
    case "USER_BUSY": return `${peer} is busy in another call.`;
    case "ALREADY_IN_CALL": return "You are already in a call (here or on another device).";
    case "INVALID_TARGET": return "You cannot call yourself.";
    case "CALL_NOT_FOUND": return "That call is already over.";
    case "RATE_LIMITED": return "Too many calls in a short time. Wait a minute and try again.";
    case "NOT_JOINED": return "Join with a user id first.";
    case "SESSION_REPLACED": return `You joined as ${me ?? wantedId} in another tab or window; this one is signed out.`;
    case "ALREADY_JOINED": return "This tab has already joined as another user; reload it to change.";
    case "UNAUTHORIZED": return "Your sign-in token is for another user id.";
    default: return message ? `${message} (${code})` : `The server refused that (${code}).`;
  }
}

// Secrets stay out of the log: TURN credentials, the resume token.
const hideSecrets = (key, value) => (key === "credential" || key === "resumeToken" ? "…" : value);

// Emit with an ack: `onOk(ack)` on success; a refusal is told here (the server then sends no
// `error` event for it), unless `stale()` says it no longer matters (the call it was about ended
// meanwhile, and the page has said how).
function request(event, payload, onOk, onRefused, stale = () => false) {
  log(`→ ${event} ${JSON.stringify(payload, hideSecrets)}`);
  socket.timeout(10000).emit(event, payload, (err, ack) => {
    if (err) {
      tell(`The server did not answer (${event}).`, "error", "NO_ANSWER");
      onRefused?.({ code: "NO_ANSWER" });
    } else if (ack && ack.ok === false) {
      log(`← ack ${event} ${JSON.stringify(ack)}`);
      lastAckRefusal = { code: ack.code, at: Date.now() };
      if (!stale()) tell(errorWords(ack.code, ack.message, payload.to ?? call?.peer ?? lastPeer), "error", ack.code);
      onRefused?.(ack);
    } else {
      onOk?.(ack ?? {});
    }
  });
}

// A relay (offer, answer, candidate): no ack; a refusal comes back as an `error` event.
function relay(event, payload) {
  log(`→ ${event} to ${payload.to}`);
  socket.emit(event, payload);
}

// -- the connection to the server ------------------------------------------------------------

function showConnection() {
  if (socket.connected) {
    const tls = location.protocol === "https:" ? " with TLS" : "";
    ui.connection.textContent = `Connected to the server over ${socket.io.engine.transport.name}${tls}.`;
  } else {
    ui.connection.textContent = "Not connected to the server; trying again…";
  }
}

// socket.io-client fires "connect" again each time it gets the connection back. With connection
// state recovery (`socket.recovered`) it is the same socket and the same session on the server,
// which then sends what we missed: nothing to do in a call. Otherwise it is a new session: join
// again, with the resume token when a call may be waiting for us.
socket.on("connect", () => {
  showConnection();
  socket.io.engine.once("upgrade", showConnection);
  if (rejoin) log(socket.recovered ? "connection recovered: the same session" : "connected again: a new session");
  if (socket.recovered && call) {
    // Our session and call are as we left them; call:reconnected follows.
  } else if (rejoin) {
    // A user not in a call is signed out at once when its connection drops: join again (the same id
    // on the same socket is harmless when the server still has us).
    join(rejoin, call && !socket.recovered ? resumeToken : null);
  }
  rejoin = null;
  away = false;
  setState(me || call ? shown : "offline");
});

socket.on("disconnect", (reason) => {
  showConnection();
  rejoin = me ?? (call ? wantedId : null);
  if (call && socket.active) {
    // socket.io-client is reconnecting and the server keeps the call for a while: the media goes
    // on peer to peer, so keep it, and say so.
    away = true;
    log(`connection lost (${reason}); reconnecting, the call goes on`);
    setState(shown);
    return;
  }
  me = null;
  away = false;
  if (call) finishCall("The connection to the server was lost; the call ended.", "error", "server_lost");
  ui.whoami.textContent = "Not joined.";
  ui.userId.readOnly = false;
  ui.joinButton.hidden = false;
  ui.joinButton.disabled = false;
  setState("offline");
  if (reason === "io server disconnect") {
    rejoin = null;
    ui.connection.textContent = "The server closed this connection. Join again to connect again.";
  }
});

socket.on("connect_error", (err) => {
  if (!socket.active) {
    // The server itself said no (with --auth-secret: no token, or a bad or expired one).
    ui.connection.textContent = "The server refused this page.";
    if (call) finishCall("The connection to the server was lost; the call ended.", "error", "server_lost");
    tell(err.message === "Unauthorized"
      ? `The server wants a valid sign-in token (${token ? "this one is not" : "open the page with ?token=…"}).`
      : `The server refused the connection: ${err.message}.`, "error", "CONNECT_REFUSED");
    ui.joinButton.disabled = false;
  } else {
    ui.connection.textContent = `Cannot reach the server (${err.message}); trying again…`;
  }
});

// -- joining ---------------------------------------------------------------------------------

function join(userId, resume = null) {
  wantedId = userId;
  if (!socket.active) socket.connect(); // the server closed this connection (an id taken over)
  ui.joinButton.disabled = true;
  const payload = resume ? { userId, deviceId, resumeToken: resume } : { userId, deviceId };
  request("user:join", payload, null, () => {
    wantedId = me;
    ui.joinButton.disabled = false;
  });
}

ui.joinForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const userId = ui.userId.value.trim();
  if (userId && userId !== me) join(userId);
});

socket.on("user:joined", (data) => {
  log(`← user:joined ${JSON.stringify(data, hideSecrets)}`);
  me = data.userId;
  wantedId = me;
  resumeToken = data.resumeToken ?? null;
  const resumed = data.resumed ? data.call ?? null : null; // the call the server kept for us
  if (call && call.id !== null && resumed?.callId !== call.id) {
    // A new session without our call: it ended while we were away.
    finishCall("The connection to the server was lost; the call ended.", "error", "server_lost");
  } else if (!call && resumed) {
    // A call this page no longer has (it cannot be picked up again here): end it.
    request("call:end", { callId: resumed.callId });
  }
  if (Array.isArray(data.iceServers)) iceServers = data.iceServers;
  const relays = iceServers.flatMap((server) => [server.urls].flat()).map((url) => url.split(":")[0].toUpperCase());
  ui.userId.value = me;
  // The server keeps one id per connection: another id takes another tab (or a reload).
  ui.userId.readOnly = true;
  ui.joinButton.hidden = true;
  ui.whoami.textContent = `Joined as ${me}. To be someone else, reload the page or open another tab.`
    + (relays.length ? ` The server gave ICE servers (${[...new Set(relays)].join(", ")}).` : "");
  ui.localLabel.textContent = `You (${me})`;
  document.title = `${me} · callbox`;
  setState(call ? shown : "idle");
  if (!call) ui.peerId.focus();
});

// -- placing a call --------------------------------------------------------------------------

function newCall(fields) {
  lastPeer = fields.peer;
  return { id: null, pc: null, local: null, media: null, queued: [], ending: false, cancelWanted: false, peerAway: false, ...fields };
}

ui.dialForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const peer = ui.peerId.value.trim();
  const type = e.submitter?.value === "audio" ? "audio" : "video";
  if (!peer || call || !me) return;
  const c = (call = newCall({ peer, type, role: "caller" }));
  ui.outcome.hidden = true;
  setState("calling");
  crossed = null;
  request("call:initiate", { to: peer, callType: type },
    // `merged: true`: the other side's call to us was ringing here, and this answered it (glare);
    // call:accepted came first and said who offers.
    (ack) => knowCallId(c, ack.callId),
    (ack) => {
      if (call !== c) return;
      finishCall(null);
      // A call to us from someone else came while ours went out: the server kept that one.
      if (ack.code === "ALREADY_IN_CALL" && crossed) ring(crossed);
    });
  // The camera and microphone start while it rings, so you see yourself before the answer.
  getMedia(c);
});

function knowCallId(c, callId) {
  if (!callId || c.id) return;
  c.id = callId;
  if (c.cancelWanted) endCall(c);
}

function endCall(c) {
  request("call:end", { callId: c.id }, null, () => { if (call === c) finishCall(null); });
}

socket.on("call:initiated", ({ callId, to }) => {
  log(`← call:initiated ${to} ${callId}`);
  if (call && call.role === "caller" && call.peer === to) knowCallId(call, callId);
});

// -- an incoming call ------------------------------------------------------------------------

socket.on("call:incoming", ({ from, callType, callId }) => {
  log(`← call:incoming from ${from} (${callType}) ${callId}`);
  if (call) {
    // We are placing a call ourselves: it crossed ours on the wire. When it is from the one we
    // call, the server merges the two (call:accepted {merged: true} follows); otherwise ours is
    // refused (ALREADY_IN_CALL) and this one rings.
    if (call.role === "caller" && call.id === null) crossed = { callId, from, callType };
    return;
  }
  ring({ callId, from, callType });
});

function ring({ callId, from, callType }) {
  crossed = null;
  call = newCall({ id: callId, peer: from, type: callType, role: "callee" });
  ui.outcome.hidden = true;
  ui.caller.textContent = from;
  ui.incomingType.textContent = `(${callType} call)`;
  setState("ringing");
}

// A call that crossed ours ended before we knew what became of ours: forget it.
function forgetCrossed(callId) {
  if (crossed?.callId === callId) crossed = null;
}

ui.accept.addEventListener("click", async () => {
  const c = call;
  if (!c || c.role !== "callee") return;
  ui.accept.disabled = ui.reject.disabled = true;
  await getMedia(c); // ready before the offer comes, so the answer carries our tracks
  if (call !== c || c.ending) return;
  // Another device of ours may answer first: then call:ended (answered_elsewhere) has said so, and
  // the late accept's CALL_NOT_FOUND is not worth telling.
  request("call:accept", { callId: c.id, from: c.peer }, null, () => { if (call === c) finishCall(null); },
    () => call !== c);
});

ui.reject.addEventListener("click", () => {
  const c = call;
  if (!c || c.role !== "callee") return;
  ui.accept.disabled = ui.reject.disabled = true;
  request("call:reject", { callId: c.id, from: c.peer }, null, () => { if (call === c) finishCall(null); },
    () => call !== c);
});

// -- hanging up, cancelling ------------------------------------------------------------------

ui.hangup.addEventListener("click", () => {
  const c = call;
  if (!c || c.ending) return;
  c.ending = true;
  stopMedia(c); // the person asked to stop: camera and microphone off now
  setState("ending");
  if (!c.id) {
    c.cancelWanted = true; // call:initiated not here yet: cancel as soon as the id is known
    return;
  }
  endCall(c);
});

// -- what the server says about our call -----------------------------------------------------

function ours(callId) {
  return call && (call.id === callId || (call.id === null && call.role === "caller"));
}

socket.on("call:accepted", ({ callId, by, merged }) => {
  log(`← call:accepted by ${by}${merged ? " (merged: we called each other at once)" : ""}`);
  forgetCrossed(callId);
  if (!ours(callId)) return;
  call.id = callId;
  if (merged) {
    // Glare: we and the other side called each other, and the server kept one of the two calls.
    // `by` is that call's callee, the polite peer: it waits for the offer. Its caller offers. (It
    // may be either of us: whichever call:initiate the server handled first made the call.)
    const kept = crossed?.callId === callId ? crossed : null;
    call.role = by === me ? "callee" : "caller";
    if (call.role === "callee" && kept) call.type = kept.callType; // the kept call is theirs
    tell(`You and ${call.peer} called each other at once: one call.`, "info", "merged");
  }
  crossed = null;
  if (!call.ending) setState("connecting");
  if (call.role === "caller") sendOffer(call);
});

socket.on("call:rejected", ({ callId, by }) => {
  log(`← call:rejected by ${by}`);
  forgetCrossed(callId);
  if (!ours(callId)) return;
  finishCall(by === me ? `You declined the call from ${call.peer}.` : `${by} declined the call.`,
    "info", "rejected");
});

socket.on("call:timeout", ({ callId }) => {
  log(`← call:timeout ${callId}`);
  forgetCrossed(callId);
  if (!ours(callId)) return;
  finishCall(call.role === "caller" ? `${call.peer} did not answer.` : `You missed a call from ${call.peer}.`,
    "info", "timeout");
});

socket.on("call:ended", ({ callId, by, reason }) => {
  log(`← call:ended by ${by} (${reason})`);
  forgetCrossed(callId);
  if (!ours(callId)) return;
  const peer = call.peer;
  const words = {
    hangup: by === me ? "You hung up." : `${by} hung up.`,
    cancelled: by === me ? "You cancelled the call." : `${by} cancelled the call.`,
    disconnected: `${peer} lost the connection; the call ended.`,
    replaced: `${peer} joined from another tab or device; the call ended.`,
    server_shutdown: "The server is shutting down; the call ended.",
    // Another device of ours (another browser, the phone) took the call, or turned it down.
    answered_elsewhere: `The call from ${peer} was answered on another device.`,
    rejected_elsewhere: `The call from ${peer} was declined on another device.`,
  }[reason] ?? `The call ended (${reason}).`;
  const calm = ["hangup", "cancelled", "answered_elsewhere", "rejected_elsewhere"].includes(reason);
  finishCall(words, calm ? "info" : "error", reason);
});

// The other party's connection dropped: the server keeps the call for a while, and the media
// between us may well go on. Nothing to tear down.
socket.on("call:reconnecting", ({ callId, userId }) => {
  log(`← call:reconnecting ${userId}`);
  if (!ours(callId) || userId === me) return;
  call.peerAway = true;
  setState(shown);
});

socket.on("call:reconnected", ({ callId, userId }) => {
  log(`← call:reconnected ${userId}`);
  if (!ours(callId)) return;
  if (userId === me) away = false;
  else call.peerAway = false;
  setState(shown);
});

socket.on("error", (err) => {
  log(`← error ${JSON.stringify(err)}`);
  // A candidate that crossed the hang-up on the wire is refused: nothing to tell anyone.
  if (err.code === "NOT_IN_CALL" && !call) return;
  // Told already from the ack of the same request.
  if (err.code === lastAckRefusal.code && Date.now() - lastAckRefusal.at < 2000) return;
  tell(errorWords(err.code, err.message, call?.peer ?? lastPeer), "error", err.code);
  if (err.code === "SESSION_REPLACED") wantedId = null;
});

// -- WebRTC ----------------------------------------------------------------------------------

// Camera and microphone for this call (microphone only for an audio call). Without them the call
// still goes on, receiving only, and the page says so. Asked once per call: whoever needs them next
// (the offer, the answer) waits for the same request.
function getMedia(c) {
  c.media ??= openMedia(c);
  return c.media;
}

async function openMedia(c) {
  try {
    c.local = await navigator.mediaDevices.getUserMedia({ audio: true, video: c.type === "video" });
  } catch (err) {
    log(`getUserMedia: ${err.name}: ${err.message}`);
    if (call === c) tell(`No ${c.type === "video" ? "camera or " : ""}microphone (${err.name}); the other side will not see or hear you.`, "error", "NO_MEDIA");
    c.local = new MediaStream();
  }
  if (c.ending || call !== c) {
    stopMedia(c);
    return;
  }
  ui.localVideo.srcObject = c.local;
}

function stopMedia(c) {
  c.local?.getTracks().forEach((t) => t.stop());
  if (c.pc) {
    c.pc.onicecandidate = c.pc.ontrack = c.pc.onconnectionstatechange = null;
    c.pc.close();
  }
  ui.localVideo.srcObject = null;
  ui.remoteVideo.srcObject = null;
}

function newPeerConnection(c) {
  const pc = new RTCPeerConnection({ iceServers });
  c.pc = pc;
  pc.onicecandidate = (e) => relay("ice:candidate", { to: c.peer, candidate: e.candidate ? e.candidate.toJSON() : null });
  pc.ontrack = (e) => {
    const stream = e.streams[0] ?? new MediaStream([e.track]);
    if (ui.remoteVideo.srcObject !== stream) ui.remoteVideo.srcObject = stream;
  };
  pc.onconnectionstatechange = () => {
    log(`media connection: ${pc.connectionState}`);
    if (call !== c || c.ending) return;
    if (pc.connectionState === "connected") setState("in-call");
    else if (pc.connectionState === "failed") {
      tell(`The media connection to ${c.peer} failed; hanging up.`, "error", "media_failed");
      ui.hangup.click();
    }
  };
  return pc;
}

async function flushCandidates(c) {
  for (const candidate of c.queued.splice(0)) await addCandidate(c, candidate);
}

async function addCandidate(c, candidate) {
  try {
    await c.pc.addIceCandidate(candidate ?? undefined); // null: the end of the candidates
  } catch (err) {
    log(`addIceCandidate: ${err.message}`);
  }
}

async function sendOffer(c) {
  try {
    await getMedia(c);
    if (call !== c || c.ending) return;
    const pc = newPeerConnection(c);
    for (const track of c.local.getTracks()) pc.addTrack(track, c.local);
    // Receive what we cannot send (no camera or microphone): the other side may still have one.
    for (const kind of c.type === "video" ? ["audio", "video"] : ["audio"]) {
      if (c.local.getTracks().every((t) => t.kind !== kind)) pc.addTransceiver(kind, { direction: "recvonly" });
    }
    await pc.setLocalDescription(await pc.createOffer());
    if (call !== c || c.ending) return;
    relay("call:offer", { to: c.peer, offer: pc.localDescription.toJSON(), callType: c.type });
  } catch (err) {
    mediaError(c, err);
  }
}

// Only the callee answers an offer; this page's callee never makes one (not even after a merge), so
// offers cannot collide here. Were they to (another app on the other side offering on its own), the
// caller is the impolite peer and ignores the other's offer, as perfect negotiation has it.
socket.on("call:offer", async ({ offer, from, callId }) => {
  log(`← call:offer from ${from}`);
  const c = call;
  if (!c || c.role !== "callee" || c.id !== callId || c.pc) return;
  try {
    await getMedia(c);
    if (call !== c || c.ending) return;
    const pc = newPeerConnection(c);
    await pc.setRemoteDescription(offer);
    // After the offer, so that our tracks go out on the transceivers the offer made.
    for (const track of c.local.getTracks()) pc.addTrack(track, c.local);
    await pc.setLocalDescription(await pc.createAnswer());
    if (call !== c || c.ending) return;
    relay("call:answer", { to: c.peer, answer: pc.localDescription.toJSON() });
    await flushCandidates(c);
  } catch (err) {
    mediaError(c, err);
  }
});

socket.on("call:answer", async ({ answer, from, callId }) => {
  log(`← call:answer from ${from}`);
  const c = call;
  if (!c || c.role !== "caller" || c.id !== callId || !c.pc) return;
  try {
    await c.pc.setRemoteDescription(answer);
    await flushCandidates(c);
  } catch (err) {
    mediaError(c, err);
  }
});

socket.on("ice:candidate", ({ candidate, callId }) => {
  const c = call;
  if (!c || c.id !== callId) return;
  if (c.pc?.remoteDescription) addCandidate(c, candidate);
  else c.queued.push(candidate); // before the offer or answer is applied: keep it for then
});

function mediaError(c, err) {
  log(`WebRTC: ${err.name}: ${err.message}`);
  if (call !== c || c.ending) return;
  tell(`The call could not be set up (${err.message}); hanging up.`, "error", "media_failed");
  ui.hangup.click();
}

// -- the end of a call -----------------------------------------------------------------------

// The call is over (the server said so, or it refused to start it): stop everything, say why.
function finishCall(words, kind = "info", code = "") {
  const c = call;
  call = null;
  away = false;
  if (c) stopMedia(c);
  if (words) tell(words, kind, code);
  setState(me ? "idle" : "offline");
}

// Leaving the page (closing the tab, reloading, going elsewhere) is a leave, not a network blip: say
// so with a Socket.IO disconnect, so that the server ends our call at once instead of waiting for us
// to come back. Over WebSocket, Chromium would say it anyway (a close frame, 1001); over HTTP
// long-polling nothing would (its requests are just dropped). In "beforeunload": a request made in
// "pagehide" is cancelled with the page.
addEventListener("beforeunload", () => socket.disconnect());

// -- start -----------------------------------------------------------------------------------

ui.userId.value = params.get("user") ?? "";
ui.peerId.value = params.get("peer") ?? "";
setState("offline");
(ui.userId.value ? ui.joinButton : ui.userId).focus();

// For people poking around in the console, and for the end-to-end test.
window.demo = {
  socket,
  get me() { return me; },
  get call() { return call; },
  get pc() { return call?.pc ?? null; },
  get iceServers() { return iceServers; },
  get resumeToken() { return resumeToken; },
  get reconnecting() { return awayUser(); },
  get state() { return document.body.dataset.state; },
  deviceId,
};
