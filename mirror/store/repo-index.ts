// What each (upstream, repository) is known to contain: links to content the upstream served
// for that repository, and tag -> digest mappings with the time they were last confirmed.
// Layout: <root>/repos/<upstream>/<name>/_links/<alg>/<hex> and .../_tags/<tag>.
// "_links"/"_tags" cannot collide with a repository path component, which must start with
// [a-z0-9]; upstream keys are validated registry hosts; names, tags and digests are validated
// by reference.ts before they reach here, so every path below stays inside the store.
//
// Records go with their content: when the Evictor removes content it calls prune() once per
// pass, which removes links and tags of the removed digests and the repositories left empty.

import { promises as fs, type Dirent } from 'node:fs';
import { join } from 'node:path';
import { LRUCache } from 'lru-cache';
import type { Digest } from '../reference.js';
import type { ContentKind } from './content-store.js';
import { isNoSpace, readJson, removeQuietly, writeFileAtomic } from './fsutil.js';

/**
 * How many positive link lookups are remembered. Links are (repository, digest) pairs, so a
 * long-running mirror meets millions; remembering them only saves one access() per warm hit,
 * which needs the working set, not every link ever seen. 100,000 keys of about 100 characters
 * are some 20-30 MB at most; a lookup that misses falls back to the link file on disk.
 */
export const knownLinksMax = 100_000;

export interface PruneResult {
  /** Link files removed. */
  links: number;
  /** Tag records removed. */
  tags: number;
  /** Repository directories removed (left with neither links nor tags). */
  repositories: number;
}

export interface TagRecord {
  digest: string;
  mediaType: string;
  /** When the upstream last confirmed this mapping (ms since epoch). */
  checkedAt: number;
}

export class RepoIndex {
  private readonly reposDir: string;
  /**
   * Positive link lookups, remembered (bounded, least recently used out): links are only
   * added while serving and only removed by prune(), which forgets them here too.
   */
  private readonly knownLinks = new LRUCache<string, true>({ max: knownLinksMax });

  constructor(
    root: string,
    private readonly tmpDir: string,
  ) {
    this.reposDir = join(root, 'repos');
  }

  private repoDir(upstream: string, name: string): string {
    return join(this.reposDir, upstream, name);
  }

  private linkPath(upstream: string, name: string, digest: Digest): string {
    return join(this.repoDir(upstream, name), '_links', digest.algorithm, digest.hex);
  }

  async isLinked(upstream: string, name: string, digest: Digest): Promise<boolean> {
    const key = `${upstream}/${name}@${digest.value}`;
    // get(), not has(): a hit keeps the key among the recently used.
    if (this.knownLinks.get(key)) return true;
    try {
      await fs.access(this.linkPath(upstream, name, digest));
      this.knownLinks.set(key, true);
      return true;
    } catch {
      return false;
    }
  }

  async link(upstream: string, name: string, digest: Digest): Promise<void> {
    const key = `${upstream}/${name}@${digest.value}`;
    if (this.knownLinks.get(key)) return;
    const path = this.linkPath(upstream, name, digest);
    try {
      await retryIfPruned(async () => {
        await fs.mkdir(join(path, '..'), { recursive: true });
        await fs.writeFile(path, '');
      });
    } catch (err) {
      // A full disk must not fail the request that is being served: the upstream did
      // confirm the link, so remember it in memory (it is re-confirmed after a restart).
      if (!isNoSpace(err)) throw err;
    }
    this.knownLinks.set(key, true);
  }

  async getTag(upstream: string, name: string, tag: string): Promise<TagRecord | undefined> {
    return readJson<TagRecord>(join(this.repoDir(upstream, name), '_tags', tag));
  }

  async setTag(upstream: string, name: string, tag: string, record: TagRecord): Promise<void> {
    const dir = join(this.repoDir(upstream, name), '_tags');
    try {
      await retryIfPruned(async () => {
        await fs.mkdir(dir, { recursive: true });
        await writeFileAtomic(join(dir, tag), JSON.stringify(record), this.tmpDir);
      });
    } catch (err) {
      // Disk full: the mapping is not cached (the next request asks the upstream again),
      // but the manifest being served is fine.
      if (!isNoSpace(err)) throw err;
    }
  }

  async removeTag(upstream: string, name: string, tag: string): Promise<void> {
    await removeQuietly(join(this.repoDir(upstream, name), '_tags', tag));
  }

  async listTags(upstream: string, name: string): Promise<string[]> {
    try {
      return (await fs.readdir(join(this.repoDir(upstream, name), '_tags'))).sort();
    } catch {
      return [];
    }
  }

  /** Repository names cached for one upstream, sorted (the catalog). */
  async listRepositories(upstream: string): Promise<string[]> {
    const names: string[] = [];
    const walk = async (dir: string, prefix: string): Promise<void> => {
      let entries: import('node:fs').Dirent[];
      try {
        entries = await fs.readdir(dir, { withFileTypes: true });
      } catch {
        return;
      }
      if (entries.some((e) => e.name === '_links' || e.name === '_tags')) names.push(prefix);
      for (const e of entries) {
        if (e.isDirectory() && !e.name.startsWith('_')) await walk(join(dir, e.name), prefix ? `${prefix}/${e.name}` : e.name);
      }
    };
    await walk(join(this.reposDir, upstream), '');
    return names.sort();
  }

  /**
   * Removes the records of removed content, in one walk of every repository: links to the
   * `removed` digests the store now has in neither kind, tag records naming a `removed`
   * manifest the store no longer has, and repository directories left with neither links nor
   * tags (with parents left empty, up to repos/<upstream>), so the catalog stops listing them.
   * `has` is asked as each record is looked at: a download may have brought a digest back
   * since it was removed, and then its records stand.
   */
  async prune(removed: ReadonlySet<string>, has: (kind: ContentKind, digest: string) => boolean): Promise<PruneResult> {
    const result: PruneResult = { links: 0, tags: 0, repositories: 0 };
    if (removed.size === 0) return result;
    const linkGone = (digest: string) => removed.has(digest) && !has('blob', digest) && !has('manifest', digest);
    const tagGone = (digest: string) => removed.has(digest) && !has('manifest', digest);
    // Memory before disk: a download that links one of these digests again from now on is
    // not short-cut by a remembered key, so it writes its link file. Should this walk still
    // remove that file, the link stays remembered in memory, as after a full disk.
    const forget: string[] = [];
    for (const key of this.knownLinks.keys()) if (linkGone(key.slice(key.lastIndexOf('@') + 1))) forget.push(key);
    for (const key of forget) this.knownLinks.delete(key);

    const files = async (dir: string): Promise<Dirent[]> => fs.readdir(dir, { withFileTypes: true }).catch(() => []);
    // rmdir, never rm -r: it fails when a request has just written into the directory.
    const rmdirIfEmpty = (dir: string) =>
      fs.rmdir(dir).then(
        () => true,
        () => false,
      );
    /** Prunes one directory (and below); true when it was removed, being left empty. */
    const walk = async (dir: string, top: boolean): Promise<boolean> => {
      const entries = await files(dir);
      let left = entries.length;
      let records = false;
      for (const e of entries) {
        if (!e.isDirectory()) continue;
        const path = join(dir, e.name);
        if (e.name === '_links') {
          records = true;
          let algsLeft = 0;
          for (const alg of await files(path)) {
            let linksLeft = 0;
            for (const l of await files(join(path, alg.name))) {
              if (linkGone(`${alg.name}:${l.name}`)) {
                await removeQuietly(join(path, alg.name, l.name));
                result.links++;
              } else linksLeft++;
            }
            if (linksLeft > 0 || !(await rmdirIfEmpty(join(path, alg.name)))) algsLeft++;
          }
          if (algsLeft === 0 && (await rmdirIfEmpty(path))) left--;
        } else if (e.name === '_tags') {
          records = true;
          let tagsLeft = 0;
          for (const t of await files(path)) {
            const record = await readJson<TagRecord>(join(path, t.name)).catch(() => undefined);
            if (typeof record?.digest === 'string' && tagGone(record.digest)) {
              await removeQuietly(join(path, t.name));
              result.tags++;
            } else tagsLeft++;
          }
          if (tagsLeft === 0 && (await rmdirIfEmpty(path))) left--;
        } else if (!e.name.startsWith('_') && (await walk(path, false))) {
          left--;
        }
      }
      if (top || left > 0 || !(await rmdirIfEmpty(dir))) return false;
      if (records) result.repositories++;
      return true;
    };
    for (const upstream of await files(this.reposDir)) {
      if (upstream.isDirectory()) await walk(join(this.reposDir, upstream.name), true);
    }
    return result;
  }
}

/**
 * Runs a write once more if it failed with ENOENT: prune() may have removed the directory,
 * empty a moment ago, between its mkdir and the write.
 */
async function retryIfPruned(write: () => Promise<void>): Promise<void> {
  try {
    await write();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    await write();
  }
}
