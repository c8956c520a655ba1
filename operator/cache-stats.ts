// The mirror's /stats figures, summed over the ready pods into status.cache. Pure.
import type { CacheStatus } from './types.js';
import { formatBytes } from './quantity.js';
import type { Stats } from '../mirror/metrics.js';

/** The JSON a mirror pod answers on GET /stats (DESIGN.md §3): the mirror's own type. */
export type MirrorStats = Omit<Stats, 'since'> & { since?: string };

const FIELDS = ['hits', 'misses', 'staleServed', 'bytesServed', 'bytesFromUpstream', 'storedBytes', 'blobs', 'upstreamErrors'] as const;

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
  if (typeof b.since === 'string' && b.since.length <= 64) out.since = b.since;
  return out;
}

export function hitRatio(hits: number, misses: number): number {
  const total = hits + misses;
  return total > 0 ? Math.round((hits / total) * 10_000) / 10_000 : 0;
}

/** Sums the pods' figures; `updated` stays the previous one when no figure changed, so an
 * idle mirror causes no status writes. Undefined when no pod answered. */
export function aggregateCache(samples: MirrorStats[], previous: CacheStatus | undefined, now: Date): CacheStatus | undefined {
  if (samples.length === 0) return undefined;
  const sum = Object.fromEntries(FIELDS.map((f) => [f, samples.reduce((acc, s) => acc + s[f], 0)])) as Record<(typeof FIELDS)[number], number>;
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
    pods: samples.length,
    updated: now.toISOString(),
  };
  if (previous && sameFigures(previous, next)) return { ...next, updated: previous.updated };
  return next;
}

function sameFigures(a: CacheStatus, b: CacheStatus): boolean {
  return FIELDS.every((f) => a[f] === b[f]) && a.pods === b.pods;
}
