// Prefetch and pin (issue 19, item 2) against real components: a docker-registry upstream
// behind the fault proxy, the mirror as a process, containerd pulling through hosts.toml.
//  - an image prefetched at start is pulled by containerd with the upstream down, from the
//    very first pull (only the listed platform of the index is fetched);
//  - a tag that moves upstream is fetched again within cache.tagTTL, and a tag that does not
//    move costs one HEAD per tagTTL;
//  - pinned content survives storage.maxBytes pressure that evicts everything else, and a pin
//    that would pass 90% of the bound is refused, naming prefetch[i].

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { buildFixtures, pushFixtures } from '../fixtures/images.js';
import type { PushedImage } from '../../tools/oci/oci-client.js';
import { startContainerd, writeHostsToml, type ContainerdHandle } from '../rig/containerd.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { sleep, tempDir, waitFor } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { blobPath, getMetrics, getStats, manifestPath, metricValue, pullStored, pushRandomImage, type RandomImage } from './helpers.js';

type PrefetchStatus = NonNullable<Awaited<ReturnType<typeof getStats>>['prefetch']>[number];

async function prefetchStatus(mirrorUrl: string): Promise<PrefetchStatus[]> {
  return (await getStats(mirrorUrl)).prefetch ?? [];
}

const onDisk = (dataDir: string, img: RandomImage) => [
  existsSync(manifestPath(dataDir, img.digest)),
  existsSync(blobPath(dataDir, img.config.digest)),
  ...img.layers.map((l) => existsSync(blobPath(dataDir, l.digest))),
];
const whole = (dataDir: string, img: RandomImage) => onDisk(dataDir, img).every(Boolean);
const gone = (dataDir: string, img: RandomImage) => onDisk(dataDir, img).every((x) => !x);

/** This machine's platform as the fixtures' index names it. */
const hostPlatform = process.arch === 'arm64' ? 'linux/arm64/v8' : 'linux/amd64';

describe('prefetch: containerd pulls a prefetched image with the upstream down', { timeout: 300_000 }, () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  let containerd: ContainerdHandle;
  let multi: PushedImage;

  before(async () => {
    registry = await startRegistry();
    multi = (await pushFixtures(await buildFixtures(), registry.host, { only: ['multi-oci'] }))['multi-oci'];
    proxy = await startFaultProxy(registry.url);
    mirror = await startMirror({
      upstreams: { 'docker.io': { url: proxy.url } },
      prefetch: [{ image: `docker.io/${multi.repository}:${multi.tag}`, platforms: [hostPlatform], pin: true }],
    });
    containerd = await startContainerd();
  });

  after(async () => {
    await containerd?.stop();
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it('is ready in /stats and /metrics, with only the listed platform fetched', async () => {
    const [st] = (await waitFor(async () => {
      const s = await prefetchStatus(mirror.url);
      return s[0]?.ready ? s : undefined;
    }, 60_000, 'prefetch ready'))!;
    assert.equal(st!.image, `docker.io/${multi.repository}:${multi.tag}`);
    assert.equal(st!.digest, multi.digest);
    assert.equal(st!.pinned, true);
    const mine = multi.manifests.find((m) => m.platform === hostPlatform)!;
    const other = multi.manifests.find((m) => m.platform !== hostPlatform)!;
    assert.ok(existsSync(manifestPath(mirror.dataDir, multi.digest)), 'the index is stored');
    assert.ok(existsSync(manifestPath(mirror.dataDir, mine.digest)), 'the listed platform is stored');
    for (const b of [mine.config, ...mine.layers]) assert.ok(existsSync(blobPath(mirror.dataDir, b.digest)), `blob ${b.digest} stored`);
    assert.ok(!existsSync(manifestPath(mirror.dataDir, other.digest)), 'the other platform is not fetched');
    assert.ok(!existsSync(blobPath(mirror.dataDir, other.config.digest)), 'nor its config');
    const expected = multi.size + mine.size + [mine.config, ...mine.layers].reduce((n, b) => n + b.size, 0);
    assert.equal(st!.bytes, expected);
    const metrics = await getMetrics(mirror.url);
    assert.equal(metricValue(metrics, 'registry_mirror_prefetch_ready', { image: st!.image }), 1);
    assert.equal(metricValue(metrics, 'registry_mirror_prefetch_bytes', { image: st!.image }), expected);
  });

  it('containerd pulls it from the mirror alone once the upstream is stopped (first pull)', async () => {
    await proxy.stop();
    const hostsDir = tempDir('hosts');
    // The fallback server refuses connections: a pull that succeeds went through the mirror.
    writeHostsToml(hostsDir, 'docker.io', mirror.url, { server: 'http://127.0.0.1:9' });
    await containerd.pull(`docker.io/${multi.repository}:${multi.tag}`, { hostsDir, platform: hostPlatform });
    const have = new Set(await containerd.contentDigests());
    const mine = multi.manifests.find((m) => m.platform === hostPlatform)!;
    for (const b of mine.layers) assert.ok(have.has(b.digest), `containerd has layer ${b.digest}`);
    const stats = await getStats(mirror.url);
    assert.equal(stats.misses, 0, 'nothing was a miss: the prefetch had it all');
  });
});

describe('prefetch: a tag that moves upstream is fetched again within tagTTL', { timeout: 120_000 }, () => {
  const tagTTLMs = 2000;
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  let first: RandomImage;

  before(async () => {
    registry = await startRegistry();
    first = await pushRandomImage(registry.url, 'moving/app', 'v1', [20_000, 30_000], 'move-1');
    proxy = await startFaultProxy(registry.url);
    mirror = await startMirror({
      cache: { tagTTL: '2s' },
      upstreams: { 'docker.io': { url: proxy.url } },
      prefetch: [{ image: 'docker.io/moving/app:v1' }],
    });
  });

  after(async () => {
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it('resolves the tag at start and checks it with one HEAD per tagTTL while it stays', async () => {
    await waitFor(async () => (await prefetchStatus(mirror.url))[0]?.digest === first.digest || undefined, 30_000, 'first digest');
    assert.ok(whole(mirror.dataDir, first));
    const [st] = await prefetchStatus(mirror.url);
    assert.equal(st!.pinned, false);
    assert.equal(st!.ready, true);
    proxy.clearLog();
    await sleep(tagTTLMs * 2.5);
    assert.equal(proxy.countRequests('GET', '/manifests/'), 0, 'an unmoved tag is not fetched again');
    const heads = proxy.countRequests('HEAD', '/manifests/v1');
    assert.ok(heads >= 1 && heads <= 3, `one HEAD per tagTTL (${heads})`);
    assert.equal(proxy.countRequests('GET', '/blobs/'), 0, 'no blob is fetched again');
  });

  it('fetches the new image once the tag moves', async () => {
    const second = await pushRandomImage(registry.url, 'moving/app', 'v1', [25_000], 'move-2');
    const pushedAt = Date.now();
    await waitFor(
      async () => {
        const [s] = await prefetchStatus(mirror.url);
        return s?.digest === second.digest && s.ready ? s : undefined;
      },
      tagTTLMs * 3 + 5000,
      'second digest',
    );
    const took = Date.now() - pushedAt;
    // Checked every tagTTL: the move is seen at the next check, plus the run's own time.
    assert.ok(took < tagTTLMs + 2500, `seen ${took} ms after the push (tagTTL ${tagTTLMs} ms)`);
    assert.ok(whole(mirror.dataDir, second), `new image stored: ${onDisk(mirror.dataDir, second)}`);
  });
});

describe('pin: pinned content survives storage.maxBytes pressure', { timeout: 120_000 }, () => {
  const maxBytes = 2_200_000;
  let registry: RegistryHandle;
  let mirror: MirrorHandle;
  const img: Record<string, RandomImage> = {};

  before(async () => {
    registry = await startRegistry();
    img.p = await pushRandomImage(registry.url, 'pin/p', 'v1', [300_000, 200_000], 'pin-p');
    img.q = await pushRandomImage(registry.url, 'pin/q', 'v1', [1_500_000], 'pin-q');
    for (const name of ['a', 'b', 'c']) img[name] = await pushRandomImage(registry.url, `pin/${name}`, 'v1', [800_000], `pin-${name}`);
    mirror = await startMirror({
      storage: { maxBytes },
      upstreams: { 'docker.io': { url: registry.url } },
      prefetch: [
        { image: 'docker.io/pin/p:v1', pin: true },
        { image: 'docker.io/pin/q:v1', pin: true },
      ],
    });
  });

  after(async () => {
    await mirror?.stop();
    await registry?.stop();
  });

  it('pins the first image and refuses the pin that would pass 90% of maxBytes, naming prefetch[1]', async () => {
    const [p, q] = (await waitFor(async () => {
      const s = await prefetchStatus(mirror.url);
      return s[0]?.ready && s[1]?.error ? s : undefined;
    }, 30_000, 'prefetch settled'))!;
    assert.equal(p!.pinned, true);
    assert.equal(p!.bytes, img.p!.totalBytes);
    assert.equal(q!.ready, false);
    assert.equal(q!.pinned, false);
    assert.match(q!.error!, /^prefetch\[1\]: .*90% of storage\.maxBytes/);
    assert.ok(!existsSync(blobPath(mirror.dataDir, img.q!.layers[0]!.digest)), 'the refused image is not fetched');
    const metrics = await getMetrics(mirror.url);
    assert.equal(metricValue(metrics, 'registry_mirror_prefetch_pin_refused_total', { image: 'docker.io/pin/q:v1' }), 1);
    assert.equal(metricValue(metrics, 'registry_mirror_prefetch_pinned', { image: 'docker.io/pin/p:v1' }), 1);
    assert.equal(metricValue(metrics, 'registry_mirror_prefetch_pinned_bytes'), img.p!.totalBytes);
  });

  it('evicts every unpinned image and keeps the pinned one, the least recently used', async () => {
    const pull = (name: string) => pullStored(mirror.url, `pin/${name}`, img[name]!.digest);
    await pull('a');
    await pull('b');
    // p + a + b fit; c does not: a and b (and only they) must go.
    await pull('c');
    const dir = mirror.dataDir;
    assert.ok(whole(dir, img.p!), `pinned image kept whole: ${onDisk(dir, img.p!)}`);
    assert.ok(gone(dir, img.a!), `a evicted: ${onDisk(dir, img.a!)}`);
    assert.ok(gone(dir, img.b!), `b evicted: ${onDisk(dir, img.b!)}`);
    assert.ok(whole(dir, img.c!), `c stored: ${onDisk(dir, img.c!)}`);
    const stats = await getStats(mirror.url);
    assert.equal(stats.storedBytes, img.p!.totalBytes + img.c!.totalBytes, 'pinned content counts toward storedBytes');
  });
});
