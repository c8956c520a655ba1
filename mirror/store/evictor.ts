// Expiry (cache.ttl) and the size bound (storage.maxBytes) over the content store.
//
// The clock is the last access, not the time of caching, and access times survive restarts
// (ContentStore persists them). Images are kept whole: a blob's effective access time is the
// latest of its own and that of every cached manifest that references it (an index's children
// included), and on a tie referrers go first (index, manifest, blob), so a manifest is never left pointing at removed
// layers (distribution issue 2367). Entries are (kind, digest): a manifest's refs name blobs or
// child manifests by digest alone, so a ref gives its time to both kinds of that digest.
//
// What a pass never removes (it skips it and goes on with the next entry in the order):
// - pinned content (content-store.ts), 'use' or 'keep';
// - an image in use: a manifest that is in use itself, references content in use, or is an
//   index over a manifest that does, and every blob such a manifest references. A pull holds
//   a 'use' pin on the blob it is fetching (taken before a cold blob's first byte, when it is
//   not in the store yet), so the manifest it pulls, the index it came through and its other
//   layers (fetched, or still to fetch) stay while any of its blobs is in flight. A digest is
//   shared by every image that has it, and which of them a client is pulling cannot be told,
//   so all of them are kept; a sibling platform of an index is not (it references nothing in
//   use), nor anything around a 'keep' pin, which keeps exactly what it pins: prefetch pins
//   every part of its images, and a base layer kept forever must not keep every image on it;
// - content used since the pass's order was taken (a pull that began meanwhile; for expiry,
//   content used within cache.ttl).
// A pass skips rather than stops there: everything after the first kept entry is younger than
// it, but a stop would let one shared base layer in use, or one old image that shares it, end
// every size eviction while it lasts; what is skipped is exactly what is in use.
//
// makeRoom brings the store down to the low-water mark when it can. When what it may not remove
// leaves no room for the incoming bytes under storage.maxBytes itself, it rejects with an
// ENOSPC-coded error: the caller serves that blob or manifest without caching it, as on a full
// disk, and the store never passes its bound (counted in registry_mirror_store_no_room_total).
//
// Removed content takes its records with it: after each pass the repository index is pruned
// in one walk (links and tags of the removed digests, repositories left empty), so the catalog
// does not list what the mirror no longer has. After an expiry that walk is part of the pass;
// after a size eviction it runs in the background, since a download's commit waits for
// makeRoom. Prunes that pile up meanwhile are merged into the next walk.
//
// A store several processes share (S3) is swept by one of them at a time: given a `gate` (the
// store's lease, lease.ts), expiry and size passes run only while gate.isLeader(), which is
// asked again before each removal, so a process that loses the lease stops mid-pass. Another
// process's pins are invisible here, so on such a store `graceMs` keeps whatever was accessed
// (by the index's lastAccess, image-wide as above) within that long from both passes: the caller
// makes it longer than a presigned URL lives and than a download may take. A process that does
// not lead removes nothing: its makeRoom lets a commit go over storage.maxBytes (it refuses
// only content larger than the bound itself), and the leader's timer brings the store back
// under the bound on its next tick (sweepIntervalMs), down to the low-water mark.

import type { Logger } from 'pino';
import type { MirrorMetrics } from '../metrics.js';
import type { ContentEntry, ContentKind, ContentStore } from './content-store.js';
import type { RepoIndex } from './repo-index.js';

/**
 * makeRoom's rejection. Coded ENOSPC, so a commit treats it as a full disk (the content is
 * served uncached); isNoRoom tells it apart, for callers that log or count it: the evictor has
 * already logged it (warn) and counted it (registry_mirror_store_no_room_total), and it is
 * no upstream's fault.
 */
export class NoRoomError extends Error {
  readonly code = 'ENOSPC';
}

export function isNoRoom(err: unknown): boolean {
  return err instanceof NoRoomError;
}

export interface EvictorOptions {
  ttlMs: number;
  maxBytes: number;
  /** After a size eviction the store is at most this fraction of maxBytes. */
  lowWater?: number;
  sweepIntervalMs?: number;
  /**
   * A shared store's lease (lease.ts): expiry and size passes run only while it says this
   * process leads. Absent: always (a store of one process).
   */
  gate?: { isLeader(): boolean };
  /** Content accessed (effective access) within this long is never removed. Default 0. */
  graceMs?: number;
}

/** A shared store's leader lists the bucket at most this often for its passes. */
const syncEveryMs = 5000;

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
    this.timer = setInterval(() => {
      void this.expire().catch((err) => this.log.error({ err: (err as Error).message }, 'expiry sweep failed'));
      // Shared store: commits of the processes that do not lead may have passed the bound.
      if (this.options.gate) void this.trim().catch((err) => this.log.error({ err: (err as Error).message }, 'size sweep failed'));
    }, every);
    this.timer.unref();
  }

  private lastSync = 0;

  /**
   * The leader of a shared store sweeps what the whole fleet stored, by when the whole fleet
   * last used it (ContentStore.sync): at most once per syncEveryMs, however many passes ask.
   */
  private async syncShared(): Promise<void> {
    if (!this.options.gate || Date.now() - this.lastSync < syncEveryMs) return;
    await this.store.sync();
    this.lastSync = Date.now();
  }

  /** Whether passes may remove now: no gate, or the gate says this process leads. */
  private leads(): boolean {
    return this.options.gate?.isLeader() ?? true;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** Removes content unused for longer than cache.ttl, then prunes the repository index. */
  async expire(now = Date.now()): Promise<number> {
    const removed = await this.serialized(async () => {
      if (this.options.ttlMs <= 0 || !this.leads()) return [];
      await this.syncShared();
      const removed: string[] = [];
      let kept = 0;
      let stopped = false;
      const keepFor = Math.max(this.options.ttlMs, this.options.graceMs ?? 0);
      const young = (t: number) => now - t <= keepFor;
      for (const e of evictionOrder(this.store.all(), now)) {
        if (young(e.effectiveAccess)) break;
        if (!this.leads()) {
          stopped = true;
          break;
        }
        // By age: content in use is skipped and the pass goes on (it ages from its next use).
        if (this.keeps(e.entry, young)) kept++;
        else if (await this.store.remove(e.entry.kind, e.entry.digest)) removed.push(e.entry.digest);
      }
      if (removed.length > 0 || stopped) {
        if (removed.length > 0) this.metrics.evicted('ttl', removed.length);
        this.log.info({ removed: removed.length, keptInUse: kept, ...(stopped ? { stopped: 'no longer the leader' } : {}) }, 'expired unused content');
      }
      return removed;
    });
    if (removed.length > 0) await this.prune(removed);
    return removed.length;
  }

  /**
   * Makes room for `incoming` bytes under storage.maxBytes, least recently used first, down to
   * the low-water mark; content in use is skipped. Rejects with code ENOSPC when the content
   * that must stay leaves no room for `incoming` under the bound: the caller does not cache it.
   * With a gate that says this process does not lead, it removes nothing and rejects only
   * content larger than the bound (the leader's trim() makes the room).
   */
  makeRoom(incoming: number): Promise<void> {
    return this.serialized(async () => {
      const max = this.options.maxBytes;
      if (max <= 0 || this.store.totals().storedBytes + incoming <= max) return;
      // Not the leader of a shared store: the leader's next pass makes the room.
      if (!this.leads() && incoming <= max) return;
      const { kept } = await this.evictForSize(incoming);
      const storedBytes = this.store.totals().storedBytes;
      if (storedBytes + incoming > max && !this.leads() && incoming <= max) return; // lost the lease mid-pass
      if (storedBytes + incoming > max) {
        this.metrics.noRoom();
        const grace = this.options.graceMs ? ` or used within the last ${Math.round(this.options.graceMs / 1000)} s` : '';
        this.log.warn(
          { incoming, storedBytes, maxBytes: max, keptInUse: kept, ...(grace ? { graceMs: this.options.graceMs } : {}) },
          `no room under storage.maxBytes: what is left is in use or pinned${grace}; the incoming content is served without caching`,
        );
        const why = incoming > max ? 'more than the bound itself' : `the ${storedBytes} bytes left are in use or pinned${grace}`;
        throw new NoRoomError(`no room for ${incoming} bytes under storage.maxBytes (${max}): ${why}`);
      }
    });
  }

  /**
   * A shared store's periodic size pass (the leader's timer): when the store is over
   * storage.maxBytes, down to the low-water mark. Answers how many entries it removed.
   */
  trim(): Promise<number> {
    return this.serialized(async () => {
      const max = this.options.maxBytes;
      if (max <= 0 || !this.leads()) return 0;
      await this.syncShared();
      if (this.store.totals().storedBytes <= max) return 0;
      return (await this.evictForSize(0)).removed;
    });
  }

  /**
   * Removes least recently used content down to the low-water mark minus `incoming`, skipping
   * what must stay, while this process leads. Runs inside serialized().
   */
  private async evictForSize(incoming: number): Promise<{ removed: number; kept: number }> {
    const max = this.options.maxBytes;
    const target = Math.max(0, Math.floor(max * this.lowWater) - incoming);
    const graceMs = this.options.graceMs ?? 0;
    const now = Date.now();
    const removed: string[] = [];
    let freed = 0;
    let kept = 0;
    let stopped = false;
    for (const e of evictionOrder(this.store.all(), now)) {
      if (this.store.totals().storedBytes <= target) break;
      // Within the grace: so is everything after it in the order.
      if (graceMs > 0 && now - e.effectiveAccess <= graceMs) break;
      if (!this.leads()) {
        stopped = true;
        break;
      }
      // Used since the order was taken: younger now than its place in the order says.
      if (this.keeps(e.entry, (t) => t > e.effectiveAccess || (graceMs > 0 && Date.now() - t <= graceMs))) {
        kept++;
        continue;
      }
      if (await this.store.remove(e.entry.kind, e.entry.digest)) {
        removed.push(e.entry.digest);
        freed += e.entry.size;
      }
    }
    const storedBytes = this.store.totals().storedBytes;
    if (removed.length > 0 || stopped) {
      if (removed.length > 0) this.metrics.evicted('size', removed.length);
      this.log.info(
        { removed: removed.length, freed, storedBytes, keptInUse: kept, ...(stopped ? { stopped: 'no longer the leader' } : {}) },
        'evicted least recently used content',
      );
      if (removed.length > 0) void this.prune(removed);
    }
    return { removed: removed.length, kept };
  }

  /**
   * Whether a pass must leave this entry (see the top of the file): pinned, part of an image in
   * use, or `recent` by its effective access now (the order's times are from before the pass).
   */
  private keeps(entry: ContentEntry, recent: (effectiveAccess: number) => boolean): boolean {
    const s = this.store;
    const live = s.get(entry.kind, entry.digest);
    if (!live || s.isPinned(entry.digest)) return true;
    if (recent(effectiveAccessNow(s, live))) return true;
    if (live.kind === 'manifest') return imageInUse(s, live);
    for (const m of s.referrers(live.digest)) if (imageInUse(s, m)) return true;
    return false;
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

/**
 * A manifest whose image is in use: it is in use itself, or something it references is, or
 * (an index) something one of its stored child manifests references is.
 */
function imageInUse(store: ContentStore, m: ContentEntry): boolean {
  if (store.isInUse(m.digest)) return true;
  for (const r of m.refs ?? []) {
    if (store.isInUse(r)) return true;
    const child = store.get('manifest', r);
    if (child?.refs?.some((c) => store.isInUse(c))) return true;
  }
  return false;
}

/** As evictionOrder reckons it, from the store as it is now: the entry, its referrers and theirs. */
function effectiveAccessNow(store: ContentStore, e: ContentEntry): number {
  let t = e.lastAccess;
  for (const m of store.referrers(e.digest)) {
    t = Math.max(t, m.lastAccess);
    for (const i of store.referrers(m.digest)) t = Math.max(t, i.lastAccess);
  }
  return t;
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
