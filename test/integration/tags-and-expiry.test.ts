// Tags through the cache with a short cache.tagTTL: served from cache while young, then
// revalidated with a HEAD; a moved tag is fetched anew; an upstream that is unreachable,
// answers 5xx or 429 gets the stale manifest served (and counted); an upstream 404 is a 404.

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildFixtures, pushImage, type FixtureSet } from '../fixtures/images.js';
import type { PushedImage } from '../../tools/oci/oci-client.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { sleep, tempDir } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { skopeoCopyToDir } from '../../tools/launch/skopeo.js';
import { getManifestVia, getMetrics, getStats, metricValue, pullImage } from './helpers.js';

const tagTTLMs = 1000;

describe('tag TTL, revalidation and stale serving', { timeout: 300_000 }, () => {
  let fixtures: FixtureSet;
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  let small: PushedImage;
  const heads = (path: string) => proxy.countRequests('HEAD', path);
  const gets = (path: string) => proxy.countRequests('GET', path);
  const staleCount = async () => metricValue(await getMetrics(mirror.url), 'registry_mirror_requests_total', { api: 'v2', kind: 'manifest', result: 'stale' }) ?? 0;

  before(async () => {
    fixtures = await buildFixtures();
    registry = await startRegistry();
    small = await pushImage(fixtures.images.small, registry.host);
    proxy = await startFaultProxy(registry.url);
    mirror = await startMirror({ cache: { tagTTL: '1s' }, upstreams: { 'docker.io': { url: proxy.url } } });
  });

  after(async () => {
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it('young tags are served from cache; old ones are revalidated with one HEAD and refreshed', async () => {
    assert.equal((await pullImage(mirror.url, '', small.repository, small.tag)).manifestDigest, small.digest);
    const path = `/v2/${small.repository}/manifests/${small.tag}`;
    const h0 = heads(path);
    const g0 = gets(path);
    const young = await getManifestVia(mirror.url, path);
    assert.equal(young.digest, small.digest);
    assert.equal(heads(path), h0, 'younger than tagTTL: no upstream request');
    await sleep(tagTTLMs + 200);
    const old = await getManifestVia(mirror.url, path);
    assert.equal(old.digest, small.digest);
    assert.equal(heads(path), h0 + 1, 'revalidated with a HEAD');
    assert.equal(gets(path), g0, 'same digest: no GET');
    const refreshed = await getManifestVia(mirror.url, path);
    assert.equal(refreshed.digest, small.digest);
    assert.equal(heads(path), h0 + 1, 'the HEAD refreshed the mapping');
  });

  it('upstream 503 and 429 on revalidation: the stale manifest is served and counted', async () => {
    const path = `/v2/${small.repository}/manifests/${small.tag}`;
    const stats0 = await getStats(mirror.url);
    const stale0 = await staleCount();
    for (const status of [503, 429]) {
      await sleep(tagTTLMs + 200);
      // More failures than the mirror's retries (upstreamRetries.attempts, 3 by default).
      proxy.failNext(path, status, 10);
      const r = await getManifestVia(mirror.url, path);
      proxy.clear();
      assert.equal(r.status, 200, `upstream ${status}`);
      assert.equal(r.digest, small.digest);
      assert.equal(proxy.requests().at(-1)!.fault, 'fail', 'the injected failure was what the mirror saw');
    }
    const stats = await getStats(mirror.url);
    assert.equal(stats.staleServed - stats0.staleServed, 2);
    assert.equal(stats.upstreamErrors - stats0.upstreamErrors, 2);
    assert.equal((await staleCount()) - stale0, 2);
  });

  it('an upstream that refuses (401, 403) on revalidation is not bypassed by stale serving', async () => {
    const path = `/v2/${small.repository}/manifests/${small.tag}`;
    const stats0 = await getStats(mirror.url);
    for (const [status, code] of [
      [401, 'UNAUTHORIZED'],
      [403, 'DENIED'],
    ] as const) {
      await sleep(tagTTLMs + 200);
      proxy.failNext(path, status, 1);
      const r = await getManifestVia(mirror.url, path);
      assert.equal(r.status, status);
      assert.equal(JSON.parse(r.body.toString('utf8')).errors[0].code, code);
    }
    assert.equal((await getStats(mirror.url)).staleServed, stats0.staleServed);
    // Once the upstream answers again, so does the mirror.
    assert.equal((await getManifestVia(mirror.url, path)).digest, small.digest);
  });

  it('a tag that moved upstream is fetched anew (HEAD, then GET of the new manifest)', async () => {
    const moving = await pushImage(fixtures.images.small, registry.host, { repository: 'team/moving', tag: 'latest' });
    assert.equal((await pullImage(mirror.url, '', 'team/moving', 'latest')).manifestDigest, moving.digest);
    const moved = await pushImage(fixtures.images['docker-v2'], registry.host, { repository: 'team/moving', tag: 'latest' });
    assert.notEqual(moved.digest, moving.digest);
    const still = await getManifestVia(mirror.url, '/v2/team/moving/manifests/latest');
    assert.equal(still.digest, moving.digest, 'within tagTTL the cached mapping stands');
    await sleep(tagTTLMs + 200);
    const path = '/v2/team/moving/manifests/latest';
    const g0 = gets(path);
    const fresh = await getManifestVia(mirror.url, path);
    assert.equal(fresh.digest, moved.digest);
    assert.equal(gets(path), g0 + 1);
    assert.equal((await pullImage(mirror.url, '', 'team/moving', 'latest')).manifestDigest, moved.digest);
  });

  it('a tag the upstream no longer has (404 after tagTTL) is a 404', async () => {
    const gone = await pushImage(fixtures.images.small, registry.host, { repository: 'team/gone', tag: 'v1' });
    assert.equal((await getManifestVia(mirror.url, '/v2/team/gone/manifests/v1')).digest, gone.digest);
    const del = await fetch(`${registry.url}/v2/team/gone/manifests/${gone.digest}`, { method: 'DELETE' });
    assert.equal(del.status, 202);
    await sleep(tagTTLMs + 200);
    const r = await getManifestVia(mirror.url, '/v2/team/gone/manifests/v1');
    assert.equal(r.status, 404);
    assert.equal(JSON.parse(r.body.toString('utf8')).errors[0].code, 'MANIFEST_UNKNOWN');
    const head = await fetch(`${mirror.url}/v2/team/gone/manifests/v1`, { method: 'HEAD' });
    assert.equal(head.status, 404, 'HEAD and GET agree');
  });

  it('upstream stopped: a whole pull (skopeo) still works from cache, the tag counted stale', async () => {
    const stats0 = await getStats(mirror.url);
    const stale0 = await staleCount();
    await sleep(tagTTLMs + 200);
    await proxy.stop();
    const out = tempDir('stale-pull');
    const got = await skopeoCopyToDir(`${mirror.host}/${small.repository}:${small.tag}`, join(out, 'small'));
    assert.equal(got.manifestDigest, small.digest);
    // HEAD too: containerd resolves a tag with HEAD and must get the same answer as the GET.
    const head = await fetch(`${mirror.url}/v2/${small.repository}/manifests/${small.tag}`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('docker-content-digest'), small.digest);
    const stats = await getStats(mirror.url);
    const staleNow = stats.staleServed - stats0.staleServed;
    assert.ok(staleNow >= 2, `skopeo's GET and our HEAD were served stale (${staleNow})`);
    assert.equal((await staleCount()) - stale0, staleNow);
    assert.ok(stats.upstreamErrors - stats0.upstreamErrors >= 2);
    assert.match(mirror.logText(), /serving stale manifest/);
    // Blobs need no upstream at all once cached.
    assert.ok(stats.hits > stats0.hits);
    const missing = await getManifestVia(mirror.url, '/v2/team/never-cached/manifests/v1');
    assert.equal(missing.status, 503);
    assert.equal(JSON.parse(missing.body.toString('utf8')).errors[0].code, 'UNAVAILABLE');
  });
});
