// What the v1 mirror knows, as small pointer records into the content store. Every byte v1
// caches (layers, image json, ancestry, tag lists, images lists) is a content-addressed blob
// in ContentStore, so cache.ttl expiry and the storage.maxBytes bound cover v1 exactly as
// they cover v2; these records only say which blob answers which v1 request.
//
// Layout under <root>/v1/:
//   images/<id[0:2]>/<id>/{json,ancestry,layer}     immutable once written (an id is immutable)
//   repos/<namespace>/<repository>/{images,tags,json} and .../tag/<tag>   refreshed by TTL
// Ids, namespaces, repositories and tags are validated by v1/path.ts before they reach here
// (no "/", no leading "."), so every path stays inside the store. Records are replaced
// atomically; one whose blob has been expired or evicted is "dangling": readers treat it as
// absent and sweep() removes it.

import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { readJson, removeQuietly, writeFileAtomic } from './fsutil.js';

export type ImagePart = 'json' | 'ancestry' | 'layer';
/** A repository document: 'images', 'tags', 'json', or `tag/<tag>`. */
export type RepoDoc = 'images' | 'tags' | 'json' | `tag/${string}`;

export interface DocRecord {
  digest: string;
  /** When the source last sent it (ms since epoch). */
  fetchedAt: number;
}

export interface ImageJsonRecord {
  digest: string;
  /** The source's X-Docker-Size (the layer's size), when it sent one. */
  size?: number;
  /** sha256 payload checksums the source gave for this image. */
  checksums?: string[];
}

export interface LayerRecord {
  digest: string;
  size: number;
  /** "sha256:" + sha256(json + "\n" + layer): the v1 payload checksum, computed on the way in. */
  checksum?: string;
}

export class V1Index {
  private readonly dir: string;

  constructor(
    root: string,
    private readonly tmpDir: string,
  ) {
    this.dir = join(root, 'v1');
  }

  private imagePath(id: string, part: ImagePart): string {
    return join(this.dir, 'images', id.slice(0, 2), id, part);
  }

  private repoPath(namespace: string, repository: string, doc: RepoDoc): string {
    return join(this.dir, 'repos', namespace, repository, doc);
  }

  getImage<T extends { digest: string }>(id: string, part: ImagePart): Promise<T | undefined> {
    return readRecord<T>(this.imagePath(id, part));
  }

  setImage(id: string, part: ImagePart, record: object): Promise<void> {
    return this.write(this.imagePath(id, part), record);
  }

  getRepo(namespace: string, repository: string, doc: RepoDoc): Promise<DocRecord | undefined> {
    return readRecord<DocRecord>(this.repoPath(namespace, repository, doc));
  }

  setRepo(namespace: string, repository: string, doc: RepoDoc, record: DocRecord): Promise<void> {
    return this.write(this.repoPath(namespace, repository, doc), record);
  }

  async removeRepo(namespace: string, repository: string, doc: RepoDoc): Promise<void> {
    await removeQuietly(this.repoPath(namespace, repository, doc));
  }

  private async write(path: string, record: object): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      await fs.mkdir(join(path, '..'), { recursive: true });
      try {
        return await writeFileAtomic(path, JSON.stringify(record), this.tmpDir);
      } catch (err) {
        // sweep() may have removed the directory, empty a moment ago, in between.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt > 0) throw err;
      }
    }
  }

  /** Removes records whose blob is gone (and directories left empty); returns how many. */
  async sweep(alive: (digest: string) => boolean): Promise<number> {
    let removed = 0;
    const walk = async (dir: string): Promise<boolean> => {
      let entries: import('node:fs').Dirent[];
      try {
        entries = await fs.readdir(dir, { withFileTypes: true });
      } catch {
        return false;
      }
      let left = entries.length;
      for (const e of entries) {
        const p = join(dir, e.name);
        if (e.isDirectory()) {
          if (await walk(p)) left--;
        } else if (e.isFile()) {
          const rec = await readRecord<{ digest: string }>(p);
          if (!rec || !alive(rec.digest)) {
            await removeQuietly(p);
            removed++;
            left--;
          }
        }
      }
      if (left === 0 && dir !== this.dir) {
        // Another request may have just written here: rmdir only succeeds when still empty.
        return fs.rmdir(dir).then(
          () => true,
          () => false,
        );
      }
      return false;
    };
    await walk(this.dir);
    return removed;
  }
}

async function readRecord<T extends { digest: string }>(path: string): Promise<T | undefined> {
  const rec = await readJson<T>(path).catch(() => undefined);
  return rec && typeof rec === 'object' && typeof rec.digest === 'string' ? rec : undefined;
}
