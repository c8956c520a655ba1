// The store in a local directory: the embedded default StoreDriver.
//
// Key k is the file join(root, k); temp files live in join(root, 'tmp') (the scratch dir,
// swept by open()). Writes are durable atomic replaces (temp file, fsync, rename, fsync of
// the directory), so a reader sees the old file or the whole new one and a crash leaves one
// or the other. delete() also removes the directories the file leaves empty, up to but never
// including the key's first segment ("repos", "blobs", ...), and only with rmdir: a directory
// that another request has just written into is not empty and stays.
//
// Conditional writes (putIf) are atomic within this process: the check and the rename run
// under a lock per file that every FsDriver of the process shares (a directory store has one
// serving process, state/serve.pid). The entity tag is the content's SHA-256, so a rewrite
// of the same bytes keeps its tag.
//
// Errors keep their Node codes (ENOSPC, EACCES, ...): a local disk that fails is not an
// unavailable remote store, and callers already handle a full disk by its code.

import { createHash } from 'node:crypto';
import { promises as fs, type Dirent } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { FileBody } from '../file-body.js';
import { removeQuietly, syncDir, writeFileAtomic } from '../fsutil.js';
import type { ObjectInfo, PutCondition, StoreDriver, TaggedObject } from '../driver.js';

/** The scratch dir's name under the root; never a key's first segment. */
const SCRATCH = 'tmp';

/**
 * Throws unless `key` is a relative '/'-separated path without empty, "." or ".." segments.
 * Callers validate keys before they get here; this is the driver's own guard against ever
 * mapping a key outside its root or prefix. Shared with the S3 driver.
 */
export function checkKey(key: string): void {
  if (typeof key !== 'string' || key === '' || key.startsWith('/')) throw invalidKey(key);
  for (const seg of key.split('/')) {
    if (seg === '' || seg === '.' || seg === '..' || seg.includes('\0')) throw invalidKey(key);
  }
}

/** A list/children prefix: '' (everything) or a valid key, optionally ending in '/'. */
export function checkPrefix(prefix: string): void {
  if (prefix === '') return;
  checkKey(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix);
}

function invalidKey(key: string): Error {
  return Object.assign(new Error(`invalid store key ${JSON.stringify(key)}`), { code: 'EINVAL' });
}

function codeOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/** Errors that mean "no such object" for a read: nothing there, or a path through a file. */
function isAbsent(err: unknown): boolean {
  const code = codeOf(err);
  return code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR';
}

/** The process's conditional writes in flight, by file: each waits for the one before it. */
const fileLocks = new Map<string, Promise<void>>();

async function withFileLock<T>(path: string, fn: () => Promise<T>): Promise<T> {
  const before = fileLocks.get(path) ?? Promise.resolve();
  let done!: () => void;
  const mine = new Promise<void>((r) => (done = r));
  const tail = before.then(() => mine);
  fileLocks.set(path, tail);
  await before;
  try {
    return await fn();
  } finally {
    done();
    if (fileLocks.get(path) === tail) fileLocks.delete(path);
  }
}

function contentTag(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** An entity tag as a caller may hold it: W/"x", "x" or x are all x. */
function bareTag(etag: string): string {
  return etag.replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
}

export class FsDriver implements StoreDriver {
  readonly kind = 'filesystem' as const;
  readonly location: string;
  readonly shared: boolean = false;
  readonly scratchDir: string;
  readonly syncBeforeCommit = true;

  constructor(readonly root: string) {
    this.location = root;
    this.scratchDir = join(root, SCRATCH);
  }

  /** The file of a key (tests and tools look at the directory itself). */
  pathOf(key: string): string {
    checkKey(key);
    if (key === SCRATCH || key.startsWith(`${SCRATCH}/`)) {
      throw Object.assign(new Error(`store key ${JSON.stringify(key)} is inside the scratch dir`), { code: 'EINVAL' });
    }
    return join(this.root, key);
  }

  async open(): Promise<{ sweptTemp: number; sweptUploads: number }> {
    await fs.mkdir(this.root, { recursive: true });
    let sweptTemp = 0;
    try {
      sweptTemp = (await fs.readdir(this.scratchDir)).length;
    } catch (err) {
      if (codeOf(err) !== 'ENOENT') throw err;
    }
    await removeQuietly(this.scratchDir);
    await fs.mkdir(this.scratchDir, { recursive: true });
    return { sweptTemp, sweptUploads: 0 };
  }

  async close(): Promise<void> {
    /* no background work */
  }

  async get(key: string): Promise<Buffer | undefined> {
    const path = this.pathOf(key);
    try {
      return await fs.readFile(path);
    } catch (err) {
      if (isAbsent(err)) return undefined;
      throw err;
    }
  }

  async put(key: string, bytes: Buffer | string): Promise<void> {
    const path = this.pathOf(key);
    const write = () => writeFileAtomic(path, bytes, this.scratchDir);
    try {
      await write();
    } catch (err) {
      // A concurrent delete() may have removed the parent, empty a moment ago, between
      // renameInto's mkdir and its rename: once more creates it again.
      if (codeOf(err) !== 'ENOENT') throw err;
      await write();
    }
  }

  async getWithEtag(key: string): Promise<TaggedObject | undefined> {
    const bytes = await this.get(key);
    return bytes && { bytes, etag: contentTag(bytes) };
  }

  async putIf(key: string, bytes: Buffer | string, cond: PutCondition): Promise<{ etag: string } | 'conflict'> {
    const body = typeof bytes === 'string' ? Buffer.from(bytes) : bytes;
    return withFileLock(this.pathOf(key), async () => {
      const current = await this.get(key);
      if ('ifNoneMatch' in cond) {
        if (current) return 'conflict';
      } else if (!current || contentTag(current) !== bareTag(cond.ifMatch)) {
        return 'conflict';
      }
      await this.put(key, body);
      return { etag: contentTag(body) };
    });
  }

  async delete(key: string): Promise<void> {
    const path = this.pathOf(key);
    try {
      await fs.unlink(path);
    } catch (err) {
      // Absent (or a directory, which is no object: EISDIR): nothing to remove.
      if (!isAbsent(err)) throw err;
    }
    // Parents left empty, deepest first, never the first segment's directory. rmdir fails
    // on a directory that is not empty (someone wrote there meanwhile): stop there.
    const segments = key.split('/');
    for (let depth = segments.length - 1; depth >= 2; depth--) {
      const dir = join(this.root, ...segments.slice(0, depth));
      try {
        await fs.rmdir(dir);
      } catch (err) {
        if (codeOf(err) === 'ENOENT') continue; // a concurrent delete got there first
        return;
      }
    }
  }

  async move(from: string, to: string): Promise<void> {
    const target = this.pathOf(to);
    await fs.mkdir(dirname(target), { recursive: true });
    await fs.rename(this.pathOf(from), target).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const path = this.pathOf(key);
    try {
      const st = await fs.stat(path);
      if (!st.isFile()) return undefined;
      return { key, size: st.size, modifiedMs: st.mtimeMs };
    } catch (err) {
      if (isAbsent(err)) return undefined;
      throw err;
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    checkPrefix(prefix);
    // A prefix that ends inside a name ("repos/a") lists what starts with it, as S3 does.
    const cut = prefix.lastIndexOf('/') + 1;
    const base = prefix.slice(0, cut);
    for await (const info of this.walk(base === '' ? this.root : join(this.root, base), base)) {
      if (info.key.startsWith(prefix)) yield info;
    }
  }

  /** Files below dir (whose key prefix is keyBase, '' or ending in '/'), any depth. */
  private async *walk(dir: string, keyBase: string): AsyncIterable<ObjectInfo> {
    let entries: Dirent[];
    try {
      entries = await fs.readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (isAbsent(err)) return;
      throw err;
    }
    for (const e of entries) {
      if (keyBase === '' && e.name === SCRATCH) continue;
      const key = `${keyBase}${e.name}`;
      const path = join(dir, e.name);
      if (e.isDirectory()) {
        yield* this.walk(path, `${key}/`);
      } else if (e.isFile()) {
        try {
          const st = await fs.stat(path);
          if (st.isFile()) yield { key, size: st.size, modifiedMs: st.mtimeMs };
        } catch (err) {
          if (!isAbsent(err)) throw err; // removed while we walked: not listed
        }
      }
    }
  }

  async children(prefix: string): Promise<string[]> {
    checkPrefix(prefix);
    if (prefix !== '' && !prefix.endsWith('/')) throw invalidKey(prefix);
    try {
      const names = await fs.readdir(prefix === '' ? this.root : join(this.root, prefix));
      return names.filter((n) => !(prefix === '' && n === SCRATCH)).sort();
    } catch (err) {
      if (isAbsent(err)) return [];
      throw err;
    }
  }

  tempPath(): string {
    return `${this.scratchDir}/${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  }

  async commitFile(tmpPath: string, key: string, _size: number): Promise<void> {
    const target = this.pathOf(key);
    const dir = dirname(target);
    for (let attempt = 0; ; attempt++) {
      try {
        await fs.mkdir(dir, { recursive: true });
        await fs.rename(tmpPath, target);
        break;
      } catch (err) {
        // As in put(): a concurrent delete() may have removed the new, empty parent.
        if (codeOf(err) === 'ENOENT' && attempt === 0 && (await exists(tmpPath))) continue;
        await removeQuietly(tmpPath);
        throw err;
      }
    }
    await syncDir(dir);
  }

  async openRead(key: string, start: number, end: number): Promise<Readable | undefined> {
    const path = this.pathOf(key);
    try {
      const st = await fs.stat(path);
      if (!st.isFile()) return undefined;
    } catch (err) {
      if (isAbsent(err)) return undefined;
      throw err;
    }
    // FileBody: end < start (an empty object: 0, -1) is an empty body.
    return new FileBody(path, start, end);
  }
}

async function exists(path: string): Promise<boolean> {
  return fs.access(path).then(
    () => true,
    () => false,
  );
}
