// Manifests through the cache. By digest they are immutable: served from the store once
// there. By tag the mapping is trusted for cache.tagTTL, then revalidated with a HEAD (Docker
// Hub does not count HEADs against pull limits); when the upstream is unreachable, 5xx or
// 429, the last known manifest is served stale rather than failing a pod start.
//
// What a tag resolves to depends on the client's Accept (manifest-class.ts): a tag keeps one
// mapping per format class of request (index, image, schema1), each fetched, revalidated and
// served stale with its own class's Accept, so a client asking for an old format never
// changes what the others get. A request whose Accept names only some of its class's types
// is served from its class's mapping when the upstream would give it the same manifest, and
// otherwise passed through with its own Accept (recording nothing).
//
// An upstream 404 for a manifest (by tag or digest) is remembered for cache.notFoundTTL, per
// (upstream, repository, reference, class), in memory and bounded (notFoundMax): a
// crash-looping pod asking again and again for a missing tag costs the upstream nothing more.

import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { RegistryError } from '../errors.js';
import { classAccept, negotiate, servable, upstreamAccept } from '../manifest-class.js';
import type { MirrorMetrics } from '../metrics.js';
import { parseDigest, type Digest, type ManifestReference } from '../reference.js';
import type { ContentStore, StoredManifest } from '../store/content-store.js';
import { isStoreUnavailable } from '../store/driver.js';
import { isNoRoom } from '../store/evictor.js';
import { isNoSpace } from '../store/fsutil.js';
import type { RepoIndex } from '../store/repo-index.js';
import { manifestDigestHex, provesDigest } from '../manifest-digest.js';
import { upstreamError, type UpstreamResponse } from '../upstream/client.js';
import { documentLimits, readBody } from '../upstream/read-body.js';
import type { Target } from './target.js';

export { acceptable, defaultAccept, upstreamAccept } from '../manifest-class.js';

/**
 * How many upstream 404s are remembered at once (least recently used out first). A key is
 * upstream, repository, reference and class: a few hundred bytes at most (names are capped by
 * the reference grammar), so 10,000 entries stay within a few MB.
 */
export const notFoundMax = 10_000;

export interface ManifestAnswer {
  manifest: StoredManifest;
  result: 'hit' | 'miss' | 'stale';
}

export interface ManifestCacheOptions {
  /** How long an upstream 404 for a manifest is remembered; 0 = not at all. */
  notFoundTTLMs?: number;
  /** Bound on remembered 404s (default notFoundMax). */
  notFoundMax?: number;
}

/** Errors that are an upstream's own 404 for a manifest (the ones worth remembering). */
const upstream404 = new WeakSet<object>();

/** A 404 answered from memory of an earlier upstream 404 (metrics: result "negative"). */
export function isRememberedNotFound(err: unknown): boolean {
  return (err as { cacheResult?: unknown } | undefined)?.cacheResult === 'negative';
}

const recentMs = 1000;
const recentMax = 10_000;

export class ManifestCache {
  private readonly fetching = new Map<string, Promise<StoredManifest>>();
  /**
   * What a fetch answered, for a moment after it settled: a request that read the tag record
   * just before the fetch wrote it (an S3 read is milliseconds) would otherwise ask the
   * upstream again. Bounded: recentMax keys, each for at most recentMs (and never past tagTTL).
   */
  private readonly recent: LRUCache<string, StoredManifest>;
  private readonly notFound: LRUCache<string, true> | undefined;

  constructor(
    private readonly store: ContentStore,
    private readonly repos: RepoIndex,
    private readonly metrics: MirrorMetrics,
    private readonly log: Logger,
    private readonly tagTTLMs: number,
    private readonly makeRoom: (bytes: number) => Promise<void> = async () => undefined,
    options: ManifestCacheOptions = {},
  ) {
    this.recent = new LRUCache<string, StoredManifest>({ max: recentMax, ttl: Math.max(1, Math.min(recentMs, tagTTLMs)) });
    const ttl = options.notFoundTTLMs ?? 0;
    this.notFound = ttl > 0 ? new LRUCache<string, true>({ max: options.notFoundMax ?? notFoundMax, ttl }) : undefined;
  }

  /** Upstream 404s remembered now (expired ones dropped first). */
  notFoundEntries(): number {
    if (!this.notFound) return 0;
    this.notFound.purgeStale();
    return this.notFound.size;
  }

  async get(t: Target, ref: ManifestReference, accept: string | undefined): Promise<ManifestAnswer> {
    return ref.kind === 'digest' ? this.byDigest(t, ref.digest, accept) : this.byTag(t, ref.tag, accept);
  }

  /**
   * The answer when the store alone gives it (stored and linked, or a tag confirmed within
   * tagTTL); undefined when the upstream must be asked. A replica in a fleet asks this first
   * and sends the rest to the key's owner (cluster/forward.ts).
   */
  async getLocal(t: Target, ref: ManifestReference, accept: string | undefined): Promise<ManifestAnswer | undefined> {
    if (ref.kind === 'digest') {
      const { stored, linked } = await this.localDigest(t, ref.digest);
      return stored && linked ? this.hit(stored) : undefined;
    }
    const local = await this.localTag(t, ref.tag, accept);
    return local.fresh ? this.hit(local.usable!) : undefined;
  }

  private hit(manifest: StoredManifest): ManifestAnswer {
    this.store.touch('manifest', manifest.digest);
    return { manifest, result: 'hit' };
  }

  private async localDigest(t: Target, digest: Digest): Promise<{ stored: StoredManifest | undefined; linked: boolean }> {
    const stored = await this.store.getManifest(digest);
    return { stored, linked: stored !== undefined && (await this.repos.isLinked(t.upstream.name, t.name, digest)) };
  }

  /** The tag's mapping for this client's class, its stored manifest, and whether it may be served as is. */
  private async localTag(t: Target, tag: string, accept: string | undefined) {
    const cls = negotiate(accept).class;
    const record = await this.repos.getTag(t.upstream.name, t.name, tag, cls);
    const cached = record ? await this.store.getManifest(parseDigest(record.digest)) : undefined;
    // The class's mapping, when the upstream would give this client that same manifest.
    const usable = cached && servable(cached.mediaType, accept) ? cached : undefined;
    const fresh = usable !== undefined && record !== undefined && Date.now() - record.checkedAt < this.tagTTLMs;
    return { record, cached, usable, fresh };
  }

  private async byDigest(t: Target, digest: Digest, accept: string | undefined): Promise<ManifestAnswer> {
    const up = t.upstream.name;
    const { stored, linked } = await this.localDigest(t, digest);
    if (stored && linked) return this.hit(stored);
    // distribution answers an OCI manifest's digest with 404 to an Accept without its type,
    // so a remembered 404 is per variant of Accept, as for tags.
    const key = this.notFoundKey(t, digest.value, negotiate(accept).variant);
    this.rememberedNotFound(key, digest.value);
    try {
      if (stored) {
        const res = await t.upstream.send({ method: 'HEAD', path: `${t.name}/manifests/${digest.value}`, repository: t.name, accept: upstreamAccept(accept) });
        await res.body.dump().catch(() => undefined);
        if (res.status !== 200) throw this.failure(t, res.status, digest.value);
        await this.repos.link(up, t.name, digest);
        this.notFound?.delete(key);
        this.store.touch('manifest', digest.value);
        return { manifest: stored, result: 'hit' };
      }
      const manifest = await this.fetch(t, digest.value, upstreamAccept(accept), `accept:${upstreamAccept(accept)}`, digest);
      this.notFound?.delete(key);
      return { manifest, result: 'miss' };
    } catch (err) {
      this.remember(err, key);
      throw err;
    }
  }

  private async byTag(t: Target, tag: string, accept: string | undefined): Promise<ManifestAnswer> {
    const up = t.upstream.name;
    const want = negotiate(accept);
    const cls = want.class;
    const { record, cached, usable, fresh } = await this.localTag(t, tag, accept);
    if (fresh) return this.hit(usable!);
    // A 404 for the class is a 404 for every request of it (their types are a subset).
    const classKey = this.notFoundKey(t, tag, cls);
    const ownKey = this.notFoundKey(t, tag, want.variant);
    this.rememberedNotFound(classKey, tag);
    this.rememberedNotFound(ownKey, tag);
    // The class's own Accept when this client's names only part of it.
    const recordAccept = want.complete ? upstreamAccept(accept) : classAccept[cls];
    if (usable && record) {
      let res: UpstreamResponse;
      try {
        res = await t.upstream.send({ method: 'HEAD', path: `${t.name}/manifests/${tag}`, repository: t.name, accept: recordAccept });
      } catch (err) {
        // Only trouble (unreachable, token service down, 5xx, 429) is served stale; an
        // upstream that refuses us (401) must not be bypassed by the cache.
        if (!isUpstreamTrouble(err)) throw err;
        return this.stale(t, tag, usable, err);
      }
      await res.body.dump().catch(() => undefined);
      if (res.status === 200 && res.headers['docker-content-digest'] === usable.digest) {
        await this.repos.setTag(up, t.name, tag, { ...record, checkedAt: Date.now() }, cls);
        this.store.touch('manifest', usable.digest);
        return { manifest: usable, result: 'hit' };
      }
      if (res.status >= 500 || res.status === 429) return this.stale(t, tag, usable, upstreamError(res.status, up, notFound(tag)));
      if (res.status === 404) {
        await this.repos.removeTag(up, t.name, tag, cls);
        this.notFound?.set(classKey, true);
        throw notFound(tag);
      }
      if (res.status !== 200) throw upstreamError(res.status, up, notFound(tag));
    }
    let asking = classKey;
    try {
      if (want.complete || !cached || usable) {
        // No mapping for the class yet, or it moved: the upstream's answer to the class.
        // The tag record is written inside the shared fetch: a request arriving between the
        // GET and the record must join it, not ask the upstream again.
        const manifest = await this.fetch(t, tag, recordAccept, `class:${cls}`, undefined, (m) =>
          this.repos.setTag(up, t.name, tag, { digest: m.digest, mediaType: m.mediaType, checkedAt: Date.now() }, cls),
        );
        this.notFound?.delete(classKey);
        if (want.complete || servable(manifest.mediaType, accept)) return { manifest, result: 'miss' };
      }
      // The upstream answers this Accept otherwise than its class: pass it through.
      asking = ownKey;
      const manifest = await this.fetch(t, tag, upstreamAccept(accept), `variant:${want.variant}`, undefined);
      this.notFound?.delete(ownKey);
      return { manifest, result: 'miss' };
    } catch (err) {
      if (usable && isUpstreamTrouble(err)) return this.stale(t, tag, usable, err);
      this.remember(err, asking);
      throw err;
    }
  }

  private notFoundKey(t: Target, reference: string, variant: string): string {
    return `${t.upstream.name}\n${t.name}\n${reference}\n${variant}`;
  }

  /** Throws the remembered 404 if the upstream answered this key with one lately. */
  private rememberedNotFound(key: string, reference: string): void {
    if (this.notFound?.get(key) !== true) return;
    throw Object.assign(notFound(reference), { cacheResult: 'negative' as const });
  }

  /** Remembers an upstream 404 (nothing else: trouble, refusals and bad content are not). */
  private remember(err: unknown, key: string): void {
    if (this.notFound && typeof err === 'object' && err !== null && upstream404.has(err)) this.notFound.set(key, true);
  }

  private stale(t: Target, tag: string, manifest: StoredManifest, err: unknown): ManifestAnswer {
    this.metrics.upstreamError(t.upstream.name, (err as Error).message);
    this.log.warn({ upstream: t.upstream.name, repository: t.name, tag, err: (err as Error).message }, 'upstream unavailable: serving stale manifest');
    this.store.touch('manifest', manifest.digest);
    return { manifest, result: 'stale' };
  }

  /** One upstream GET per (repository, reference, what decides the answer) at a time. */
  private fetch(t: Target, reference: string, accept: string, variant: string, expected: Digest | undefined, record?: (m: StoredManifest) => Promise<void>): Promise<StoredManifest> {
    const key = `${t.upstream.name}/${t.name}:${reference}|${variant}`;
    const answered = this.recent.get(key);
    // Only while it is still stored: an evicted manifest must be fetched, stored and recorded again.
    if (answered && this.store.has('manifest', answered.digest)) return Promise.resolve(answered);
    let p = this.fetching.get(key);
    if (!p) {
      p = this.fetchOnce(t, reference, accept, expected)
        .then(async (m) => {
          await record?.(m);
          this.recent.set(key, m);
          return m;
        })
        .finally(() => this.fetching.delete(key));
      this.fetching.set(key, p);
    }
    return p;
  }

  private async fetchOnce(t: Target, reference: string, accept: string, expected: Digest | undefined): Promise<StoredManifest> {
    const res = await t.upstream.send({ method: 'GET', path: `${t.name}/manifests/${reference}`, repository: t.name, accept });
    if (res.status !== 200) {
      await res.body.dump().catch(() => undefined);
      throw this.failure(t, res.status, reference);
    }
    const bytes = await readBody(res, documentLimits.manifest, 'manifest', 'MANIFEST_INVALID');
    this.metrics.fromUpstream(bytes.length);
    const mediaType = contentType(res.headers['content-type'], bytes);
    const header = typeof res.headers['docker-content-digest'] === 'string' ? res.headers['docker-content-digest'] : undefined;
    const digest = verify(bytes, mediaType, expected ?? (header ? tryDigest(header) : undefined));
    if (!digest) {
      this.metrics.upstreamError(t.upstream.name, `manifest ${t.name}:${reference} does not match its digest`);
      throw new RegistryError('MANIFEST_INVALID', 'upstream manifest does not match its digest', { reference });
    }
    try {
      await this.makeRoom(bytes.length);
      await this.store.putManifest(digest, mediaType, bytes);
      await this.repos.link(t.upstream.name, t.name, digest);
    } catch (err) {
      // Disk full, or no room under storage.maxBytes beside content in use: the verified
      // manifest is still the right answer for this client; it is just not cached (as blobs in
      // the same situation). A full disk is counted like them; no room the evictor counted;
      // a store that cannot be written (S3 down) too.
      if (isStoreUnavailable(err)) {
        this.metrics.storeError('write');
        this.log.warn({ digest: digest.value, err: err.message }, 'manifest served without caching: the store cannot be written');
        return { digest: digest.value, mediaType, bytes };
      }
      if (!isNoSpace(err)) throw err;
      if (isNoRoom(err)) {
        this.log.info({ digest: digest.value }, 'manifest served without caching: no room under storage.maxBytes');
      } else {
        this.metrics.upstreamError(t.upstream.name);
        this.log.error({ digest: digest.value }, 'store is full: manifest served without caching');
      }
    }
    return { digest: digest.value, mediaType, bytes };
  }

  private failure(t: Target, status: number, reference: string): RegistryError {
    if (status >= 500 || status === 429) this.metrics.upstreamError(t.upstream.name, `answered ${status} for manifest ${t.name}:${reference}`);
    const err = upstreamError(status, t.upstream.name, notFound(reference));
    if (status === 404) upstream404.add(err);
    return err;
  }
}

function notFound(reference: string): RegistryError {
  return new RegistryError('MANIFEST_UNKNOWN', undefined, { reference });
}

function isUpstreamTrouble(err: unknown): boolean {
  const code = (err as RegistryError)?.code;
  return code === 'UNAVAILABLE' || code === 'TOOMANYREQUESTS';
}

/**
 * The digest the manifest is stored under: the one asked for, else the upstream's header,
 * else its own; undefined unless the bytes prove it (manifest-digest.ts). The store is shared
 * by every upstream, so a header is a claim to check, never a name to trust.
 */
function verify(bytes: Buffer, mediaType: string, expected: Digest | undefined): Digest | undefined {
  if (expected) return provesDigest(bytes, mediaType, expected) ? expected : undefined;
  const hex = manifestDigestHex(bytes, mediaType, 'sha256');
  return hex ? parseDigest(`sha256:${hex}`) : undefined;
}

function tryDigest(value: string): Digest | undefined {
  try {
    return parseDigest(value);
  } catch {
    return undefined;
  }
}

function contentType(header: string | string[] | undefined, bytes: Buffer): string {
  if (typeof header === 'string' && header.trim() && !header.startsWith('application/octet-stream')) return header.trim();
  try {
    const mt = (JSON.parse(bytes.toString('utf8')) as { mediaType?: unknown }).mediaType;
    if (typeof mt === 'string') return mt;
  } catch {
    /* fall through */
  }
  return 'application/vnd.oci.image.manifest.v1+json';
}
