// Prefetch and pin (config `prefetch`): images pulled into the store at start and again when
// their tag moves, so pods can start from the mirror while the upstream is down.
//
// Everything goes through the same paths a client pull takes: the tag through ManifestCache
// (so a check within cache.tagTTL costs nothing and one after it is one HEAD; a moved tag is
// fetched), child manifests by digest, and every config and layer blob through BlobCache's
// shared, verified Download, linked to the repository. Only the listed platforms of an index
// are fetched (all when none are listed). At most blobConcurrency blobs download at once.
//
// Pinned images: the manifests and blobs of the tag's current digest are pinned in the
// ContentStore with 'keep' pins, so neither expiry nor the size bound removes them; they still
// count in storedBytes. A 'keep' pin keeps exactly its digest, unlike the 'use' pin of content
// being served, which keeps every image around it (evictor.ts): a pinned base layer does not
// keep every other image built on it. Digests are pinned before they are fetched, so the
// evictor cannot take a blob between its commit and the pin. When the
// tag moves, the new digest's content is pinned and then the old digest's released. A pin is
// refused (the image is not fetched; status, log and a counter say why, naming prefetch[i])
// when the pinned content of all images would pass pinShareOfMaxBytes of storage.maxBytes,
// judged from the sizes the manifests declare before any blob is downloaded.
//
// Readiness does not wait for prefetch: a mirror whose upstream is down must still serve what
// its store holds (that is the point of prefetching), and a pod that never became ready would
// serve nothing. /stats `prefetch` and registry_mirror_prefetch_ready say when an image is in.

import type { Logger } from 'pino';
import { Counter, Gauge } from 'prom-client';
import type { BlobCache } from './cache/blob-cache.js';
import type { ManifestCache } from './cache/manifest-cache.js';
import { upstreamName, type Target } from './cache/target.js';
import type { PrefetchConfig } from './config.js';
import { timerDelay } from './duration.js';
import type { MirrorMetrics, PrefetchStatus } from './metrics.js';
import { parseDigest, parseManifestReference, type Digest } from './reference.js';
import type { UpstreamRouter } from './routing.js';
import type { ContentStore, StoredManifest } from './store/content-store.js';
import type { RepoIndex } from './store/repo-index.js';

/** Pinned content may fill at most this share of storage.maxBytes (the evictor's low-water mark). */
export const pinShareOfMaxBytes = 0.9;
export const blobConcurrency = 2;
/** A failed or not-ready image is tried again after at most this long (or cache.tagTTL if shorter). */
const retryMs = 10_000;
/** Error messages kept in status are clipped to this many characters. */
const maxErrorLength = 256;

const indexTypes = new Set(['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json']);

export interface PrefetcherOptions {
  tagTTLMs: number;
  maxBytes: number;
}

class PinRefused extends Error {}

/** What one image consists of: manifests (with their bytes) and blobs (declared sizes). */
interface ImageParts {
  manifests: Map<string, number>;
  blobs: Map<string, number>;
}

export class Prefetcher {
  private readonly state: PrefetchStatus[];
  /** Per entry: digest -> release of its pin. */
  private readonly pins: Array<Map<string, () => void>>;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  private readonly refused: Counter<'image'>;
  private readonly failures: Counter<'image'>;

  constructor(
    private readonly entries: readonly PrefetchConfig[],
    private readonly router: UpstreamRouter,
    private readonly manifests: ManifestCache,
    private readonly blobs: BlobCache,
    private readonly store: ContentStore,
    private readonly repos: RepoIndex,
    metrics: MirrorMetrics,
    private readonly log: Logger,
    private readonly options: PrefetcherOptions,
  ) {
    this.state = entries.map((e) => ({ image: e.image, bytes: 0, ready: false, pinned: false }));
    this.pins = entries.map(() => new Map());
    const r = metrics.registry;
    const status = () => this.status();
    const gauge = (name: string, help: string, value: (s: PrefetchStatus) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['image'],
        registers: [r],
        collect() {
          this.reset();
          for (const s of status()) this.set({ image: s.image }, value(s));
        },
      });
    gauge('registry_mirror_prefetch_ready', 'Prefetched images wholly in the store (1) or not (0), by image', (s) => (s.ready ? 1 : 0));
    gauge('registry_mirror_prefetch_bytes', 'Bytes of a prefetched image (manifests and blobs of its current digest), by image', (s) => s.bytes);
    gauge('registry_mirror_prefetch_pinned', 'Prefetched images pinned against expiry and eviction (1) or not (0), by image', (s) => (s.pinned ? 1 : 0));
    const pinnedBytes = () => this.pinnedBytes();
    new Gauge({
      name: 'registry_mirror_prefetch_pinned_bytes',
      help: 'Bytes of content pinned by prefetch (counts toward storage.maxBytes)',
      registers: [r],
      collect() {
        this.set(pinnedBytes());
      },
    });
    this.refused = new Counter({ name: 'registry_mirror_prefetch_pin_refused_total', help: 'Pins refused because pinned content would pass 90% of storage.maxBytes, by image', labelNames: ['image'], registers: [r] });
    this.failures = new Counter({ name: 'registry_mirror_prefetch_failures_total', help: 'Prefetch runs of an image that failed, by image', labelNames: ['image'], registers: [r] });
  }

  status(): PrefetchStatus[] {
    return this.state.map((s) => ({ ...s }));
  }

  /**
   * Pins, from the store alone, what a previous run pinned (the tag's recorded digest), so the
   * expiry pass at start cannot remove it before the first prefetch run. No upstream request.
   */
  async pinFromStore(): Promise<void> {
    for (const [i, e] of this.entries.entries()) {
      if (!e.pin) continue;
      try {
        const t = this.target(e);
        const ref = parseManifestReference(e.reference);
        const digest = ref.kind === 'digest' ? ref.digest.value : (await this.repos.getTag(t.upstream.name, t.name, ref.tag, 'index'))?.digest;
        if (!digest) continue;
        const top = await this.store.getManifest(parseDigest(digest));
        if (!top) continue;
        const parts: ImageParts = { manifests: new Map(), blobs: new Map() };
        await this.collect(top, e, parts, async (d) => this.store.getManifest(d));
        const pins = this.pins[i]!;
        for (const d of [...parts.manifests.keys(), ...parts.blobs.keys()]) if (!pins.has(d)) pins.set(d, this.store.pin(d, 'keep'));
        this.state[i] = { ...this.state[i]!, digest, pinned: true };
      } catch (err) {
        this.log.debug({ image: e.image, err: (err as Error).message }, 'prefetch: nothing to pin from the store');
      }
    }
  }

  /** First run now, then every cache.tagTTL (sooner while an image is not ready). */
  start(): void {
    if (this.entries.length === 0) return;
    const loop = async () => {
      for (let i = 0; i < this.entries.length && !this.stopped; i++) await this.sync(i);
      if (this.stopped) return;
      const every = Math.max(1000, this.options.tagTTLMs);
      const delay = this.state.every((s) => s.ready) ? every : Math.min(every, retryMs);
      this.timer = setTimeout(() => void loop(), timerDelay(delay));
      this.timer.unref();
    };
    void loop();
  }

  /** No new run starts; a run in progress ends with the upstream connections (not waited for). */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  /** One image: resolve, fetch what is missing, (re)pin. Never rejects. */
  async sync(i: number): Promise<void> {
    const e = this.entries[i]!;
    const fresh = new Map<string, () => void>();
    const pin = (d: string) => {
      if (e.pin && !fresh.has(d)) fresh.set(d, this.store.pin(d, 'keep'));
    };
    const releaseFresh = () => {
      for (const release of fresh.values()) release();
    };
    try {
      const t = this.target(e);
      const ref = parseManifestReference(e.reference);
      if (ref.kind === 'digest') pin(ref.digest.value);
      const top = await this.manifests.get(t, ref, undefined);
      pin(top.manifest.digest);
      const parts: ImageParts = { manifests: new Map(), blobs: new Map() };
      await this.collect(top.manifest, e, parts, async (d) => {
        pin(d.value);
        return (await this.manifests.get(t, { kind: 'digest', digest: d }, undefined)).manifest;
      });

      if (e.pin) this.checkBudget(i, parts);
      for (const d of parts.blobs.keys()) pin(d);
      const sizes = await Promise.all([...parts.blobs.keys()].map((d) => this.limited(() => this.blobs.ensure(t, parseDigest(d)))));
      const bytes = [...parts.manifests.values()].reduce((n, b) => n + b, 0) + sizes.reduce((n, s) => n + s.size, 0);

      const old = this.pins[i]!;
      this.pins[i] = fresh;
      for (const release of old.values()) release();
      const moved = this.state[i]!.digest !== undefined && this.state[i]!.digest !== top.manifest.digest;
      if (moved) this.log.info({ image: e.image, from: this.state[i]!.digest, to: top.manifest.digest }, 'prefetch: tag moved');
      const fetched = sizes.filter((s) => s.result === 'miss').length;
      if (fetched > 0 || moved || !this.state[i]!.ready) {
        this.log.info({ image: e.image, digest: top.manifest.digest, bytes, blobsFetched: fetched, pinned: e.pin }, 'prefetch: image is in the store');
      }
      this.state[i] = {
        image: e.image,
        digest: top.manifest.digest,
        bytes,
        ready: true,
        pinned: e.pin,
        checkedAt: new Date().toISOString(),
        ...(top.result === 'stale' ? { error: 'upstream unavailable: the cached digest is kept' } : {}),
      };
    } catch (err) {
      releaseFresh();
      const message = clipError((err as Error).message);
      const prev = this.state[i]!;
      if (err instanceof PinRefused) {
        // The tag now names content that cannot be pinned: the old digest's pins go too.
        for (const release of this.pins[i]!.values()) release();
        this.pins[i] = new Map();
        this.refused.inc({ image: e.image });
        this.log.warn({ image: e.image, err: message }, 'prefetch: pin refused');
      } else {
        this.failures.inc({ image: e.image });
        this.log.warn({ image: e.image, err: message }, 'prefetch failed');
      }
      this.state[i] = { ...prev, ready: false, pinned: this.pins[i]!.size > 0, error: message, checkedAt: new Date().toISOString() };
    }
  }

  private target(e: PrefetchConfig): Target {
    const client = this.router.upstream(e.upstream).client;
    const name = upstreamName(client.name, client.config.url, e.repository);
    if (!this.router.allows(client.name, name)) throw new Error(`${name} is refused by upstreams.${client.name} allow/deny`);
    return { upstream: client, name };
  }

  /** Adds the manifest (and, for an index, its wanted children) and their blobs to parts. */
  private async collect(m: StoredManifest, e: PrefetchConfig, parts: ImageParts, child: (d: Digest) => Promise<StoredManifest | undefined>): Promise<void> {
    parts.manifests.set(m.digest, m.bytes.length);
    const doc = parseJson(m.bytes);
    if (indexTypes.has(m.mediaType) || (m.mediaType === '' && Array.isArray(doc.manifests))) {
      const list = Array.isArray(doc.manifests) ? (doc.manifests as Descriptor[]) : [];
      const wanted = list.filter((d) => typeof d?.digest === 'string' && (e.platforms.length === 0 || e.platforms.includes(platformOf(d))));
      if (wanted.length === 0) throw new Error(`the index lists none of the platforms ${e.platforms.join(', ')}`);
      for (const d of wanted) {
        const c = await child(parseDigest(d.digest!));
        if (!c) throw new Error(`manifest ${d.digest} is not in the store`);
        parts.manifests.set(c.digest, c.bytes.length);
        addBlobs(parseJson(c.bytes), parts);
      }
      return;
    }
    addBlobs(doc, parts);
  }

  /** Refuses the pin when all pinned content, this image's included, would pass the share. */
  private checkBudget(i: number, parts: ImageParts): void {
    const max = this.options.maxBytes;
    if (max <= 0) return;
    const others = new Set<string>();
    this.pins.forEach((p, k) => {
      if (k !== i) for (const d of p.keys()) others.add(d);
    });
    let total = 0;
    for (const d of others) total += this.sizeOf(d);
    let mine = 0;
    for (const [d, size] of [...parts.manifests, ...parts.blobs]) if (!others.has(d)) mine += size;
    const limit = Math.floor(max * pinShareOfMaxBytes);
    if (total + mine > limit) {
      throw new PinRefused(
        `prefetch[${i}]: pinning ${this.entries[i]!.image} (${mine} bytes) with ${total} bytes pinned already passes ${limit} bytes, 90% of storage.maxBytes; not fetched`,
      );
    }
  }

  private sizeOf(d: string): number {
    return (this.store.get('blob', d)?.size ?? 0) + (this.store.get('manifest', d)?.size ?? 0);
  }

  private pinnedBytes(): number {
    const all = new Set<string>();
    for (const p of this.pins) for (const d of p.keys()) all.add(d);
    let n = 0;
    for (const d of all) n += this.sizeOf(d);
    return n;
  }

  /** At most blobConcurrency at once over every image. */
  private async limited<T>(fn: () => Promise<T>): Promise<T> {
    while (this.active >= blobConcurrency) await new Promise<void>((r) => this.waiting.push(r));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}

interface Descriptor {
  digest?: string;
  size?: number;
  platform?: { os?: string; architecture?: string; variant?: string };
}

function parseJson(bytes: Buffer): Record<string, unknown> {
  try {
    const v = JSON.parse(bytes.toString('utf8')) as unknown;
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

function platformOf(d: Descriptor): string {
  const p = d.platform ?? {};
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/');
}

/** Config and layers (OCI/Docker schema 2) or fsLayers (schema 1), with declared sizes. */
function addBlobs(doc: Record<string, unknown>, parts: ImageParts): void {
  const add = (d: unknown, size: unknown) => {
    if (typeof d !== 'string') return;
    parseDigest(d);
    parts.blobs.set(d, typeof size === 'number' && Number.isSafeInteger(size) && size >= 0 ? size : 0);
  };
  const config = doc.config as Descriptor | undefined;
  if (config) add(config.digest, config.size);
  if (Array.isArray(doc.layers)) for (const l of doc.layers as Descriptor[]) add(l?.digest, l?.size);
  if (Array.isArray(doc.fsLayers)) for (const l of doc.fsLayers as Array<{ blobSum?: unknown }>) add(l?.blobSum, 0);
}

function clipError(s: string): string {
  return s.length > maxErrorLength ? `${s.slice(0, maxErrorLength)}…` : s;
}
