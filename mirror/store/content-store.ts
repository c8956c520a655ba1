// The content-addressed part of the store: blobs and manifests on disk under
// <root>/blobs/<alg>/<xx>/<hex> and <root>/manifests/<alg>/<xx>/<hex>, with an in-memory
// index of size, kind and last access that is rebuilt from disk at start-up.
//
// Crash safety: content only ever appears in these trees by rename of a finished, verified,
// fsynced temp file, so after a kill -9 a path either holds the whole content or nothing.
// Temp files live in <root>/tmp and are swept at start.
//
// Access bookkeeping costs no disk write per request: access times change in memory and are
// flushed to <root>/state/access.json in one batched write (periodically and at close).

import { promises as fs } from 'node:fs';
import { join } from 'node:path';
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

export interface StoredManifest {
  digest: string;
  mediaType: string;
  bytes: Buffer;
}

interface AccessState {
  version: 1;
  access: Record<string, number>;
}

export class ContentStore {
  readonly root: string;
  readonly tmpDir: string;
  private readonly entries = new Map<string, ContentEntry>();
  private readonly pins = new Map<string, number>();
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
    const saved = (await readJson<AccessState>(this.accessFile()))?.access ?? {};
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

  private async indexFromDisk(kind: ContentKind, digestValue: string, saved: Record<string, number>): Promise<void> {
    let digest: Digest;
    try {
      digest = parseDigest(digestValue);
    } catch {
      return; // not ours; never touched
    }
    const path = this.pathOf(kind, digest);
    const st = await fs.stat(path).catch(() => undefined);
    if (!st?.isFile()) return;
    const entry: ContentEntry = { digest: digest.value, kind, size: st.size, lastAccess: saved[digest.value] ?? st.mtimeMs };
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
    const old = this.entries.get(entry.digest);
    if (old) this.storedBytes -= old.size;
    this.entries.set(entry.digest, entry);
    this.storedBytes += entry.size;
  }

  pathOf(kind: ContentKind, digest: Digest): string {
    return join(this.root, dirOf(kind), digest.algorithm, digest.hex.slice(0, 2), digest.hex);
  }

  get(digest: string): ContentEntry | undefined {
    return this.entries.get(digest);
  }

  has(kind: ContentKind, digest: string): boolean {
    return this.entries.get(digest)?.kind === kind;
  }

  touch(digest: string, now = Date.now()): void {
    const e = this.entries.get(digest);
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
    const known = this.entries.has(digest.value);
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
    const entry = this.entries.get(digest.value);
    if (entry?.kind !== 'manifest') return undefined;
    try {
      const bytes = await fs.readFile(this.pathOf('manifest', digest));
      return { digest: digest.value, mediaType: entry.mediaType!, bytes };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        this.forget(digest.value);
        return undefined;
      }
      throw err;
    }
  }

  /** Content being written or served is never removed: callers pin it for the duration. */
  pin(digest: string): () => void {
    this.pins.set(digest, (this.pins.get(digest) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.pins.get(digest) ?? 1) - 1;
      if (n <= 0) this.pins.delete(digest);
      else this.pins.set(digest, n);
    };
  }

  isPinned(digest: string): boolean {
    return this.pins.has(digest);
  }

  /** Removes content from disk and index; refuses pinned content. */
  async remove(digest: string): Promise<boolean> {
    const e = this.entries.get(digest);
    if (!e || this.isPinned(digest)) return false;
    const d = parseDigest(digest);
    const path = this.pathOf(e.kind, d);
    this.forget(digest);
    await removeQuietly(path);
    if (e.kind === 'manifest') await removeQuietly(`${path}.type`);
    return true;
  }

  private forget(digest: string): void {
    const e = this.entries.get(digest);
    if (!e) return;
    this.entries.delete(digest);
    this.storedBytes -= e.size;
    this.accessDirty = true;
  }

  all(): IterableIterator<ContentEntry> {
    return this.entries.values();
  }

  totals(): { storedBytes: number; blobs: number; manifests: number } {
    let blobs = 0;
    for (const e of this.entries.values()) if (e.kind === 'blob') blobs++;
    return { storedBytes: this.storedBytes, blobs, manifests: this.entries.size - blobs };
  }

  /** One write for all access-time changes since the last flush. */
  async flushAccess(): Promise<void> {
    if (!this.accessDirty) return;
    this.accessDirty = false;
    const access: Record<string, number> = {};
    for (const e of this.entries.values()) access[e.digest] = Math.round(e.lastAccess);
    const state: AccessState = { version: 1, access };
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
