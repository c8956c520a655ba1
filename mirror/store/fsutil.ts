// Small filesystem steps the store repeats: durable atomic replace and tolerant removal.

import { promises as fs } from 'node:fs';
import { dirname } from 'node:path';

/** Writes bytes to `target` so a reader sees the old file or the whole new one, never part. */
export async function writeFileAtomic(target: string, data: string | Uint8Array, tmpDir: string): Promise<void> {
  const tmp = `${tmpDir}/${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const fh = await fs.open(tmp, 'w');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (err) {
    // E.g. ENOSPC half way: a partial temp file must not stay behind in tmp/.
    await fh.close().catch(() => undefined);
    await removeQuietly(tmp);
    throw err;
  }
  await fh.close();
  await renameInto(tmp, target);
}

/** Renames a finished temp file into place, creating the parent, and makes the rename durable. */
export async function renameInto(tmp: string, target: string): Promise<void> {
  const dir = dirname(target);
  await fs.mkdir(dir, { recursive: true });
  try {
    await fs.rename(tmp, target);
  } catch (err) {
    await removeQuietly(tmp);
    throw err;
  }
  await syncDir(dir);
}

export async function syncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function removeQuietly(path: string): Promise<void> {
  await fs.rm(path, { force: true, recursive: true }).catch(() => undefined);
}

export async function readJson<T>(path: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fs.readFile(path, 'utf8')) as T;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    if (err instanceof SyntaxError) return undefined;
    throw err;
  }
}

export function isNoSpace(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}
