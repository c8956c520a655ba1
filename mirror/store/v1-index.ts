// What the v1 mirror knows, as small pointer records into the content store. Every byte v1
// caches (layers, image json, ancestry, tag lists, images lists) is a content-addressed blob
// in ContentStore, so cache.ttl expiry and the storage.maxBytes bound cover v1 exactly as
// they cover v2; these records only say which blob answers which v1 request.
//
// Keys under v1/ of the store's driver:
//   images/<id[0:2]>/<id>/{json,ancestry,layer}     immutable once written (an id is immutable)
//   repos/<namespace>/<repository>/{images,tags,json} and .../tag/<tag>   refreshed by TTL
// Ids, namespaces, repositories and tags are validated by v1/path.ts before they reach here
// (no "/", no leading "."), so every key stays inside the store. Records are replaced
// atomically; one whose blob has been expired or evicted is "dangling": readers treat it as
// absent and sweep() removes it.

import type { StoreDriver } from './driver.js';

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
  constructor(private readonly driver: StoreDriver) {}

  private imageKey(id: string, part: ImagePart): string {
    return `v1/images/${id.slice(0, 2)}/${id}/${part}`;
  }

  private repoKey(namespace: string, repository: string, doc: RepoDoc): string {
    return `v1/repos/${namespace}/${repository}/${doc}`;
  }

  getImage<T extends { digest: string }>(id: string, part: ImagePart): Promise<T | undefined> {
    return this.read<T>(this.imageKey(id, part));
  }

  setImage(id: string, part: ImagePart, record: object): Promise<void> {
    return this.driver.put(this.imageKey(id, part), JSON.stringify(record));
  }

  getRepo(namespace: string, repository: string, doc: RepoDoc): Promise<DocRecord | undefined> {
    return this.read<DocRecord>(this.repoKey(namespace, repository, doc));
  }

  setRepo(namespace: string, repository: string, doc: RepoDoc, record: DocRecord): Promise<void> {
    return this.driver.put(this.repoKey(namespace, repository, doc), JSON.stringify(record));
  }

  async removeRepo(namespace: string, repository: string, doc: RepoDoc): Promise<void> {
    await this.driver.delete(this.repoKey(namespace, repository, doc));
  }

  /** Removes records whose blob is gone (the fs driver takes directories left empty too); returns how many. */
  async sweep(alive: (digest: string) => boolean): Promise<number> {
    let removed = 0;
    const keys: string[] = [];
    for await (const o of this.driver.list('v1/')) keys.push(o.key);
    for (const key of keys) {
      const rec = await this.read<{ digest: string }>(key);
      if (!rec || !alive(rec.digest)) {
        await this.driver.delete(key);
        removed++;
      }
    }
    return removed;
  }

  /**
   * A record, or undefined when absent, unreadable (a store that cannot be read too: the
   * request then goes to the source) or of the wrong shape.
   */
  private async read<T extends { digest: string }>(key: string): Promise<T | undefined> {
    let rec: T | undefined;
    try {
      rec = JSON.parse((await this.driver.get(key))?.toString('utf8') ?? 'null') as T | undefined;
    } catch {
      return undefined;
    }
    return rec && typeof rec === 'object' && typeof rec.digest === 'string' ? rec : undefined;
  }
}
