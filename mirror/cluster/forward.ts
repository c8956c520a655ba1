// Misses hop once to their owner. A request this replica cannot answer from the bucket (a
// cold blob, a manifest whose tag needs the upstream) goes to the replica that owns its key,
// whose answer streams through unchanged; so a blob pulled through every replica at once is
// one shared download on its owner, one upstream GET fleet-wide. The hop header makes the
// owner serve it itself: there is never a second hop, whatever the members each side sees.
// An owner that cannot be reached (refused, no answer in time) is marked down and the key's
// next owner takes it (this replica, at worst): one more upstream GET, never a failed pull.
// With `tls` peers are reached over https (tls/peer-client.ts): the client's Authorization
// header travels with the request, and this replica's certificate stands in for a client
// certificate, which a peer with tls.clientCAFile accepts as cert:<its CN>.

import type { IncomingHttpHeaders } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { Agent, request } from 'undici';
import type { MirrorMetrics } from '../metrics.js';
import { hopHeader, type Peers } from './peers.js';

/** Request headers that decide a registry answer; everything else stays with this hop. */
const forwardedRequestHeaders = ['accept', 'range', 'authorization', 'if-none-match', 'user-agent'];
/** Response headers that belong to one connection, not to the answer. */
const hopByHop = new Set(['connection', 'keep-alive', 'transfer-encoding', 'date', 'server', 'proxy-authenticate', 'trailer', 'upgrade']);

export interface ForwardTimeouts {
  /** To connect to a peer: peers are in the same cluster, so this is short. */
  connectMs: number;
  /** Until the owner's headers: it may be waiting on the upstream itself. */
  headersMs: number;
  /** Longest pause in a body. */
  idleMs: number;
}

export class Cluster {
  private readonly agent: Agent;

  constructor(
    readonly peers: Peers,
    private readonly metrics: MirrorMetrics,
    private readonly log: Logger,
    private readonly timeouts: ForwardTimeouts,
  ) {
    // Bounded: at most 32 connections to each peer (a fleet is at most 64 peers).
    this.agent = new Agent({ connections: 32, connect: peers.transport.connect ?? { timeout: timeouts.connectMs }, keepAliveTimeout: 30_000 });
  }

  /** A request forwarded to us: served here, never forwarded again. */
  static isHop(req: FastifyRequest): boolean {
    return req.headers[hopHeader] !== undefined;
  }

  /**
   * Sends the request to the owner of `key` and streams its answer back. False when this
   * replica is the owner, the request already hopped, or the owner could not be reached:
   * the caller then serves the request itself.
   */
  async forward(req: FastifyRequest, reply: FastifyReply, key: string): Promise<boolean> {
    if (Cluster.isHop(req)) return false;
    const headers: Record<string, string> = { [hopHeader]: '1' };
    for (const h of forwardedRequestHeaders) {
      const v = req.headers[h];
      if (typeof v === 'string') headers[h] = v;
    }
    // An owner that cannot be reached is marked down and the key's next owner asked: every
    // replica then agrees on that one, so a lost owner costs one more upstream GET, not one
    // per replica. Each pass removes a member, so this ends (at the latest with this one).
    for (;;) {
      const owner = this.peers.owner(key);
      if (owner === this.peers.self) return false;
      let res: Awaited<ReturnType<typeof request>>;
      try {
        res = await request(`${this.peers.transport.scheme}://${owner}${req.url}`, {
          method: req.method as 'GET' | 'HEAD',
          headers,
          dispatcher: this.agent,
          headersTimeout: this.timeouts.headersMs,
          bodyTimeout: this.timeouts.idleMs,
        });
      } catch (err) {
        this.peers.markDown(owner);
        this.metrics.clusterForward('owner_unreachable');
        this.log.warn({ peer: owner, err: (err as Error).message }, 'owner replica unreachable: skipped until it answers again');
        continue;
      }
      this.metrics.clusterForward('forwarded');
      if (req.mirror) req.mirror.source = 'peer';
      reply.code(res.statusCode);
      for (const [name, value] of Object.entries(res.headers as IncomingHttpHeaders)) {
        if (value !== undefined && !hopByHop.has(name)) reply.header(name, value);
      }
      if (req.method === 'HEAD') {
        await res.body.dump().catch(() => undefined);
        await reply.send();
      } else {
        await reply.send(res.body);
      }
      return true;
    }
  }

  async close(): Promise<void> {
    this.peers.stop();
    await this.agent.close().catch(() => undefined);
  }
}
