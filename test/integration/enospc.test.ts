// Disk full while caching: the store is a 20 MiB tmpfs and an image with a 100 MB layer is
// pulled through the mirror. Clients still get every byte (verified by their own digests),
// other pulls made while the disk is full still work, nothing half-written is left in the
// store, an error is counted, and the mirror goes on serving and caching afterwards.
// The same for v1 layers (a second tmpfs): a v1 layer bigger than the free space passes
// through to its clients whole and verified, and nothing half-written stays behind.
// Needs root (mount); skipped with a reason otherwise.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildFixtures, pushImage, type FixtureSet } from '../fixtures/images.js';
import type { PushedImage } from '../../tools/oci/oci-client.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { run, tempDir, waitFor } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { skopeoCopyToDir } from '../../tools/launch/skopeo.js';
import { pullV1 } from '../rig/v1-client.js';
import { buildV1Fixture, startV1Source, type V1SourceHandle } from '../rig/v1-source.js';
import { fetchHashed, getMetrics, getStats, isCached, cachedSoon, metricValue, pullImage, storeFiles, tempFiles } from './helpers.js';

const tmpfsBytes = 20 * 1024 * 1024;

async function mountTmpfs(dir: string): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'needs root to mount a tmpfs';
  const r = await run('mount', ['-t', 'tmpfs', '-o', `size=${tmpfsBytes}`, 'tmpfs', dir], { allowFail: true });
  if (r.code !== 0) return `mount -t tmpfs failed: ${r.stderr.trim()}`;
  // If the runner kills this file before after() runs, do not leave the mount behind.
  process.once('exit', () => spawnSync('umount', ['-l', dir]));
  return undefined;
}

const freeBytes = (dir: string) => {
  const s = statfsSync(dir);
  return s.bavail * s.bsize;
};

describe('ENOSPC on a small tmpfs store', { timeout: 300_000 }, () => {
  let fixtures: FixtureSet;
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle | undefined;
  let storeDir: string;
  let mounted = false;
  let skip: string | undefined;
  const pushed: Record<string, PushedImage> = {};

  before(async () => {
    storeDir = join(tempDir('enospc'), 'store');
    mkdirSync(storeDir);
    skip = await mountTmpfs(storeDir);
    if (skip) return;
    mounted = true;
    fixtures = await buildFixtures();
    registry = await startRegistry();
    for (const name of ['big', 'small', 'docker-v2'] as const) pushed[name] = await pushImage(fixtures.images[name], registry.host, { bigLayerDigest: fixtures.bigLayer.digest });
    proxy = await startFaultProxy(registry.url);
    mirror = await startMirror({ storage: { path: storeDir }, upstreams: { 'docker.io': { url: proxy.url } } });
  });

  after(async () => {
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
    if (mounted && (await run('umount', [storeDir], { allowFail: true })).code !== 0) await run('umount', ['-l', storeDir], { allowFail: true });
  });

  it('a pull bigger than the free space succeeds with correct digests; pulls during the full disk work too', async (t) => {
    if (skip) return t.skip(skip);
    const m = mirror!;
    const big = pushed.big!;
    const bigLayer = big.bigLayer!;
    assert.ok(bigLayer.size > tmpfsBytes);
    // Slow enough that the disk stays full for a while, fast enough for the time budget.
    proxy.slowBlob(bigLayer.digest, 50 << 20);
    const out = tempDir('enospc-pull');
    const skopeo = skopeoCopyToDir(`${m.host}/${big.repository}:${big.tag}`, join(out, 'big'));
    // A second client of the same blob, reading it whole and hashing it.
    const direct = fetchHashed(`${m.url}/v2/${big.repository}/blobs/${bigLayer.digest}`);

    await waitFor(() => freeBytes(storeDir) < 4096, 60_000, 'the tmpfs to fill up');
    // The disk is full: a cold manifest and cold blobs of another image must still be served.
    const other = await pullImage(m.url, '', pushed['docker-v2']!.repository, pushed['docker-v2']!.tag);
    assert.equal(other.manifestDigest, pushed['docker-v2']!.digest);
    assert.match(m.logText(), /store is full: manifest served without caching/);

    const [copied, fetched] = await Promise.all([skopeo, direct]);
    assert.equal(copied.manifestDigest, big.digest, 'skopeo verified every layer digest');
    assert.equal(fetched.error, undefined);
    assert.equal(fetched.digest, bigLayer.digest);
    assert.equal(fetched.bytes, bigLayer.size);
    proxy.clear();
  });

  it('the store stays consistent: no temp leftovers, only whole, correct files; the error is counted', async (t) => {
    if (skip) return t.skip(skip);
    const m = mirror!;
    await waitFor(() => tempFiles(m.dataDir).length === 0, 10_000, 'temp files removed');
    const files = storeFiles(m.dataDir);
    assert.ok(!files.some((f) => f.endsWith(pushed.big!.bigLayer!.digest.slice(7))), 'the big layer was not cached');
    for (const f of files) {
      if (f.endsWith('.type')) continue;
      const hex = f.split('/').at(-1)!;
      const actual = createHash('sha256').update(readFileSync(join(m.dataDir, f))).digest('hex');
      assert.equal(actual, hex, `${f} holds exactly its digest's content`);
    }
    const stats = await getStats(m.url);
    assert.ok(stats.upstreamErrors >= 1, `an error is counted (${JSON.stringify(stats)})`);
    assert.equal(stats.storedBytes, files.filter((f) => !f.endsWith('.type')).reduce((n, f) => n + readFileSync(join(m.dataDir, f)).length, 0));
    assert.match(m.logText(), /store is full/);
    assert.equal(metricValue(await getMetrics(m.url), 'registry_mirror_inflight_downloads'), 0);
  });

  it('the server keeps serving and caching once space is back', async (t) => {
    if (skip) return t.skip(skip);
    const m = mirror!;
    assert.equal((await fetch(`${m.url}/readyz`)).status, 200);
    const small = pushed.small!;
    assert.equal((await pullImage(m.url, '', small.repository, small.tag)).manifestDigest, small.digest);
    for (const b of small.blobs) assert.ok(await cachedSoon(m.dataDir, b.digest), `${b.digest} cached`);
    // And the big image again, from upstream, still correct.
    const again = await fetchHashed(`${m.url}/v2/${pushed.big!.repository}/blobs/${pushed.big!.bigLayer!.digest}`);
    assert.equal(again.digest, pushed.big!.bigLayer!.digest);
    await waitFor(() => tempFiles(m.dataDir).length === 0, 10_000, 'temp files removed');
  });
});

describe('ENOSPC on a small tmpfs store: v1 layers', { timeout: 120_000 }, () => {
  // A 30 MB layer over a 20 MiB store, on top of a small one that fits.
  const fixture = buildV1Fixture({ 'team/bigv1': [100_000, 30 << 20], 'team/smallv1': [200_000] });
  let source: V1SourceHandle;
  let mirror: MirrorHandle | undefined;
  let storeDir: string;
  let mounted = false;
  let skip: string | undefined;

  before(async () => {
    storeDir = join(tempDir('enospc-v1'), 'store');
    mkdirSync(storeDir);
    skip = await mountTmpfs(storeDir);
    if (skip) return;
    mounted = true;
    source = await startV1Source(fixture);
    mirror = await startMirror({
      storage: { path: storeDir },
      upstreams: { 'docker.io': { url: 'http://127.0.0.1:1' } },
      v1: { enabled: true, source: source.url },
    });
  });

  after(async () => {
    await mirror?.stop();
    await source?.stop();
    if (mounted && (await run('umount', [storeDir], { allowFail: true })).code !== 0) await run('umount', ['-l', storeDir], { allowFail: true });
  });

  it('a v1 layer bigger than the free space passes through verified; nothing half-written is left', async (t) => {
    if (skip) return t.skip(skip);
    const m = mirror!;
    const top = source.images.get(fixture.repos['team/bigv1']!.latest!)!;
    assert.ok(top.layer.length > tmpfsBytes);
    // Two clients: a docker 1.x pull (checks every layer's payload checksum) and a direct GET.
    const [pulled, direct] = await Promise.all([pullV1(m.url, 'team/bigv1', 'latest'), fetchHashed(`${m.url}/v1/images/${top.id}/layer`)]);
    for (const id of top.ancestry) assert.equal(pulled.layers.get(id), source.images.get(id)!.layerDigest);
    assert.equal(direct.error, undefined);
    assert.equal(direct.digest, top.layerDigest);
    assert.equal(direct.bytes, top.layer.length);

    await waitFor(() => tempFiles(m.dataDir).length === 0, 10_000, 'temp files removed');
    assert.ok(!isCached(m.dataDir, top.layerDigest), 'the big layer was not cached');
    assert.ok(!existsSync(join(m.dataDir, 'v1', 'images', top.id.slice(0, 2), top.id, 'layer')), 'no layer record for it');
    const files = storeFiles(m.dataDir);
    for (const f of files) {
      if (f.endsWith('.type')) continue;
      const actual = createHash('sha256').update(readFileSync(join(m.dataDir, f))).digest('hex');
      assert.equal(actual, f.split('/').at(-1)!, `${f} holds exactly its digest's content`);
    }
    assert.match(m.logText(), /store is full: v1 layer served without caching/);
    assert.ok((await getStats(m.url)).upstreamErrors >= 1);

    // Space is back (the big layer never stayed): other layers are cached again.
    const small = source.images.get(fixture.repos['team/smallv1']!.latest!)!;
    assert.equal((await pullV1(m.url, 'team/smallv1', 'latest')).layers.get(small.id), small.layerDigest);
    assert.ok(await cachedSoon(m.dataDir, small.layerDigest));
    assert.equal((await fetch(`${m.url}/readyz`)).status, 200);
  });
});
