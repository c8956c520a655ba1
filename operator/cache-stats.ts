// The mirror's /stats figures, summed over the ready pods into status.cache. Pure.
import type { CacheStatus } from './types.js';
import { formatBytes } from './quantity.js';
import type { Stats } from '../mirror/metrics.js';

/** The JSON a mirror pod answers on GET /stats (DESIGN.md §3): the mirror's own type. */
export type MirrorStats = Omit<Stats, 'since'> & { since?: string };

const FIELDS = ['hits', 'misses', 'staleServed', 'bytesServed', 'bytesFromUpstream', 'storedBytes', 'blobs', 'upstreamErrors'] as const;

/** Validates an untrusted /stats body; missing or non-numeric figures count as 0. */
export function parseMirrorStats(body: unknown): MirrorStats | undefined {
  if (!body || typeof body !== 'object') return undefined;
  const b = body as Record<string, unknown>;
  if (!FIELDS.some((f) => typeof b[f] === 'number')) return undefined;
  const out = {} as MirrorStats;
  for (const f of FIELDS) {
    const v = b[f];
    out[f] = typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : 0;
  }
  if (typeof b.since === 'string') out.since = b.since;
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
