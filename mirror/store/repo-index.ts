// What each (upstream, repository) is known to contain: links to content the upstream served
// for that repository, and tag -> digest mappings with the time they were last confirmed.
// Layout: <root>/repos/<upstream>/<name>/_links/<alg>/<hex> and .../_tags/<tag>.
// "_links"/"_tags" cannot collide with a repository path component, which must start with
// [a-z0-9]; upstream keys are validated registry hosts; names, tags and digests are validated
// by reference.ts before they reach here, so every path below stays inside the store.

import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Digest } from '../reference.js';
import { isNoSpace, readJson, removeQuietly, writeFileAtomic } from './fsutil.js';

export interface TagRecord {
  digest: string;
  mediaType: string;
  /** When the upstream last confirmed this mapping (ms since epoch). */
  checkedAt: number;
}

export class RepoIndex {
  private readonly reposDir: string;
  /** Positive link lookups are remembered: links are only ever added while serving. */
  private readonly knownLinks = new Set<string>();

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
    if (this.knownLinks.has(key)) return true;
    try {
      await fs.access(this.linkPath(upstream, name, digest));
      this.knownLinks.add(key);
      return true;
    } catch {
      return false;
    }
  }

  async link(upstream: string, name: string, digest: Digest): Promise<void> {
    const key = `${upstream}/${name}@${digest.value}`;
    if (this.knownLinks.has(key)) return;
    const path = this.linkPath(upstream, name, digest);
    try {
      await fs.mkdir(join(path, '..'), { recursive: true });
      await fs.writeFile(path, '');
    } catch (err) {
      // A full disk must not fail the request that is being served: the upstream did
      // confirm the link, so remember it in memory (it is re-confirmed after a restart).
      if (!isNoSpace(err)) throw err;
    }
    this.knownLinks.add(key);
  }

  /** Drops every link to a digest (used when the content itself is removed). */
  forgetLinksTo(digest: string): void {
    for (const key of this.knownLinks) if (key.endsWith(`@${digest}`)) this.knownLinks.delete(key);
  }

  async removeLinksTo(digest: Digest): Promise<void> {
    this.forgetLinksTo(digest.value);
    for (const { upstream, name } of await this.allRepositories()) {
      await removeQuietly(this.linkPath(upstream, name, digest));
    }
  }

  async getTag(upstream: string, name: string, tag: string): Promise<TagRecord | undefined> {
    return readJson<TagRecord>(join(this.repoDir(upstream, name), '_tags', tag));
  }

  async setTag(upstream: string, name: string, tag: string, record: TagRecord): Promise<void> {
    const dir = join(this.repoDir(upstream, name), '_tags');
    try {
      await fs.mkdir(dir, { recursive: true });
      await writeFileAtomic(join(dir, tag), JSON.stringify(record), this.tmpDir);
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

  /** Every tag record in the store, for expiry. */
  async allTags(): Promise<Array<{ upstream: string; name: string; tag: string; record: TagRecord }>> {
    const out: Array<{ upstream: string; name: string; tag: string; record: TagRecord }> = [];
    for (const { upstream, name } of await this.allRepositories()) {
      for (const tag of await this.listTags(upstream, name)) {
        const record = await this.getTag(upstream, name, tag);
        if (record) out.push({ upstream, name, tag, record });
      }
    }
    return out;
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

  async allRepositories(): Promise<Array<{ upstream: string; name: string }>> {
    const out: Array<{ upstream: string; name: string }> = [];
    let ups: string[] = [];
    try {
      ups = await fs.readdir(this.reposDir);
    } catch {
      return out;
    }
    for (const upstream of ups) {
      for (const name of await this.listRepositories(upstream)) out.push({ upstream, name });
    }
    return out;
  }
}
