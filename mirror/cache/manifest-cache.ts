// Manifests through the cache. By digest they are immutable: served from the store once
// there. By tag the mapping is trusted for cache.tagTTL, then revalidated with a HEAD (Docker
// Hub does not count HEADs against pull limits); when the upstream is unreachable, 5xx or
// 429, the last known manifest is served stale rather than failing a pod start.

import type { Logger } from 'pino';
import { RegistryError } from '../errors.js';
import type { MirrorMetrics } from '../metrics.js';
import { parseDigest, type Digest, type ManifestReference } from '../reference.js';
import type { ContentStore, StoredManifest } from '../store/content-store.js';
import { isNoSpace } from '../store/fsutil.js';
import type { RepoIndex } from '../store/repo-index.js';
import { manifestDigestHex, provesDigest } from '../manifest-digest.js';
import { upstreamError, type UpstreamResponse } from '../upstream/client.js';
import { documentLimits, readBody } from '../upstream/read-body.js';
import type { Target } from './target.js';

/** What the mirror asks for when the client did not say: every type it can pass through. */
export const defaultAccept = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.v1+prettyjws',
  'application/vnd.docker.distribution.manifest.v1+json',
].join(', ');

const knownManifestTypes = new Set(defaultAccept.split(', '));

export interface ManifestAnswer {
  manifest: StoredManifest;
  result: 'hit' | 'miss' | 'stale';
}

export class ManifestCache {
  private readonly fetching = new Map<string, Promise<StoredManifest>>();

  constructor(
    private readonly store: ContentStore,
    private readonly repos: RepoIndex,
    private readonly metrics: MirrorMetrics,
    private readonly log: Logger,
    private readonly tagTTLMs: number,
    private readonly makeRoom: (bytes: number) => Promise<void> = async () => undefined,
  ) {}

  async get(t: Target, ref: ManifestReference, accept: string | undefined): Promise<ManifestAnswer> {
    return ref.kind === 'digest' ? this.byDigest(t, ref.digest, accept) : this.byTag(t, ref.tag, accept);
  }

  private async byDigest(t: Target, digest: Digest, accept: string | undefined): Promise<ManifestAnswer> {
    const stored = await this.store.getManifest(digest);
    if (stored && (await this.confirmedFor(t, digest, accept))) {
      this.store.touch('manifest', digest.value);
      return { manifest: stored, result: 'hit' };
    }
    const manifest = await this.fetch(t, digest.value, accept, digest);
    return { manifest, result: 'miss' };
  }

  private async byTag(t: Target, tag: string, accept: string | undefined): Promise<ManifestAnswer> {
    const up = t.upstream.name;
    const record = await this.repos.getTag(up, t.name, tag);
    const cached = record ? await this.store.getManifest(parseDigest(record.digest)) : undefined;
    const usable = cached && acceptable(cached.mediaType, accept) ? cached : undefined;
    if (usable && record && Date.now() - record.checkedAt < this.tagTTLMs) {
      this.store.touch('manifest', usable.digest);
      return { manifest: usable, result: 'hit' };
    }
    if (usable && record) {
      let res: UpstreamResponse;
      try {
        res = await t.upstream.send({ method: 'HEAD', path: `${t.name}/manifests/${tag}`, repository: t.name, accept: upstreamAccept(accept) });
      } catch (err) {
        // Only trouble (unreachable, token service down, 5xx, 429) is served stale; an
        // upstream that refuses us (401) must not be bypassed by the cache.
        if (!isUpstreamTrouble(err)) throw err;
        return this.stale(t, tag, usable, err);
      }
      await res.body.dump().catch(() => undefined);
      if (res.status === 200 && res.headers['docker-content-digest'] === usable.digest) {
        await this.repos.setTag(up, t.name, tag, { ...record, checkedAt: Date.now() });
        this.store.touch('manifest', usable.digest);
        return { manifest: usable, result: 'hit' };
      }
      if (res.status >= 500 || res.status === 429) return this.stale(t, tag, usable, upstreamError(res.status, up, notFound(tag)));
      if (res.status === 404) {
        await this.repos.removeTag(up, t.name, tag);
        throw notFound(tag);
      }
      if (res.status !== 200) throw upstreamError(res.status, up, notFound(tag));
    }
    try {
      const manifest = await this.fetch(t, tag, accept, undefined);
      if (acceptable(manifest.mediaType, accept)) {
        await this.repos.setTag(up, t.name, tag, { digest: manifest.digest, mediaType: manifest.mediaType, checkedAt: Date.now() });
      }
      return { manifest, result: 'miss' };
    } catch (err) {
      if (usable && isUpstreamTrouble(err)) return this.stale(t, tag, usable, err);
      throw err;
    }
  }

  private stale(t: Target, tag: string, manifest: StoredManifest, err: unknown): ManifestAnswer {
    this.metrics.upstreamError(t.upstream.name);
    this.log.warn({ upstream: t.upstream.name, repository: t.name, tag, err: (err as Error).message }, 'upstream unavailable: serving stale manifest');
    this.store.touch('manifest', manifest.digest);
    return { manifest, result: 'stale' };
  }

  private async confirmedFor(t: Target, digest: Digest, accept: string | undefined): Promise<boolean> {
    if (await this.repos.isLinked(t.upstream.name, t.name, digest)) return true;
    const res = await t.upstream.send({ method: 'HEAD', path: `${t.name}/manifests/${digest.value}`, repository: t.name, accept: upstreamAccept(accept) });
    await res.body.dump().catch(() => undefined);
    if (res.status !== 200) throw this.failure(t, res.status, digest.value);
    await this.repos.link(t.upstream.name, t.name, digest);
    return true;
  }

  /** One upstream GET per (repository, reference, accept) at a time. */
  private fetch(t: Target, reference: string, accept: string | undefined, expected: Digest | undefined): Promise<StoredManifest> {
    const key = `${t.upstream.name}/${t.name}:${reference}|${accept ?? ''}`;
    let p = this.fetching.get(key);
    if (!p) {
      p = this.fetchOnce(t, reference, accept, expected).finally(() => this.fetching.delete(key));
      this.fetching.set(key, p);
    }
    return p;
  }

  private async fetchOnce(t: Target, reference: string, accept: string | undefined, expected: Digest | undefined): Promise<StoredManifest> {
    const res = await t.upstream.send({ method: 'GET', path: `${t.name}/manifests/${reference}`, repository: t.name, accept: upstreamAccept(accept) });
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
      this.metrics.upstreamError(t.upstream.name);
      throw new RegistryError('MANIFEST_INVALID', 'upstream manifest does not match its digest', { reference });
    }
    try {
      await this.makeRoom(bytes.length);
      await this.store.putManifest(digest, mediaType, bytes);
      await this.repos.link(t.upstream.name, t.name, digest);
    } catch (err) {
      // Disk full: the verified manifest is still the right answer for this client; it is
      // just not cached (as blobs in the same situation). Counted like them.
      if (!isNoSpace(err)) throw err;
      this.metrics.upstreamError(t.upstream.name);
      this.log.error({ digest: digest.value }, 'store is full: manifest served without caching');
    }
    return { digest: digest.value, mediaType, bytes };
  }

  private failure(t: Target, status: number, reference: string): RegistryError {
    if (status >= 500 || status === 429) this.metrics.upstreamError(t.upstream.name);
    return upstreamError(status, t.upstream.name, notFound(reference));
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

/**
 * What to ask the upstream for. A client that names manifest types gets exactly those; one
 * that names none (curl's and fetch's "*\/*", or no header) gets every type we pass through:
 * distribution answers "*\/*" for an OCI manifest with 404, not with the manifest.
 */
export function upstreamAccept(accept: string | undefined): string {
  if (!accept) return defaultAccept;
  const types = accept.split(',').map((a) => a.split(';')[0]!.trim());
  return types.some((t) => knownManifestTypes.has(t)) ? accept : defaultAccept;
}

/** Whether a client's Accept header admits a media type (no header admits anything). */
export function acceptable(mediaType: string, accept: string | undefined): boolean {
  if (!accept) return true;
  const want = mediaType.split(';')[0]!.trim();
  return accept.split(',').some((a) => {
    const t = a.split(';')[0]!.trim();
    return t === '*/*' || t === want;
  });
}
