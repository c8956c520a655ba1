// /stats and /metrics asserted exactly after a known sequence of pulls from a fresh mirror:
// one image of known sizes pulled cold, then warm, a HEAD, and two things the upstream does
// not have. Then the in-flight download gauge during a slowed transfer.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { waitFor } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { downloadsSettled, fetchHashed, getManifestVia, getMetrics, getStats, metricValue, pullImage, pushRandomImage, type RandomImage } from './helpers.js';

describe('metrics and /stats', { timeout: 120_000 }, () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  let img: RandomImage;
  let slow: RandomImage;

  before(async () => {
    registry = await startRegistry();
    img = await pushRandomImage(registry.url, 'metrics/app', 'v1', [1000, 20_000], 'metrics-app');
    slow = await pushRandomImage(registry.url, 'metrics/slow', 'v1', [600_000], 'metrics-slow');
    proxy = await startFaultProxy(registry.url);
    mirror = await startMirror({ upstreams: { 'docker.io': { url: proxy.url } } });
  });

  after(async () => {
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it('exact figures after cold pull, warm pull, a HEAD, an unknown tag and an unknown blob', async () => {
    const total = img.totalBytes;
    const blobs = [img.config, ...img.layers];
    const stats0 = await getStats(mirror.url);
    // Every upstream (and the v1 source, on by default) with its circuit breaker, closed.
    const closed = { breaker: { state: 'closed', consecutiveFailures: 0, opens: 0, fastFailed: 0 } };
    const upstreams = { 'docker.io': closed, 'index.docker.io': closed };
    assert.deepEqual(
      { ...stats0, since: '' },
      { hits: 0, misses: 0, staleServed: 0, bytesServed: 0, bytesFromUpstream: 0, storedBytes: 0, blobs: 0, upstreamErrors: 0, upstreamBlobFetches: 0, blobsAdded: 0, since: '', upstreams },
    );
    assert.ok(!Number.isNaN(Date.parse(stats0.since)));

    assert.equal((await pullImage(mirror.url, '', img.repository, img.tag)).bytes, total); // 1 + 3 misses
    assert.equal((await pullImage(mirror.url, '', img.repository, img.tag)).bytes, total); // 1 + 3 hits
    const head = await fetch(`${mirror.url}/v2/${img.repository}/blobs/${img.layers[1]!.digest}`, { method: 'HEAD' }); // hit
    assert.equal(head.status, 200);
    assert.equal((await getManifestVia(mirror.url, `/v2/${img.repository}/manifests/nope`)).status, 404); // error
    const unknown = await fetch(`${mirror.url}/v2/${img.repository}/blobs/sha256:${'1'.repeat(64)}`); // error
    assert.equal(unknown.status, 404);
    await unknown.arrayBuffer();
    await downloadsSettled(mirror.url);

    const stats = await getStats(mirror.url);
    assert.deepEqual(
      { ...stats, since: stats0.since },
      {
        hits: 5,
        misses: 4,
        staleServed: 0,
        bytesServed: 2 * total,
        bytesFromUpstream: total,
        storedBytes: total,
        blobs: blobs.length,
        upstreamErrors: 0,
        // One transfer per blob, each creating the blob it stored.
        upstreamBlobFetches: blobs.length,
        blobsAdded: blobs.length,
        since: stats0.since,
        upstreams,
      },
    );
    assert.equal(stats.since, stats0.since);

    const text = await getMetrics(mirror.url);
    const v = (name: string, labels: Record<string, string> = {}) => metricValue(text, name, labels);
    const req = (kind: string, result: string) => v('registry_mirror_requests_total', { api: 'v2', kind, result });
    assert.equal(req('manifest', 'miss'), 1);
    assert.equal(req('manifest', 'hit'), 1);
    assert.equal(req('manifest', 'error'), 1);
    assert.equal(req('blob', 'miss'), 3);
    assert.equal(req('blob', 'hit'), 4);
    assert.equal(req('blob', 'error'), 1);
    assert.equal(req('manifest', 'stale'), undefined);
    assert.equal(v('registry_mirror_bytes_served_total', { source: 'upstream' }), total);
    assert.equal(v('registry_mirror_bytes_served_total', { source: 'cache' }), total);
    assert.equal(v('registry_mirror_upstream_requests_total', { upstream: 'docker.io', status: '200' }), 1 + blobs.length);
    assert.equal(v('registry_mirror_upstream_requests_total', { upstream: 'docker.io', status: '404' }), 2);
    assert.equal(v('registry_mirror_inflight_downloads'), 0);
    for (const upstream of ['docker.io', 'index.docker.io']) {
      assert.equal(v('registry_mirror_upstream_breaker_state', { upstream }), 0, 'closed');
      assert.equal(v('registry_mirror_upstream_breaker_opens_total', { upstream }), 0, 'present from the start');
      assert.equal(v('registry_mirror_upstream_breaker_fast_failures_total', { upstream }), 0);
    }
    assert.equal(v('registry_mirror_stored_bytes'), total);
    assert.equal(v('registry_mirror_stored_blobs'), blobs.length);
    assert.match(text, /^# TYPE registry_mirror_evictions_total counter$/m);
    assert.match(text, /^# TYPE registry_mirror_request_duration_seconds histogram$/m);
    assert.equal(v('registry_mirror_request_duration_seconds_count', { api: 'v2', kind: 'blob' }), 3 + 3 + 1 + 1);
    assert.equal(v('registry_mirror_request_duration_seconds_count', { api: 'v2', kind: 'manifest' }), 3);
    assert.equal(v('registry_mirror_request_duration_seconds_bucket', { api: 'v2', kind: 'manifest', le: '+Inf' }), 3);
    // The upstream saw exactly what the counters say.
    assert.equal(proxy.requests().length, 1 + blobs.length + 2);

    // Warm requests cost no disk write: access times wait for the batched flush (30 s, or
    // shutdown), so nothing has written state/access.json yet.
    assert.ok(!existsSync(join(mirror.dataDir, 'state', 'access.json')));
  });

  it('the in-flight download gauge counts a running transfer and drops back to 0', async () => {
    const layer = slow.layers[0]!;
    proxy.slowBlob(layer.digest, 600_000); // about a second
    const transfer = fetchHashed(`${mirror.url}/v2/${slow.repository}/blobs/${layer.digest}`);
    await waitFor(async () => metricValue(await getMetrics(mirror.url), 'registry_mirror_inflight_downloads') === 1, 5000, 'gauge at 1');
    const done = await transfer;
    assert.equal(done.digest, layer.digest);
    await waitFor(async () => metricValue(await getMetrics(mirror.url), 'registry_mirror_inflight_downloads') === 0, 5000, 'gauge back at 0');
    const stats = await getStats(mirror.url);
    assert.equal(stats.storedBytes, img.totalBytes + layer.size);
    assert.equal(stats.misses, 5);
    proxy.clear();
  });
});
