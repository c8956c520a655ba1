// Upstream rate limits (issue 18 item 2, the mirror's half): Docker Hub's ratelimit-limit /
// ratelimit-remaining headers on a real registry's answers (added by the fault proxy, as
// Docker Hub would send them) become registry_mirror_upstream_ratelimit_* gauges per
// configured upstream and /stats `rateLimits`; a 429's headers count too; garbage is ignored
// and the last good statement kept; an upstream that states nothing has no series.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { getMetrics, getStats, metricValue, pullImage, pushRandomImage } from './helpers.js';

const quiet = 'quiet.example.test';

describe('upstream rate limits', { timeout: 120_000 }, () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;

  before(async () => {
    registry = await startRegistry();
    for (const repo of ['rl/one', 'rl/two', 'rl/three', 'rl/four', 'rl/five']) await pushRandomImage(registry.url, repo, 'v1', [2000], repo);
    proxy = await startFaultProxy(registry.url);
    mirror = await startMirror({ upstreams: { 'docker.io': { url: proxy.url }, [quiet]: { url: registry.url } }, upstreamRetries: { attempts: 3, backoff: '10ms' } });
  });

  after(async () => {
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  const gauges = async (upstream: string) => {
    const text = await getMetrics(mirror.url);
    return { limit: metricValue(text, 'registry_mirror_upstream_ratelimit_limit', { upstream }), remaining: metricValue(text, 'registry_mirror_upstream_ratelimit_remaining', { upstream }) };
  };

  it('nothing stated yet: no rateLimits in /stats, no series', async () => {
    await pullImage(mirror.url, '', 'rl/one', 'v1');
    assert.equal((await getStats(mirror.url)).rateLimits, undefined);
    assert.deepEqual(await gauges('docker.io'), { limit: undefined, remaining: undefined });
  });

  it("Docker Hub's headers on manifest answers: gauges and /stats per upstream", async () => {
    proxy.addHeaders('/manifests/', { 'ratelimit-limit': '100;w=21600', 'ratelimit-remaining': '76;w=21600', 'docker-ratelimit-source': '192.0.2.1' });
    const t0 = Date.now();
    await pullImage(mirror.url, '', 'rl/two', 'v1');
    await pullImage(mirror.url, `${quiet}/`, 'rl/two', 'v1');
    const stats = await getStats(mirror.url);
    assert.equal(stats.rateLimits?.length, 1, 'only the upstream that stated one');
    const [r] = stats.rateLimits!;
    assert.deepEqual({ ...r, observedAt: '' }, { upstream: 'docker.io', limit: 100, remaining: 76, windowSeconds: 21600, observedAt: '' });
    const at = Date.parse(r!.observedAt);
    assert.ok(at >= t0 - 1000 && at <= Date.now() + 1000, `observedAt ${r!.observedAt} is now`);
    assert.match(r!.observedAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.deepEqual(await gauges('docker.io'), { limit: 100, remaining: 76 });
    assert.deepEqual(await gauges(quiet), { limit: undefined, remaining: undefined }, 'no series for an upstream that stated nothing');
  });

  it('garbage is ignored and the last good statement kept; a 429 states one too', async () => {
    proxy.addHeaders('/manifests/', { 'ratelimit-limit': 'lots;w=forever', 'ratelimit-remaining': '<script>' });
    await pullImage(mirror.url, '', 'rl/three', 'v1');
    assert.deepEqual(await gauges('docker.io'), { limit: 100, remaining: 76 });

    // Docker Hub's answer when the limit is reached, then the retry gets through without headers.
    proxy.addHeaders('/manifests/', {});
    proxy.failNext('rl/four/manifests/', 429, 1, { 'ratelimit-limit': '100;w=21600', 'ratelimit-remaining': '0;w=21600', 'retry-after': '0' });
    await pullImage(mirror.url, '', 'rl/four', 'v1');
    assert.equal(proxy.requests().filter((e) => e.fault === 'fail').length, 1, 'the 429 was answered');
    assert.deepEqual(await gauges('docker.io'), { limit: 100, remaining: 0 });

    // A manifest HEAD (a tag revalidation) carries them as a GET does.
    proxy.addHeaders('/manifests/', { 'ratelimit-limit': '200', 'ratelimit-remaining': '199' });
    const head = await fetch(`${mirror.url}/v2/rl/five/manifests/v1`, { method: 'HEAD', headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
    assert.equal(head.status, 200);
    const r = (await getStats(mirror.url)).rateLimits?.[0];
    assert.deepEqual({ ...r, observedAt: '' }, { upstream: 'docker.io', limit: 200, remaining: 199, observedAt: '' }, 'no window stated: none reported');
  });
});
