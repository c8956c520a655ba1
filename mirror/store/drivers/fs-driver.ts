// The store in a directory, the embedded default: a key is a file under the root, and every
// replace is a temp file in <root>/tmp, fsynced and renamed in (fsutil.ts). One process
// serves a directory at a time (owner.ts), so it is not `shared`.

import { promises as fs, type Dirent } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import type { ObjectInfo, StoreDriver } from '../driver.js';
import { FileBody } from '../file-body.js';
import { removeQuietly, renameInto, writeFileAtomic } from '../fsutil.js';

/**
 * Throws unless `key` is a relative '/'-separated path without empty, "." or ".." segments.
 * Callers validate keys before they get here; this is each driver's own guard against ever
 * mapping a key outside its root or prefix.
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

export class FsDriver implements StoreDriver {
  readonly kind = 'filesystem' as const;
  readonly shared = false;
  readonly syncBeforeCommit = true;
  readonly location: string;
  readonly scratchDir: string;

  constructor(readonly root: string) {
    this.location = root;
    this.scratchDir = join(root, 'tmp');
  }

  async open(): Promise<{ sweptTemp: number; sweptUploads: number }> {
    await fs.mkdir(this.root, { recursive: true });
    const sweptTemp = (await fs.readdir(this.scratchDir).catch(() => [])).length;
    await removeQuietly(this.scratchDir);
    await fs.mkdir(this.scratchDir, { recursive: true });
    return { sweptTemp, sweptUploads: 0 };
  }

  async close(): Promise<void> {}

  /** The file of a key; throws on a key that could leave the root (callers validate first). */
  pathOf(key: string): string {
    checkKey(key);
    return join(this.root, ...key.split('/'));
  }

  async get(key: string): Promise<Buffer | undefined> {
    try {
      return await fs.readFile(this.pathOf(key));
    } catch (err) {
      if (isAbsent(err)) return undefined;
      throw err;
    }
  }

  async put(key: string, bytes: Buffer | string): Promise<void> {
    const path = this.pathOf(key);
    const write = async () => {
      await fs.mkdir(dirname(path), { recursive: true });
      await writeFileAtomic(path, bytes, this.scratchDir);
    };
    try {
      await write();
    } catch (err) {
      // delete() may have removed the parent, empty a moment ago, between mkdir and rename.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      await write();
    }
  }

  async delete(key: string): Promise<void> {
    const path = this.pathOf(key);
    await fs.rm(path, { force: true });
    // Directories left empty go too, up to (not including) the key's first segment: rmdir,
    // never rm -r, so a directory someone has just written into stays.
    const top = this.pathOf(key.split('/')[0]!);
    for (let dir = dirname(path); dir !== top && dir.startsWith(`${top}/`); dir = dirname(dir)) {
      if (!(await fs.rmdir(dir).then(() => true, () => false))) break;
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
    const st = await fs.stat(this.pathOf(key)).catch((err: unknown) => {
      if (isAbsent(err)) return undefined;
      throw err;
    });
    return st?.isFile() ? { key, size: st.size, modifiedMs: st.mtimeMs } : undefined;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const base = prefix.replace(/\/+$/, '');
    const walk = async function* (self: FsDriver, rel: string): AsyncIterable<ObjectInfo> {
      let entries: Dirent[];
      try {
        entries = await fs.readdir(self.pathOf(rel), { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        const key = `${rel}/${e.name}`;
        if (e.isDirectory()) yield* walk(self, key);
        else if (e.isFile()) {
          const info = await self.stat(key);
          if (info) yield info;
        }
      }
    };
    yield* walk(this, base);
  }

  async children(prefix: string): Promise<string[]> {
    const names = await fs.readdir(this.pathOf(prefix.replace(/\/+$/, ''))).catch(() => []);
    return names.sort();
  }

  tempPath(): string {
    return join(this.scratchDir, `${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`);
  }

  async commitFile(tmpPath: string, key: string): Promise<void> {
    await renameInto(tmpPath, this.pathOf(key));
  }

  async openRead(key: string, start: number, end: number): Promise<Readable | undefined> {
    const path = this.pathOf(key);
    if (!(await this.stat(key))) return undefined;
    return new FileBody(path, start, end);
  }
}

function isAbsent(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}
