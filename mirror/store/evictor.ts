// Expiry (cache.ttl) and the size bound (storage.maxBytes) over the content store.
//
// The clock is the last access, not the time of caching, and access times survive restarts
// (ContentStore persists them). Images are kept whole: a blob's effective access time is the
// latest of its own and that of every cached manifest that references it (an index's children
// included), and on a tie referrers go first (index, manifest, blob), so a manifest is never left pointing at removed
// layers (distribution issue 2367). Pinned content, being written or served, is never removed.

import type { Logger } from 'pino';
import type { MirrorMetrics } from '../metrics.js';
import type { ContentEntry, ContentStore } from './content-store.js';

export interface EvictorOptions {
  ttlMs: number;
  maxBytes: number;
  /** After a size eviction the store is at most this fraction of maxBytes. */
  lowWater?: number;
  sweepIntervalMs?: number;
}

export class Evictor {
  private timer: NodeJS.Timeout | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private readonly lowWater: number;

  constructor(
    private readonly store: ContentStore,
    private readonly metrics: MirrorMetrics,
    private readonly log: Logger,
    private readonly options: EvictorOptions,
  ) {
    this.lowWater = options.lowWater ?? 0.9;
  }

  start(): void {
    const every = this.options.sweepIntervalMs ?? Math.min(60_000, Math.max(1000, this.options.ttlMs / 4));
    this.timer = setInterval(() => void this.expire().catch((err) => this.log.error({ err: (err as Error).message }, 'expiry sweep failed')), every);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** Removes content unused for longer than cache.ttl. */
  expire(now = Date.now()): Promise<number> {
    return this.serialized(async () => {
      if (this.options.ttlMs <= 0) return 0;
      let removed = 0;
      for (const e of evictionOrder(this.store.all(), now)) {
        if (now - e.effectiveAccess <= this.options.ttlMs) break;
        if (await this.store.remove(e.entry.digest)) removed++;
      }
      if (removed > 0) {
        this.metrics.evicted('ttl', removed);
        this.log.info({ removed }, 'expired unused content');
      }
      return removed;
    });
  }

  /** Makes room for `incoming` bytes under storage.maxBytes, least recently used first. */
  makeRoom(incoming: number): Promise<void> {
    return this.serialized(async () => {
      const max = this.options.maxBytes;
      if (max <= 0 || this.store.totals().storedBytes + incoming <= max) return;
      const target = Math.max(0, Math.floor(max * this.lowWater) - incoming);
      let removed = 0;
      let freed = 0;
      for (const e of evictionOrder(this.store.all(), Date.now())) {
        if (this.store.totals().storedBytes <= target) break;
        if (await this.store.remove(e.entry.digest)) {
          removed++;
          freed += e.entry.size;
        }
      }
      if (removed > 0) {
        this.metrics.evicted('size', removed);
        this.log.info({ removed, freed, storedBytes: this.store.totals().storedBytes }, 'evicted least recently used content');
      }
    });
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.chain.then(fn, fn);
    this.chain = next.catch(() => undefined);
    return next;
  }
}

export interface Ranked {
  entry: ContentEntry;
  effectiveAccess: number;
}

/** Content in the order it should go: oldest effective access first, manifests before blobs. */
export function evictionOrder(entries: Iterable<ContentEntry>, _now: number): Ranked[] {
  const all = [...entries];
  const effective = new Map<string, number>(all.map((e) => [e.digest, e.lastAccess]));
  // Index -> manifest -> blob is at most two levels deep; two passes propagate both.
  for (let pass = 0; pass < 2; pass++) {
    for (const e of all) {
      if (e.kind !== 'manifest' || !e.refs) continue;
      const t = effective.get(e.digest)!;
      for (const r of e.refs) {
        const cur = effective.get(r);
        if (cur !== undefined && cur < t) effective.set(r, t);
      }
    }
  }
  const byDigest = new Map(all.map((e) => [e.digest, e]));
  // On a tie the referrer goes before what it refers to: index, then manifest, then blob.
  const rank = (e: ContentEntry) => (e.kind === 'blob' ? 2 : e.refs?.some((r) => byDigest.get(r)?.kind === 'manifest') ? 0 : 1);
  return all
    .map((entry) => ({ entry, effectiveAccess: effective.get(entry.digest)! }))
    .sort((a, b) => a.effectiveAccess - b.effectiveAccess || rank(a.entry) - rank(b.entry));
}
