// Proves the test rig itself against the real components, without the mirror: if this file
// fails, every other integration test's failure means nothing.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildFixtures, pushFixtures, pushImage, type FixtureSet, type FixtureName } from '../fixtures/images.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { startContainerd, writeHostsToml, type ContainerdHandle } from '../rig/containerd.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { skopeoCopyToDir, skopeoInspectDigest } from '../../tools/launch/skopeo.js';
import { freePort, startProcess, tempDir, waitFor, sleep } from '../../tools/launch/proc.js';
import { getBlob, headManifest, MEDIA, sha256, type PushedImage } from '../../tools/oci/oci-client.js';

const BIG = 8 * 1024 * 1024;

describe('test rig', () => {
  let fixtures: FixtureSet;
  let registry: RegistryHandle;
  let pushed: Record<FixtureName, PushedImage>;
  let containerd: ContainerdHandle;
  let proxy: FaultProxyHandle;
  // containerd falls back to `server` when the mirror host fails; a dead loopback port keeps
  // every attempt on this machine and makes a fallback fail fast instead of succeeding.
  let deadServer: string;

  before(async () => {
    fixtures = await buildFixtures(undefined, { bigBytes: BIG });
    registry = await startRegistry();
    pushed = await pushFixtures(fixtures, registry.host);
    containerd = await startContainerd();
    proxy = await startFaultProxy(registry.url);
    deadServer = `http://127.0.0.1:${await freePort()}`;
  });
  after(async () => {
    await proxy?.stop();
    await containerd?.stop();
    await registry?.stop();
  });

  it('builds fixtures once and reuses them', async () => {
    const again = await buildFixtures(undefined, { bigBytes: BIG });
    assert.equal(again.dir, fixtures.dir);
    assert.equal(again.bigLayer.digest, fixtures.bigLayer.digest);
    const layout = fixtures.images.small.layoutDir;
    assert.ok(existsSync(join(layout, 'oci-layout')));
    const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'));
    assert.equal(index.manifests[0].annotations['org.opencontainers.image.ref.name'], 'v1');
  });

  it('pushes every fixture with the media types tests rely on', () => {
    assert.equal(pushed.small.mediaType, MEDIA.ociManifest);
    assert.equal(pushed.big.mediaType, MEDIA.ociManifest);
    assert.equal(pushed['docker-v2'].mediaType, MEDIA.dockerManifest);
    assert.equal(pushed['multi-oci'].mediaType, MEDIA.ociIndex);
    assert.equal(pushed['multi-docker'].mediaType, MEDIA.dockerList);
    assert.deepEqual(pushed['multi-docker'].manifests.map((m) => m.mediaType), [MEDIA.dockerManifest, MEDIA.dockerManifest]);
    assert.deepEqual(pushed['multi-oci'].manifests.map((m) => m.platform), ['linux/amd64', 'linux/arm64/v8']);
    // OCI pushes keep the layout's bytes, so the digest is known before any registry exists.
    assert.equal(pushed.small.digest, fixtures.images.small.layoutDigest);
    assert.equal(pushed['multi-oci'].digest, fixtures.images['multi-oci'].layoutDigest);
    assert.equal(pushed.small.blobs.length, 4); // config + 3 layers
    assert.deepEqual(pushed.big.bigLayer, { mediaType: MEDIA.ociLayerGzip, digest: fixtures.bigLayer.digest, size: fixtures.bigLayer.size });
    assert.ok(fixtures.bigLayer.size > BIG, 'random data does not compress');
    // The shared base layer really is shared.
    for (const name of ['small', 'big', 'docker-v2'] as const) {
      assert.ok(pushed[name].blobs.some((b) => b.digest === fixtures.baseLayer.digest), name);
    }
  });

  it('config diff_ids are the sha256 of the uncompressed layers', async () => {
    const m = pushed.big.manifests[0]!;
    const config = JSON.parse((await getBlob(registry.url, 'library/big', m.config.digest)).toString('utf8'));
    assert.equal(config.architecture, 'amd64');
    assert.equal(config.os, 'linux');
    assert.deepEqual(config.config.Cmd, ['/bin/hello', 'big']);
    assert.equal(config.rootfs.diff_ids[1], fixtures.bigLayer.diffId);
    const big = await getBlob(registry.url, 'library/big', fixtures.bigLayer.digest);
    assert.equal(sha256(big), fixtures.bigLayer.digest);
  });

  it('skopeo copies an image back to dir: with the same manifest digest', async () => {
    const out = tempDir('skopeo-out');
    const { manifestDigest } = await skopeoCopyToDir(pushed.small.ref, out);
    assert.equal(manifestDigest, pushed.small.digest);
    for (const b of pushed.small.blobs) assert.ok(existsSync(join(out, b.digest.replace('sha256:', ''))), b.digest);
    assert.equal(await skopeoInspectDigest(pushed['multi-docker'].ref), pushed['multi-docker'].digest);
    assert.equal(await skopeoInspectDigest(pushed['docker-v2'].ref), pushed['docker-v2'].digest);
  });

  it('containerd pulls docker.io/library/* through hosts.toml, sending ?ns=docker.io', async () => {
    const hostsDir = tempDir('hosts');
    writeHostsToml(hostsDir, 'docker.io', registry.url, { server: deadServer });
    await containerd.pull('docker.io/library/small:v1', { hostsDir });
    await containerd.pull('docker.io/library/big:v1', { hostsDir });
    await containerd.pull('docker.io/library/multi-oci:v1', { hostsDir, platform: 'linux/arm64' });
    await containerd.pull('docker.io/library/multi-docker:v1', { hostsDir, allPlatforms: true });
    const images = await containerd.images();
    for (const name of ['small', 'big', 'multi-oci', 'multi-docker']) assert.ok(images.includes(`docker.io/library/${name}:v1`), name);
    const content = await containerd.contentDigests();
    assert.ok(content.includes(fixtures.bigLayer.digest));
    const arm = pushed['multi-oci'].manifests.find((m) => m.platform === 'linux/arm64/v8')!;
    for (const l of arm.layers) assert.ok(content.includes(l.digest), 'arm64 layer fetched');
    await registry.waitForRequestCount('GET', `/v2/library/small/manifests/${pushed.small.digest}?ns=docker.io`, 1);
    assert.equal(await registry.countRequests('GET', `/blobs/${fixtures.bigLayer.digest}?ns=docker.io`), 1);
  });

  it('removeAllContent makes the next pull fetch every blob again', async () => {
    const hostsDir = tempDir('hosts');
    writeHostsToml(hostsDir, 'docker.io', registry.url, { server: deadServer });
    const blob = `/v2/library/small/blobs/${pushed.small.manifests[0]!.layers[1]!.digest}`;
    await containerd.removeAllContent();
    const before = await registry.countRequests('GET', blob);
    await containerd.pull('docker.io/library/small:v1', { hostsDir });
    await registry.waitForRequestCount('GET', blob, before + 1);
    // Content present: a second pull fetches no blob.
    await containerd.pull('docker.io/library/small:v1', { hostsDir });
    await sleep(200);
    assert.equal(await registry.countRequests('GET', blob), before + 1);
    await containerd.removeAllContent();
    assert.deepEqual(await containerd.contentDigests(), []);
    await containerd.pull('docker.io/library/small:v1', { hostsDir });
    await registry.waitForRequestCount('GET', blob, before + 2);
  });

  it('the fault proxy corrupts a blob for skopeo and containerd until clear()', async () => {
    const layer = pushed.small.manifests[0]!.layers[1]!;
    const hostsDir = tempDir('hosts');
    writeHostsToml(hostsDir, 'docker.io', proxy.url, { server: deadServer });
    await containerd.removeAllContent();
    proxy.corruptBlob(layer.digest);

    await assert.rejects(skopeoCopyToDir(`${proxy.host}/library/small:v1`, tempDir('skopeo-bad')), /digest|Digest/);
    await assert.rejects(containerd.pull('docker.io/library/small:v1', { hostsDir }), /digest/);
    const faulted = proxy.requests().filter((r) => r.fault === 'corrupt');
    assert.ok(faulted.length >= 2);
    assert.ok(faulted.every((r) => r.status === 200 && r.bytes === layer.size), 'Content-Length kept');

    proxy.clear();
    await containerd.removeAllContent();
    const out = tempDir('skopeo-good');
    assert.equal((await skopeoCopyToDir(`${proxy.host}/library/small:v1`, out)).manifestDigest, pushed.small.digest);
    await containerd.pull('docker.io/library/small:v1', { hostsDir });
    assert.ok(proxy.countRequests('GET', `/blobs/${layer.digest}?ns=docker.io`) >= 2);
  });

  it('the fault proxy truncates, stalls, fails and forwards auth headers', async () => {
    const layer = pushed.small.manifests[0]!.layers[1]!;
    const url = `${proxy.url}/v2/library/small/blobs/${layer.digest}`;

    proxy.truncateBlob(layer.digest, 1000);
    const res = await fetch(url);
    assert.equal(res.headers.get('content-length'), String(layer.size));
    await assert.rejects(res.arrayBuffer());

    proxy.clear();
    proxy.stallBlob(layer.digest);
    const stalled = await fetch(url, { signal: AbortSignal.timeout(2000) });
    assert.equal(stalled.status, 200);
    await assert.rejects(stalled.arrayBuffer(), /abort|timeout/i);

    proxy.clear();
    proxy.failNext('/manifests/v1', 503, 2);
    assert.equal((await headManifest(proxy.url, 'library/small', 'v1')).status, 503);
    assert.equal((await headManifest(proxy.url, 'library/small', 'v1')).status, 503);
    assert.equal((await headManifest(proxy.url, 'library/small', 'v1')).digest, pushed.small.digest);

    proxy.slowBlob(layer.digest, 16 * 1024);
    const t0 = Date.now();
    assert.equal(sha256(Buffer.from(await (await fetch(url)).arrayBuffer())), layer.digest);
    assert.ok(Date.now() - t0 >= 300, 'slowBlob paces the body');
    proxy.clear();
  });

  it('registry access log, htpasswd auth and restart on the same port and data', async () => {
    const authed = await startRegistry({ auth: { htpasswd: { users: { alice: 's3cret' } } } });
    try {
      const creds = 'alice:s3cret';
      const small = await pushImage(fixtures.images.small, authed.host, { creds, repository: 'team/app', tag: 'one' });
      assert.equal(small.digest, pushed.small.digest);
      assert.equal((await headManifest(authed.url, 'team/app', 'one')).status, 401);
      // Through the proxy, Authorization must reach the registry.
      const viaProxy = await startFaultProxy(authed.url);
      try {
        assert.equal((await headManifest(viaProxy.url, 'team/app', 'one', { creds })).digest, small.digest);
      } finally {
        await viaProxy.stop();
      }
      await authed.waitForRequestCount('HEAD', '/v2/team/app/manifests/one', 3);
      const entries = await authed.requests();
      assert.ok(entries.some((e) => e.method === 'HEAD' && e.status === 401));
      assert.ok(entries.some((e) => e.method === 'PUT' && e.path === '/v2/team/app/manifests/one' && e.status === 201));

      const port = authed.port;
      await authed.restart();
      assert.equal(authed.port, port);
      assert.equal((await headManifest(authed.url, 'team/app', 'one', { creds })).digest, small.digest);
    } finally {
      await authed.stop();
    }
  });

  it('stop() escalates to SIGKILL and waits for the exit', async () => {
    const dir = tempDir('proc');
    const stubborn = startProcess({ cmd: 'sh', args: ['-c', 'trap "" TERM; echo ready; while :; do sleep 0.1; done'], logFile: join(dir, 'log') });
    await waitFor(() => stubborn.logText().includes('ready'), 5000);
    const t0 = Date.now();
    assert.equal(await stubborn.stop(300), null);
    assert.ok(Date.now() - t0 >= 250);
    assert.equal(stubborn.alive(), false);
  });
});
