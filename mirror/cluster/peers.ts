// Who the other replicas on the bucket are, and which of them owns a key.
//
// Peers come from a DNS name (a headless Service: one A/AAAA record per ready mirror pod),
// resolved every `refresh`, or from a fixed list; mirror pods need no Kubernetes API. This
// process is always a member (the Service may not list it before it is ready). A peer a
// forward could not reach is skipped until it answers /readyz again (probed at each refresh),
// so one dead pod costs one failed forward, not one per request.
//
// Ownership is rendezvous (highest random weight) hashing: every replica that sees the same
// members picks the same owner for a key, and a member joining or leaving moves only the
// keys it wins or held (about 1/N), never reshuffles the rest.

import { createHash } from 'node:crypto';
import { promises as dns } from 'node:dns';
import { Agent, request, type Dispatcher } from 'undici';
import type { ClusterConfig } from '../config.js';
import { clusterPeersBound } from '../config.js';
import { plainPeers, type PeerClientTls } from '../tls/peer-client.js';

/** The header a forwarded request carries: its receiver serves it itself, never forwards again. */
export const hopHeader = 'x-registry-mirror-hop';

export type Resolver = (name: string) => Promise<string[]>;

const lookupAll: Resolver = async (name) => (await dns.lookup(name, { all: true })).map((a) => (a.family === 6 ? `[${a.address}]` : a.address));

/** How long a probe of a peer marked down may take. */
const probeTimeoutMs = 1000;

export class Peers {
  readonly self: string;
  /** Members as last resolved (self included), sorted. */
  private resolved: string[] = [];
  /** Members a forward could not reach, until they answer a probe. */
  private readonly down = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private everResolved = false;
  private lastError: string | undefined;
  /** For probes over https; plain http probes use undici's global dispatcher. */
  private readonly probeAgent: Dispatcher | undefined;

  constructor(
    private readonly config: ClusterConfig,
    private readonly resolve: Resolver = lookupAll,
    private readonly onChange: (members: string[]) => void = () => undefined,
    /** How peers are reached: http, or https with the peer CA (tls/peer-client.ts). */
    readonly transport: PeerClientTls = plainPeers,
  ) {
    this.self = config.self;
    // Probes are rare (one per peer marked down, per refresh): one connection per peer is plenty.
    this.probeAgent = transport.connect ? new Agent({ connect: transport.connect, connections: 1 }) : undefined;
  }

  /** Resolves once (readiness waits for it), then again every refresh. */
  async start(): Promise<void> {
    await this.refresh();
    this.timer = setInterval(() => void this.refresh(), this.config.refreshMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    void this.probeAgent?.close().catch(() => undefined);
  }

  /** The peer list has been learnt at least once (part of /readyz). */
  get ready(): boolean {
    return this.everResolved;
  }

  /** Live members (self included), sorted: those resolved and not marked down. */
  members(): string[] {
    return this.resolved.filter((m) => m === this.self || !this.down.has(m));
  }

  /** The member that owns a key among the live members. */
  owner(key: string): string {
    let best = this.self;
    let bestScore = -1n;
    for (const m of this.members()) {
      const score = createHash('sha256').update(m).update('\n').update(key).digest().readBigUInt64BE(0);
      if (score > bestScore || (score === bestScore && m < best)) {
        best = m;
        bestScore = score;
      }
    }
    return best;
  }

  /** A forward to this peer failed to connect or answer: skip it until it answers a probe. */
  markDown(peer: string): void {
    if (peer === this.self || this.down.has(peer)) return;
    this.down.add(peer);
    this.onChange(this.members());
  }

  snapshot(): { self: string; members: string[]; down: string[]; lastError?: string } {
    return { self: this.self, members: this.members(), down: [...this.down].sort(), ...(this.lastError ? { lastError: this.lastError } : {}) };
  }

  private async refresh(): Promise<void> {
    let found: string[];
    try {
      found = await this.lookup();
      this.lastError = undefined;
    } catch (err) {
      // Keep the last known members: a DNS hiccup must not make every replica its own owner.
      this.lastError = (err as Error).message;
      if (!this.everResolved) {
        // Until the name resolves once, this process is alone (and not ready).
        this.resolved = [this.self];
      }
      return;
    }
    const next = [...new Set([this.self, ...found])].sort().slice(0, clusterPeersBound);
    for (const m of [...this.down]) {
      if (!next.includes(m)) this.down.delete(m);
      else if (await this.probe(m)) this.down.delete(m);
    }
    const before = this.members().join(',');
    this.resolved = next;
    this.everResolved = true;
    if (this.members().join(',') !== before) this.onChange(this.members());
  }

  private async probe(peer: string): Promise<boolean> {
    try {
      const res = await request(`${this.transport.scheme}://${peer}/readyz`, {
        headers: { [hopHeader]: '1' },
        headersTimeout: probeTimeoutMs,
        bodyTimeout: probeTimeoutMs,
        ...(this.probeAgent ? { dispatcher: this.probeAgent } : {}),
      });
      await res.body.dump();
      return res.statusCode === 200;
    } catch {
      return false;
    }
  }

  private async lookup(): Promise<string[]> {
    const p = this.config.peers;
    if ('static' in p) return p.static;
    return (await this.resolve(p.dns)).map((host) => `${host}:${p.port}`);
  }
}
