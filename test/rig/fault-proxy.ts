// A transparent HTTP proxy in front of a real upstream registry that misbehaves on demand:
// corrupt, truncated, stalled or slow blob bodies, and injected error statuses. It is how
// tests make the *upstream* fail in the ways the field does while the mirror under test
// talks to it exactly as it would to a real registry.
//
// Everything else passes through untouched: method, path and query, request headers
// (Authorization included, and Host, so the registry builds its Location URLs for us),
// status, response headers and a streamed body.
import { createServer, request as httpRequest, Agent, type IncomingMessage, type ServerResponse, type OutgoingHttpHeaders } from 'node:http';
import { once } from 'node:events';
import { freePort, sleep } from '../../tools/launch/proc.js';

export interface ProxyLogEntry {
  method: string;
  /** Path with query string. */
  path: string;
  /** Status sent to the client (0 if it went away before one was sent). */
  status: number;
  /** The fault applied, if any: corrupt, truncate, stall, slow, fail. */
  fault?: string;
  /** Body bytes sent to the client. */
  bytes: number;
  /** The Authorization header the request carried (what the upstream was sent), if any. */
  authorization?: string;
}

export interface FaultProxyHandle {
  url: string;
  host: string;
  port: number;
  /** Flip one byte in the middle of every GET body (200 or 206) of this blob (Content-Length kept). */
  corruptBlob(digest: string): void;
  /** Send full headers, afterBytes of body, then reset the connection. */
  truncateBlob(digest: string, afterBytes: number): void;
  /** Send headers, then nothing, until the client gives up or the proxy stops. */
  stallBlob(digest: string): void;
  /** Deliver this blob's body at about bytesPerSecond (to make downloads overlap). */
  slowBlob(digest: string, bytesPerSecond: number): void;
  /**
   * Answer the next `count` requests whose path contains pathSubstring with `status`, without
   * asking upstream (extra `headers`, e.g. Retry-After, go with it).
   */
  failNext(pathSubstring: string, status: number, count?: number, headers?: Record<string, string>): void;
  /** Answer every request whose path contains pathSubstring with this response instead of upstream's. */
  respondWith(pathSubstring: string, response: { status: number; headers: Record<string, string>; body: Buffer }): void;
  /**
   * Send the upstream's answer to GETs whose path contains pathSubstring with `extraBytes` more
   * body than its Content-Length says (written on the raw socket, as a broken server would):
   * declare 'real' keeps the true Content-Length and appends garbage; 'short' declares
   * extraBytes less than the true body and sends it all.
   */
  extendBody(pathSubstring: string, extraBytes: number, declare?: 'real' | 'short'): void;
  /**
   * Add these headers to the upstream's answers to requests whose path contains pathSubstring
   * (replacing the upstream's own of the same name), e.g. Docker Hub's ratelimit-limit. A later
   * call for the same substring replaces the earlier one's headers.
   */
  addHeaders(pathSubstring: string, headers: Record<string, string>): void;
  /** Hold requests whose path contains pathSubstring for ms before forwarding them. */
  delay(pathSubstring: string, ms: number): void;
  /**
   * Answer GETs of this blob with 307 to `toBase` + the same path, as a registry backed by
   * object storage does (the target plays the pre-signed storage URL on another origin).
   */
  redirectBlob(digest: string, toBase: string): void;
  /**
   * While on, every TCP connection is reset as soon as it is accepted, before a byte is read
   * (an upstream whose port refuses the mirror; the client sees ECONNRESET or "other side
   * closed"). Turning it on closes the connections open now, so keep-alive ones go too.
   */
  refuseConnections(on: boolean): void;
  /** TCP connections accepted so far, refused ones included: what the upstream side saw. */
  connections(): number;
  /** Closes every open connection (keep-alive ones included); the listener stays. */
  closeConnections(): void;
  /** Remove every fault (requests in flight keep theirs). */
  clear(): void;
  requests(): ProxyLogEntry[];
  countRequests(method: string, pathSubstring: string): number;
  clearLog(): void;
  stop(): Promise<void>;
}

type BlobFault =
  | { kind: 'corrupt' }
  | { kind: 'truncate'; afterBytes: number }
  | { kind: 'stall' }
  | { kind: 'slow'; bytesPerSecond: number };

// Headers that describe one connection, not the message: never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'proxy-authenticate', 'proxy-authorization']);

function endToEnd(headers: IncomingMessage['headers']): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
  return out;
}

const BLOB_PATH = /^\/v2\/.+\/blobs\/(sha256:[0-9a-f]{64})(?:\?|$)/;

/**
 * `host` is the loopback address to listen on (default 127.0.0.1), e.g. one a test added to
 * `lo` to drop packets to with iptables.
 */
export async function startFaultProxy(upstreamUrl: string, opts: { port?: number; host?: string } = {}): Promise<FaultProxyHandle> {
  const upstream = new URL(upstreamUrl);
  if (upstream.protocol !== 'http:') throw new Error(`fault proxy speaks plain http to its upstream, not ${upstream.protocol}`);
  const agent = new Agent({ keepAlive: true });
  const blobFaults = new Map<string, BlobFault>();
  const failRules: { sub: string; status: number; left: number; headers: Record<string, string> }[] = [];
  const canned: { sub: string; status: number; headers: Record<string, string>; body: Buffer }[] = [];
  const extended: { sub: string; extraBytes: number; declare: 'real' | 'short' }[] = [];
  const delays: { sub: string; ms: number }[] = [];
  const added = new Map<string, Record<string, string>>();
  const redirects = new Map<string, string>();
  const log: ProxyLogEntry[] = [];

  const server = createServer((req, res) => void handle(req, res));
  let refusing = false;
  let accepted = 0;
  server.prependListener('connection', (socket) => {
    accepted++;
    if (refusing) socket.resetAndDestroy();
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = req.url ?? '/';
    const method = req.method ?? 'GET';
    const entry: ProxyLogEntry = { method, path, status: 0, bytes: 0 };
    if (typeof req.headers.authorization === 'string') entry.authorization = req.headers.authorization;
    log.push(entry);
    res.on('close', () => {
      // An extended body was written on the raw socket: its status is set there.
      if (entry.fault !== 'extend') entry.status = res.headersSent ? res.statusCode : 0;
    });

    const rule = failRules.find((r) => r.left > 0 && path.includes(r.sub));
    if (rule) {
      rule.left--;
      entry.fault = 'fail';
      const body = JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: `injected by the fault proxy: ${rule.status}`, detail: null }] });
      res.writeHead(rule.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...rule.headers });
      res.end(method === 'HEAD' ? undefined : body);
      return;
    }
    const answer = canned.find((c) => path.includes(c.sub));
    if (answer) {
      entry.fault = 'respond';
      const chunked = Object.keys(answer.headers).some((k) => k.toLowerCase() === 'transfer-encoding');
      res.writeHead(answer.status, { ...(chunked ? {} : { 'content-length': answer.body.length }), ...answer.headers });
      res.end(method === 'HEAD' ? undefined : answer.body);
      entry.bytes = method === 'HEAD' ? 0 : answer.body.length;
      return;
    }
    const extend = method === 'GET' ? extended.find((x) => path.includes(x.sub)) : undefined;
    if (extend) {
      entry.fault = 'extend';
      await sendExtended(req, path, extend, entry);
      return;
    }
    for (const d of delays) if (path.includes(d.sub)) await new Promise((r) => setTimeout(r, d.ms));
    if (req.destroyed) return;

    const redirectTo = method === 'GET' ? redirects.get(BLOB_PATH.exec(path)?.[1] ?? '') : undefined;
    if (redirectTo) {
      entry.fault = 'redirect';
      res.writeHead(307, { location: redirectTo + path, 'content-length': 0 });
      res.end();
      return;
    }

    const digest = method === 'GET' ? BLOB_PATH.exec(path)?.[1] : undefined;
    // Taken now: clear() during a transfer must not change the fault half way.
    const fault = digest ? blobFaults.get(digest) : undefined;

    const upReq = httpRequest({
      host: upstream.hostname,
      port: upstream.port || 80,
      method,
      path,
      headers: endToEnd(req.headers),
      agent,
    });
    req.pipe(upReq);
    // A client that goes away takes its upstream request with it (but a finished exchange
    // leaves the keep-alive socket to the agent).
    res.on('close', () => {
      if (!res.writableFinished) upReq.destroy();
    });
    upReq.on('error', (err) => {
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(`fault proxy: upstream error: ${err.message}\n`);
      } else {
        res.destroy();
      }
    });
    // 206 too: containerd resumes an interrupted blob with `Range: bytes=N-`, and a fault
    // that vanished on the resume would hide what a flaky upstream really does.
    upReq.on('response', (upRes) => relay(upRes, res, entry, upRes.statusCode === 200 || upRes.statusCode === 206 ? fault : undefined, extraHeaders(path)));
  }

  /**
   * Fetches the upstream's whole answer, then writes status line, headers and a body longer
   * than the declared Content-Length straight to the socket (node:http would not let us) and
   * closes the connection a moment later.
   */
  async function sendExtended(req: IncomingMessage, path: string, x: { extraBytes: number; declare: 'real' | 'short' }, entry: ProxyLogEntry): Promise<void> {
    const upRes = await new Promise<IncomingMessage>((resolve, reject) => {
      const upReq = httpRequest({ host: upstream.hostname, port: upstream.port || 80, method: 'GET', path, headers: endToEnd(req.headers), agent });
      upReq.on('response', resolve);
      upReq.on('error', reject);
      upReq.end();
    });
    const chunks: Buffer[] = [];
    for await (const c of upRes) chunks.push(c as Buffer);
    const real = Buffer.concat(chunks);
    const body = x.declare === 'real' ? Buffer.concat([real, Buffer.alloc(x.extraBytes, 0x41)]) : real;
    const declared = x.declare === 'real' ? real.length : Math.max(0, real.length - x.extraBytes);
    const head = [`HTTP/1.1 ${upRes.statusCode ?? 502} ${upRes.statusMessage ?? ''}`];
    for (const [k, v] of Object.entries(endToEnd(upRes.headers))) {
      if (k === 'content-length' || v === undefined) continue;
      for (const one of [v].flat()) head.push(`${k}: ${String(one)}`);
    }
    head.push(`content-length: ${declared}`, '', '');
    const socket = req.socket;
    socket.write(Buffer.concat([Buffer.from(head.join('\r\n'), 'latin1'), body]));
    entry.status = upRes.statusCode ?? 0;
    entry.bytes = body.length;
    setTimeout(() => socket.destroy(), 200);
  }

  function extraHeaders(path: string): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [sub, h] of added) if (path.includes(sub)) for (const [k, v] of Object.entries(h)) out[k.toLowerCase()] = v;
    return out;
  }

  function relay(upRes: IncomingMessage, res: ServerResponse, entry: ProxyLogEntry, fault: BlobFault | undefined, extra: Record<string, string> = {}): void {
    const status = upRes.statusCode ?? 502;
    const headers = { ...endToEnd(upRes.headers), ...extra };
    const length = Number(upRes.headers['content-length'] ?? NaN);
    if (fault) entry.fault = fault.kind;
    res.writeHead(status, headers);
    // Headers go out at once, as the upstream sent them: a paced body must not delay them.
    res.flushHeaders();

    if (fault?.kind === 'stall') {
      upRes.destroy();
      return; // the client's timeout or stop() ends it
    }
    if (fault?.kind === 'truncate' && fault.afterBytes <= 0) {
      upRes.destroy();
      setTimeout(() => res.destroy(), 20);
      return;
    }

    void pump(upRes, res, entry, fault, Number.isFinite(length) ? length : -1).catch(() => {
      // Either side went away mid-body: cut the other one too, never end a body cleanly.
      upRes.destroy();
      res.destroy();
    });
  }

  async function pump(upRes: IncomingMessage, res: ServerResponse, entry: ProxyLogEntry, fault: BlobFault | undefined, length: number): Promise<void> {
    let sent = 0;
    // Where to flip a byte: the middle of the declared body, or of the first chunk.
    let flipAt = length >= 0 ? Math.floor(length / 2) : -1;
    const paceStart = Date.now();
    const write = async (chunk: Buffer): Promise<void> => {
      sent += chunk.length;
      entry.bytes = sent;
      if (!res.write(chunk)) await once(res, 'drain');
    };

    for await (const data of upRes) {
      let chunk = data as Buffer;
      if (res.destroyed) throw new Error('client gone');
      if (fault?.kind === 'truncate' && sent + chunk.length >= fault.afterBytes) {
        await write(chunk.subarray(0, fault.afterBytes - sent));
        upRes.destroy();
        // Let the bytes reach the socket, then reset it: the client sees a short body.
        await sleep(20);
        res.destroy();
        return;
      }
      if (fault?.kind === 'corrupt') {
        if (flipAt < 0) flipAt = Math.floor(chunk.length / 2);
        if (flipAt >= sent && flipAt < sent + chunk.length) {
          chunk = Buffer.from(chunk);
          chunk[flipAt - sent] = chunk[flipAt - sent]! ^ 0xff;
        }
      }
      if (fault?.kind === 'slow') {
        // Slices of ~1/10 s each, each sent when the rate allows: smooth even for one chunk.
        const slice = Math.max(1, Math.floor(fault.bytesPerSecond / 10));
        for (let off = 0; off < chunk.length; off += slice) {
          const part = chunk.subarray(off, off + slice);
          const due = paceStart + ((sent + part.length) / fault.bytesPerSecond) * 1000;
          await sleep(Math.max(0, due - Date.now()));
          if (res.destroyed) throw new Error('client gone');
          await write(part);
        }
        continue;
      }
      await write(chunk);
    }
    res.end();
  }

  const port = opts.port ?? (await freePort());
  const address = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, address, () => resolve());
  });
  const host = `${address}:${port}`;

  return {
    url: `http://${host}`,
    host,
    port,
    corruptBlob: (d) => void blobFaults.set(d, { kind: 'corrupt' }),
    truncateBlob: (d, afterBytes) => void blobFaults.set(d, { kind: 'truncate', afterBytes }),
    stallBlob: (d) => void blobFaults.set(d, { kind: 'stall' }),
    slowBlob: (d, bytesPerSecond) => void blobFaults.set(d, { kind: 'slow', bytesPerSecond }),
    failNext(sub, status, count = 1, headers = {}) {
      failRules.push({ sub, status, left: count, headers });
    },
    respondWith(sub, response) {
      canned.push({ sub, ...response });
    },
    extendBody(sub, extraBytes, declare = 'real') {
      extended.push({ sub, extraBytes, declare });
    },
    addHeaders(sub, headers) {
      added.set(sub, { ...headers });
    },
    delay(sub, ms) {
      delays.push({ sub, ms });
    },
    redirectBlob(d, toBase) {
      redirects.set(d, toBase.replace(/\/+$/, ''));
    },
    refuseConnections(on) {
      refusing = on;
      if (on) server.closeAllConnections();
    },
    connections: () => accepted,
    closeConnections() {
      server.closeAllConnections();
    },
    clear() {
      redirects.clear();
      blobFaults.clear();
      failRules.length = 0;
      delays.length = 0;
      canned.length = 0;
      extended.length = 0;
      added.clear();
    },
    requests: () => log.map((e) => ({ ...e })),
    countRequests: (method, sub) => log.filter((e) => e.method === method.toUpperCase() && e.path.includes(sub)).length,
    clearLog() {
      log.length = 0;
    },
    async stop() {
      // Stalled responses never end on their own; close them with the listener.
      const closed = new Promise<void>((r) => server.close(() => r()));
      server.closeAllConnections();
      agent.destroy();
      await closed;
    },
  };
}
