// The legacy v1 API as a caching mirror, against a v1 source fixture (test/rig/v1-source.ts):
// the docker 1.x pull sequence cold and then with the source stopped, tag expiry, Range,
// one source fetch for concurrent cold layer requests, faulty layers never cached, metrics.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { sleep, waitFor } from '../../tools/launch/proc.js';
import { pullV1 } from '../rig/v1-client.js';
import { buildV1Fixture, startV1Source, type V1FixtureImage, type V1SourceHandle } from '../rig/v1-source.js';
import { downloadsSettled, fetchHashed, isCached, cachedSoon, rawRequest, tempFiles } from './helpers.js';

const fixture = buildV1Fixture({
  'library/busybox': [1 << 20, 200_000, 3_000],
  'team/app': [300_000, 50_000],
  'team/range': [100_000],
  'team/concurrent': [2 << 20],
  'team/faulty': [400_000, 300_000, 200_000],
});

describe('v1 API as a caching mirror', { timeout: 120_000 }, () => {
  let source: V1SourceHandle;
  const mirrors: MirrorHandle[] = [];
  const fresh = async (v1: Record<string, unknown> = {}, more: Record<string, unknown> = {}) => {
    const m = await startMirror({
      upstreams: { 'docker.io': { url: 'http://127.0.0.1:1' } },
      v1: { enabled: true, source: source.url, tagsCacheTTL: '1h', ...v1 },
      ...more,
    });
    mirrors.push(m);
    return m;
  };
  const top = (repo: string): V1FixtureImage => source.images.get(fixture.repos[repo]!.latest!)!;
  const stats = async (m: MirrorHandle) =>
    (await (await fetch(`${m.url}/stats`)).json()) as { hits: number; misses: number; staleServed: number; bytesServed: number; bytesFromUpstream: number; upstreamErrors: number; blobs: number };

  before(async () => {
    source = await startV1Source(fixture);
  });

  after(async () => {
    for (const m of mirrors) await m.stop();
    await source?.stop();
  });

  it('first pull goes to the source; with the source stopped the next pulls come from the cache, across a restart', async () => {
    const m = await fresh();
    const image = top('library/busybox');
    const first = await pullV1(m.url, 'library/busybox', 'latest');
    assert.deepEqual(first.ancestry, image.ancestry);
    for (const id of image.ancestry) {
      const fx = source.images.get(id)!;
      assert.equal(first.layers.get(id), fx.layerDigest, 'layer bytes as the source has them');
      assert.equal(first.checksums.get(id), fx.checksum, 'X-Docker-Checksum-Payload passed through');
      assert.equal(source.count(`/v1/images/${id}/layer`), 1);
      assert.equal(source.count(`/v1/images/${id}/json`), 1);
      await downloadsSettled(m.url); // the layer's record is written with its commit, after the last byte
      assert.ok(await cachedSoon(m.dataDir, fx.layerDigest), 'layer stored as a content-addressed blob');
      assert.ok(existsSync(join(m.dataDir, 'v1', 'images', id.slice(0, 2), id, 'layer')));
    }
    assert.equal(source.count('/v1/repositories/library/busybox/images'), 1);
    assert.equal(source.count('/v1/repositories/library/busybox/tags'), 1);
    assert.equal(source.count('/v1/repositories/library/busybox/tags/latest'), 1);
    assert.equal(source.count('/v1/_ping'), 0, '_ping is answered by the mirror');
    const ping = first.steps[0]!;
    assert.equal(ping.headers.get('x-docker-registry-standalone'), 'true');
    assert.ok(ping.headers.get('x-docker-registry-version'));
    const images = first.steps[1]!;
    assert.equal(images.headers.get('x-docker-endpoints'), m.host, 'clients are sent back to the mirror');
    const jsonStep = first.steps.find((s) => s.path === `/v1/images/${image.id}/json`)!;
    assert.equal(jsonStep.headers.get('x-docker-size'), String(image.layer.length));
    const s1 = await stats(m);
    assert.ok(s1.misses >= 2 * image.ancestry.length, 'json and layer of every image were misses');

    const before = source.requests.length;
    await source.stop();
    try {
      const second = await pullV1(m.url, 'library/busybox', 'latest');
      assert.deepEqual([...second.layers], [...first.layers]);
      assert.deepEqual([...second.checksums], [...first.checksums], 'X-Docker-Checksum-Payload served from the cache');
      const s2 = await stats(m);
      assert.equal(s2.hits - s1.hits, 3 + 2 * image.ancestry.length, 'tags, tag, ancestry, every json and layer: hits');
      assert.equal(s2.staleServed - s1.staleServed, 1, 'the images list, proxied when the source is up, is served stale');
      assert.equal(s2.bytesFromUpstream, s1.bytesFromUpstream);

      await m.restart();
      const third = await pullV1(m.url, 'library/busybox', 'latest');
      assert.deepEqual([...third.layers], [...first.layers], 'the store survives a restart');
      assert.equal(source.requests.length, before, 'nothing reached the source');
    } finally {
      await source.start();
    }

    const metrics = await (await fetch(`${m.url}/metrics`)).text();
    assert.match(metrics, /registry_mirror_requests_total\{api="v1",kind="image",result="hit"\} \d+/);
    assert.match(metrics, /registry_mirror_requests_total\{api="v1",kind="tag",result="stale"\} 1/);
    const restarted = await stats(m);
    assert.ok(restarted.bytesServed >= image.ancestry.reduce((n, id) => n + source.images.get(id)!.layer.length, 0));
  });

  it('tags expire after tagsCacheTTL and are refetched; stale while the source is down', async () => {
    const m = await fresh({ tagsCacheTTL: '1s' });
    const repo = 'team/app';
    const path = `/v1/repositories/${repo}/tags`;
    const tags = async () => {
      const res = await fetch(m.url + path);
      assert.equal(res.status, 200);
      return (await res.json()) as Record<string, string>;
    };
    const n0 = source.count(path);
    assert.deepEqual(await tags(), fixture.repos[repo]);
    assert.deepEqual(await tags(), fixture.repos[repo]);
    assert.equal(source.count(path) - n0, 1, 'fresh for tagsCacheTTL');

    const oldTop = top(repo);
    source.setTag(repo, 'latest', oldTop.parent!);
    source.setTag(repo, 'v2', oldTop.id);
    assert.equal((await tags()).latest, oldTop.id, 'still the cached list');
    await sleep(1100);
    assert.deepEqual(await tags(), { latest: oldTop.parent, v2: oldTop.id }, 'refetched after the TTL');
    assert.equal(source.count(path) - n0, 2);
    const single = await fetch(`${m.url}${path}/v2`);
    assert.equal(await single.json(), oldTop.id);

    await sleep(1100);
    await source.stop();
    try {
      assert.deepEqual(await tags(), { latest: oldTop.parent, v2: oldTop.id }, 'expired but served stale');
      const unknown = await fetch(`${m.url}/v1/repositories/team/nothing/tags`);
      assert.equal(unknown.status, 503, 'nothing cached and no source');
      assert.ok(((await unknown.json()) as { error: string }).error);
    } finally {
      await source.start();
      source.setTag(repo, 'latest', oldTop.id);
      source.repos.get(repo)!.delete('v2');
    }
    const missing = await fetch(`${m.url}${path}/nope`);
    assert.equal(missing.status, 404);
    assert.deepEqual(await missing.json(), { error: 'tag not found' });
    const s = await stats(m);
    assert.ok(s.staleServed >= 1);
  });

  it('Range gives 206 or 416, cold and warm, with Accept-Ranges', async () => {
    const m = await fresh();
    const image = top('team/range');
    const url = `${m.url}/v1/images/${image.id}/layer`;
    const cold = await fetch(url, { headers: { range: 'bytes=100-199' } });
    assert.equal(cold.status, 206, 'a range of a cold layer is served once verified');
    assert.equal(cold.headers.get('content-range'), `bytes 100-199/${image.layer.length}`);
    assert.deepEqual(Buffer.from(await cold.arrayBuffer()), image.layer.subarray(100, 200));
    assert.ok(await cachedSoon(m.dataDir, image.layerDigest));

    const suffix = await fetch(url, { headers: { range: 'bytes=-10' } });
    assert.equal(suffix.status, 206);
    assert.equal(suffix.headers.get('accept-ranges'), 'bytes');
    assert.deepEqual(Buffer.from(await suffix.arrayBuffer()), image.layer.subarray(image.layer.length - 10));
    const open = await fetch(url, { headers: { range: `bytes=${image.layer.length - 5}-` } });
    assert.equal(open.status, 206);
    assert.equal(open.headers.get('content-length'), '5');
    await open.arrayBuffer();
    const beyond = await fetch(url, { headers: { range: `bytes=${image.layer.length + 10}-` } });
    assert.equal(beyond.status, 416);
    assert.equal(beyond.headers.get('content-range'), `bytes */${image.layer.length}`);
    assert.ok(((await beyond.json()) as { error: string }).error);
    const whole = await fetchHashed(url);
    assert.equal(whole.status, 200);
    assert.equal(whole.headers.get('accept-ranges'), 'bytes');
    assert.equal(whole.digest, image.layerDigest);
    assert.equal(source.count(`/v1/images/${image.id}/layer`), 1, 'one source fetch for all of these');
    const head = await fetch(url, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), String(image.layer.length));
  });

  it('10 concurrent cold requests for a layer cause one source fetch', async () => {
    const m = await fresh();
    const image = top('team/concurrent');
    source.fault(image.id, 'slow');
    try {
      const url = `${m.url}/v1/images/${image.id}/layer`;
      const results = await Promise.all(Array.from({ length: 10 }, () => fetchHashed(url)));
      for (const r of results) {
        assert.equal(r.status, 200);
        assert.equal(r.error, undefined);
        assert.equal(r.digest, image.layerDigest);
      }
    } finally {
      source.fault(image.id, undefined);
    }
    assert.equal(source.count(`/v1/images/${image.id}/layer`), 1);
    assert.equal(source.count(`/v1/images/${image.id}/json`), 1, 'the json (checksum, size) fetched once too');
    assert.ok(await cachedSoon(m.dataDir, image.layerDigest));
  });

  it('a truncated, corrupt or short layer from the source aborts the client and is never cached', async () => {
    const m = await fresh();
    const [base, mid, upper] = top('team/faulty').ancestry.slice().reverse().map((id) => source.images.get(id)!) as [V1FixtureImage, V1FixtureImage, V1FixtureImage];
    source.withoutChecksum(upper.id); // size-only verification for the "short" case
    const cases: Array<[V1FixtureImage, 'truncate' | 'corrupt' | 'short']> = [
      [base, 'truncate'],
      [mid, 'corrupt'],
      [upper, 'short'],
    ];
    for (const [image, fault] of cases) {
      source.fault(image.id, fault);
      const url = `${m.url}/v1/images/${image.id}/layer`;
      const bad = await fetchHashed(url);
      assert.equal(bad.status, 200, `${fault}: headers were sent before the fault showed`);
      assert.ok(bad.error !== undefined, `${fault}: the body must end abnormally, never cleanly`);
      assert.ok(bad.bytes < image.layer.length, `${fault}: the last byte is held back until verified`);
      assert.ok(!isCached(m.dataDir, image.layerDigest), `${fault}: nothing cached`);
      assert.ok(!existsSync(join(m.dataDir, 'v1', 'images', image.id.slice(0, 2), image.id, 'layer')), `${fault}: no record`);
      await waitFor(() => tempFiles(m.dataDir).length === 0, 5000, 'temp file removed');
      source.fault(image.id, undefined);
      const good = await fetchHashed(url);
      assert.equal(good.digest, image.layerDigest, `${fault}: the next request is served and cached`);
      assert.ok(await cachedSoon(m.dataDir, image.layerDigest));
    }
    // Found bad before the mirror sent anything: a v1 error instead of a broken 200.
    const other = top('team/range');
    source.fault(other.id, 'corrupt-now');
    try {
      const fast = await fetch(`${m.url}/v1/images/${other.id}/layer`);
      const body = Buffer.from(await fast.arrayBuffer().catch(() => new ArrayBuffer(0)));
      if (fast.status === 200) assert.ok(body.length < other.layer.length, 'a 200 must be cut short');
      else assert.equal(typeof (JSON.parse(body.toString()) as { error: unknown }).error, 'string');
      assert.ok(!isCached(m.dataDir, other.layerDigest));
    } finally {
      source.fault(other.id, undefined);
    }
    const s = await stats(m);
    assert.ok(s.upstreamErrors >= 3);
  });

  it('cache.ttl expiry and the storage bound cover v1 content', async () => {
    const m = await fresh({}, { cache: { ttl: '2s' }, storage: { maxBytes: '1500000' } });
    const image = top('team/app');
    const counts = () => image.ancestry.map((id) => source.count(`/v1/images/${id}/layer`));
    const before = counts();
    await pullV1(m.url, 'team/app', 'latest');
    for (const id of image.ancestry) assert.ok(await cachedSoon(m.dataDir, source.images.get(id)!.layerDigest));
    const record = join(m.dataDir, 'v1', 'images', image.id.slice(0, 2), image.id, 'layer');
    assert.ok(existsSync(record));
    await waitFor(() => image.ancestry.every((id) => !isCached(m.dataDir, source.images.get(id)!.layerDigest)), 10_000, 'v1 layers expired');
    await pullV1(m.url, 'team/app', 'latest');
    assert.deepEqual(
      counts().map((n, i) => n - before[i]!),
      image.ancestry.map(() => 2),
      'expired layers are fetched again',
    );
    for (const id of image.ancestry) assert.ok(await cachedSoon(m.dataDir, source.images.get(id)!.layerDigest));
    await waitFor(() => !isCached(m.dataDir, image.layerDigest), 10_000, 'expired again');
    await m.restart();
    assert.ok(!existsSync(record), 'records of expired content are swept');

    const big = top('team/concurrent'); // 2 MiB, above storage.maxBytes
    const got = await fetchHashed(`${m.url}/v1/images/${big.id}/layer`);
    assert.equal(got.digest, big.layerDigest, 'served through, uncached');
    assert.ok(!isCached(m.dataDir, big.layerDigest));
  });

  it('v1 errors, names and push methods', async () => {
    const m = await fresh();
    const id = top('team/app').id;
    for (const [method, path] of [
      ['PUT', `/v1/images/${id}/json`],
      ['PUT', `/v1/images/${id}/layer`],
      ['PUT', '/v1/repositories/team/app/'],
      ['PUT', '/v1/repositories/team/app/tags/latest'],
      ['DELETE', '/v1/repositories/team/app/tags/latest'],
      ['POST', '/v1/users/'],
    ] as const) {
      const r = await fetch(m.url + path, { method, body: method === 'DELETE' ? undefined : '{}' });
      assert.equal(r.status, 405, `${method} ${path}`);
      assert.match(((await r.json()) as { error: string }).error, /read-only/);
    }
    for (const [path, status] of [
      ['/v1/images/ABC/json', 400],
      [`/v1/images/${'0'.repeat(64)}/json`, 404],
      [`/v1/images/${'0'.repeat(64)}/layer`, 404],
      ['/v1/repositories/Team/app/tags', 400],
      ['/v1/repositories/t/app/tags', 400],
      ['/v1/repositories/team/%2e%2e/tags', 400],
      ['/v1/repositories/team/app/tags/-bad', 400],
      [`/v1/repositories/${id}/tags`, 400],
      ['/v1/nothing', 404],
    ] as const) {
      const r = await rawRequest(m.url, path);
      assert.equal(r.status, status, path);
      assert.equal(typeof (JSON.parse(r.body) as { error: unknown }).error, 'string', path);
    }
    // A single component means library/<name>, as docker 1.x clients and the seed have it.
    const single = await fetch(`${m.url}/v1/repositories/busybox/tags/latest`);
    assert.equal(await single.json(), top('library/busybox').id);
    const ancestry = await fetch(`${m.url}/v1/images/${id}/ancestry`);
    assert.deepEqual(await ancestry.json(), top('team/app').ancestry);
    const repoJson = await fetch(`${m.url}/v1/repositories/team/app/json`);
    assert.equal(((await repoJson.json()) as { os: string }).os, 'linux');
  });
});
