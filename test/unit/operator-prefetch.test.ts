// spec.prefetch: validated by the mirror's own parser (problems name spec.prefetch[i]),
// rendered into the mirror config, and status.prefetch merged from the pods' /stats.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { stringify } from 'yaml';
import { aggregateCache, mergePrefetch, parseMirrorStats, type MirrorStats } from '../../operator/cache-stats.js';
import { mirrorConfigProblem, renderMirrorConfig } from '../../operator/render/mirror-config.js';
import { resolveSpec } from '../../operator/spec.js';
import { computeStatus } from '../../operator/status.js';
import type { RegistryMirror, RegistryMirrorSpec } from '../../operator/types.js';

function cr(spec: RegistryMirrorSpec): RegistryMirror {
  return { apiVersion: 'registry-mirror.io/v1alpha1', kind: 'RegistryMirror', metadata: { name: 'hub', namespace: 'ns1', uid: 'u', generation: 2 }, spec };
}

test('spec.prefetch is rendered into the mirror config, which the mirror accepts', () => {
  const r = resolveSpec(
    cr({
      upstream: { registry: 'docker.io' },
      storage: { size: '10Gi' },
      prefetch: [{ image: 'docker.io/library/nginx:1.27', platforms: ['linux/amd64'], pin: true }, { image: 'docker.io/library/redis:7' }],
    }),
  );
  assert.ok(r.ok, JSON.stringify(r));
  const config = renderMirrorConfig(r.spec);
  assert.deepEqual(config.prefetch, [
    { image: 'docker.io/library/nginx:1.27', platforms: ['linux/amd64'], pin: true },
    { image: 'docker.io/library/redis:7', pin: false },
  ]);
  assert.equal(mirrorConfigProblem(stringify(config)), undefined);
  const none = resolveSpec(cr({ upstream: { registry: 'docker.io' } }));
  assert.ok(none.ok);
  assert.equal(renderMirrorConfig(none.spec).prefetch, undefined, 'no prefetch key without spec.prefetch');
});

test('bad spec.prefetch entries are refused naming the field', () => {
  const problems = (prefetch: unknown, extra: Partial<RegistryMirrorSpec> = {}) => {
    const r = resolveSpec(cr({ upstream: { registry: 'docker.io' }, ...extra, prefetch } as RegistryMirrorSpec));
    assert.ok(!r.ok, JSON.stringify(prefetch));
    return r.problems.join('\n');
  };
  assert.match(problems([{ image: 'ghcr.io/org/app:1' }]), /^spec\.prefetch\[0\]\.image must start with the registry host of a configured upstream \(docker\.io\)/);
  assert.match(problems([{ image: 'docker.io/library/nginx' }]), /^spec\.prefetch\[0\]\.image needs a tag or a digest/);
  assert.match(problems([{ image: 'docker.io/a:1', platforms: ['amd64'] }]), /^spec\.prefetch\[0\]\.platforms\[0\]/);
  assert.match(problems([{ image: 'docker.io/a:1', pin: true }], { storage: { size: '1Ki' } }), /^spec\.prefetch\[0\]\.pin .*cannot fit in storage\.maxBytes/);
});

const digest = (c: string) => `sha256:${c.repeat(64)}`;
const pod = (prefetch: unknown[]): MirrorStats => parseMirrorStats({ hits: 1, prefetch })!;

test('/stats prefetch is parsed defensively and merged over the pods', () => {
  const hostile = parseMirrorStats({
    hits: 1,
    prefetch: [
      { image: 'docker.io/a:1', bytes: 10, ready: true, pinned: true, digest: digest('a'), error: `x\u0000${'e'.repeat(1000)}` },
      { image: 'bad image', bytes: 1, ready: true },
      { image: 'docker.io/b:1', bytes: -1, ready: true },
      { image: 'docker.io/c:1', bytes: 1, ready: 'yes' },
      { image: 'docker.io/d:1', bytes: 1, ready: false, digest: 'not-a-digest' },
      ...Array.from({ length: 200 }, (_, i) => ({ image: `docker.io/many:${i}`, bytes: 0, ready: true })),
    ],
  })!;
  assert.equal(hostile.prefetch!.length, 97, 'first 100 entries read, invalid ones dropped');
  assert.equal(hostile.prefetch![0]!.error!.length, 257);
  assert.ok(!/\u0000/.test(hostile.prefetch![0]!.error!));
  assert.equal(hostile.prefetch![1]!.digest, undefined);

  const merged = mergePrefetch([
    pod([{ image: 'docker.io/a:1', bytes: 10, ready: true, pinned: true, digest: digest('a') }, { image: 'docker.io/b:1', bytes: 5, ready: true, pinned: false, digest: digest('b') }]),
    pod([{ image: 'docker.io/a:1', bytes: 10, ready: true, pinned: true, digest: digest('a') }, { image: 'docker.io/b:1', bytes: 0, ready: false, pinned: false, error: 'upstream down' }]),
    pod([{ image: 'docker.io/a:1', bytes: 10, ready: true, pinned: true, digest: digest('a') }]),
  ]);
  assert.deepEqual(merged, [
    { image: 'docker.io/a:1', digest: digest('a'), bytes: 10, ready: true, readyPods: 3, pinned: true },
    { image: 'docker.io/b:1', digest: digest('b'), bytes: 5, ready: false, readyPods: 1, pinned: false, error: 'upstream down' },
  ]);
  assert.equal(mergePrefetch([pod([])]), undefined);
});

test('status.prefetch comes with the cache figures and is kept when no pod answered', () => {
  const now = new Date('2026-01-01T00:00:00Z');
  const samples = [pod([{ image: 'docker.io/a:1', bytes: 10, ready: true, pinned: false, digest: digest('a') }])];
  const cache = aggregateCache(samples, undefined, now)!;
  const status = computeStatus(cr({ upstream: { registry: 'docker.io' } }), { kind: 'applied' }, { endpoint: 'hub.ns1:5000', cache }, now);
  assert.deepEqual(status.prefetch, [{ image: 'docker.io/a:1', digest: digest('a'), bytes: 10, ready: true, readyPods: 1, pinned: false }]);
  assert.equal((status.cache as unknown as Record<string, unknown>).prefetch, undefined, 'not under status.cache');
  const again = computeStatus({ ...cr({ upstream: { registry: 'docker.io' } }), status }, { kind: 'applied' }, { endpoint: 'hub.ns1:5000' }, now);
  assert.deepEqual(again.prefetch, status.prefetch);
  // Same figures, same prefetch: `updated` stays (no status write for an idle mirror).
  const later = aggregateCache(samples, cache, new Date('2026-01-01T00:01:00Z'))!;
  assert.equal(later.updated, cache.updated);
  const moved = aggregateCache([pod([{ image: 'docker.io/a:1', bytes: 10, ready: false, pinned: false, digest: digest('b') }])], cache, new Date('2026-01-01T00:01:00Z'))!;
  assert.notEqual(moved.updated, cache.updated, 'a prefetch change is a change');
});
