// A TCP proxy for the browser test: a page reaches callbox through it, so the test can cut that
// page's signalling (every connection dropped, new ones refused) while its WebRTC media, which goes
// peer to peer, is untouched. It can also hold what callbox sends the page for a while (the page's
// own requests still go through): events in flight, as when two people call each other at once.
//
// It also reads what the browser sends on each WebSocket (after the HTTP upgrade) far enough to see
// a close frame and its code: that is how the test learns what Chromium says when a tab closes.

import net from "node:net";

const UPGRADE = /^upgrade:\s*websocket\s*$/im;
const NO_STATUS = 1005; // a close frame without a code (RFC 6455 7.1.5)

// Client-to-server WebSocket frames, fed in chunks: calls onClose(code, reason) for a close frame.
class FrameReader {
  constructor(onClose) {
    this.onClose = onClose;
    this.buffer = Buffer.alloc(0);
  }

  feed(chunk) {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (;;) {
      const b = this.buffer;
      if (b.length < 2) return;
      const opcode = b[0] & 0x0f;
      const masked = (b[1] & 0x80) !== 0;
      let length = b[1] & 0x7f;
      let at = 2;
      if (length === 126) {
        if (b.length < 4) return;
        length = b.readUInt16BE(2);
        at = 4;
      } else if (length === 127) {
        if (b.length < 10) return;
        length = Number(b.readBigUInt64BE(2));
        at = 10;
      }
      const key = masked ? at : -1;
      if (masked) at += 4;
      if (b.length < at + length) return;
      if (opcode === 0x8) {
        const payload = Buffer.from(b.subarray(at, at + length));
        if (masked) for (let i = 0; i < payload.length; i++) payload[i] ^= b[key + (i % 4)];
        this.onClose(payload.length >= 2 ? payload.readUInt16BE(0) : NO_STATUS, payload.subarray(2).toString());
      }
      this.buffer = b.subarray(at + length);
    }
  }
}

export class TcpProxy {
  // target: "http://127.0.0.1:PORT" (the callbox URL).
  constructor(target) {
    const url = new URL(target);
    this.target = { host: url.hostname, port: Number(url.port) };
    this.port = 0;
    this.server = null;
    this.pairs = new Set();
    this.websockets = []; // {opened, closeFrame: {code, reason, at} | null, ended: "client" | "server" | "cut" | null}
    this.accepted = 0;
    this.held = null; // [socket, chunk] from callbox, waiting for release(); null when not holding
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async listen() {
    const server = net.createServer((client) => this.accept(client));
    await new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen({ host: "127.0.0.1", port: this.port }, () => {
        server.off("error", reject);
        resolve();
      });
    });
    this.port = server.address().port;
    this.server = server;
  }

  accept(client) {
    this.accepted++;
    const upstream = net.connect(this.target);
    const pair = { client, upstream, ws: null, head: "" };
    this.pairs.add(pair);
    const end = (who) => {
      if (pair.ws && pair.ws.ended === null) pair.ws.ended = who;
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("data", (chunk) => {
      this.inspect(pair, chunk);
      upstream.write(chunk);
    });
    upstream.on("data", (chunk) => {
      if (this.held) this.held.push([client, chunk]);
      else client.write(chunk);
    });
    client.on("end", () => upstream.end());
    upstream.on("end", () => client.end());
    client.on("close", () => end("client"));
    upstream.on("close", () => end("server"));
    client.on("error", () => end("client"));
    upstream.on("error", () => end("server"));
  }

  // The first request on a connection says whether it is a WebSocket; then its frames are read.
  inspect(pair, chunk) {
    if (pair.ws) {
      pair.reader.feed(chunk);
      return;
    }
    if (pair.head === null) return; // plain HTTP (polling): nothing to read
    pair.head += chunk.toString("latin1");
    const endOfHead = pair.head.indexOf("\r\n\r\n");
    if (endOfHead < 0) return;
    if (!UPGRADE.test(pair.head.slice(0, endOfHead))) {
      pair.head = null;
      return;
    }
    const rest = Buffer.from(pair.head.slice(endOfHead + 4), "latin1");
    pair.head = null;
    pair.ws = { opened: Date.now(), closeFrame: null, ended: null };
    this.websockets.push(pair.ws);
    pair.reader = new FrameReader((code, reason) => {
      pair.ws.closeFrame ??= { code, reason, at: Date.now() };
    });
    pair.reader.feed(rest);
  }

  // The network goes: every connection through here is dropped at once (each side sees its TCP
  // connection end, with no WebSocket close frame), and new ones are refused until resume().
  async cut() {
    const server = this.server;
    this.server = null;
    const closed = new Promise((resolve) => server.close(resolve));
    for (const pair of [...this.pairs]) {
      if (pair.ws && pair.ws.ended === null) pair.ws.ended = "cut";
      pair.client.destroy();
      pair.upstream.destroy();
    }
    this.pairs.clear();
    await closed;
  }

  // What callbox sends from now on waits here, in order, until release(); what the page sends
  // still goes on at once.
  hold() {
    this.held ??= [];
  }

  release() {
    const held = this.held ?? [];
    this.held = null;
    for (const [client, chunk] of held) if (!client.destroyed) client.write(chunk);
    return held.length;
  }

  // The network is back: listen again on the same port.
  resume() {
    return this.listen();
  }

  async close() {
    if (this.server) await this.cut();
  }
}
