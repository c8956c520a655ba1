// The store's index against a real upstream (distribution) and the mirror as a real process:
// - a manifest fetched as a blob (OCI allows a registry to serve a manifest under /blobs/) is
//   stored as a blob beside the manifest and neither hides the other: /stats counts both
//   (its storedBytes are the bytes on disk, before and after a restart), and the tag is
//   still served stale when the upstream goes away;
// - with cache.ttl, a repository whose content expired leaves /v2/_catalog (its links and
//   tags go with the content) and comes back on the next pull.

import assert from 'node:assert/strict';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildFixtures, pushImage } from '../fixtures/images.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { MANIFEST_ACCEPT, type PushedImage } from '../../tools/oci/oci-client.js';
import { sleep, waitFor } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { blobPath, downloadsSettled, fetchHashed, getManifestVia, getStats, manifestPath, pullImage, pushRandomImage, type RandomImage } from './helpers.js';

/** Bytes of every blob and manifest file on disk (not the manifests' .type files). */
function diskBytes(dataDir: string): number {
  let total = 0;
  const walk = (dir: string) => {
    if (!existsSync(dir)) return;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (!e.name.endsWith('.type')) total += statSync(p).size;
    }
  };
  walk(join(dataDir, 'blobs'));
  walk(join(dataDir, 'manifests'));
  return total;
}

/** Pushes bytes as a blob of a repository (monolithic upload). */
async function pushBlob(registryUrl: string, repository: string, bytes: Buffer, digest: string): Promise<void> {
  const start = await fetch(`${registryUrl}/v2/${repository}/blobs/uploads/`, { method: 'POST' });
  await start.arrayBuffer();
  assert.equal(start.status, 202, 'upload started');
  const location = new URL(start.headers.get('location')!, registryUrl);
  location.searchParams.set('digest', digest);
  const put = await fetch(location, { method: 'PUT', body: new Uint8Array(bytes), headers: { 'content-type': 'application/octet-stream' } });
  await put.arrayBuffer();
  assert.equal(put.status, 201, 'blob pushed');
}

const catalogOf = async (mirrorUrl: string) => ((await (await fetch(`${mirrorUrl}/v2/_catalog`)).json()) as { repositories: string[] }).repositories;

describe('store index: a manifest fetched as a blob', { timeout: 300_000 }, () => {
  const tagTTLMs = 1000;
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  let small: PushedImage;
  let manifestBytes: Buffer;

  before(async () => {
    const fixtures = await buildFixtures();
    registry = await startRegistry();
    small = await pushImage(fixtures.images.small, registry.host);
    // distribution serves under /blobs/ only what was pushed as a blob: push the manifest's
    // bytes as one too, so this upstream answers as OCI allows (and Docker Hub does).
    const m = await getManifestVia(registry.url, `/v2/${small.repository}/manifests/${small.digest}`, MANIFEST_ACCEPT);
    assert.equal(m.digest, small.digest);
    manifestBytes = m.body;
    await pushBlob(registry.url, small.repository, manifestBytes, small.digest);
    proxy = await startFaultProxy(registry.url);
    mirror = await startMirror({ cache: { tagTTL: '1s' }, upstreams: { 'docker.io': { url: proxy.url } } });
  });

  after(async () => {
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it('is stored beside the manifest: /stats counts both copies, its stored bytes equal the disk bytes, and the tag is still served stale', async () => {
    const dir = mirror.dataDir;
    assert.equal((await pullImage(mirror.url, '', small.repository, small.tag)).manifestDigest, small.digest);
    // Blobs are renamed into the store just after their client's last byte.
    await downloadsSettled(mirror.url);
    const pulled = await getStats(mirror.url);
    assert.equal(pulled.storedBytes, diskBytes(dir));

    const b = await fetchHashed(`${mirror.url}/v2/${small.repository}/blobs/${small.digest}`);
    assert.equal(b.status, 200);
    assert.equal(b.digest, small.digest);
    assert.equal(b.bytes, manifestBytes.length);
    await downloadsSettled(mirror.url);
    assert.ok(existsSync(blobPath(dir, small.digest)) && existsSync(manifestPath(dir, small.digest)), 'on disk as both');
    const both = await getStats(mirror.url);
    assert.equal(both.blobs, pulled.blobs + 1);
    assert.equal(both.storedBytes, pulled.storedBytes + manifestBytes.length, 'the manifest is still counted beside its blob copy');
    assert.equal(both.storedBytes, diskBytes(dir));
    // Served from the store as a blob from now on.
    const g0 = proxy.countRequests('GET', `/blobs/${small.digest}`);
    assert.equal((await fetchHashed(`${mirror.url}/v2/${small.repository}/blobs/${small.digest}`)).digest, small.digest);
    assert.equal(proxy.countRequests('GET', `/blobs/${small.digest}`), g0);

    // A restart indexes both from disk again.
    await mirror.restart();
    const restarted = await getStats(mirror.url);
    assert.equal(restarted.blobs, both.blobs);
    assert.equal(restarted.storedBytes, both.storedBytes);

    // The upstream goes away after tagTTL: the tag's manifest is still there to serve stale.
    await sleep(tagTTLMs + 200);
    await proxy.stop();
    const r = await getManifestVia(mirror.url, `/v2/${small.repository}/manifests/${small.tag}`);
    assert.equal(r.status, 200, r.body.toString('utf8').slice(0, 300));
    assert.equal(r.digest, small.digest);
    assert.equal((await getStats(mirror.url)).staleServed - restarted.staleServed, 1);
    const byDigest = await getManifestVia(mirror.url, `/v2/${small.repository}/manifests/${small.digest}`);
    assert.equal(byDigest.status, 200);
    assert.equal(byDigest.digest, small.digest);
    const asBlob = await fetchHashed(`${mirror.url}/v2/${small.repository}/blobs/${small.digest}`);
    assert.equal(asBlob.status, 200);
    assert.equal(asBlob.digest, small.digest);
  });
});

describe('store index: cache.ttl expiry takes the repository out of the catalog', { timeout: 120_000 }, () => {
  let registry: RegistryHandle;
  let mirror: MirrorHandle;
  let img: RandomImage;

  before(async () => {
    registry = await startRegistry();
    img = await pushRandomImage(registry.url, 'expiry/gone', 'v1', [5_000], 'store-index-gone');
    mirror = await startMirror({ cache: { ttl: '2s' }, upstreams: { 'docker.io': { url: registry.url } } });
  });

  after(async () => {
    await mirror?.stop();
    await registry?.stop();
  });

  it('an expired repository leaves /v2/_catalog with its links and tags, and a pull brings it back', async () => {
    const dir = mirror.dataDir;
    const repoDir = join(dir, 'repos', 'docker.io', 'expiry', 'gone');
    const t0 = Date.now();
    assert.equal((await pullImage(mirror.url, '', img.repository, img.tag)).manifestDigest, img.digest);
    await downloadsSettled(mirror.url);
    assert.deepEqual(await catalogOf(mirror.url), ['expiry/gone']);
    assert.ok(existsSync(join(repoDir, '_links')) && existsSync(join(repoDir, '_tags')));
    assert.ok(Date.now() - t0 < 2000, 'checked before the content could expire');

    // The sweep runs every second (ttl/4, at least 1 s); content goes 2 s after its last use.
    await waitFor(
      async () => (await catalogOf(mirror.url)).length === 0 && !existsSync(join(dir, 'repos', 'docker.io', 'expiry')),
      15_000,
      'the expired repository (and its emptied parent directory) gone from the catalog and the disk',
    );
    assert.ok(!existsSync(manifestPath(dir, img.digest)));
    assert.ok(existsSync(join(dir, 'repos')), 'repos/ itself stays; the emptied upstream directory goes');
    const stats = await getStats(mirror.url);
    assert.equal(stats.blobs, 0);
    assert.equal(stats.storedBytes, 0);

    assert.equal((await pullImage(mirror.url, '', img.repository, img.tag)).manifestDigest, img.digest);
    assert.deepEqual(await catalogOf(mirror.url), ['expiry/gone']);
  });
});
