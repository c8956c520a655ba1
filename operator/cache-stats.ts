// The mirror's /stats figures, summed over the ready pods into status.cache (the store's own
// figures of a shared bucket excepted: see aggregateCache), plus the fleet's upstream blob
// transfers per blob added. Pure.
import type { CacheStatus, PrefetchImageStatus, UpstreamRateLimit } from './types.js';
import { formatBytes } from './quantity.js';
import type { Stats } from '../mirror/metrics.js';

/**
 * The JSON a mirror pod answers on GET /stats (DESIGN.md §3): the mirror's own type, with the
 * fleet's two counters optional (a mirror of an earlier version does not report them).
 */
export type MirrorStats = Omit<Stats, 'since' | 'rateLimits' | (typeof FLEET_FIELDS)[number]> & {
  since?: string;
  /** Blob GETs this process sent to an upstream that answered 200 (a transfer began). */
  upstreamBlobFetches?: number;
  /** Blobs this process added to the store: a commit that created the blob (not one already there). */
  blobsAdded?: number;
  /** Upstream rate limits the pod saw in upstream answers (a mirror of an earlier version has none). */
  rateLimits?: UpstreamRateLimit[];
};

/** Bounds on the prefetch part of a pod's /stats (the mirror's own: config prefetch). */
export const PREFETCH_MAX_IMAGES = 100;
const PREFETCH_MAX_IMAGE_LENGTH = 512;
const PREFETCH_MAX_ERROR_LENGTH = 256;
const DIGEST_RE = /^sha(256:[a-f0-9]{64}|512:[a-f0-9]{128})$/;
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;

const FIELDS = ['hits', 'misses', 'staleServed', 'bytesServed', 'bytesFromUpstream', 'storedBytes', 'blobs', 'upstreamErrors'] as const;
/** Counters of upstream blob transfers and of blobs added to the store; optional. */
const FLEET_FIELDS = ['upstreamBlobFetches', 'blobsAdded'] as const;
/** The figures of the store itself rather than of one process's traffic. */
const STORE_FIELDS: ReadonlySet<string> = new Set(['storedBytes', 'blobs']);

/**
 * Validates an untrusted /stats body: a JSON object whose figures, when present, are
 * non-negative safe integers (a figure of another type refuses the whole body; a missing one
 * counts as 0, at least one must be there). `since` is kept only as a string of at most 64
 * characters. Nothing
 * else of the body is kept.
 */
export function parseMirrorStats(body: unknown): MirrorStats | undefined {
  if (!body || typeof body !== 'object' || Array.isArray(body)) return undefined;
  const b = body as Record<string, unknown>;
  if (!FIELDS.some((f) => typeof b[f] === 'number')) return undefined;
  const out = {} as MirrorStats;
  for (const f of FIELDS) {
    const v = b[f];
    if (v === undefined) out[f] = 0;
    else if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) out[f] = v;
    else return undefined;
  }
  for (const f of FLEET_FIELDS) {
    const v = b[f];
    if (v === undefined) continue;
    if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) out[f] = v;
    else return undefined;
  }
  if (typeof b.since === 'string' && b.since.length <= 64) out.since = b.since;
  const prefetch = parsePrefetch(b.prefetch);
  if (prefetch) out.prefetch = prefetch;
  const rateLimits = parseRateLimits(b.rateLimits);
  if (rateLimits) out.rateLimits = rateLimits;
  return out;
}

/** Upstreams whose rate limit one pod may report, and status.rateLimits holds. */
export const RATE_LIMITS_MAX_UPSTREAMS = 32;
const UPSTREAM_NAME_MAX = 253;
/** Printable ASCII without spaces: a host[:port] or an upstream's configured name. */
const UPSTREAM_NAME_RE = /^[\x21-\x7e]+$/;

/**
 * The `rateLimits` array of an untrusted /stats body: at most RATE_LIMITS_MAX_UPSTREAMS
 * entries read; an entry is dropped unless its upstream is a short printable name, limit and
 * remaining are absent or non-negative safe integers (at least one there, remaining <= limit
 * when both are), and observedAt is a date (kept as ISO 8601 UTC). windowSeconds is kept when it is a positive safe integer. The same
 * upstream twice keeps the lower remaining. Undefined when nothing usable is there.
 */
export function parseRateLimits(v: unknown): UpstreamRateLimit[] | undefined {
  if (!Array.isArray(v)) return undefined;
  const by = new Map<string, UpstreamRateLimit>();
  for (const item of v.slice(0, RATE_LIMITS_MAX_UPSTREAMS)) {
    if (!item || typeof item !== 'object' || Array.isArray(item)) continue;
    const e = item as Record<string, unknown>;
    const { upstream, limit, remaining, windowSeconds, observedAt } = e;
    if (typeof upstream !== 'string' || upstream.length > UPSTREAM_NAME_MAX || !UPSTREAM_NAME_RE.test(upstream)) continue;
    if ((limit !== undefined && !isCount(limit)) || (remaining !== undefined && !isCount(remaining))) continue;
    if (limit === undefined && remaining === undefined) continue;
    if (limit !== undefined && remaining !== undefined && remaining > limit) continue;
    if (typeof observedAt !== 'string' || observedAt.length > 64) continue;
    const at = Date.parse(observedAt);
    if (!Number.isFinite(at)) continue;
    const r: UpstreamRateLimit = {
      upstream,
      ...(limit !== undefined ? { limit } : {}),
      ...(remaining !== undefined ? { remaining } : {}),
      ...(isCount(windowSeconds) && windowSeconds > 0 ? { windowSeconds } : {}),
      observedAt: new Date(at).toISOString(),
    };
    by.set(upstream, lower(by.get(upstream), r));
  }
  return by.size > 0 ? [...by.values()] : undefined;
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** The report with less left (an unstated remaining is no less); of equal ones the later observation. */
function lower(a: UpstreamRateLimit | undefined, b: UpstreamRateLimit): UpstreamRateLimit {
  if (!a) return b;
  const ar = a.remaining ?? Infinity;
  const br = b.remaining ?? Infinity;
  if (ar !== br) return ar < br ? a : b;
  return a.observedAt >= b.observedAt ? a : b;
}

/**
 * Merges the pods' rate-limit reports per upstream: the lowest remaining any pod saw (what
 * the next pull risks). At most RATE_LIMITS_MAX_UPSTREAMS upstreams, sorted by name.
 */
export function mergeRateLimits(samples: MirrorStats[]): UpstreamRateLimit[] | undefined {
  const by = new Map<string, UpstreamRateLimit>();
  for (const s of samples) {
    for (const r of s.rateLimits ?? []) {
      if (!by.has(r.upstream) && by.size >= RATE_LIMITS_MAX_UPSTREAMS) continue;
      by.set(r.upstream, lower(by.get(r.upstream), r));
    }
  }
  if (by.size === 0) return undefined;
  return [...by.keys()].sort().map((u) => by.get(u)!);
}

/**
 * The `prefetch` array of an untrusted /stats body: at most PREFETCH_MAX_IMAGES entries;
 * an entry without a sane image name, a boolean ready and a byte count is dropped; digest
 * kept only when it is one, error clipped and stripped of control characters.
 */
function parsePrefetch(v: unknown): MirrorStats['prefetch'] {
  if (!Array.isArray(v)) return undefined;
  const out: NonNullable<MirrorStats['prefetch']> = [];
  for (const item of v.slice(0, PREFETCH_MAX_IMAGES)) {
    if (!item || typeof item !== 'object' || Array.isArray(item)) continue;
    const e = item as Record<string, unknown>;
    if (typeof e.image !== 'string' || e.image.length === 0 || e.image.length > PREFETCH_MAX_IMAGE_LENGTH || /[\s\u0000-\u001f\u007f-\u009f]/.test(e.image)) continue;
    if (typeof e.ready !== 'boolean' || typeof e.bytes !== 'number' || !Number.isSafeInteger(e.bytes) || e.bytes < 0) continue;
    out.push({
      image: e.image,
      ...(typeof e.digest === 'string' && DIGEST_RE.test(e.digest) ? { digest: e.digest } : {}),
      bytes: e.bytes,
      ready: e.ready,
      pinned: e.pinned === true,
      ...(typeof e.error === 'string' && e.error ? { error: clipText(e.error) } : {}),
    });
  }
  return out;
}

function clipText(s: string): string {
  const t = s.replace(CONTROL_RE, ' ');
  return t.length > PREFETCH_MAX_ERROR_LENGTH ? `${t.slice(0, PREFETCH_MAX_ERROR_LENGTH)}…` : t;
}

/**
 * Merges the pods' prefetch reports by image: ready only when every pod that answered has it
 * ready; the digest most pods resolved it to; pinned when every pod with it ready pins it;
 * the first error a pod reports. At most PREFETCH_MAX_IMAGES images, sorted by name.
 */
export function mergePrefetch(samples: MirrorStats[]): PrefetchImageStatus[] | undefined {
  const by = new Map<string, NonNullable<MirrorStats['prefetch']>>();
  for (const s of samples) {
    for (const p of s.prefetch ?? []) {
      if (!by.has(p.image) && by.size >= PREFETCH_MAX_IMAGES) continue;
      const list = by.get(p.image) ?? [];
      list.push(p);
      by.set(p.image, list);
    }
  }
  if (by.size === 0) return undefined;
  return [...by.keys()].sort().map((image) => {
    const reports = by.get(image)!;
    const votes = new Map<string, number>();
    for (const r of reports) if (r.digest) votes.set(r.digest, (votes.get(r.digest) ?? 0) + 1);
    const digest = [...votes.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))[0]?.[0];
    const ready = reports.filter((r) => r.ready);
    const error = reports.find((r) => r.error)?.error;
    return {
      image,
      ...(digest ? { digest } : {}),
      bytes: Math.max(...reports.map((r) => r.bytes)),
      ready: ready.length === samples.length,
      readyPods: ready.length,
      pinned: ready.length > 0 && ready.every((r) => r.pinned),
      ...(error ? { error } : {}),
    };
  });
}

export function hitRatio(hits: number, misses: number): number {
  const total = hits + misses;
  return total > 0 ? Math.round((hits / total) * 10_000) / 10_000 : 0;
}

/**
 * Upstream blob transfers per blob added to the store, over the pods that report both
 * counters: 1 when every blob the mirrors stored cost one transfer; above 1 when transfers
 * were repeated (replicas fetching the same blob, failed or uncacheable transfers). Both
 * counters start at 0 with each process, so a restarted pod's figures still go together.
 * Rounded to 4 places; undefined when no pod reports them or no blob was added.
 */
export function fetchesPerBlob(samples: MirrorStats[]): { upstreamBlobFetches: number; blobsAdded: number; fetchesPerBlob?: number } | undefined {
  const reporting = samples.filter((s) => s.upstreamBlobFetches !== undefined && s.blobsAdded !== undefined);
  if (reporting.length === 0) return undefined;
  const fetches = reporting.reduce((acc, s) => acc + s.upstreamBlobFetches!, 0);
  const added = reporting.reduce((acc, s) => acc + s.blobsAdded!, 0);
  return {
    upstreamBlobFetches: fetches,
    blobsAdded: added,
    ...(added > 0 ? { fetchesPerBlob: Math.round((fetches / added) * 10_000) / 10_000 } : {}),
  };
}

export interface AggregateOptions {
  /**
   * The pods share one store (spec.storage.s3: one bucket): each reports the store's own
   * storedBytes and blobs, so those are the largest any pod reports (the fullest view of the
   * bucket), not a sum that would count the bucket once per pod. Traffic figures are summed.
   */
  sharedStore?: boolean;
}

/** Sums the pods' figures; `updated` stays the previous one when no figure changed, so an
 * idle mirror causes no status writes. Undefined when no pod answered. */
export function aggregateCache(samples: MirrorStats[], previous: CacheStatus | undefined, now: Date, opts: AggregateOptions = {}): CacheStatus | undefined {
  if (samples.length === 0) return undefined;
  const combine = (f: (typeof FIELDS)[number]) =>
    opts.sharedStore && STORE_FIELDS.has(f) ? Math.max(...samples.map((s) => s[f])) : samples.reduce((acc, s) => acc + s[f], 0);
  const sum = Object.fromEntries(FIELDS.map((f) => [f, combine(f)])) as Record<(typeof FIELDS)[number], number>;
  const fleet = fetchesPerBlob(samples);
  const next: CacheStatus = {
    hits: sum.hits,
    misses: sum.misses,
    hitRatio: hitRatio(sum.hits, sum.misses),
    staleServed: sum.staleServed,
    bytesServed: sum.bytesServed,
    bytesFromUpstream: sum.bytesFromUpstream,
    storedBytes: sum.storedBytes,
    stored: formatBytes(sum.storedBytes),
    blobs: sum.blobs,
    upstreamErrors: sum.upstreamErrors,
    ...(fleet ?? {}),
    pods: samples.length,
    updated: now.toISOString(),
  };
  const prefetch = mergePrefetch(samples);
  if (prefetch) next.prefetch = prefetch;
  const rateLimits = mergeRateLimits(samples);
  if (rateLimits) next.rateLimits = rateLimits;
  if (previous && sameFigures(previous, next)) return { ...next, updated: previous.updated };
  return next;
}

function sameFigures(a: CacheStatus, b: CacheStatus): boolean {
  return (
    FIELDS.every((f) => a[f] === b[f]) &&
    FLEET_FIELDS.every((f) => a[f] === b[f]) &&
    a.pods === b.pods &&
    JSON.stringify(a.prefetch ?? []) === JSON.stringify(b.prefetch ?? []) &&
    JSON.stringify(a.rateLimits ?? []) === JSON.stringify(b.rateLimits ?? [])
  );
}
