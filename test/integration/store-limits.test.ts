// The store's limits against a real upstream: storage.maxBytes evicts least recently used
// images (whole) down to the low-water mark and lets a blob larger than the bound stream
// through uncached; cache.ttl removes content by last access, a clock that survives a
// restart (state/access.json, written at SIGTERM), not the files' mtime.
// Images are made of random layers of exact sizes so every byte count is known.
// An image being pulled is in use: a size eviction that meets it skips it whole (manifest,
// config, layers not yet asked for) and, when nothing else can go, the incoming blob is served
// uncached rather than taking the image from under its pull or passing storage.maxBytes.

import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { sleep, waitFor } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import {
  blobPath,
  cachedSoon,
  fetchHashed,
  getManifestVia,
  getMetrics,
  getStats,
  manifestPath,
  metricValue,
  pullImage,
  pullStored,
  pushRandomImage,
  tempFiles,
  type RandomImage,
} from './helpers.js';

/** Every digest an image consists of, manifest first. */
const parts = (img: RandomImage) => [img.digest, img.config.digest, ...img.layers.map((l) => l.digest)];
const onDisk = (dataDir: string, img: RandomImage) => [
  existsSync(manifestPath(dataDir, img.digest)),
  existsSync(blobPath(dataDir, img.config.digest)),
  ...img.layers.map((l) => existsSync(blobPath(dataDir, l.digest))),
];
const whole = (dataDir: string, img: RandomImage) => onDisk(dataDir, img).every(Boolean);
const gone = (dataDir: string, img: RandomImage) => onDisk(dataDir, img).every((x) => !x);

describe('storage.maxBytes: LRU eviction down to the low-water mark', { timeout: 120_000 }, () => {
  const maxBytes = 1_000_000;
  let registry: RegistryHandle;
  let mirror: MirrorHandle;
  const img: Record<string, RandomImage> = {};

  before(async () => {
    registry = await startRegistry();
    for (const name of ['a', 'b', 'c', 'd']) img[name] = await pushRandomImage(registry.url, `lru/${name}`, 'v1', [250_000], `lru-${name}`);
    img.huge = await pushRandomImage(registry.url, 'lru/huge', 'v1', [1_200_000], 'lru-huge');
    mirror = await startMirror({ storage: { maxBytes }, upstreams: { 'docker.io': { url: registry.url } } });
  });

  after(async () => {
    await mirror?.stop();
    await registry?.stop();
  });

  it('evicts the least recently used image, whole, when a new one does not fit', async () => {
    const pull = (name: string) => pullStored(mirror.url, `lru/${name}`, img[name]!.digest);
    await pull('a');
    await pull('b');
    await pull('c');
    const three = img.a!.totalBytes + img.b!.totalBytes + img.c!.totalBytes;
    assert.equal((await getStats(mirror.url)).storedBytes, three);
    assert.ok(three < maxBytes && three + img.d!.totalBytes > maxBytes, 'the fourth image does not fit');
    // Touch a: now b is the least recently used.
    await pull('a');
    await pull('d');

    const dir = mirror.dataDir;
    assert.ok(gone(dir, img.b!), `b evicted: ${onDisk(dir, img.b!)}`);
    for (const name of ['a', 'c', 'd']) assert.ok(whole(dir, img[name]!), `${name} kept whole: ${onDisk(dir, img[name]!)}`);
    const stats = await getStats(mirror.url);
    assert.equal(stats.storedBytes, three - img.b!.totalBytes + img.d!.totalBytes);
    assert.ok(stats.storedBytes <= maxBytes * 0.9, 'down to the low-water mark (90%)');
    assert.equal(stats.blobs, 6);
    const metrics = await getMetrics(mirror.url);
    assert.equal(metricValue(metrics, 'registry_mirror_evictions_total', { reason: 'size' }), parts(img.b!).length);
    assert.equal(metricValue(metrics, 'registry_mirror_evictions_total', { reason: 'ttl' }), 0, 'nothing expired');

    // The evicted image comes back from upstream on the next pull; the LRU one (c) makes room.
    await pull('b');
    assert.ok(whole(dir, img.b!));
    assert.ok(gone(dir, img.c!), `c evicted next: ${onDisk(dir, img.c!)}`);
    assert.ok(whole(dir, img.a!) && whole(dir, img.d!));
    assert.equal(metricValue(await getMetrics(mirror.url), 'registry_mirror_evictions_total', { reason: 'size' }), 2 * parts(img.b!).length);
  });

  it('a blob larger than maxBytes streams through without being cached or evicting anything', async () => {
    const before = await getStats(mirror.url);
    const layer = img.huge!.layers[0]!;
    const r = await fetchHashed(`${mirror.url}/v2/lru/huge/blobs/${layer.digest}`);
    assert.equal(r.status, 200);
    assert.equal(r.digest, layer.digest);
    assert.equal(r.bytes, layer.size);
    assert.equal(r.headers.get('content-length'), String(layer.size));
    assert.ok(!existsSync(blobPath(mirror.dataDir, layer.digest)));
    await waitFor(() => tempFiles(mirror.dataDir).length === 0, 5000, 'no temp files');
    const after = await getStats(mirror.url);
    assert.equal(after.storedBytes, before.storedBytes, 'nothing evicted to make room for it');
    assert.equal(after.blobs, before.blobs);
    assert.equal(after.bytesFromUpstream - before.bytesFromUpstream, layer.size);
    // Every request for it goes upstream: there is nothing to serve it from.
    const again = await fetchHashed(`${mirror.url}/v2/lru/huge/blobs/${layer.digest}`);
    assert.equal(again.digest, layer.digest);
    assert.equal(await registry.waitForRequestCount('GET', `/v2/lru/huge/blobs/${layer.digest}`, 2), 2);
    const metrics = await getMetrics(mirror.url);
    assert.equal(metricValue(metrics, 'registry_mirror_requests_total', { api: 'v2', kind: 'blob', result: 'pass' }), 2);
  });
});

describe('storage.maxBytes: an image being pulled is never evicted by a concurrent size eviction', { timeout: 120_000 }, () => {
  const maxBytes = 800_000;
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  let a: RandomImage;
  let b: RandomImage;

  before(async () => {
    registry = await startRegistry();
    a = await pushRandomImage(registry.url, 'inuse/a', 'v1', [300_000, 300_000], 'inuse-a');
    b = await pushRandomImage(registry.url, 'inuse/b', 'v1', [300_000, 300_000], 'inuse-b');
    proxy = await startFaultProxy(registry.url);
    mirror = await startMirror({ storage: { maxBytes }, upstreams: { 'docker.io': { url: proxy.url } } });
  });

  after(async () => {
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it("a pull whose cold layer is still streaming keeps its manifest and layers while another image's blobs need room", async () => {
    const dir = mirror.dataDir;
    const blobUrl = (img: RandomImage, digest: string) => `${mirror.url}/v2/${img.repository}/blobs/${digest}`;
    const [slow, fast] = a.layers as [RandomImage['layers'][0], RandomImage['layers'][0]];
    // About 5 s for a's first layer: the whole of b's pull happens while it streams.
    proxy.slowBlob(slow.digest, 60_000);

    // A client pulls a as containerd does: manifest, config, then the layers at once.
    const m = await getManifestVia(mirror.url, `/v2/${a.repository}/manifests/${a.tag}`);
    assert.equal(m.digest, a.digest);
    assert.equal((await fetchHashed(blobUrl(a, a.config.digest))).digest, a.config.digest);
    const slowPull = fetchHashed(blobUrl(a, slow.digest));
    assert.equal((await fetchHashed(blobUrl(a, fast.digest))).digest, fast.digest);
    // Committed just after their clients' last byte: in the store before b comes.
    assert.ok((await cachedSoon(dir, a.config.digest)) && (await cachedSoon(dir, fast.digest)));
    const inflight = async () => metricValue(await getMetrics(mirror.url), 'registry_mirror_inflight_downloads');
    await waitFor(async () => (await inflight()) === 1, 5000, "only a's slow layer in flight");

    // Meanwhile b is pulled cold: its second layer does not fit beside a's content and b's own.
    const stored = () => a.manifestSize + a.config.size + fast.size + b.manifestSize + b.config.size + b.layers[0]!.size;
    assert.ok(stored() <= maxBytes && stored() + b.layers[1]!.size > maxBytes, 'b needs room');
    assert.equal((await pullImage(mirror.url, '', b.repository, b.tag)).manifestDigest, b.digest, 'b pulled whole and verified');
    await waitFor(async () => (await inflight()) === 1, 5000, "b's commits done, a's slow layer still in flight");
    assert.ok(!(await Promise.race([slowPull.then(() => true), sleep(0).then(() => false)])), "a's slow layer is still streaming");

    // Nothing of a went: not its manifest, not its config, not the layer it already has.
    assert.deepEqual(onDisk(dir, a), [true, true, false, true], "a's manifest, config and finished layer kept while its pull runs");
    const during = await getStats(mirror.url);
    assert.ok(during.storedBytes <= maxBytes, `the store stays within its bound (${during.storedBytes})`);
    assert.ok(!existsSync(blobPath(dir, b.layers[1]!.digest)), "b's last layer was served without being cached");

    const done = await slowPull;
    assert.equal(done.digest, slow.digest);
    await waitFor(() => existsSync(blobPath(dir, slow.digest)), 5000, "a's slow layer cached");
    assert.ok(whole(dir, a), `a whole after its pull: ${onDisk(dir, a)}`);

    // Pulled again: every byte from the store, nothing asked of the upstream but a tag check.
    proxy.clearLog();
    assert.equal((await pullImage(mirror.url, '', a.repository, a.tag)).manifestDigest, a.digest);
    assert.deepEqual(
      proxy.requests().filter((r) => r.method === 'GET').map((r) => r.path),
      [],
      'a second pull of a is warm',
    );

    // Once a's pull was over, b (not in use, least recently used) made room for a's layer.
    assert.ok(gone(dir, b), `b evicted for a's last layer: ${onDisk(dir, b)}`);
    const after = await getStats(mirror.url);
    assert.ok(after.storedBytes <= maxBytes, `within the bound (${after.storedBytes})`);
    const metrics = await getMetrics(mirror.url);
    assert.equal(metricValue(metrics, 'registry_mirror_store_no_room_total'), 1, 'one blob could not be cached for want of room');
    assert.equal(metricValue(metrics, 'registry_mirror_evictions_total', { reason: 'size' }), 3, "b's manifest, config and first layer");
  });
});

describe('cache.ttl: expiry by last access, across a restart', { timeout: 120_000 }, () => {
  const ttlMs = 5000;
  let registry: RegistryHandle;
  let mirror: MirrorHandle;
  let p: RandomImage;
  let q: RandomImage;

  before(async () => {
    registry = await startRegistry();
    p = await pushRandomImage(registry.url, 'ttl/p', 'v1', [10_000, 5_000], 'ttl-p');
    q = await pushRandomImage(registry.url, 'ttl/q', 'v1', [10_000], 'ttl-q');
    mirror = await startMirror({ cache: { ttl: '5s' }, upstreams: { 'docker.io': { url: registry.url } } });
  });

  after(async () => {
    await mirror?.stop();
    await registry?.stop();
  });

  it('unused content is removed, used content kept; the clock is the last access and survives SIGTERM + restart', async () => {
    const t0 = Date.now();
    await pullImage(mirror.url, '', 'ttl/p', 'v1');
    await pullImage(mirror.url, '', 'ttl/q', 'v1');
    const dir = mirror.dataDir;
    // Blobs are renamed into the store just after their client's last byte.
    await waitFor(() => whole(dir, p) && whole(dir, q), 10_000, 'both images stored');

    await sleep(t0 + 3000 - Date.now());
    const touchStart = Date.now();
    await pullImage(mirror.url, '', 'ttl/p', 'v1');
    const touchEnd = Date.now();

    // SIGTERM: access times are flushed to state/access.json in one write.
    assert.equal(await mirror.stop(), 0);
    // Version 2 keeps times by kind; the manifest and blobs of an image have distinct digests.
    const { access } = JSON.parse(readFileSync(join(dir, 'state', 'access.json'), 'utf8')) as { access: Record<'blob' | 'manifest', Record<string, number>> };
    const saved = { ...access.blob, ...access.manifest };
    for (const d of parts(p)) {
      assert.ok(saved[d]! >= touchStart - 1 && saved[d]! <= touchEnd + 1, `p ${d} saved with its last access (${saved[d]! - touchStart} ms after the touch began)`);
    }
    for (const d of parts(q)) assert.ok(saved[d]! < touchStart, `q ${d} keeps its first access`);

    // Down past q's ttl (and past p's files' mtime + ttl): only the last access tells them apart.
    await sleep(t0 + ttlMs + 500 - Date.now());
    await mirror.restart();
    const ready = Date.now();
    assert.ok(gone(dir, q), 'q, unused for longer than ttl, was removed at start-up');
    assert.ok(whole(dir, p), `p, used ${ready - touchEnd} ms ago, is kept: its clock is not the file mtime`);
    assert.equal(metricValue(await getMetrics(mirror.url), 'registry_mirror_evictions_total', { reason: 'ttl' }), parts(q).length);

    // p goes once ttl has passed since its last access (the sweep runs every ttl/4, at least
    // every second), which is before a clock restarted at start-up would let it go.
    await waitFor(() => gone(dir, p), touchEnd + ttlMs + 3000 - Date.now(), 'p expired');
    const goneAt = Date.now();
    assert.ok(goneAt > touchStart + ttlMs, `not before ttl after the last access (${goneAt - touchStart} ms)`);
    assert.ok(goneAt < ready + ttlMs, `the clock went on from the last access, not from the restart (${goneAt - ready} ms after ready)`);
    assert.equal(metricValue(await getMetrics(mirror.url), 'registry_mirror_evictions_total', { reason: 'ttl' }), parts(q).length + parts(p).length);
    const stats = await getStats(mirror.url);
    assert.equal(stats.blobs, 0);
    assert.equal(stats.storedBytes, 0);

    // And a pull brings it back.
    assert.equal((await pullImage(mirror.url, '', 'ttl/p', 'v1')).manifestDigest, p.digest);
    await waitFor(() => whole(dir, p), 10_000, 'p stored again');
  });
});
