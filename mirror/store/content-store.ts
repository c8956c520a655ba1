// The content-addressed part of the store: blobs and manifests on disk under
// <root>/blobs/<alg>/<xx>/<hex> and <root>/manifests/<alg>/<xx>/<hex>, with an in-memory
// index of size, kind and last access that is rebuilt from disk at start-up. The index is
// keyed by (kind, digest), as the trees are: OCI lets a client fetch a manifest as a blob, so
// one digest can be stored once as each, and neither copy may hide or replace the other.
//
// Crash safety: content only ever appears in these trees by rename of a finished, verified,
// fsynced temp file, so after a kill -9 a path either holds the whole content or nothing.
// Temp files live in <root>/tmp and are swept at start.
//
// Access bookkeeping costs no disk write per request: access times change in memory and are
// flushed to <root>/state/access.json in one batched write (periodically and at close).
// Version 2 of that file keeps the times per kind; version 1 (one time per bare digest) is
// still read, its time applying to whichever kinds of that digest are on disk.
//
// Pins keep content from removal, per digest (both kinds), and come in two kinds: 'use', held
// while content is written or served (and taken before a download's first byte, so a digest
// can be in use before it is in the store), and 'keep', held for as long as it is wanted on
// purpose (prefetch `pin: true`). The evictor treats an image with content in use as in use
// whole (evictor.ts); a kept digest is kept alone. The index also knows, per digest, which
// stored manifests reference it, for the evictor to find the images around a pinned digest.

import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { provesDigest } from '../manifest-digest.js';
import type { Digest } from '../reference.js';
import { parseDigest } from '../reference.js';
import { readJson, removeQuietly, renameInto, writeFileAtomic } from './fsutil.js';

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
  readonly root: string;
  readonly tmpDir: string;
  /** By kind, then digest: a blob and a manifest with one digest are two entries. */
  private readonly entries: Record<ContentKind, Map<string, ContentEntry>> = { blob: new Map(), manifest: new Map() };
  /** Per digest, whatever the kind: pinning a digest keeps both its kinds. Counts by holder. */
  private readonly pins: Record<PinKind, Map<string, number>> = { use: new Map(), keep: new Map() };
  /** Digest -> digests of the stored manifests whose refs name it. */
  private readonly referrerIndex = new Map<string, Set<string>>();
  private storedBytes = 0;
  private accessDirty = false;

  constructor(root: string) {
    this.root = root;
    this.tmpDir = join(root, 'tmp');
  }

  /** Sweeps temp leftovers of a previous run and rebuilds the index from disk. */
  async open(): Promise<{ sweptTemp: number }> {
    await fs.mkdir(this.root, { recursive: true });
    let sweptTemp = 0;
    try {
      sweptTemp = (await fs.readdir(this.tmpDir)).length;
    } catch {
      /* first start */
    }
    await removeQuietly(this.tmpDir);
    await fs.mkdir(this.tmpDir, { recursive: true });
    await fs.mkdir(join(this.root, 'state'), { recursive: true });
    const saved = savedAccess(await readJson<unknown>(this.accessFile()));
    for (const kind of ['blob', 'manifest'] as const) {
      for (const alg of ['sha256', 'sha512']) {
        const algDir = join(this.root, dirOf(kind), alg);
        for (const xx of await readdirOrEmpty(algDir)) {
          for (const name of await readdirOrEmpty(join(algDir, xx))) {
            if (name.endsWith('.type')) continue;
            await this.indexFromDisk(kind, `${alg}:${name}`, saved);
          }
        }
      }
    }
    return { sweptTemp };
  }

  private async indexFromDisk(kind: ContentKind, digestValue: string, saved: SavedAccess): Promise<void> {
    let digest: Digest;
    try {
      digest = parseDigest(digestValue);
    } catch {
      return; // not ours; never touched
    }
    const path = this.pathOf(kind, digest);
    const st = await fs.stat(path).catch(() => undefined);
    if (!st?.isFile()) return;
    const entry: ContentEntry = { digest: digest.value, kind, size: st.size, lastAccess: saved(kind, digest.value) ?? st.mtimeMs };
    if (kind === 'manifest') {
      const mediaType = await fs.readFile(`${path}.type`, 'utf8').catch(() => undefined);
      if (mediaType === undefined) {
        // The type file is written before the content is renamed in, so this is content
        // from outside the mirror's own write path: leave it unindexed rather than guess.
        return;
      }
      entry.mediaType = mediaType;
      entry.refs = manifestRefs(await fs.readFile(path));
    }
    this.add(entry);
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

  pathOf(kind: ContentKind, digest: Digest): string {
    return join(this.root, dirOf(kind), digest.algorithm, digest.hex.slice(0, 2), digest.hex);
  }

  get(kind: ContentKind, digest: string): ContentEntry | undefined {
    return this.entries[kind].get(digest);
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

  /** A temp file path for a download; the caller renames it in with commitBlob. */
  tempPath(): string {
    return join(this.tmpDir, `${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`);
  }

  /** Moves a finished, verified and fsynced temp file into place. */
  async commitBlob(tmp: string, digest: Digest, size: number): Promise<void> {
    await renameInto(tmp, this.pathOf('blob', digest));
    this.add({ digest: digest.value, kind: 'blob', size, lastAccess: Date.now() });
  }

  async putManifest(digest: Digest, mediaType: string, bytes: Buffer): Promise<void> {
    const path = this.pathOf('manifest', digest);
    const known = this.entries.manifest.has(digest.value);
    try {
      await fs.mkdir(join(path, '..'), { recursive: true });
      await writeFileAtomic(`${path}.type`, mediaType, this.tmpDir);
      await writeFileAtomic(path, bytes, this.tmpDir);
    } catch (err) {
      // Disk full between the two files: no .type without its manifest left behind.
      if (!known) await removeQuietly(`${path}.type`);
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
    const entry = this.entries.manifest.get(digest.value);
    if (!entry) return undefined;
    try {
      const bytes = await fs.readFile(this.pathOf('manifest', digest));
      // Manifests are small and every upstream shares the store: their bytes are proven on
      // every read, so a file damaged on disk, or planted by a mirror before issue 11's fix,
      // is fetched and proven again instead of served (the file stays for `verify`).
      if (!provesDigest(bytes, entry.mediaType!, digest)) {
        this.forget('manifest', digest.value);
        return undefined;
      }
      return { digest: digest.value, mediaType: entry.mediaType!, bytes };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        this.forget('manifest', digest.value);
        return undefined;
      }
      throw err;
    }
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
    const path = this.pathOf(kind, parseDigest(digest));
    this.forget(kind, digest);
    await removeQuietly(path);
    if (kind === 'manifest') await removeQuietly(`${path}.type`);
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

  /** One write for all access-time changes since the last flush. */
  async flushAccess(): Promise<void> {
    if (!this.accessDirty) return;
    this.accessDirty = false;
    const state: AccessState = { version: 2, access: { blob: {}, manifest: {} } };
    for (const e of this.all()) state.access[e.kind][e.digest] = Math.round(e.lastAccess);
    try {
      await writeFileAtomic(this.accessFile(), JSON.stringify(state), this.tmpDir);
    } catch (err) {
      this.accessDirty = true;
      throw err;
    }
  }

  private accessFile(): string {
    return join(this.root, 'state', 'access.json');
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

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await fs.readdir(dir);
  } catch {
    return [];
  }
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
