// The content-addressed part of the store: blobs and manifests at the keys
// blobs/<alg>/<xx>/<hex> and manifests/<alg>/<xx>/<hex> of its driver (a directory or an S3
// bucket, driver.ts), with an in-memory index of size, kind and last access that is rebuilt
// from the driver's listing at start-up. The index is
// keyed by (kind, digest), as the trees are: OCI lets a client fetch a manifest as a blob, so
// one digest can be stored once as each, and neither copy may hide or replace the other.
//
// Crash safety: content only ever appears at these keys by the driver's commitFile of a
// finished, verified temp file (a rename of an fsynced file, or one S3 upload completed last),
// so after a kill -9 a key either holds the whole content or nothing. Temp files live in the
// driver's scratchDir and are swept at start.
//
// Access bookkeeping costs no store write per request: access times change in memory and are
// flushed in one batched write (periodically and at close) to state/access.json, or, on a
// store several processes share, to state/access/<instance>.json: each process writes only
// its own, and start-up takes the latest time per digest over all of them. Version 2 of the
// file keeps the times per kind; version 1 (one time per bare digest) is still read, its time
// applying to whichever kinds of that digest are stored.
//
// Pins keep content from removal, per digest (both kinds), and come in two kinds: 'use', held
// while content is written or served (and taken before a download's first byte, so a digest
// can be in use before it is in the store), and 'keep', held for as long as it is wanted on
// purpose (prefetch `pin: true`). The evictor treats an image with content in use as in use
// whole (evictor.ts); a kept digest is kept alone. The index also knows, per digest, which
// stored manifests reference it, for the evictor to find the images around a pinned digest.

import { hostname } from 'node:os';
import { provesDigest } from '../manifest-digest.js';
import type { Digest } from '../reference.js';
import { parseDigest } from '../reference.js';
import { isStoreUnavailable, type StoreDriver } from './driver.js';
import { removeQuietly } from './fsutil.js';

export type ContentKind = 'blob' | 'manifest';

export interface ContentEntry {
  digest: string;
  kind: ContentKind;
  size: number;
  lastAccess: number;
  /** Manifests only: the media type the upstream served it with. */
  mediaType?: string;
  /** Manifests only: the digests this manifest references (layers, config, child manifests). */
  refs?: string[];
}

/** 'use': being written or served now; 'keep': kept on purpose, for as long as it is held. */
export type PinKind = 'use' | 'keep';

export interface StoredManifest {
  digest: string;
  mediaType: string;
  bytes: Buffer;
}

/** state/access.json as written: last access (ms since epoch) by kind, then digest. */
interface AccessState {
  version: 2;
  access: Record<ContentKind, Record<string, number>>;
}

/** What open() finds in state/access.json: a lookup by kind and digest. */
type SavedAccess = (kind: ContentKind, digest: string) => number | undefined;

export class ContentStore {
  readonly tmpDir: string;
  /** By kind, then digest: a blob and a manifest with one digest are two entries. */
  private readonly entries: Record<ContentKind, Map<string, ContentEntry>> = { blob: new Map(), manifest: new Map() };
  /** Per digest, whatever the kind: pinning a digest keeps both its kinds. Counts by holder. */
  private readonly pins: Record<PinKind, Map<string, number>> = { use: new Map(), keep: new Map() };
  /** Digest -> digests of the stored manifests whose refs name it. */
  private readonly referrerIndex = new Map<string, Set<string>>();
  private storedBytes = 0;
  private accessDirty = false;
  /** This process's access-time object: one shared file, or one per process on a shared store. */
  private readonly accessKey: string;

  /**
   * accessMaxAgeMs (cache.ttl): on a shared store, another process's access file not written
   * for this long only holds times of content expired by now, and is deleted at start, so the
   * files of pods long gone do not pile up. 0 = kept.
   */
  constructor(
    readonly driver: StoreDriver,
    private readonly options: { accessMaxAgeMs?: number } = {},
  ) {
    this.tmpDir = driver.scratchDir;
    this.accessKey = driver.shared ? `${accessDir}${instanceName()}.json` : 'state/access.json';
  }

  /** Opens the driver (sweeping temp leftovers) and rebuilds the index from its listing. */
  async open(): Promise<{ sweptTemp: number; sweptUploads: number }> {
    const swept = await this.driver.open();
    const saved = await this.savedAccess();
    for (const kind of ['blob', 'manifest'] as const) {
      for await (const o of this.driver.list(`${dirOf(kind)}/`)) {
        if (o.key.endsWith('.type')) continue;
        const [, alg, xx, hex, extra] = o.key.split('/');
        if (extra !== undefined || !hex || xx !== hex.slice(0, 2)) continue; // not ours; never touched
        await this.indexStored(kind, `${alg}:${hex}`, o.size, o.modifiedMs, saved);
      }
    }
    return swept;
  }

  private async indexStored(kind: ContentKind, digestValue: string, size: number, modifiedMs: number, saved: SavedAccess): Promise<void> {
    let digest: Digest;
    try {
      digest = parseDigest(digestValue);
    } catch {
      return; // not ours; never touched
    }
    const entry: ContentEntry = { digest: digest.value, kind, size, lastAccess: saved(kind, digest.value) ?? modifiedMs };
    if (kind === 'manifest') {
      const key = this.keyOf('manifest', digest);
      const mediaType = (await this.driver.get(`${key}.type`))?.toString('utf8');
      if (mediaType === undefined) {
        // The type object is written before the content, so this is content from outside
        // the mirror's own write path: leave it unindexed rather than guess.
        return;
      }
      entry.mediaType = mediaType;
      entry.refs = manifestRefs((await this.driver.get(key)) ?? Buffer.alloc(0));
    }
    this.add(entry);
  }

  /**
   * A shared store's index brought up to the bucket: content other processes stored since
   * the listing at start is added, content no longer there (removed by the process leading
   * expiry) is forgotten unless it is in use here, and every entry's access time becomes the
   * latest any process has saved. The leader runs this before each expiry or size pass, so
   * it sweeps what the whole fleet stored, by when the whole fleet last used it. Costs one
   * listing of blobs/ and manifests/, the access files, and a read per new manifest.
   */
  async sync(): Promise<void> {
    if (!this.driver.shared) return;
    const started = Date.now();
    const saved = await this.savedAccess();
    for (const kind of ['blob', 'manifest'] as const) {
      const seen = new Set<string>();
      for await (const o of this.driver.list(`${dirOf(kind)}/`)) {
        if (o.key.endsWith('.type')) continue;
        const [, alg, xx, hex, extra] = o.key.split('/');
        if (extra !== undefined || !hex || xx !== hex.slice(0, 2)) continue;
        const digest = `${alg}:${hex}`;
        seen.add(digest);
        const known = this.entries[kind].get(digest);
        if (!known) await this.indexStored(kind, digest, o.size, o.modifiedMs, saved);
        else {
          const t = saved(kind, digest);
          if (t !== undefined && t > known.lastAccess) known.lastAccess = t;
        }
      }
      // Not listed: removed by the leader. Content this process added while the listing ran
      // (its access is that recent) or holds pinned stays.
      for (const [digest, e] of [...this.entries[kind]]) {
        if (!seen.has(digest) && !this.isPinned(digest) && e.lastAccess < started) this.forget(kind, digest);
      }
    }
  }

  /** Access times saved by earlier runs (and, on a shared store, by every process): the latest wins. */
  private async savedAccess(): Promise<SavedAccess> {
    if (!this.driver.shared) return savedAccess(parseJson(await this.driver.get(this.accessKey)));
    const all: SavedAccess[] = [];
    const maxAge = this.options.accessMaxAgeMs ?? 0;
    const stale: string[] = [];
    for await (const o of this.driver.list(accessDir)) {
      if (!o.key.endsWith('.json')) continue;
      if (maxAge > 0 && o.modifiedMs < Date.now() - maxAge && o.key !== this.accessKey) stale.push(o.key);
      else all.push(savedAccess(parseJson(await this.driver.get(o.key))));
    }
    for (const key of stale) await this.driver.delete(key);
    return (kind, digest) => {
      let t: number | undefined;
      for (const s of all) {
        const v = s(kind, digest);
        if (v !== undefined && (t === undefined || v > t)) t = v;
      }
      return t;
    };
  }

  private add(entry: ContentEntry): void {
    const map = this.entries[entry.kind];
    const old = map.get(entry.digest);
    if (old) {
      this.storedBytes -= old.size;
      this.unindexRefs(old);
    }
    map.set(entry.digest, entry);
    this.storedBytes += entry.size;
    if (entry.kind === 'manifest') {
      for (const r of entry.refs ?? []) {
        let s = this.referrerIndex.get(r);
        if (!s) this.referrerIndex.set(r, (s = new Set()));
        s.add(entry.digest);
      }
    }
  }

  private unindexRefs(e: ContentEntry): void {
    if (e.kind !== 'manifest') return;
    for (const r of e.refs ?? []) {
      const s = this.referrerIndex.get(r);
      if (!s) continue;
      s.delete(e.digest);
      if (s.size === 0) this.referrerIndex.delete(r);
    }
  }

  /** The driver key of content: <blobs|manifests>/<alg>/<xx>/<hex>. */
  keyOf(kind: ContentKind, digest: Digest): string {
    return `${dirOf(kind)}/${digest.algorithm}/${digest.hex.slice(0, 2)}/${digest.hex}`;
  }

  get(kind: ContentKind, digest: string): ContentEntry | undefined {
    return this.entries[kind].get(digest);
  }

  /**
   * The entry of stored content. On a store other processes share, content this process has
   * not indexed may have been stored by another since the listing at start: one stat asks
   * the store before the caller goes to the upstream for it (a store that cannot be asked
   * says "not stored").
   */
  async lookup(kind: ContentKind, digest: Digest): Promise<ContentEntry | undefined> {
    const known = this.entries[kind].get(digest.value);
    if (known || !this.driver.shared) return known;
    try {
      const info = await this.driver.stat(this.keyOf(kind, digest));
      if (info && !this.entries[kind].has(digest.value)) await this.indexStored(kind, digest.value, info.size, info.modifiedMs, () => undefined);
    } catch (err) {
      if (!isStoreUnavailable(err)) throw err;
    }
    return this.entries[kind].get(digest.value);
  }

  has(kind: ContentKind, digest: string): boolean {
    return this.entries[kind].has(digest);
  }

  touch(kind: ContentKind, digest: string, now = Date.now()): void {
    const e = this.entries[kind].get(digest);
    if (e) {
      e.lastAccess = now;
      this.accessDirty = true;
    }
  }

  /** A temp file path for a download; the caller moves it in with commitBlob. */
  tempPath(): string {
    return this.driver.tempPath();
  }

  /** Whether a download must fsync its temp file before commitBlob. */
  get syncBeforeCommit(): boolean {
    return this.driver.syncBeforeCommit;
  }

  /**
   * Moves a finished, verified (and, when the driver wants it, fsynced) temp file into place.
   * Resolves true when this created the blob; false when a shared store already had it (stored
   * by another process meanwhile: not written again).
   */
  async commitBlob(tmp: string, digest: Digest, size: number): Promise<boolean> {
    const key = this.keyOf('blob', digest);
    let created = true;
    if (this.driver.shared) {
      // Content-addressed: the same key holds the same bytes, so an object of this size is
      // this blob, and a second upload would only cost bytes written.
      const there = await this.driver.stat(key).catch(() => undefined);
      if (there?.size === size) created = false;
      else {
        try {
          await this.driver.commitFile(tmp, key, size);
        } catch (err) {
          // An answer lost after the upload completed (a timeout, a retried completion that
          // finds its upload gone): objects appear whole or not at all, so one of this size at
          // its content address is this blob, stored by us.
          if ((await this.driver.stat(key).catch(() => undefined))?.size !== size) {
            await removeQuietly(tmp);
            throw err;
          }
        }
      }
      // The driver uploaded a copy: the temp file is ours to remove. Readers still on it
      // hold an open handle, which outlives the name.
      await removeQuietly(tmp);
    } else {
      await this.driver.commitFile(tmp, key, size);
    }
    this.add({ digest: digest.value, kind: 'blob', size, lastAccess: Date.now() });
    return created;
  }

  /** Bytes [start, end] of a stored blob as a body; undefined when it has gone from the store. */
  async openBlob(digest: Digest, start: number, end: number): Promise<import('node:stream').Readable | undefined> {
    const body = await this.driver.openRead(this.keyOf('blob', digest), start, end);
    // Removed behind the index (by hand, or by another process on a shared store).
    if (!body) this.forget('blob', digest.value);
    return body;
  }

  /** A whole stored blob (small ones: v1 JSON documents); undefined when it has gone. */
  async readBlob(digest: Digest): Promise<Buffer | undefined> {
    const bytes = await this.driver.get(this.keyOf('blob', digest));
    if (!bytes) this.forget('blob', digest.value);
    return bytes;
  }

  /** A URL the client may fetch the blob from directly (S3 redirect mode), when the driver offers one. */
  async blobUrl(digest: Digest): Promise<string | undefined> {
    return this.driver.presignGet?.(this.keyOf('blob', digest));
  }

  async putManifest(digest: Digest, mediaType: string, bytes: Buffer): Promise<void> {
    const key = this.keyOf('manifest', digest);
    const known = this.entries.manifest.has(digest.value);
    try {
      await this.driver.put(`${key}.type`, mediaType);
      await this.driver.put(key, bytes);
    } catch (err) {
      // Store full between the two: no .type without its manifest left behind.
      if (!known) await this.driver.delete(`${key}.type`).catch(() => undefined);
      throw err;
    }
    this.add({
      digest: digest.value,
      kind: 'manifest',
      size: bytes.length,
      lastAccess: Date.now(),
      mediaType,
      refs: manifestRefs(bytes),
    });
  }

  async getManifest(digest: Digest): Promise<StoredManifest | undefined> {
    const entry = await this.lookup('manifest', digest);
    if (!entry) return undefined;
    let bytes: Buffer | undefined;
    try {
      bytes = await this.driver.get(this.keyOf('manifest', digest));
    } catch (err) {
      // A store that cannot be read is a miss: the manifest comes from the upstream instead.
      if (isStoreUnavailable(err)) return undefined;
      throw err;
    }
    if (!bytes) {
      this.forget('manifest', digest.value);
      return undefined;
    }
    // Manifests are small and every upstream shares the store: their bytes are proven on
    // every read, so a file damaged on disk, or planted by a mirror before issue 11's fix,
    // is fetched and proven again instead of served (the file stays for `verify`).
    if (!provesDigest(bytes, entry.mediaType!, digest)) {
      this.forget('manifest', digest.value);
      return undefined;
    }
    return { digest: digest.value, mediaType: entry.mediaType!, bytes };
  }

  /**
   * Pinned content is never removed. Content being written or served is pinned 'use' for the
   * duration (before it is in the store, for a download); content kept on purpose, 'keep'.
   * Returns the release (idempotent).
   */
  pin(digest: string, kind: PinKind = 'use'): () => void {
    const pins = this.pins[kind];
    pins.set(digest, (pins.get(digest) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (pins.get(digest) ?? 1) - 1;
      if (n <= 0) pins.delete(digest);
      else pins.set(digest, n);
    };
  }

  /** Pinned by anyone, for either purpose. */
  isPinned(digest: string): boolean {
    return this.pins.use.has(digest) || this.pins.keep.has(digest);
  }

  /** Being written or served right now (a 'use' pin). */
  isInUse(digest: string): boolean {
    return this.pins.use.has(digest);
  }

  /** The stored manifests whose refs name this digest (layers, configs, child manifests). */
  *referrers(digest: string): IterableIterator<ContentEntry> {
    for (const d of this.referrerIndex.get(digest) ?? []) {
      const m = this.entries.manifest.get(d);
      if (m) yield m;
    }
  }

  /** Removes content of one kind from disk and index; refuses pinned content. */
  async remove(kind: ContentKind, digest: string): Promise<boolean> {
    if (!this.entries[kind].has(digest) || this.isPinned(digest)) return false;
    const key = this.keyOf(kind, parseDigest(digest));
    this.forget(kind, digest);
    await this.driver.delete(key);
    if (kind === 'manifest') await this.driver.delete(`${key}.type`);
    return true;
  }

  private forget(kind: ContentKind, digest: string): void {
    const e = this.entries[kind].get(digest);
    if (!e) return;
    this.entries[kind].delete(digest);
    this.storedBytes -= e.size;
    this.unindexRefs(e);
    this.accessDirty = true;
  }

  /** Every entry, blobs then manifests. */
  *all(): IterableIterator<ContentEntry> {
    yield* this.entries.blob.values();
    yield* this.entries.manifest.values();
  }

  totals(): { storedBytes: number; blobs: number; manifests: number } {
    return { storedBytes: this.storedBytes, blobs: this.entries.blob.size, manifests: this.entries.manifest.size };
  }

  /**
   * On a shared store the leader cannot see this process's pins: content in use here (being
   * served or downloaded, with the manifests naming it) is marked used now at each flush, so
   * the leader's grace keeps it however long the transfer takes.
   */
  private touchInUse(now = Date.now()): void {
    for (const digest of this.pins.use.keys()) {
      for (const kind of ['blob', 'manifest'] as const) this.touch(kind, digest, now);
      for (const m of this.referrers(digest)) {
        this.touch('manifest', m.digest, now);
        for (const index of this.referrers(m.digest)) this.touch('manifest', index.digest, now);
      }
    }
  }

  /** One write for all access-time changes since the last flush. */
  async flushAccess(): Promise<void> {
    if (this.driver.shared) this.touchInUse();
    if (!this.accessDirty) return;
    this.accessDirty = false;
    const state: AccessState = { version: 2, access: { blob: {}, manifest: {} } };
    for (const e of this.all()) state.access[e.kind][e.digest] = Math.round(e.lastAccess);
    try {
      await this.driver.put(this.accessKey, JSON.stringify(state));
    } catch (err) {
      this.accessDirty = true;
      throw err;
    }
  }
}

/** Where each process of a shared store keeps its access times. */
const accessDir = 'state/access/';

/** This process among others on a shared store: the pod name (hostname), and the pid for several on one host. */
export function instanceName(): string {
  return `${hostname()}-${process.pid}`.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 200);
}

function parseJson(bytes: Buffer | undefined): unknown {
  if (!bytes) return undefined;
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch {
    return undefined;
  }
}

/**
 * Reads state/access.json of either version. Version 1 (a time per bare digest, written
 * before the index was keyed by kind) gives its time to every kind of that digest, so an
 * upgraded store keeps its access times. A file of neither shape is no saved time at all.
 */
function savedAccess(doc: unknown): SavedAccess {
  const state = doc as { version?: unknown; access?: unknown } | undefined;
  const access = state && typeof state === 'object' && state.access && typeof state.access === 'object' ? (state.access as Record<string, unknown>) : undefined;
  if (!access) return () => undefined;
  const time = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
  if (state!.version === 2) {
    const byKind = (kind: ContentKind) => {
      const m = access[kind];
      return m && typeof m === 'object' ? (m as Record<string, unknown>) : {};
    };
    const saved = { blob: byKind('blob'), manifest: byKind('manifest') };
    return (kind, digest) => (Object.hasOwn(saved[kind], digest) ? time(saved[kind][digest]) : undefined);
  }
  return (_kind, digest) => (Object.hasOwn(access, digest) ? time(access[digest]) : undefined);
}

function dirOf(kind: ContentKind): string {
  return kind === 'blob' ? 'blobs' : 'manifests';
}

/** The digests a manifest points at; tolerant of any JSON shape (schema1 included). */
export function manifestRefs(bytes: Buffer): string[] {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    return [];
  }
  const refs = new Set<string>();
  const o = doc as { config?: { digest?: unknown }; layers?: unknown; manifests?: unknown; fsLayers?: unknown; blobs?: unknown };
  const add = (d: unknown) => {
    if (typeof d === 'string') refs.add(d);
  };
  add(o.config?.digest);
  for (const list of [o.layers, o.manifests, o.blobs]) {
    if (Array.isArray(list)) for (const item of list) add((item as { digest?: unknown })?.digest);
  }
  if (Array.isArray(o.fsLayers)) for (const l of o.fsLayers) add((l as { blobSum?: unknown })?.blobSum);
  return [...refs];
}
