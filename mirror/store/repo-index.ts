// What each (upstream, repository) is known to contain: links to content the upstream served
// for that repository, and tag -> digest mappings with the time they were last confirmed.
// Keys of the store's driver: repos/<upstream>/<name>/_links/<alg>/<hex> and .../_tags/<tag>.
// A tag's file holds one record per format class of request (manifest-class.ts): what the tag
// resolved to for index-, image- and schema1-class clients, each confirmed on its own.
// "_links"/"_tags" cannot collide with a repository path component, which must start with
// [a-z0-9]; upstream keys are validated registry hosts; names, tags and digests are validated
// by reference.ts before they reach here, so every key below stays inside the store.
//
// Records go with their content: when the Evictor removes content it calls prune() once per
// pass, which removes links and tags of the removed digests and the repositories left empty.
//
// On a store several processes share (S3), each record is its own object and every write is
// a whole record: two processes confirming one tag at once leave one of their records, and the
// other class's mapping, if lost, is asked of the upstream again. Nothing is a shared file
// that holds everyone's state.

import { LRUCache } from 'lru-cache';
import { formatClasses, mediaTypeClass, type FormatClass } from '../manifest-class.js';
import type { Digest } from '../reference.js';
import type { ContentKind } from './content-store.js';
import { isStoreUnavailable, type StoreDriver } from './driver.js';
import { isNoSpace } from './fsutil.js';

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
  /**
   * Positive link lookups, remembered (bounded, least recently used out): links are only
   * added while serving and only removed by prune(), which forgets them here too.
   */
  private readonly knownLinks = new LRUCache<string, true>({ max: knownLinksMax });
  /** The tail of each tag record's queue of read-modify-write steps (withTagFile). */
  private readonly tagLocks = new Map<string, Promise<void>>();

  constructor(private readonly driver: StoreDriver) {}

  private repoKey(upstream: string, name: string): string {
    return `repos/${upstream}/${name}`;
  }

  private linkKey(upstream: string, name: string, digest: Digest): string {
    return `${this.repoKey(upstream, name)}/_links/${digest.algorithm}/${digest.hex}`;
  }

  async isLinked(upstream: string, name: string, digest: Digest): Promise<boolean> {
    const key = `${upstream}/${name}@${digest.value}`;
    // get(), not has(): a hit keeps the key among the recently used.
    if (this.knownLinks.get(key)) return true;
    // A store that cannot be read says "not known": the upstream is asked to confirm instead.
    if (!(await this.driver.stat(this.linkKey(upstream, name, digest)).catch(() => undefined))) return false;
    this.knownLinks.set(key, true);
    return true;
  }

  async link(upstream: string, name: string, digest: Digest): Promise<void> {
    const key = `${upstream}/${name}@${digest.value}`;
    if (this.knownLinks.get(key)) return;
    try {
      await this.driver.put(this.linkKey(upstream, name, digest), '');
    } catch (err) {
      // A full disk, or a store that cannot be written, must not fail the request being
      // served: the upstream did confirm the link, so remember it in memory (it is
      // re-confirmed after a restart).
      if (!isNoSpace(err) && !isStoreUnavailable(err)) throw err;
    }
    this.knownLinks.set(key, true);
  }

  private tagKey(upstream: string, name: string, tag: string): string {
    return `${this.repoKey(upstream, name)}/_tags/${tag}`;
  }

  /**
   * Runs read-modify-write steps on one tag record one at a time (within this process): two
   * classes confirmed at once must not lose each other's update, and prune must not write
   * back a record a request has just replaced.
   */
  private async withTagFile<T>(key: string, step: () => Promise<T>): Promise<T> {
    const before = this.tagLocks.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const chained = before.then(() => mine);
    this.tagLocks.set(key, chained);
    await before;
    try {
      return await step();
    } finally {
      release();
      if (this.tagLocks.get(key) === chained) this.tagLocks.delete(key);
    }
  }

  /** A record's JSON, undefined when absent or not JSON; a store that cannot be read throws. */
  private async readRecord(key: string): Promise<unknown> {
    const bytes = await this.driver.get(key);
    if (!bytes) return undefined;
    try {
      return JSON.parse(bytes.toString('utf8'));
    } catch {
      return undefined;
    }
  }

  /** Every mapping of a tag, by format class (none when the store cannot be read). */
  async getTagRecords(upstream: string, name: string, tag: string): Promise<TagRecords> {
    return parseTagFile(await this.readRecord(this.tagKey(upstream, name, tag)).catch((err: unknown) => {
      if (isStoreUnavailable(err)) return undefined;
      throw err;
    }));
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
    const key = this.tagKey(upstream, name, tag);
    try {
      await this.withTagFile(key, async () => {
        const records = await this.getTagRecords(upstream, name, tag);
        records[cls] = { digest: record.digest, mediaType: record.mediaType, checkedAt: record.checkedAt };
        await this.driver.put(key, tagFileText(records));
      });
    } catch (err) {
      // Disk full, store unreachable: the mapping is not cached (the next request asks the
      // upstream again), but the manifest being served is fine.
      if (!isNoSpace(err) && !isStoreUnavailable(err)) throw err;
    }
  }

  /** Removes a tag's mapping for one format class (the record goes with its last), or all of them. */
  async removeTag(upstream: string, name: string, tag: string, cls?: FormatClass): Promise<void> {
    const key = this.tagKey(upstream, name, tag);
    // A store that cannot be written keeps the record; the upstream is asked again after tagTTL.
    await this.withTagFile(key, async () => {
      const records = cls ? await this.getTagRecords(upstream, name, tag) : {};
      if (cls && !records[cls]) return;
      if (cls) delete records[cls];
      if (bestTagRecord(records)) {
        await this.driver.put(key, tagFileText(records)).catch((err: unknown) => {
          // Disk full: without the rewrite the mapping stays; drop the whole record rather
          // than keep serving what the upstream just said is gone.
          if (!isNoSpace(err)) throw err;
          return this.driver.delete(key);
        });
      } else await this.driver.delete(key);
    }).catch((err: unknown) => {
      if (!isStoreUnavailable(err)) throw err;
    });
  }

  async listTags(upstream: string, name: string): Promise<string[]> {
    return this.driver.children(`${this.repoKey(upstream, name)}/_tags/`).catch(() => []);
  }

  /** Repository names cached for one upstream, sorted (the catalog). */
  async listRepositories(upstream: string): Promise<string[]> {
    const names = new Set<string>();
    for await (const o of this.driver.list(`repos/${upstream}/`)) {
      const r = recordOf(o.key);
      if (r) names.add(r.repository);
    }
    return [...names].sort();
  }

  /**
   * Removes the records of removed content, in one listing of every repository: links to
   * the `removed` digests the store now has in neither kind, and tag mappings (of any format
   * class) naming a `removed` manifest the store no longer has (a tag record goes with its
   * last). A repository left with neither links nor tags is gone with them, so the catalog
   * stops listing it (the fs driver removes the directories left empty).
   * `has` is asked as each record is looked at: a download may have brought a digest back
   * since it was removed, and then its records stand.
   */
  async prune(removed: ReadonlySet<string>, has: (kind: ContentKind, digest: string) => boolean): Promise<PruneResult> {
    const result: PruneResult = { links: 0, tags: 0, repositories: 0 };
    if (removed.size === 0) return result;
    const linkGone = (digest: string) => removed.has(digest) && !has('blob', digest) && !has('manifest', digest);
    const tagGone = (digest: string) => removed.has(digest) && !has('manifest', digest);
    // Memory before the store: a download that links one of these digests again from now on
    // is not short-cut by a remembered key, so it writes its link. Should this pass still
    // remove that link, the link stays remembered in memory, as after a full disk.
    const forget: string[] = [];
    for (const key of this.knownLinks.keys()) if (linkGone(key.slice(key.lastIndexOf('@') + 1))) forget.push(key);
    for (const key of forget) this.knownLinks.delete(key);

    /**
     * Drops a tag record's mappings to removed manifests (every class's), rewriting it or,
     * with none left, removing it; true when the record stays (an unreadable one stays too).
     */
    const pruneTag = (key: string): Promise<boolean> =>
      this.withTagFile(key, async () => {
        const records = parseTagFile(await this.readRecord(key).catch(() => undefined));
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
          await this.driver.delete(key);
          return false;
        }
        try {
          await this.driver.put(key, tagFileText(records));
        } catch (err) {
          if (!isNoSpace(err)) throw err;
          // Disk full: a record naming removed content must not stay; the others are re-fetched.
          await this.driver.delete(key);
          return false;
        }
        return true;
      });

    /** Per repository ("<upstream>/<name>"): records seen, and records left after this pass. */
    const repos = new Map<string, { left: number }>();
    const keys: string[] = [];
    for await (const o of this.driver.list('repos/')) keys.push(o.key);
    for (const key of keys) {
      const r = recordOf(key);
      if (!r) continue;
      const repo = `${r.upstream}/${r.repository}`;
      let counts = repos.get(repo);
      if (!counts) repos.set(repo, (counts = { left: 0 }));
      if (r.kind === 'link') {
        if (linkGone(r.name)) {
          await this.driver.delete(key);
          result.links++;
        } else counts.left++;
      } else if (await pruneTag(key)) counts.left++;
    }
    for (const counts of repos.values()) if (counts.left === 0) result.repositories++;
    return result;
  }
}

/**
 * What a key under repos/ records: a link (name = the digest) or a tag (name = the tag), of
 * which repository of which upstream; undefined for any other key.
 */
function recordOf(key: string): { upstream: string; repository: string; kind: 'link' | 'tag'; name: string } | undefined {
  const parts = key.split('/');
  if (parts[0] !== 'repos' || parts.length < 5) return undefined;
  const upstream = parts[1]!;
  if (parts.at(-3) === '_links' && parts.length >= 6) {
    return { upstream, repository: parts.slice(2, -3).join('/'), kind: 'link', name: `${parts.at(-2)}:${parts.at(-1)}` };
  }
  if (parts.at(-2) === '_tags') return { upstream, repository: parts.slice(2, -2).join('/'), kind: 'tag', name: parts.at(-1)! };
  return undefined;
}
