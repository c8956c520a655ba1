// The upstream rate limits the mirror pods report in /stats `rateLimits`: validated as
// hostile input, merged over pods (lowest remaining per upstream) into status.rateLimits.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { aggregateCache, mergeRateLimits, parseMirrorStats, parseRateLimits, RATE_LIMITS_MAX_UPSTREAMS, type MirrorStats } from '../../operator/cache-stats.js';
import { computeStatus } from '../../operator/status.js';
import type { RegistryMirror } from '../../operator/types.js';

const FIGURES = { hits: 1, misses: 0, staleServed: 0, bytesServed: 0, bytesFromUpstream: 0, storedBytes: 0, blobs: 0, upstreamErrors: 0 };
const hub = (remaining: number, observedAt = '2026-01-01T00:00:00.000Z', limit = 100) => ({ upstream: 'registry-1.docker.io', limit, remaining, windowSeconds: 21600, observedAt });

test('parseMirrorStats: rateLimits is optional; a valid list is kept', () => {
  assert.equal(parseMirrorStats(FIGURES)!.rateLimits, undefined);
  assert.deepEqual(parseMirrorStats({ ...FIGURES, rateLimits: [hub(76)] })!.rateLimits, [hub(76)]);
  // Something that is not a list is ignored, not a reason to refuse the figures.
  assert.equal(parseMirrorStats({ ...FIGURES, rateLimits: { upstream: 'x' } })!.rateLimits, undefined);
  assert.equal(parseMirrorStats({ ...FIGURES, rateLimits: [] })!.rateLimits, undefined);
});

test('parseRateLimits: hostile entries are dropped, the rest kept and normalised', () => {
  const bad: unknown[] = [
    null,
    'x',
    [1],
    { ...hub(5), upstream: '' },
    { ...hub(5), upstream: 'a b' },
    { ...hub(5), upstream: 'evil\u0000' },
    { ...hub(5), upstream: 'é.io' },
    { ...hub(5), upstream: 'x'.repeat(254) },
    { ...hub(5), upstream: 7 },
    { ...hub(5), limit: -1 },
    { ...hub(5), limit: 1.5 },
    { ...hub(5), limit: '100' },
    { ...hub(5), limit: 2 ** 60 },
    { ...hub(5), remaining: 101 },
    { ...hub(5), remaining: NaN },
    { ...hub(5), observedAt: 'yesterday' },
    { ...hub(5), observedAt: 12 },
    { ...hub(5), observedAt: '2026-01-01T00:00:00Z' + ' '.repeat(60) },
    { ...hub(5), observedAt: undefined },
    { upstream: 'quay.io', observedAt: '2026-01-01T00:00:00Z' },
  ];
  assert.equal(parseRateLimits(bad), undefined);
  const odd = parseRateLimits([{ ...hub(5), windowSeconds: -3, observedAt: '2026-01-01T01:00:00+01:00', extra: 'x'.repeat(10_000) }]);
  assert.deepEqual(odd, [{ upstream: 'registry-1.docker.io', limit: 100, remaining: 5, observedAt: '2026-01-01T00:00:00.000Z' }]);
  // The same upstream twice: the lower remaining.
  assert.deepEqual(parseRateLimits([hub(50), hub(7), hub(9)]), [hub(7)]);
  // An answer may state only the limit or only what remains; a stated remaining is lower than an unstated one.
  const onlyLimit = { upstream: 'quay.io', limit: 10, observedAt: '2026-01-01T00:00:00.000Z' };
  const onlyLeft = { upstream: 'quay.io', remaining: 3, observedAt: '2026-01-01T00:00:00.000Z' };
  assert.deepEqual(parseRateLimits([onlyLimit]), [onlyLimit]);
  assert.deepEqual(parseRateLimits([onlyLimit, onlyLeft]), [onlyLeft]);
});

test('parseRateLimits: at most RATE_LIMITS_MAX_UPSTREAMS entries are read', () => {
  const many = Array.from({ length: 10_000 }, (_, i) => ({ ...hub(1), upstream: `u${i}.example` }));
  const out = parseRateLimits(many)!;
  assert.equal(out.length, RATE_LIMITS_MAX_UPSTREAMS);
});

test('mergeRateLimits: per upstream the lowest remaining over pods (later observation on a tie), sorted, bounded', () => {
  const pod = (rateLimits: MirrorStats['rateLimits']): MirrorStats => ({ ...FIGURES, ...(rateLimits ? { rateLimits } : {}) });
  const quay = { upstream: 'quay.io', limit: 10, remaining: 10, observedAt: '2026-01-01T00:00:00.000Z' };
  assert.deepEqual(mergeRateLimits([pod([hub(40), quay]), pod([hub(12, '2026-01-01T00:05:00.000Z')]), pod(undefined)]), [
    quay,
    hub(12, '2026-01-01T00:05:00.000Z'),
  ]);
  assert.deepEqual(mergeRateLimits([pod([hub(12, '2026-01-01T00:01:00.000Z')]), pod([hub(12, '2026-01-01T00:02:00.000Z')])]), [hub(12, '2026-01-01T00:02:00.000Z')]);
  assert.equal(mergeRateLimits([pod(undefined)]), undefined);
  const wide = Array.from({ length: 5 }, (_, p) =>
    pod(Array.from({ length: RATE_LIMITS_MAX_UPSTREAMS }, (_, i) => ({ ...hub(1), upstream: `p${p}-u${i}.example` }))),
  );
  assert.equal(mergeRateLimits(wide)!.length, RATE_LIMITS_MAX_UPSTREAMS);
});

test('status.rateLimits: from the merged figures, kept while no pod answers, changes count as changes', () => {
  const t0 = new Date('2026-01-01T00:00:00Z');
  const t1 = new Date('2026-01-01T00:01:00Z');
  const a = aggregateCache([{ ...FIGURES, rateLimits: [hub(50)] }], undefined, t0)!;
  const b = aggregateCache([{ ...FIGURES, rateLimits: [hub(8)] }], a, t1)!;
  assert.equal(b.updated, t1.toISOString(), 'a new remaining is a new figure');
  const same = aggregateCache([{ ...FIGURES, rateLimits: [hub(8)] }], b, new Date('2026-01-01T00:02:00Z'))!;
  assert.equal(same.updated, t1.toISOString());
  const cr: RegistryMirror = {
    apiVersion: 'registry-mirror.io/v1alpha1',
    kind: 'RegistryMirror',
    metadata: { name: 'hub', namespace: 'ns', uid: 'u', generation: 1 },
    spec: { upstream: { registry: 'docker.io' } },
  };
  const st = computeStatus(cr, { kind: 'blocked', reason: 'InvalidSpec', message: 'm' }, { endpoint: 'e', cache: b }, t1);
  assert.deepEqual(st.rateLimits, [hub(8)]);
  assert.equal((st.cache as unknown as Record<string, unknown>).rateLimits, undefined, 'not under status.cache');
  const kept = computeStatus({ ...cr, status: st }, { kind: 'blocked', reason: 'InvalidSpec', message: 'm' }, { endpoint: 'e' }, t1);
  assert.deepEqual(kept.rateLimits, [hub(8)]);
});
