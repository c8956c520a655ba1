// Bounds on client connections (issue 11, item 4): how long a connection may sit idle, how long
// a response may wait on a client that stopped reading, and how many connections are served
// at once. Without them a socket that sends nothing, or a client that never reads a warm
// blob, held a file descriptor, two 1 MiB buffers (store/file-body.ts) and a store pin for
// ever.
//
// Timeouts. Every socket has one inactivity timer (net.Socket#setTimeout). Node refreshes it
// on every byte read and on every write handed to the kernel, and suppresses it while a
// queued write is still draining. Because the server has a 'timeout' listener, Node no longer
// destroys a socket whose timer fires; onTimeout decides:
//   - no request in flight (one that never sent a byte included): idle, closed;
//   - a response in flight whose socket holds unflushed bytes: the client stopped reading for
//     a whole period (between write and 2 x write: Node checks progress once per period), cut;
//   - a request in flight with nothing to write (a cold fetch waiting on the upstream, which
//     has its own upstreamTimeouts): re-armed, never cut.
// The timer is clientTimeouts.idle from accept to the first request, clientTimeouts.write
// while a request is in flight, and Node's keepAliveTimeout (= idle, plus the 1 s Node adds
// after the advertised `Keep-Alive: timeout`) between requests. A client that trickles its
// request headers keeps the timer alive, so Node's headersTimeout/requestTimeout (= idle,
// checked every connectionsCheckingInterval) bound the request itself.
//
// Cap. A connection accepted while limits.maxConnections others are being served is "over
// the limit": it gets a short idle timeout, and its first request is answered 503 UNAVAILABLE
// (OCI error JSON, Connection: close, Retry-After) by the first onRequest hook, before client
// auth and before any store or upstream work. UNAVAILABLE, not TOOMANYREQUESTS: the condition
// is the server's load, not this client's request rate, and 429 reads to registry clients as
// a per-client rate limit (Docker Hub's). Retry-After is 1 s: a slot frees as soon as any pull
// finishes or an idle connection times out, refusing is cheap, and containerd and Docker do
// not honour it anyway (their own retry and back-off decide). Beyond twice the cap Node
// closes new connections at accept (server.maxConnections), so even refused sockets are
// bounded. Kubelet probes: /healthz and /readyz are answered normally (with Connection: close)
// on an over-the-limit connection, because they touch neither store nor upstream: a mirror
// that is busy is not dead, and it stays in its Service. Past the hard ceiling they fail with
// everything else.

import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Server as TlsServer } from 'node:tls';
import type { FastifyInstance, FastifyServerOptions } from 'fastify';
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { ClientTimeouts } from './config.js';
import { RegistryError } from './errors.js';

export interface ClientLimits {
  timeouts: ClientTimeouts;
  maxConnections: number;
}

/** The hard ceiling of open connections, as a multiple of limits.maxConnections. */
export const hardCeilingFactor = 2;
/** The idle timeout of a connection over the limit: it should send its request at once. */
const overLimitIdleMs = 2000;
/** Seconds a refused client is told to wait. */
export const retryAfterSeconds = 1;
/** Routes answered even on a connection over the limit (kubelet's probes). */
const probeRoutes = new Set(['/healthz', '/readyz']);

/**
 * Fastify (and through it node:http) options that go with the limits: the keep-alive timeout
 * is the idle timeout, and headers and the whole request must arrive within it. Fastify's
 * own connectionTimeout stays 0: the timers are managed here.
 */
export function clientServerOptions(t: ClientTimeouts): Pick<FastifyServerOptions, 'keepAliveTimeout' | 'requestTimeout'> & {
  http: { headersTimeout: number; requestTimeout: number; connectionsCheckingInterval: number };
} {
  return {
    keepAliveTimeout: t.idleMs,
    requestTimeout: t.idleMs,
    http: {
      headersTimeout: t.idleMs,
      requestTimeout: t.idleMs,
      // Expired header/request deadlines are found by a sweep: every idle/2, 250 ms..5 s.
      connectionsCheckingInterval: Math.max(250, Math.min(5000, Math.floor(t.idleMs / 2))),
    },
  };
}

interface Connection {
  overLimit: boolean;
  /** Responses not yet finished on this connection (more than one only when pipelined). */
  inflight: Set<ServerResponse>;
}

export interface ClientConnections {
  /** Connections being served and connections over the limit (being refused), now. */
  counts(): { admitted: number; overLimit: number };
}

/**
 * Installs the timeouts and the cap on app's HTTP server. Call before any other onRequest hook
 * (client auth) is added, and before listen(). Only app.server is covered: a listen host that
 * resolves to several addresses (localhost) makes fastify open further listeners of its own,
 * which keep Node's keep-alive, header and request deadlines but not these listeners; listen
 * on an address (the default 0.0.0.0) for the full set.
 */
export function limitClientConnections(app: FastifyInstance, limits: ClientLimits, registry: Registry, log: Logger): ClientConnections {
  const server: Server = app.server;
  const { idleMs, writeMs } = limits.timeouts;
  const overIdleMs = Math.min(idleMs, overLimitIdleMs);
  const connections = new WeakMap<Socket, Connection>();
  let admitted = 0;
  let overLimit = 0;

  new Gauge({
    name: 'registry_mirror_client_connections',
    help: 'Open client connections: admitted (served) and over_limit (past limits.maxConnections, being refused)',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      this.set({ state: 'admitted' }, admitted);
      this.set({ state: 'over_limit' }, overLimit);
    },
  });
  const timedOut = new Counter({
    name: 'registry_mirror_client_connections_timed_out_total',
    help: 'Client connections closed by the mirror: idle (no request within clientTimeouts.idle), write (the client read nothing for clientTimeouts.write), request (headers not received within clientTimeouts.idle)',
    labelNames: ['reason'],
    registers: [registry],
  });
  const refused = new Counter({
    name: 'registry_mirror_client_connections_refused_total',
    help: 'Client connections refused: 503 (a request answered 503 past limits.maxConnections), dropped (closed at accept past twice the limit)',
    labelNames: ['how'],
    registers: [registry],
  });
  for (const reason of ['idle', 'write', 'request']) timedOut.inc({ reason }, 0);
  for (const how of ['503', 'dropped']) refused.inc({ how }, 0);

  server.maxConnections = limits.maxConnections * hardCeilingFactor;
  server.on('drop', () => refused.inc({ how: 'dropped' }));

  // Over https a connection is counted once its handshake is done: the HTTP layer (requests,
  // timeouts) sees the TLS socket, not the TCP one. A handshake is bounded by the server's
  // handshakeTimeout (clientTimeouts.idle) and, with the TCP sockets, by server.maxConnections.
  const established = server instanceof TlsServer ? 'secureConnection' : 'connection';
  server.on(established, (socket: Socket) => {
    const c: Connection = { overLimit: admitted >= limits.maxConnections, inflight: new Set() };
    connections.set(socket, c);
    if (c.overLimit) overLimit++;
    else admitted++;
    socket.setTimeout(c.overLimit ? overIdleMs : idleMs);
    socket.once('close', () => {
      if (c.overLimit) overLimit--;
      else admitted--;
    });
  });

  // Prepended: the write timer is armed before any route code can start writing.
  server.prependListener('request', (req: IncomingMessage, res: ServerResponse) => {
    const c = connections.get(req.socket);
    if (!c) return;
    c.inflight.add(res);
    req.socket.setTimeout(c.overLimit ? overIdleMs : writeMs);
    const done = (): void => void c.inflight.delete(res);
    res.once('finish', done);
    res.once('close', done);
  });

  server.on('timeout', (socket: Socket) => {
    const c = connections.get(socket);
    const pending = c ? [...c.inflight] : [];
    if (pending.length === 0) return cut(socket, 'idle');
    const stalled = socket.writableLength > 0 || pending.some((res) => res.writableNeedDrain || res.writableLength > 0);
    if (stalled) return cut(socket, 'write', pending);
    // A probe over the limit gets no second period.
    if (c?.overLimit) return cut(socket, 'idle');
    // Waiting for the upstream (or for the route): nothing of ours is stuck on this socket.
    socket.setTimeout(writeMs);
  });

  const cut = (socket: Socket, reason: 'idle' | 'write', pending: ServerResponse[] = []): void => {
    timedOut.inc({ reason });
    // fastify logs no request line for a response destroyed without an error: this is its trace.
    if (reason === 'write') log.info({ client: socket.remoteAddress, urls: pending.map((r) => r.req.url), writeTimeoutMs: writeMs }, 'client stopped reading: connection cut');
    else log.debug({ client: socket.remoteAddress }, 'idle client connection closed');
    socket.destroy();
  };

  server.on('clientError', (err: NodeJS.ErrnoException) => {
    // Node's sweep of header and request deadlines; fastify's own listener answers 408.
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') timedOut.inc({ reason: 'request' });
  });

  app.addHook('onRequest', async (req, reply) => {
    const c = connections.get(req.raw.socket);
    if (!c?.overLimit) return;
    reply.header('Connection', 'close');
    if (probeRoutes.has(req.routeOptions.url ?? '')) return;
    refused.inc({ how: '503' });
    if (req.url.startsWith('/v2')) reply.header('Docker-Distribution-API-Version', 'registry/2.0');
    const err = new RegistryError('UNAVAILABLE', `the mirror is serving ${limits.maxConnections} connections, its limit; try again`);
    reply.code(503).header('Retry-After', String(retryAfterSeconds)).header('Content-Type', 'application/json').send(err.body());
    return reply;
  });

  return { counts: () => ({ admitted, overLimit }) };
}
