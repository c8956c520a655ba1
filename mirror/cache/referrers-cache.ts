// OCI 1.1 referrers (GET /v2/<name>/referrers/<digest>) through the mirror, cached like a tag:
// an answer is trusted for cache.tagTTL, then asked for again; when the upstream is
// unreachable, 5xx or 429, the last answer is served stale.
//
// Where the answer comes from:
//   - an upstream with the referrers API: its answer (every Link page, same origin and path
//     only), with the artifactType filter passed on; the mirror applies the filter again
//     itself, so `OCI-Filters-Applied: artifactType` is always true when it is sent;
//   - an upstream answering the API with 404 (docker-registry 2.8 and others without it): the
//     referrers tag schema, as a client would do it. The index tagged `<alg>-<hex>` is
//     fetched through the manifest cache (so it is verified, stored and revalidated as any tag
//     is, and served stale from the store even after a restart), and filtered by the mirror;
//     no such tag, or a tag that is not an OCI index, means no referrers: an empty index.
//
// Answers are held in memory, not in the store: an API answer is a listing computed by the
// upstream, with no digest its bytes prove, and the store only holds content under a digest
// its bytes prove (manifest-cache.ts). The memory is bounded (referrersCacheLimits), least
// recently used out first; the tag schema's indexes persist in the store through the
// manifest cache.

import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { RegistryError } from '../errors.js';
import { manifestMediaTypes } from '../manifest-class.js';
import type { MirrorMetrics } from '../metrics.js';
import type { Digest } from '../reference.js';
import { upstreamError } from '../upstream/client.js';
import { nextPageQuery } from '../upstream/next-page.js';
import { documentLimits, readBody } from '../upstream/read-body.js';
import type { ManifestCache } from './manifest-cache.js';
import type { Target } from './target.js';

export const referrersCacheLimits = {
  /** Answers held at once. */
  entries: 10_000,
  /** Bytes of answers held at once (one answer is at most documentLimits.referrers). */
  bytes: 32 << 20,
  /** Upstream pages followed for one answer (all together within documentLimits.referrers). */
  pages: 20,
  /** Longest artifactType filter accepted (a media type: 127/127 by RFC 6838, plus slack). */
  artifactTypeLength: 255,
} as const;

export const ociIndexType = manifestMediaTypes.ociIndex;

export interface ReferrersAnswer {
  /** The image index sent to the client. */
  body: Buffer;
  /** The artifactType filter was applied (by the upstream or the mirror). */
  filtered: boolean;
  result: 'hit' | 'miss' | 'stale';
}

interface Entry {
  body: Buffer;
  filtered: boolean;
  checkedAt: number;
}

interface Index {
  [key: string]: unknown;
  manifests: Array<Record<string, unknown>>;
}

/**
 * The referrers tag of a digest (OCI distribution spec, "Referrers Tag Schema"): the
 * algorithm truncated to 32 characters, "-", the encoded part truncated to 64, and every
 * character a tag cannot hold replaced with "-".
 */
export function referrersTag(digest: string): string {
  const i = digest.indexOf(':');
  const alg = digest.slice(0, i).slice(0, 32);
  const encoded = digest.slice(i + 1).slice(0, 64);
  return `${alg}-${encoded}`.replace(/[^A-Za-z0-9_.-]/g, '-');
}

/** The answer for a digest nothing refers to. */
export function emptyIndex(): Buffer {
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: ociIndexType, manifests: [] }));
}

/** An image index's JSON, or undefined when the bytes are not one (JSON object with a manifests array of objects). */
export function parseIndex(bytes: Buffer): Index | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return undefined;
  const manifests = (doc as { manifests?: unknown }).manifests;
  if (!Array.isArray(manifests) || !manifests.every((d) => typeof d === 'object' && d !== null && !Array.isArray(d))) return undefined;
  const mediaType = (doc as { mediaType?: unknown }).mediaType;
  if (mediaType !== undefined && mediaType !== ociIndexType) return undefined;
  return doc as Index;
}

/** The descriptors of the given artifactType (all of them when none is given). */
export function filterDescriptors(manifests: Array<Record<string, unknown>>, artifactType: string | undefined): Array<Record<string, unknown>> {
  return artifactType === undefined ? manifests : manifests.filter((d) => d.artifactType === artifactType);
}

/**
 * The index a client gets: the original bytes when nothing was dropped (one page, nothing
 * filtered out), else the index rewritten with the kept descriptors.
 */
export function renderIndex(first: Index, original: Buffer | undefined, all: Array<Record<string, unknown>>, artifactType: string | undefined): Buffer {
  const kept = filterDescriptors(all, artifactType);
  if (original && kept.length === first.manifests.length && all.length === first.manifests.length) return original;
  return Buffer.from(JSON.stringify({ ...first, schemaVersion: 2, mediaType: ociIndexType, manifests: kept }));
}

function isUpstreamTrouble(err: unknown): boolean {
  const code = (err as RegistryError)?.code;
  return code === 'UNAVAILABLE' || code === 'TOOMANYREQUESTS';
}

function isNotFound(err: unknown): boolean {
  return err instanceof RegistryError && err.status === 404;
}

function bare(mediaType: string): string {
  return mediaType.split(';')[0]!.trim().toLowerCase();
}

export class ReferrersCache {
  private readonly entries: LRUCache<string, Entry>;
  private readonly fetching = new Map<string, Promise<{ entry: Entry; result: 'miss' | 'stale' }>>();

  constructor(
    private readonly manifests: ManifestCache,
    private readonly metrics: MirrorMetrics,
    private readonly log: Logger,
    private readonly tagTTLMs: number,
    limits: { entries: number; bytes: number } = referrersCacheLimits,
  ) {
    this.entries = new LRUCache<string, Entry>({
      max: limits.entries,
      maxSize: limits.bytes,
      sizeCalculation: (e, key) => e.body.length + key.length + 64,
    });
  }

  /** Answers held now. */
  size(): number {
    return this.entries.size;
  }

  async get(t: Target, subject: Digest, artifactType: string | undefined): Promise<ReferrersAnswer> {
    const key = `${t.upstream.name}\n${t.name}\n${subject.value}\n${artifactType ?? ''}`;
    const cached = this.entries.get(key);
    if (cached && Date.now() - cached.checkedAt < this.tagTTLMs) return { body: cached.body, filtered: cached.filtered, result: 'hit' };
    try {
      const { entry, result } = await this.fetch(key, t, subject, artifactType);
      return { body: entry.body, filtered: entry.filtered, result };
    } catch (err) {
      // Only trouble is served stale; an upstream that refuses us must not be bypassed.
      if (!isUpstreamTrouble(err)) throw err;
      if (cached) return this.stale(t, subject, cached, err);
      // Nothing in memory (a restart, or pushed out): the tag schema's index, if the
      // manifest cache holds it (it serves its stored copy while the upstream is down).
      try {
        const fallback = await this.fromTagSchema(t, subject, artifactType);
        if (fallback.result === 'miss') return { body: fallback.entry.body, filtered: fallback.entry.filtered, result: 'miss' };
        return this.stale(t, subject, fallback.entry, err);
      } catch {
        throw err;
      }
    }
  }

  private stale(t: Target, subject: Digest, e: Entry, err: unknown): ReferrersAnswer {
    this.metrics.upstreamError(t.upstream.name);
    this.log.warn({ upstream: t.upstream.name, repository: t.name, subject: subject.value, err: (err as Error).message }, 'upstream unavailable: serving stale referrers');
    return { body: e.body, filtered: e.filtered, result: 'stale' };
  }

  /** One upstream look-up per key at a time. */
  private fetch(key: string, t: Target, subject: Digest, artifactType: string | undefined) {
    let p = this.fetching.get(key);
    if (!p) {
      p = this.fetchOnce(t, subject, artifactType)
        .then((answer) => {
          // A stale answer from the manifest cache is not fresh: the last good entry stays.
          if (answer.result === 'miss') this.entries.set(key, answer.entry);
          return answer;
        })
        .finally(() => this.fetching.delete(key));
      this.fetching.set(key, p);
    }
    return p;
  }

  private async fetchOnce(t: Target, subject: Digest, artifactType: string | undefined): Promise<{ entry: Entry; result: 'miss' | 'stale' }> {
    const client = t.upstream;
    const apiPath = `${t.name}/referrers/${subject.value}`;
    const apiUrl = new URL(`${client.config.url}/v2/${apiPath}`);
    let query = artifactType === undefined ? undefined : `artifactType=${encodeURIComponent(artifactType)}`;
    let first: Index | undefined;
    let firstBytes: Buffer | undefined;
    const all: Array<Record<string, unknown>> = [];
    let bytes = 0;
    for (let page = 1; ; page++) {
      const res = await client.send({ method: 'GET', path: apiPath, repository: t.name, accept: ociIndexType, query });
      if (res.status === 404 && page === 1) {
        // No referrers API here (one that has it never answers 404): the tag schema.
        await res.body.dump().catch(() => undefined);
        return this.fromTagSchema(t, subject, artifactType);
      }
      if (res.status !== 200) {
        await res.body.dump().catch(() => undefined);
        if (res.status >= 500 || res.status === 429) this.metrics.upstreamError(client.name);
        throw upstreamError(res.status, client.name, new RegistryError('MANIFEST_UNKNOWN', 'referrers unknown', { digest: subject.value }));
      }
      const text = await readBody(res, documentLimits.referrers - bytes, 'referrers list', 'MANIFEST_INVALID');
      bytes += text.length;
      this.metrics.fromUpstream(text.length);
      const index = parseIndex(text);
      if (!index) {
        this.metrics.upstreamError(client.name);
        throw new RegistryError('MANIFEST_INVALID', `upstream ${client.name} answered the referrers API with something that is not an image index`, { digest: subject.value });
      }
      if (!first) {
        first = index;
        firstBytes = text;
      }
      all.push(...index.manifests);
      const next = nextPageQuery(res.headers.link, apiUrl, page, { upstream: client.name, origin: client.origin, what: 'referrers list', maxPages: referrersCacheLimits.pages });
      if (next === false) break;
      query = next;
      firstBytes = undefined;
    }
    const body = renderIndex(first!, firstBytes, all, artifactType);
    return { entry: { body, filtered: artifactType !== undefined, checkedAt: Date.now() }, result: 'miss' };
  }

  /** The referrers tag schema's index, through the manifest cache; none is an empty index. */
  private async fromTagSchema(t: Target, subject: Digest, artifactType: string | undefined): Promise<{ entry: Entry; result: 'miss' | 'stale' }> {
    const filtered = artifactType !== undefined;
    const empty = { entry: { body: emptyIndex(), filtered, checkedAt: Date.now() }, result: 'miss' as const };
    let answer;
    try {
      // No Accept: every type (one upstream request); anything but an OCI index is no list.
      answer = await this.manifests.get(t, { kind: 'tag', tag: referrersTag(subject.value) }, undefined);
    } catch (err) {
      // No such tag (or the upstream will not give it): nothing refers to the subject.
      if (isNotFound(err)) return empty;
      throw err;
    }
    const m = answer.manifest;
    const index = bare(m.mediaType) === ociIndexType ? parseIndex(m.bytes) : undefined;
    const result = answer.result === 'stale' ? 'stale' : 'miss';
    if (!index) return { entry: empty.entry, result };
    const body = renderIndex(index, m.bytes, index.manifests, artifactType);
    return { entry: { body, filtered, checkedAt: Date.now() }, result };
  }
}
