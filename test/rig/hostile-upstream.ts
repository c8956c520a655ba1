// A scripted hostile upstream: no real registry misbehaves on purpose, so this one does
// (issue 11). It speaks just enough of the registry API for the mirror to talk to it, and
// each test scripts the answers that matter: redirects to a foreign origin, forged digests,
// oversized documents, huge or short-lived tokens. It records every request, with the
// Authorization header it carried, so a test can show where credentials went.
//
// Anything not scripted answers 404 with OCI error JSON.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';

export interface HostileRequest {
  method: string;
  /** Path with query string. */
  path: string;
  authorization?: string;
}

/** Answers one request; returns false to fall through to the next route (or the 404). */
export type HostileHandler = (req: IncomingMessage, res: ServerResponse, url: URL) => void | boolean | Promise<void | boolean>;

export interface HostileUpstream {
  url: string;
  origin: string;
  /** Adds a route: first match wins, routes added later take precedence. */
  route(method: string, path: RegExp, handler: HostileHandler): void;
  /** Forgets every route and recorded request. */
  reset(): void;
  requests(): HostileRequest[];
  /** Bytes written to response bodies by `streamBytes` since the last reset. */
  streamed(): number;
  /** Writes up to `total` bytes of `chunk` repeated, as fast as the client reads, stopping when it goes away. */
  streamBytes(res: ServerResponse, total: number, chunk?: Buffer): Promise<void>;
  stop(): Promise<void>;
}

export async function startHostileUpstream(): Promise<HostileUpstream> {
  let routes: Array<{ method: string; path: RegExp; handler: HostileHandler }> = [];
  let log: HostileRequest[] = [];
  let streamedBytes = 0;
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://hostile');
    log.push({ method: req.method ?? '', path: url.pathname + url.search, authorization: req.headers.authorization });
    void (async () => {
      for (const r of routes) {
        if (r.method !== req.method || !r.path.test(url.pathname)) continue;
        if ((await r.handler(req, res, url)) !== false) return;
      }
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors: [{ code: 'NAME_UNKNOWN', message: 'not scripted' }] }));
    })().catch(() => res.destroy());
  });
  server.keepAliveTimeout = 1000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const origin = `http://127.0.0.1:${port}`;
  return {
    url: origin,
    origin,
    route(method, path, handler) {
      routes.unshift({ method, path, handler });
    },
    reset() {
      routes = [];
      log = [];
      streamedBytes = 0;
    },
    requests: () => [...log],
    streamed: () => streamedBytes,
    async streamBytes(res, total, chunk = Buffer.alloc(64 << 10, 0x61)) {
      let sent = 0;
      let closed = false;
      res.once('close', () => {
        closed = true;
        res.emit('drain');
      });
      while (sent < total && !closed) {
        const part = chunk.subarray(0, Math.min(chunk.length, total - sent));
        sent += part.length;
        streamedBytes += part.length;
        if (!res.write(part)) await new Promise((resolve) => res.once('drain', resolve));
      }
      if (!res.destroyed) res.end();
    },
    async stop() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close').catch(() => undefined);
    },
  };
}

/** The Bearer challenge a registry sends, naming `realm` for its tokens. */
export function bearerChallenge(res: ServerResponse, realm: string, service = 'hostile'): void {
  res.writeHead(401, {
    'content-type': 'application/json',
    'www-authenticate': `Bearer realm="${realm}",service="${service}"`,
  });
  res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
}
