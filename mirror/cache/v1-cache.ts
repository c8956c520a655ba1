// The v1 API through the cache, with the store guarantees of v2:
// - images lists: proxied from the index on every request (they carry what the index wants
//   a client to see); the last one is kept only to answer when the source is down;
// - tag lists, single tags and repository json: cached for v1.tagsCacheTTL, then refetched;
//   served stale when the source is unreachable, 5xx or 429 (the seed kept them in Redis);
// - image json and ancestry: cached once fetched, an image id being immutable;
// - layers: one shared Download per image id (temp file, fsync, rename; every client aborted
//   mid-body on failure, the last byte held back until verified). A v1 layer URL carries no
//   digest, so the check is the size (Content-Length, else the json's X-Docker-Size) and,
//   when the source gave one, the payload checksum sha256(json + "\n" + layer). The layer is
//   then stored under its own sha256 like any v2 blob.
// Everything is a blob in ContentStore (see store/v1-index.ts for the pointer records).

import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { LRUCache } from 'lru-cache';
import type { RegistryError } from '../errors.js';
import type { MirrorMetrics } from '../metrics.js';
import type { BlobBody } from './blob-cache.js';
import { parseDigest } from '../reference.js';
import { byteRange } from '../store/byte-range.js';
import type { ContentStore } from '../store/content-store.js';
import { Download, type TailReader, type Verify } from '../store/download.js';
import { isNoRoom } from '../store/evictor.js';
import { isStoreUnavailable } from '../store/driver.js';
import { isNoSpace } from '../store/fsutil.js';
import { documentLimits, readBody } from '../upstream/read-body.js';
import type { ImageJsonRecord, LayerRecord, RepoDoc, V1Index } from '../store/v1-index.js';
import { sourceError, toV1Error, V1Error } from '../v1/errors.js';
import { checksumsFromImagesList, payloadChecksums, repoName, type V1Repository } from '../v1/path.js';
import { header, isSourceTrouble, type SourceResponse, type V1Source } from '../v1/source.js';
import type { BreakerSnapshot } from '../upstream/circuit-breaker.js';

export type V1Result = 'hit' | 'miss' | 'stale' | 'pass';

export interface DocAnswer {
  bytes: Buffer;
  result: V1Result;
}

export interface ImageJsonAnswer extends DocAnswer {
  /** X-Docker-Size: the layer's size. */
  size?: number;
  /** X-Docker-Checksum-Payload. */
  checksum?: string;
}

/** A v1 layer answers exactly like a v2 blob. */
export type LayerBody = BlobBody;

export interface V1CacheOptions {
  tagsTTLMs: number;
  /** Layers larger than this stream through uncached; 0 = no bound. */
  maxBytes: number;
  makeRoom: (bytes: number) => Promise<void>;
}

export class V1Cache {
  /** One source fetch per document at a time (key: what is fetched). */
  private readonly fetching = new Map<string, Promise<unknown>>();
  /** One layer download per image id at a time. */
  private readonly inflight = new Map<string, Promise<Download>>();
  /** Payload checksums seen in images lists, by image id: one more way to verify a layer. */
  private readonly listChecksums = new LRUCache<string, string[]>({ max: 10_000 });

  constructor(
    private readonly store: ContentStore,
    private readonly index: V1Index,
    private readonly source: V1Source,
    private readonly metrics: MirrorMetrics,
    private readonly log: Logger,
    private readonly options: V1CacheOptions,
  ) {}

  get sourceName(): string {
    return this.source.name;
  }

  /** The v1 source's circuit breaker (for /metrics and /stats). */
  sourceBreaker(): BreakerSnapshot {
    return this.source.breakerState();
  }

  // ---- repositories -------------------------------------------------------------------

  /** GET /v1/repositories/<repo>/images: from the index every time; the last copy when it is down. */
  async images(repo: V1Repository): Promise<DocAnswer> {
    const path = `/v1/repositories/${repoName(repo)}/images`;
    try {
      const bytes = await this.once(`images:${repoName(repo)}`, async () => {
        const { bytes } = await this.fetchDoc(path, 'repository', { index: true });
        for (const [id, sums] of checksumsFromImagesList(bytes)) this.listChecksums.set(id, sums);
        await this.remember(repo, 'images', bytes);
        return bytes;
      });
      return { bytes, result: 'pass' };
    } catch (err) {
      return this.staleOr(repo, 'images', err);
    }
  }

  /** Tag list, single tag, repository json: fresh for tagsCacheTTL, then refetched. */
  async repoDoc(repo: V1Repository, doc: Exclude<RepoDoc, 'images'>): Promise<DocAnswer> {
    const record = await this.index.getRepo(repo.namespace, repo.repository, doc);
    const cached = record ? await this.readBlob(record.digest) : undefined;
    if (cached && Date.now() - record!.fetchedAt < this.options.tagsTTLMs) return { bytes: cached, result: 'hit' };
    const what = doc.startsWith('tag/') ? 'tag' : 'repository';
    try {
      const bytes = await this.once(`doc:${repoName(repo)}/${doc}`, async () => {
        // Stored as tag/<tag> (beside the "tags" record), fetched as tags/<tag>.
        const sourcePath = doc.startsWith('tag/') ? `tags/${doc.slice(4)}` : doc;
        const { bytes } = await this.fetchDoc(`/v1/repositories/${repoName(repo)}/${sourcePath}`, what);
        await this.remember(repo, doc, bytes);
        return bytes;
      });
      return { bytes, result: 'miss' };
    } catch (err) {
      if (err instanceof V1Error && err.status === 404) await this.index.removeRepo(repo.namespace, repo.repository, doc);
      return this.staleOr(repo, doc, err, cached);
    }
  }

  /** Caches a repository document; failing to only costs the caching, never the answer. */
  private async remember(repo: V1Repository, doc: RepoDoc, bytes: Buffer): Promise<void> {
    const digest = await this.putBlobQuietly(bytes);
    if (!digest) return;
    await this.index.setRepo(repo.namespace, repo.repository, doc, { digest, fetchedAt: Date.now() }).catch((err: unknown) => {
      this.log.error({ repository: repoName(repo), doc, err: (err as Error).message }, 'could not record a v1 document');
    });
  }

  private async staleOr(repo: V1Repository, doc: RepoDoc, err: unknown, known?: Buffer): Promise<DocAnswer> {
    if (!isSourceTrouble(err)) throw err;
    let bytes = known;
    if (!bytes) {
      const record = await this.index.getRepo(repo.namespace, repo.repository, doc);
      bytes = record ? await this.readBlob(record.digest) : undefined;
    }
    if (!bytes) throw err;
    this.log.warn({ source: this.source.name, repository: repoName(repo), doc, err: (err as Error).message }, 'v1 source unavailable: serving stale');
    return { bytes, result: 'stale' };
  }

  // ---- images -------------------------------------------------------------------------

  async imageJson(id: string): Promise<ImageJsonAnswer> {
    const layer = await this.index.getImage<LayerRecord>(id, 'layer');
    const cached = await this.cachedJson(id);
    const answer = cached ? { ...cached, result: 'hit' as const } : { ...(await this.fetchJson(id)), result: 'miss' as const };
    this.touchImage(id);
    const haveLayer = layer && this.store.has('blob', layer.digest);
    return {
      bytes: answer.bytes,
      result: answer.result,
      size: haveLayer ? layer.size : answer.size,
      checksum: answer.checksums?.[0] ?? (haveLayer ? layer.checksum : undefined),
    };
  }

  async ancestry(id: string): Promise<DocAnswer> {
    const record = await this.index.getImage(id, 'ancestry');
    const cached = record ? await this.readBlob(record.digest) : undefined;
    if (cached) {
      this.touchImage(id);
      return { bytes: cached, result: 'hit' };
    }
    const bytes = await this.once(`ancestry:${id}`, async () => {
      const { bytes } = await this.fetchDoc(`/v1/images/${id}/ancestry`, 'image');
      if (!validAncestry(bytes, id)) throw this.invalid(`ancestry of ${id} is not a list of image ids starting with it`);
      const digest = await this.putBlobQuietly(bytes);
      if (digest) await this.recordImage(id, 'ancestry', { digest });
      return bytes;
    });
    return { bytes, result: 'miss' };
  }

  private async cachedJson(id: string): Promise<(ImageJsonRecord & { bytes: Buffer }) | undefined> {
    const record = await this.index.getImage<ImageJsonRecord>(id, 'json');
    const bytes = record ? await this.readBlob(record.digest) : undefined;
    return bytes ? { ...record!, bytes } : undefined;
  }

  private fetchJson(id: string): Promise<{ bytes: Buffer; size?: number; checksums?: string[] }> {
    return this.once(`json:${id}`, async () => {
      const { bytes, headers } = await this.fetchDoc(`/v1/images/${id}/json`, 'image');
      const docId = (JSON.parse(bytes.toString('utf8')) as { id?: unknown })?.id;
      if (docId !== undefined && docId !== id) throw this.invalid(`image json of ${id} names another id`);
      const sizeHeader = Number(header(headers, 'x-docker-size'));
      const size = Number.isSafeInteger(sizeHeader) && sizeHeader >= 0 ? sizeHeader : undefined;
      const checksums = payloadChecksums(header(headers, 'x-docker-checksum-payload') ?? header(headers, 'x-docker-payload-checksum'));
      const digest = await this.putBlobQuietly(bytes);
      const record: ImageJsonRecord = { digest: digest ?? '', ...(size !== undefined ? { size } : {}), ...(checksums.length ? { checksums } : {}) };
      if (digest) await this.recordImage(id, 'json', record);
      return { bytes, size, checksums };
    });
  }

  /** Every part of an image ages together, so expiry and eviction keep v1 images whole. */
  private touchImage(id: string): void {
    void (async () => {
      for (const part of ['json', 'ancestry', 'layer'] as const) {
        const r = await this.index.getImage(id, part);
        if (r) this.store.touch('blob', r.digest);
      }
    })().catch(() => undefined);
  }

  // ---- layers -------------------------------------------------------------------------

  async layer(id: string, rangeHeader: string | undefined): Promise<LayerBody> {
    const record = await this.index.getImage<LayerRecord>(id, 'layer');
    if (record && this.store.has('blob', record.digest)) {
      const warm = await this.serveWarm(id, record, rangeHeader, 'hit');
      if (warm) return warm;
    }
    if (rangeHeader) {
      // A range of a cold layer is served from the verified file, as for v2 blobs.
      const dl = await this.download(id);
      if (dl.tmpPath !== undefined) {
        const outcome = await dl.done;
        if (!outcome.ok && !dl.noSpace) throw toV1Error(outcome.error);
        const committed = outcome.ok && outcome.cached ? await this.index.getImage<LayerRecord>(id, 'layer') : undefined;
        const warm = committed ? await this.serveWarm(id, committed, rangeHeader, 'miss') : undefined;
        if (warm) return warm;
      }
      // Not cacheable (size bound, disk full): the whole body is a valid answer to Range.
    }
    let dl = await this.download(id);
    if (!dl.joinable) dl = await this.startDownload(id, false);
    const reader: TailReader = dl.attach();
    // Joining a verified download (its commit still running) costs the source nothing.
    if (dl.state === 'verified') return { status: 200, size: dl.received, length: dl.received, stream: reader, result: 'hit' };
    return { status: 200, size: dl.size, length: dl.size, stream: reader, result: dl.tmpPath ? 'miss' : 'pass' };
  }

  /** A stored layer as a body; undefined when it has left the store (then fetched again); 503 when the store cannot be read. */
  private async serveWarm(id: string, record: LayerRecord, rangeHeader: string | undefined, result: 'hit' | 'miss'): Promise<LayerBody | undefined> {
    const entry = this.store.get('blob', record.digest);
    if (!entry) return undefined;
    const size = entry.size;
    const range = byteRange(size, rangeHeader);
    if (range === 'unsatisfiable') throw new V1Error(416, 'requested range not satisfiable', { 'Content-Range': `bytes */${size}` });
    const { start, end } = range;
    const status: 200 | 206 = range.partial ? 206 : 200;
    const release = this.store.pin(record.digest);
    let stream: Readable | undefined;
    try {
      // A file store answers a FileBody, which the route writes with reused buffers, as for v2 blobs.
      stream = await this.store.openBlob(parseDigest(record.digest), start, end);
    } catch (err) {
      release();
      if (!isStoreUnavailable(err)) throw err;
      this.metrics.storeError('read');
      throw new V1Error(503, 'the cache store cannot be read; try the source');
    }
    if (!stream) {
      release();
      return undefined;
    }
    this.touchImage(id);
    stream.once('close', release);
    return { status, size, range: status === 206 ? { start, end } : undefined, length: size === 0 ? 0 : end - start + 1, stream, result };
  }

  /** Settles once every shared download running now has settled (committed, or failed): shutdown waits for it. */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.inflight.values()].map((p) => p.then((dl) => dl.done)));
  }

  /** Joins the running download of this image's layer, or starts it. */
  private async download(id: string): Promise<Download> {
    const running = this.inflight.get(id);
    if (running) {
      const dl = await running;
      if (dl.joinable) return dl;
    }
    const started = this.startDownload(id, true);
    this.inflight.set(id, started);
    const forget = () => this.inflight.get(id) === started && this.inflight.delete(id);
    started.then((dl) => dl.done.finally(forget), forget);
    return started;
  }

  private async startDownload(id: string, cache: boolean): Promise<Download> {
    // The json comes first: the payload checksum covers it, and its X-Docker-Size is the
    // expected size when the source sends the layer without a Content-Length.
    const json = (await this.cachedJson(id)) ?? (await this.fetchJson(id));
    const res = await this.source.get(`/v1/images/${id}/layer`);
    if (res.status !== 200) {
      await res.body.dump().catch(() => undefined);
      throw this.failure(res.status, 'image layer');
    }
    const length = Number(header(res.headers, 'content-length'));
    const size = Number.isSafeInteger(length) && length >= 0 ? length : json.size;
    const expected = [...new Set([...(json.checksums ?? []), ...(this.listChecksums.get(id) ?? [])])];
    const payload = createHash('sha256').update(json.bytes).update('\n');
    let checksum: string | undefined;
    const verify: Verify = () => {
      checksum = `sha256:${payload.digest('hex')}`;
      if (expected.length > 0 && !expected.includes(checksum)) {
        return new V1Error(502, `layer of ${id} does not match the checksum the v1 source gave for it`);
      }
      return undefined;
    };
    const bound = this.options.maxBytes;
    const cacheable = cache && !(bound > 0 && size !== undefined && size > bound);
    const dl = new Download(undefined, size, cacheable ? this.store.tempPath() : undefined, verify, { sync: this.store.syncBeforeCommit });
    try {
      await dl.prepare();
    } catch (err) {
      res.body.destroy();
      throw err;
    }
    const finished = this.metrics.downloadStarted({ upstream: this.source.name, object: `v1 layer of image ${id}` }, dl);
    let noRoom = false;
    const commit = async (tmp: string, bytes: number, hashHex: string) => {
      if (bound > 0 && bytes > bound) throw Object.assign(new Error('larger than the store bound'), { code: 'ENOSPC' });
      await this.options.makeRoom(bytes).catch((err: unknown) => {
        noRoom = isNoRoom(err);
        throw err;
      });
      const digest = parseDigest(`sha256:${hashHex}`);
      await this.store.commitBlob(tmp, digest, bytes);
      const record: LayerRecord = { digest: digest.value, size: bytes, ...(checksum ? { checksum } : {}) };
      await this.index.setImage(id, 'layer', record);
    };
    // The first reader attaches in the same tick (layer()), before any chunk can arrive.
    setImmediate(() => void dl.run({ body: res.body, size, tap: (chunk) => payload.update(chunk) }, commit));
    void dl.done.then((outcome) => {
      finished();
      this.metrics.fromUpstream(dl.received);
      if (!outcome.ok) {
        this.metrics.upstreamError(this.source.name);
        this.log.warn({ source: this.source.name, image: id, err: outcome.error.message }, 'v1 layer download failed; nothing cached');
      } else if (dl.noSpace && noRoom) {
        // The evictor logged and counted it: content in use fills storage.maxBytes.
        this.log.info({ image: id }, 'v1 layer served without caching: no room under storage.maxBytes');
      } else if (dl.noSpace) {
        this.metrics.upstreamError(this.source.name);
        this.log.error({ image: id }, 'store is full: v1 layer served without caching');
      } else if (dl.error) {
        this.log.error({ image: id, err: dl.error.message }, 'v1 layer verified but could not be cached');
      }
    });
    return dl;
  }

  // ---- helpers ------------------------------------------------------------------------

  /** Removes pointer records whose content has been expired or evicted. */
  async sweep(): Promise<number> {
    const removed = await this.index.sweep((digest) => this.store.has('blob', digest));
    if (removed > 0) this.log.info({ removed }, 'removed v1 records of expired content');
    return removed;
  }

  private once<T>(key: string, fn: () => Promise<T>): Promise<T> {
    let p = this.fetching.get(key) as Promise<T> | undefined;
    if (!p) {
      p = fn().finally(() => this.fetching.delete(key));
      this.fetching.set(key, p);
    }
    return p;
  }

  /** GETs a JSON document from the source: 200 with valid JSON of bounded size, or a V1Error. */
  private async fetchDoc(path: string, what: string, opts: { index?: boolean } = {}): Promise<{ bytes: Buffer; headers: SourceResponse['headers'] }> {
    let res: SourceResponse;
    try {
      res = await this.source.get(path, opts);
    } catch (err) {
      if (isSourceTrouble(err)) this.metrics.upstreamError(this.source.name);
      throw err;
    }
    if (res.status !== 200) {
      await res.body.dump().catch(() => undefined);
      throw this.failure(res.status, what);
    }
    const bytes = await readBody(res, documentLimits.v1Document, 'v1 document', 'MANIFEST_INVALID').catch((err: unknown) => {
      this.metrics.upstreamError(this.source.name);
      // Too large is bad content (502, as a bad manifest); a body that broke off is trouble (503).
      throw new V1Error((err as RegistryError).status === 502 ? 502 : 503, `the v1 source: ${(err as Error).message}`);
    });
    this.metrics.fromUpstream(bytes.length);
    try {
      JSON.parse(bytes.toString('utf8'));
    } catch {
      throw this.invalid(`the v1 source sent invalid JSON for ${path}`);
    }
    return { bytes, headers: res.headers };
  }

  private failure(status: number, what: string): V1Error {
    if (status >= 500 || status === 429) this.metrics.upstreamError(this.source.name);
    return sourceError(status, what);
  }

  private invalid(message: string): V1Error {
    this.metrics.upstreamError(this.source.name);
    return new V1Error(502, message);
  }

  private async readBlob(digest: string): Promise<Buffer | undefined> {
    if (!this.store.has('blob', digest)) return undefined;
    const release = this.store.pin(digest);
    try {
      const bytes = await this.store.readBlob(parseDigest(digest));
      if (bytes) this.store.touch('blob', digest);
      return bytes;
    } catch {
      return undefined;
    } finally {
      release();
    }
  }

  /** Records an image part; a store that cannot take it (full, unreachable) only costs the caching. */
  private async recordImage(id: string, part: 'json' | 'ancestry', record: object): Promise<void> {
    await this.index.setImage(id, part, record).catch((err: unknown) => {
      if (!isNoSpace(err) && !isStoreUnavailable(err)) throw err;
      this.log.info({ id, part, err: (err as Error).message }, 'v1 record not cached: the store cannot take it');
    });
  }

  /** Stores bytes as a blob; a store that cannot take them only costs the caching. */
  private async putBlobQuietly(bytes: Buffer): Promise<string | undefined> {
    const digest = parseDigest(`sha256:${createHash('sha256').update(bytes).digest('hex')}`);
    if (this.store.has('blob', digest.value)) {
      this.store.touch('blob', digest.value);
      return digest.value;
    }
    const tmp = this.store.tempPath();
    try {
      const fh = await fs.open(tmp, 'w');
      try {
        await fh.writeFile(bytes);
        if (this.store.syncBeforeCommit) await fh.sync();
      } finally {
        await fh.close();
      }
      await this.options.makeRoom(bytes.length);
      await this.store.commitBlob(tmp, digest, bytes.length);
      return digest.value;
    } catch (err) {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      if (isNoRoom(err)) this.log.info({ err: (err as Error).message }, 'v1 document served without caching');
      else this.log.error({ err: (err as Error).message }, 'could not cache a v1 document');
      return undefined;
    }
  }
}

/** An ancestry is a JSON list of image ids, the image itself first. */
export function validAncestry(bytes: Buffer, id: string): boolean {
  try {
    const doc = JSON.parse(bytes.toString('utf8')) as unknown;
    return Array.isArray(doc) && doc[0] === id && doc.every((x) => typeof x === 'string' && /^[a-f0-9]{64}$/.test(x));
  } catch {
    return false;
  }
}
