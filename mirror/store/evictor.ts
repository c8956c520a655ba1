// Expiry (cache.ttl) and the size bound (storage.maxBytes) over the content store.
//
// The clock is the last access, not the time of caching, and access times survive restarts
// (ContentStore persists them). Images are kept whole: a blob's effective access time is the
// latest of its own and that of every cached manifest that references it (an index's children
// included), and on a tie referrers go first (index, manifest, blob), so a manifest is never left pointing at removed
// layers (distribution issue 2367). Pinned content, being written or served, is never removed.
// Entries are (kind, digest): a manifest's refs name blobs or child manifests by digest alone,
// so a ref gives its time to both kinds of that digest.
//
// Removed content takes its records with it: after each pass the repository index is pruned
// in one walk (links and tags of the removed digests, repositories left empty), so the catalog
// does not list what the mirror no longer has. After an expiry that walk is part of the pass;
// after a size eviction it runs in the background, since a download's commit waits for
// makeRoom. Prunes that pile up meanwhile are merged into the next walk.

import type { Logger } from 'pino';
import type { MirrorMetrics } from '../metrics.js';
import type { ContentEntry, ContentKind, ContentStore } from './content-store.js';
import type { RepoIndex } from './repo-index.js';

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
  /** Digests removed since the last prune began, waiting for the next walk. */
  private readonly unpruned = new Set<string>();
  private pruning: Promise<void> | undefined;

  /** `repos` is the server's own index: the one whose remembered links the prune clears. */
  constructor(
    private readonly store: ContentStore,
    private readonly metrics: MirrorMetrics,
    private readonly log: Logger,
    private readonly options: EvictorOptions,
    private readonly repos: RepoIndex,
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

  /** Removes content unused for longer than cache.ttl, then prunes the repository index. */
  async expire(now = Date.now()): Promise<number> {
    const removed = await this.serialized(async () => {
      if (this.options.ttlMs <= 0) return [];
      const removed: string[] = [];
      for (const e of evictionOrder(this.store.all(), now)) {
        if (now - e.effectiveAccess <= this.options.ttlMs) break;
        if (await this.store.remove(e.entry.kind, e.entry.digest)) removed.push(e.entry.digest);
      }
      if (removed.length > 0) {
        this.metrics.evicted('ttl', removed.length);
        this.log.info({ removed: removed.length }, 'expired unused content');
      }
      return removed;
    });
    if (removed.length > 0) await this.prune(removed);
    return removed.length;
  }

  /** Makes room for `incoming` bytes under storage.maxBytes, least recently used first. */
  makeRoom(incoming: number): Promise<void> {
    return this.serialized(async () => {
      const max = this.options.maxBytes;
      if (max <= 0 || this.store.totals().storedBytes + incoming <= max) return;
      const target = Math.max(0, Math.floor(max * this.lowWater) - incoming);
      const removed: string[] = [];
      let freed = 0;
      for (const e of evictionOrder(this.store.all(), Date.now())) {
        if (this.store.totals().storedBytes <= target) break;
        if (await this.store.remove(e.entry.kind, e.entry.digest)) {
          removed.push(e.entry.digest);
          freed += e.entry.size;
        }
      }
      if (removed.length > 0) {
        this.metrics.evicted('size', removed.length);
        this.log.info({ removed: removed.length, freed, storedBytes: this.store.totals().storedBytes }, 'evicted least recently used content');
        void this.prune(removed);
      }
    });
  }

  /** Settles when every prune asked for so far is done (a size eviction does not wait for it). */
  async pruned(): Promise<void> {
    while (this.pruning) await this.pruning;
  }

  /**
   * Prunes the repository index of removed digests: one walk for all of them, and for
   * whatever more is removed while a walk runs, one more walk after it. Never rejects.
   */
  private prune(digests: Iterable<string>): Promise<void> {
    for (const d of digests) this.unpruned.add(d);
    if (!this.pruning && this.unpruned.size > 0) {
      const walks = async () => {
        while (this.unpruned.size > 0) {
          const batch = new Set(this.unpruned);
          this.unpruned.clear();
          try {
            // The store is asked again at prune time: a download may have brought content back.
            const r = await this.repos.prune(batch, (kind, digest) => this.store.has(kind, digest));
            if (r.links + r.tags + r.repositories > 0) this.log.info(r, 'removed records of removed content');
          } catch (err) {
            this.log.error({ err: (err as Error).message }, 'could not prune the repository index');
          }
        }
      };
      // finally() runs after this assignment, however quickly the walks end.
      this.pruning = walks().finally(() => {
        this.pruning = undefined;
      });
    }
    return this.pruning ?? Promise.resolve();
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

const kinds: readonly ContentKind[] = ['blob', 'manifest'];
const keyOf = (kind: ContentKind, digest: string) => `${kind} ${digest}`;

/** Content in the order it should go: oldest effective access first, manifests before blobs. */
export function evictionOrder(entries: Iterable<ContentEntry>, _now: number): Ranked[] {
  const all = [...entries];
  // By (kind, digest): a blob and a manifest with one digest are two entries with two clocks.
  const effective = new Map<string, number>(all.map((e) => [keyOf(e.kind, e.digest), e.lastAccess]));
  // Index -> manifest -> blob is at most two levels deep; two passes propagate both.
  for (let pass = 0; pass < 2; pass++) {
    for (const e of all) {
      if (e.kind !== 'manifest' || !e.refs) continue;
      const t = effective.get(keyOf(e.kind, e.digest))!;
      for (const r of e.refs) {
        // A ref is a bare digest: a layer or config blob, or a child manifest of an index.
        for (const kind of kinds) {
          const k = keyOf(kind, r);
          const cur = effective.get(k);
          if (cur !== undefined && cur < t) effective.set(k, t);
        }
      }
    }
  }
  // On a tie the referrer goes before what it refers to: index, then manifest, then blob.
  const rank = (e: ContentEntry) => (e.kind === 'blob' ? 2 : e.refs?.some((r) => effective.has(keyOf('manifest', r))) ? 0 : 1);
  return all
    .map((entry) => ({ entry, effectiveAccess: effective.get(keyOf(entry.kind, entry.digest))! }))
    .sort((a, b) => a.effectiveAccess - b.effectiveAccess || rank(a.entry) - rank(b.entry));
}
