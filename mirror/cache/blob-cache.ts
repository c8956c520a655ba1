// Blobs through the cache: warm from the store, cold through one shared Download per
// (upstream, repository, digest). A blob stored for one repository is served for another
// only after the upstream confirms (HEAD) that repository has it, so the mirror never widens
// what the upstream's own access rules allow.

import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { RegistryError } from '../errors.js';
import type { MirrorMetrics } from '../metrics.js';
import type { Digest } from '../reference.js';
import { byteRange } from '../store/byte-range.js';
import type { ContentStore } from '../store/content-store.js';
import { Download, type TailReader } from '../store/download.js';
import { isStoreUnavailable } from '../store/driver.js';
import { isNoRoom } from '../store/evictor.js';
import type { RepoIndex } from '../store/repo-index.js';
import { upstreamError } from '../upstream/client.js';
import type { Target } from './target.js';

export interface BlobBody {
  status: 200 | 206;
  /** Size of the whole blob, when known. */
  size: number | undefined;
  /** Content-Range for 206. */
  range?: { start: number; end: number };
  /** Length of this body, when known. */
  length: number | undefined;
  stream: Readable;
  result: 'hit' | 'miss' | 'pass';
}

/** A warm blob the client fetches from the store itself (S3 `redirect: true`): 307 to a presigned URL. */
export interface BlobRedirect {
  status: 307;
  location: string;
  result: 'hit';
}

export interface BlobHead {
  size: number;
  result: 'hit' | 'miss';
}

export interface BlobCacheOptions {
  /** Blobs larger than this stream through uncached; 0 = no bound. */
  maxBytes: number;
  /** Called before a blob is committed, to make room under the size bound. */
  makeRoom?: (bytes: number) => Promise<void>;
  /** Warm GETs without Range answer 307 to the store's presigned URL (when the store has one). */
  redirect?: boolean;
}

export class BlobCache {
  private readonly inflight = new Map<string, Promise<Download>>();

  constructor(
    private readonly store: ContentStore,
    private readonly repos: RepoIndex,
    private readonly metrics: MirrorMetrics,
    private readonly log: Logger,
    private readonly options: BlobCacheOptions,
  ) {}

  /** Stored and known to be this repository's: a GET or HEAD is answered without the upstream. */
  async isWarm(t: Target, digest: Digest): Promise<boolean> {
    return (await this.store.lookup('blob', digest)) !== undefined && (await this.repos.isLinked(t.upstream.name, t.name, digest));
  }

  async head(t: Target, digest: Digest): Promise<BlobHead> {
    const entry = await this.store.lookup('blob', digest);
    if (entry && (await this.confirmedFor(t, digest))) {
      return { size: entry.size, result: 'hit' };
    }
    // Verified for this repository and being committed (fsync, rename): as good as stored.
    const settling = await this.inflight.get(inflightKey(t, digest))?.catch(() => undefined);
    if (settling?.state === 'verified' && settling.joinable) return { size: settling.received, result: 'hit' };
    const res = await t.upstream.send({ method: 'HEAD', path: `${t.name}/blobs/${digest.value}`, repository: t.name });
    await res.body.dump().catch(() => undefined);
    if (res.status !== 200) throw this.failure(t, res.status, digest);
    const size = Number(res.headers['content-length']);
    if (!Number.isSafeInteger(size) || size < 0) throw new RegistryError('UNAVAILABLE', 'upstream sent no blob size');
    return { size, result: 'miss' };
  }

  async get(t: Target, digest: Digest, rangeHeader: string | undefined): Promise<BlobBody | BlobRedirect> {
    if ((await this.store.lookup('blob', digest)) && (await this.confirmedFor(t, digest))) {
      if (this.options.redirect) {
        const location = await this.store.blobUrl(digest);
        if (location) {
          this.store.touch('blob', digest.value);
          return { status: 307, location, result: 'hit' };
        }
      }
      const warm = await this.serveWarm(digest, rangeHeader, 'hit');
      if (warm) return warm;
    }
    if (rangeHeader) {
      // A range of a cold blob is served from the verified file: bytes of a partial range
      // cannot be checked against the digest while the download is still running.
      const dl = await this.download(t, digest);
      if (dl.tmpPath !== undefined) {
        const outcome = await dl.done;
        if (!outcome.ok && !dl.noSpace) throw outcome.error;
        const warm = outcome.ok && outcome.cached ? await this.serveWarm(digest, rangeHeader, 'miss') : undefined;
        if (warm) return warm;
      }
      // Not cacheable (size bound, disk full): a whole 200 body is a valid answer to Range.
    }
    return this.serveCold(t, digest, true);
  }

  /**
   * Makes sure the blob is stored and linked to this repository, as a client's pull would
   * (same shared Download, same verification and link), without a client (prefetch.ts).
   * Resolves with its size; rejects when it could not be fetched or not be cached.
   */
  async ensure(t: Target, digest: Digest): Promise<{ size: number; result: 'hit' | 'miss' }> {
    const entry = await this.store.lookup('blob', digest);
    if (entry && (await this.confirmedFor(t, digest))) {
      this.store.touch('blob', digest.value);
      return { size: entry.size, result: 'hit' };
    }
    const dl = await this.download(t, digest);
    if (dl.tmpPath === undefined) {
      // Larger than storage.maxBytes: it cannot be cached; stop pulling it.
      dl.attach().destroy();
      throw new RegistryError('BLOB_UNKNOWN', 'blob is larger than storage.maxBytes and cannot be cached', { digest: digest.value });
    }
    const outcome = await dl.done;
    if (!outcome.ok) throw outcome.error;
    if (!outcome.cached) throw new RegistryError('UNAVAILABLE', 'blob verified but could not be cached (store full?)', { digest: digest.value });
    return { size: outcome.size, result: 'miss' };
  }

  /** Settles once every shared download running now has settled (committed, or failed): shutdown waits for it. */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.inflight.values()].map((p) => p.then((dl) => dl.done)));
  }

  /** The blob is in the store; is it linked to this repository or confirmed by upstream? */
  private async confirmedFor(t: Target, digest: Digest): Promise<boolean> {
    if (await this.repos.isLinked(t.upstream.name, t.name, digest)) return true;
    const res = await t.upstream.send({ method: 'HEAD', path: `${t.name}/blobs/${digest.value}`, repository: t.name });
    await res.body.dump().catch(() => undefined);
    if (res.status === 200) {
      await this.repos.link(t.upstream.name, t.name, digest);
      return true;
    }
    throw this.failure(t, res.status, digest);
  }

  /**
   * A stored blob as a body; undefined when it has left the store behind the index (then it
   * is fetched cold). A store that cannot be read answers 503 UNAVAILABLE before any byte, so
   * the client (containerd) goes to the upstream itself.
   */
  private async serveWarm(digest: Digest, rangeHeader: string | undefined, result: 'hit' | 'miss'): Promise<BlobBody | undefined> {
    const entry = this.store.get('blob', digest.value);
    if (!entry) return undefined;
    const size = entry.size;
    const range = byteRange(size, rangeHeader);
    if (range === 'unsatisfiable') throw new RegistryError('RANGE_INVALID', 'range not satisfiable', { size });
    const { start, end } = range;
    const status: 200 | 206 = range.partial ? 206 : 200;
    const release = this.store.pin(digest.value);
    let stream: Readable | undefined;
    try {
      // A file store answers a FileBody, which the route writes with reused buffers (file-body.ts).
      stream = await this.store.openBlob(digest, start, end);
    } catch (err) {
      release();
      if (!isStoreUnavailable(err)) throw err;
      this.metrics.storeError('read');
      this.log.warn({ digest: digest.value, err: err.message }, 'cached blob could not be read from the store');
      throw new RegistryError('UNAVAILABLE', 'the cache store cannot be read; try the upstream');
    }
    if (!stream) {
      release();
      return undefined;
    }
    this.store.touch('blob', digest.value);
    stream.once('close', release);
    return {
      status,
      size,
      range: status === 206 ? { start, end } : undefined,
      length: size === 0 ? 0 : end - start + 1,
      stream,
      result,
    };
  }

  private async serveCold(t: Target, digest: Digest, join: boolean): Promise<BlobBody> {
    let dl = join ? await this.download(t, digest) : undefined;
    if (!dl || !dl.joinable) dl = await this.startDownload(t, digest, false);
    const reader: TailReader = dl.attach();
    // Joining a verified download (its commit still running) costs the upstream nothing.
    if (dl.state === 'verified') return { status: 200, size: dl.received, length: dl.received, stream: reader, result: 'hit' };
    return { status: 200, size: dl.size, length: dl.size, stream: reader, result: dl.tmpPath ? 'miss' : 'pass' };
  }

  /** Joins the running download of this blob for this repository, or starts it. */
  private async download(t: Target, digest: Digest): Promise<Download> {
    const key = inflightKey(t, digest);
    const running = this.inflight.get(key);
    if (running) {
      const dl = await running;
      if (dl.joinable) return dl;
    }
    const started = this.startDownload(t, digest, true);
    this.inflight.set(key, started);
    started.then(
      (dl) => dl.done.finally(() => this.inflight.get(key) === started && this.inflight.delete(key)),
      () => this.inflight.get(key) === started && this.inflight.delete(key),
    );
    return started;
  }

  private async startDownload(t: Target, digest: Digest, cache: boolean): Promise<Download> {
    const res = await t.upstream.send({ method: 'GET', path: `${t.name}/blobs/${digest.value}`, repository: t.name });
    if (res.status !== 200) {
      await res.body.dump().catch(() => undefined);
      throw this.failure(t, res.status, digest);
    }
    this.metrics.upstreamBlobFetch(t.upstream.name);
    const length = Number(res.headers['content-length']);
    const size = Number.isSafeInteger(length) && length >= 0 ? length : undefined;
    const bound = this.options.maxBytes;
    const cacheable = cache && !(bound > 0 && size !== undefined && size > bound);
    const dl = new Download(digest, size, cacheable ? this.store.tempPath() : undefined, undefined, { sync: this.store.syncBeforeCommit });
    try {
      await dl.prepare();
    } catch (err) {
      res.body.destroy();
      throw err;
    }
    const release = this.store.pin(digest.value);
    const finished = this.metrics.downloadStarted({ upstream: t.upstream.name, object: `${t.name}@${digest.value}` }, dl);
    let noRoom = false;
    const commit = async (tmp: string, bytes: number) => {
      if (bound > 0 && bytes > bound) throw Object.assign(new Error('larger than the store bound'), { code: 'ENOSPC' });
      await this.options.makeRoom?.(bytes).catch((err: unknown) => {
        noRoom = isNoRoom(err);
        throw err;
      });
      if (await this.store.commitBlob(tmp, digest, bytes)) this.metrics.blobAdded();
      await this.repos.link(t.upstream.name, t.name, digest);
    };
    // The first reader attaches in the same tick (serveCold), before any chunk can arrive.
    setImmediate(() => void dl.run({ body: res.body, size }, commit));
    // dl.done settles before the temp file is cleaned up, so the figures are current by then.
    void dl.done.then((outcome) => {
      release();
      finished();
      // A failed transfer counts too: it shows what the upstream cost.
      this.metrics.fromUpstream(dl.received);
      if (!outcome.ok) {
        this.metrics.upstreamError(t.upstream.name, `blob ${t.name}@${digest.value}: ${outcome.error.message}`);
        this.log.warn({ upstream: t.upstream.name, repository: t.name, digest: digest.value, err: outcome.error.message }, 'blob download failed; nothing cached');
      } else if (dl.noSpace && noRoom) {
        // The evictor logged and counted it: content in use fills storage.maxBytes.
        this.log.info({ digest: digest.value }, 'blob served without caching: no room under storage.maxBytes');
      } else if (dl.noSpace) {
        this.metrics.upstreamError(t.upstream.name);
        this.log.error({ digest: digest.value }, 'store is full: blob served without caching');
      } else if (dl.error && isStoreUnavailable(dl.error)) {
        this.metrics.storeError('write');
        this.log.warn({ digest: digest.value, err: dl.error.message }, 'blob served without caching: the store cannot be written');
      } else if (dl.error) {
        this.log.error({ digest: digest.value, err: dl.error.message }, 'blob verified but could not be cached');
      }
    });
    return dl;
  }

  private failure(t: Target, status: number, digest: Digest): RegistryError {
    if (status >= 500 || status === 429) this.metrics.upstreamError(t.upstream.name, `answered ${status} for blob ${t.name}@${digest.value}`);
    return upstreamError(status, t.upstream.name, new RegistryError('BLOB_UNKNOWN', undefined, { digest: digest.value }));
  }
}

function inflightKey(t: Target, digest: Digest): string {
  return `${t.upstream.name}/${t.name}@${digest.value}`;
}
