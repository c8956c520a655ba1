// Missing tags and repositories: an upstream 404 for a manifest is remembered for
// cache.notFoundTTL, per (upstream, repository, reference, class), so a crash-looping pod
// costs the upstream one request per TTL, not two (HEAD and GET) per attempt. The real
// docker-registry 2.8.2 sits behind the fault proxy, which counts what reaches it.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { manifestMediaTypes as mt } from '../../mirror/manifest-class.js';
import { buildFixtures, pushImage, type FixtureSet } from '../fixtures/images.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { MANIFEST_ACCEPT, type PushedImage } from '../../tools/oci/oci-client.js';
import { sleep } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { skopeoInspectDigest } from '../../tools/launch/skopeo.js';
import { getManifestVia, getMetrics, metricValue } from './helpers.js';

const notFoundTTLMs = 2000;

describe('remembered upstream 404s (cache.notFoundTTL)', { timeout: 300_000 }, () => {
  let fixtures: FixtureSet;
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  let small: PushedImage;
  /** Upstream manifest requests (HEAD and GET) for a path. */
  const upstreamAsked = (path: string) => proxy.countRequests('GET', path) + proxy.countRequests('HEAD', path);
  const metric = async (name: string, labels: Record<string, string> = {}) => metricValue(await getMetrics(mirror.url), name, labels) ?? 0;
  const negatives = () => metric('registry_mirror_requests_total', { api: 'v2', kind: 'manifest', result: 'negative' });
  /** One pull attempt as Docker makes it: HEAD, then (on an error) GET for the details. */
  const attempt = async (path: string, accept = MANIFEST_ACCEPT) => {
    const head = await fetch(`${mirror.url}${path}`, { method: 'HEAD', headers: { accept } });
    const get = await getManifestVia(mirror.url, path, accept);
    return { head: head.status, get: get.status, code: get.status === 404 ? (JSON.parse(get.body.toString('utf8')) as { errors: Array<{ code: string }> }).errors[0]!.code : undefined };
  };

  before(async () => {
    fixtures = await buildFixtures();
    registry = await startRegistry();
    small = await pushImage(fixtures.images.small, registry.host);
    proxy = await startFaultProxy(registry.url);
    mirror = await startMirror({ cache: { notFoundTTL: `${notFoundTTLMs}ms` }, upstreams: { 'docker.io': { url: proxy.url } } });
  });

  after(async () => {
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it('repeated pulls of a missing tag within the TTL cost one upstream request; after it, one more', async () => {
    const path = '/v2/team/app/manifests/missing';
    await pushImage(fixtures.images.small, registry.host, { repository: 'team/app', tag: 'present' });
    const neg0 = await negatives();
    const started = Date.now();
    for (let i = 0; i < 5; i++) assert.deepEqual(await attempt(path), { head: 404, get: 404, code: 'MANIFEST_UNKNOWN' });
    assert.ok(Date.now() - started < notFoundTTLMs, 'the attempts fit in the TTL');
    assert.equal(upstreamAsked(path), 1, 'ten requests, one upstream request');
    assert.equal((await negatives()) - neg0, 9, 'the other nine are counted as result="negative"');
    assert.ok((await metric('registry_mirror_not_found_cache_entries')) >= 1);
    await sleep(notFoundTTLMs + 300);
    assert.deepEqual(await attempt(path), { head: 404, get: 404, code: 'MANIFEST_UNKNOWN' });
    assert.equal(upstreamAsked(path), 2, 'after the TTL: one more');
  });

  it('a missing repository, and a missing digest, are remembered too', async () => {
    const repoPath = '/v2/team/never-pushed/manifests/v1';
    for (let i = 0; i < 3; i++) assert.equal((await attempt(repoPath)).get, 404);
    assert.equal(upstreamAsked(repoPath), 1);
    const digestPath = `/v2/${small.repository}/manifests/sha256:${'0'.repeat(64)}`;
    for (let i = 0; i < 3; i++) assert.equal((await attempt(digestPath)).get, 404);
    assert.equal(upstreamAsked(digestPath), 1);
    // skopeo (GET) pulling the missing tag: still one upstream request.
    const skopeoPath = '/v2/team/skopeo-missing/manifests/v1';
    for (let i = 0; i < 2; i++) await assert.rejects(skopeoInspectDigest(`${mirror.host}/team/skopeo-missing:v1`));
    assert.equal(upstreamAsked(skopeoPath), 1);
  });

  it('a tag pushed after a 404 is found once the TTL passes, and the entry goes', async () => {
    const path = '/v2/team/late/manifests/v1';
    assert.equal((await attempt(path)).get, 404);
    const late = await pushImage(fixtures.images.small, registry.host, { repository: 'team/late', tag: 'v1' });
    assert.equal((await attempt(path)).get, 404, 'within the TTL the 404 stands');
    assert.equal(upstreamAsked(path), 1);
    await sleep(notFoundTTLMs + 300);
    const found = await getManifestVia(mirror.url, path);
    assert.equal(found.status, 200);
    assert.equal(found.digest, late.digest);
    assert.equal((await fetch(`${mirror.url}${path}`, { method: 'HEAD' })).headers.get('docker-content-digest'), late.digest);
  });

  it('per class: a schema-1-only 404 does not hide the tag from other clients', async () => {
    // distribution answers an OCI manifest with 404 to a schema-1-only Accept.
    const path = `/v2/${small.repository}/manifests/${small.tag}`;
    assert.equal((await getManifestVia(mirror.url, path, mt.schema1Signed)).status, 404);
    assert.equal((await getManifestVia(mirror.url, path, mt.schema1Signed)).status, 404);
    const ok = await getManifestVia(mirror.url, path, MANIFEST_ACCEPT);
    assert.equal(ok.status, 200);
    assert.equal(ok.digest, small.digest);
  });

  it('upstream trouble (503) is not remembered', async () => {
    const path = '/v2/team/flaky/manifests/v1';
    const flaky = await pushImage(fixtures.images.small, registry.host, { repository: 'team/flaky', tag: 'v1' });
    proxy.failNext(path, 503, 3);
    assert.equal((await getManifestVia(mirror.url, path)).status, 503);
    const r = await getManifestVia(mirror.url, path);
    assert.equal(r.status, 200, 'the next request asks the upstream again');
    assert.equal(r.digest, flaky.digest);
  });

  it('notFoundTTL 0 (here by MIRROR_CACHE_NOTFOUNDTTL) remembers nothing', async () => {
    const off = await startMirror({ upstreams: { 'docker.io': { url: proxy.url } } }, { env: { MIRROR_CACHE_NOTFOUNDTTL: '0' } });
    try {
      const path = '/v2/team/off/manifests/missing';
      for (let i = 0; i < 3; i++) assert.equal((await getManifestVia(off.url, path)).status, 404);
      assert.equal(upstreamAsked(path), 3);
      assert.equal(metricValue(await getMetrics(off.url), 'registry_mirror_not_found_cache_entries'), 0);
    } finally {
      await off.stop();
    }
  });
});
