// What each (upstream, repository) is known to contain: links to content the upstream served
// for that repository, and tag -> digest mappings with the time they were last confirmed.
// Layout: <root>/repos/<upstream>/<name>/_links/<alg>/<hex> and .../_tags/<tag>.
// A tag's file holds one record per format class of request (manifest-class.ts): what the tag
// resolved to for index-, image- and schema1-class clients, each confirmed on its own.
// "_links"/"_tags" cannot collide with a repository path component, which must start with
// [a-z0-9]; upstream keys are validated registry hosts; names, tags and digests are validated
// by reference.ts before they reach here, so every path below stays inside the store.
//
// Records go with their content: when the Evictor removes content it calls prune() once per
// pass, which removes links and tags of the removed digests and the repositories left empty.

import { promises as fs, type Dirent } from 'node:fs';
import { join } from 'node:path';
import { LRUCache } from 'lru-cache';
import { formatClasses, mediaTypeClass, type FormatClass } from '../manifest-class.js';
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
  /** Tag mappings removed (one per tag and format class). */
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

/** A tag's mappings, one per format class of request that has resolved it. */
export type TagRecords = Partial<Record<FormatClass, TagRecord>>;

/**
 * A tag file on disk. Version 2 keeps the mappings under `classes`, and repeats the first of
 * index, image, schema1 at the top level: the single record an older mirror (and `verify`)
 * reads. A file without `classes` is such an older single record and is read as the class of
 * its media type (an unknown type as image).
 */
interface TagFile extends Partial<TagRecord> {
  classes?: Record<string, unknown>;
}

function isTagRecord(v: unknown): v is TagRecord {
  const r = v as TagRecord | undefined;
  return typeof r === 'object' && r !== null && typeof r.digest === 'string' && typeof r.mediaType === 'string' && typeof r.checkedAt === 'number';
}

/** The mappings in a tag file (nothing usable: {}). */
export function parseTagFile(file: unknown): TagRecords {
  const out: TagRecords = {};
  if (typeof file !== 'object' || file === null) return out;
  const f = file as TagFile;
  if (typeof f.classes === 'object' && f.classes !== null) {
    for (const c of formatClasses) {
      const r = f.classes[c];
      if (isTagRecord(r)) out[c] = { digest: r.digest, mediaType: r.mediaType, checkedAt: r.checkedAt };
    }
    return out;
  }
  if (isTagRecord(f)) out[mediaTypeClass(f.mediaType) ?? 'image'] = { digest: f.digest, mediaType: f.mediaType, checkedAt: f.checkedAt };
  return out;
}

/** The first of index, image, schema1 a tag has a mapping for. */
export function bestTagRecord(records: TagRecords): TagRecord | undefined {
  for (const c of formatClasses) if (records[c]) return records[c];
  return undefined;
}

function tagFileText(records: TagRecords): string {
  const best = bestTagRecord(records)!;
  const classes: TagRecords = {};
  for (const c of formatClasses) if (records[c]) classes[c] = records[c];
  return JSON.stringify({ digest: best.digest, mediaType: best.mediaType, checkedAt: best.checkedAt, classes });
}

export class RepoIndex {
  private readonly reposDir: string;
  /**
   * Positive link lookups, remembered (bounded, least recently used out): links are only
   * added while serving and only removed by prune(), which forgets them here too.
   */
  private readonly knownLinks = new LRUCache<string, true>({ max: knownLinksMax });
  /** The tail of each tag file's queue of read-modify-write steps (withTagFile). */
  private readonly tagLocks = new Map<string, Promise<void>>();

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

  private tagPath(upstream: string, name: string, tag: string): string {
    return join(this.repoDir(upstream, name), '_tags', tag);
  }

  /**
   * Runs read-modify-write steps on one tag file one at a time (this process is the store's
   * only writer): two classes confirmed at once must not lose each other's update, and prune
   * must not write back a record a request has just replaced.
   */
  private async withTagFile<T>(path: string, step: () => Promise<T>): Promise<T> {
    const before = this.tagLocks.get(path) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const chained = before.then(() => mine);
    this.tagLocks.set(path, chained);
    await before;
    try {
      return await step();
    } finally {
      release();
      if (this.tagLocks.get(path) === chained) this.tagLocks.delete(path);
    }
  }

  /** Every mapping of a tag, by format class. */
  async getTagRecords(upstream: string, name: string, tag: string): Promise<TagRecords> {
    return parseTagFile(await readJson<unknown>(this.tagPath(upstream, name, tag)));
  }

  /** A tag's mapping for one format class; without one, the first of index, image, schema1. */
  async getTag(upstream: string, name: string, tag: string, cls?: FormatClass): Promise<TagRecord | undefined> {
    const records = await this.getTagRecords(upstream, name, tag);
    return cls ? records[cls] : bestTagRecord(records);
  }

  /**
   * Sets a tag's mapping for one format class (by default the class of the record's media
   * type), keeping the other classes' mappings.
   */
  async setTag(upstream: string, name: string, tag: string, record: TagRecord, cls: FormatClass = mediaTypeClass(record.mediaType) ?? 'image'): Promise<void> {
    const dir = join(this.repoDir(upstream, name), '_tags');
    const path = join(dir, tag);
    try {
      await this.withTagFile(path, async () => {
        const records = await this.getTagRecords(upstream, name, tag);
        records[cls] = { digest: record.digest, mediaType: record.mediaType, checkedAt: record.checkedAt };
        await retryIfPruned(async () => {
          await fs.mkdir(dir, { recursive: true });
          await writeFileAtomic(path, tagFileText(records), this.tmpDir);
        });
      });
    } catch (err) {
      // Disk full: the mapping is not cached (the next request asks the upstream again),
      // but the manifest being served is fine.
      if (!isNoSpace(err)) throw err;
    }
  }

  /** Removes a tag's mapping for one format class (the file goes with its last), or all of them. */
  async removeTag(upstream: string, name: string, tag: string, cls?: FormatClass): Promise<void> {
    const path = this.tagPath(upstream, name, tag);
    await this.withTagFile(path, async () => {
      const records = cls ? await this.getTagRecords(upstream, name, tag) : {};
      if (cls && !records[cls]) return;
      if (cls) delete records[cls];
      if (bestTagRecord(records)) {
        await writeFileAtomic(path, tagFileText(records), this.tmpDir).catch((err: unknown) => {
          // Disk full: without the rewrite the mapping stays; drop the whole file rather
          // than keep serving what the upstream just said is gone.
          if (!isNoSpace(err)) throw err;
          return removeQuietly(path);
        });
      } else await removeQuietly(path);
    });
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
   * `removed` digests the store now has in neither kind, tag mappings (of any format class)
   * naming a `removed` manifest the store no longer has (a tag file goes with its last), and repository directories left with neither links nor
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

    /**
     * Drops a tag file's mappings to removed manifests (every class's), rewriting the file or,
     * with none left, removing it; true when the file stays (an unreadable one stays too).
     */
    const pruneTagFile = (file: string): Promise<boolean> =>
      this.withTagFile(file, async () => {
        const raw = await readJson<unknown>(file).catch(() => undefined);
        const records = parseTagFile(raw);
        if (!bestTagRecord(records)) return true;
        let dropped = 0;
        for (const c of formatClasses) {
          if (records[c] && tagGone(records[c].digest)) {
            delete records[c];
            dropped++;
          }
        }
        if (dropped === 0) return true;
        result.tags += dropped;
        if (!bestTagRecord(records)) {
          await removeQuietly(file);
          return false;
        }
        try {
          await writeFileAtomic(file, tagFileText(records), this.tmpDir);
        } catch (err) {
          if (!isNoSpace(err)) throw err;
          // Disk full: a file naming removed content must not stay; the others are re-fetched.
          await removeQuietly(file);
          return false;
        }
        return true;
      });
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
            if (await pruneTagFile(join(path, t.name))) tagsLeft++;
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
