// Many registries through one mirror: two real upstreams, picked by containerd's ?ns= (one
// hosts.toml per registry) and by a registry-host path prefix (skopeo, which cannot send ns).
// Both upstreams hold the same repository name with different images, so a request routed
// to the wrong one shows up as a wrong digest. Then the cross-repository rule: the shared,
// content-addressed store never serves a blob under a repository the upstream has not
// confirmed it for.

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildFixtures, pushImage, type FixtureSet } from '../fixtures/images.js';
import type { PushedImage } from '../../tools/oci/oci-client.js';
import { startContainerd, writeHostsToml, type ContainerdHandle } from '../rig/containerd.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { freePort, tempDir } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { skopeoCopyToDir } from '../../tools/launch/skopeo.js';
import { fetchHashed, getManifestVia, ociError } from './helpers.js';

const second = 'registry.example.test';
const secondWithPort = 'registry.example.test:5000';

describe('two upstreams through one mirror', { timeout: 300_000 }, () => {
  let fixtures: FixtureSet;
  let hub: RegistryHandle;
  let other: RegistryHandle;
  let mirror: MirrorHandle;
  let containerd: ContainerdHandle;
  let hostsDir: string;
  let hubSmall: PushedImage;
  let otherSmall: PushedImage;
  let otherMulti: PushedImage;

  before(async () => {
    fixtures = await buildFixtures();
    [hub, other] = await Promise.all([startRegistry(), startRegistry()]);
    // Same repository and tag, different images.
    hubSmall = await pushImage(fixtures.images.small, hub.host);
    otherSmall = await pushImage(fixtures.images['docker-v2'], other.host, { repository: 'library/small', tag: 'v1' });
    otherMulti = await pushImage(fixtures.images['multi-oci'], other.host, { repository: 'team/multi', tag: 'v1' });
    assert.notEqual(hubSmall.digest, otherSmall.digest);
    mirror = await startMirror({
      upstreams: {
        'docker.io': { url: hub.url },
        [second]: { url: other.url },
        [secondWithPort]: { url: other.url },
      },
    });
    containerd = await startContainerd();
    hostsDir = tempDir('hosts');
    // A fallback that refuses connections: a pull that succeeds went through the mirror.
    const dead = `http://127.0.0.1:${await freePort()}`;
    for (const registry of ['docker.io', second, secondWithPort]) writeHostsToml(hostsDir, registry, mirror.url, { server: dead });
  });

  after(async () => {
    await containerd?.stop();
    await mirror?.stop();
    await hub?.stop();
    await other?.stop();
  });

  async function imageDigest(ref: string): Promise<string> {
    const out = (await containerd.ctr(['images', 'ls'])).stdout.split('\n');
    const line = out.find((l) => l.split(/\s+/)[0] === ref);
    assert.ok(line, `containerd has ${ref}:\n${out.join('\n')}`);
    return line.split(/\s+/)[2]!;
  }

  it('containerd: ?ns= picks the upstream for docker.io, registry.example.test and registry.example.test:5000', async () => {
    await containerd.pull('docker.io/library/small:v1', { hostsDir });
    await containerd.pull(`${second}/library/small:v1`, { hostsDir });
    await containerd.pull(`${secondWithPort}/library/small:v1`, { hostsDir });
    await containerd.pull(`${second}/team/multi:v1`, { hostsDir, platform: 'linux/arm64/v8' });
    assert.equal(await imageDigest('docker.io/library/small:v1'), hubSmall.digest);
    assert.equal(await imageDigest(`${second}/library/small:v1`), otherSmall.digest);
    assert.equal(await imageDigest(`${secondWithPort}/library/small:v1`), otherSmall.digest);
    assert.equal(await imageDigest(`${second}/team/multi:v1`), otherMulti.digest);

    const log = mirror.logText();
    for (const ns of ['docker.io', second, secondWithPort]) {
      assert.ok(log.includes(`ns=${encodeURIComponent(ns)}`) || log.includes(`ns=${ns}`), `mirror saw ns=${ns}`);
    }
    // Each upstream only saw requests for its own content (and never the ns parameter).
    const hubPaths = (await hub.requests()).filter((r) => r.userAgent === 'registry-mirror').map((r) => r.path);
    const otherPaths = (await other.requests()).filter((r) => r.userAgent === 'registry-mirror').map((r) => r.path);
    assert.ok(hubPaths.some((p) => p.includes(hubSmall.digest) || p.endsWith('/library/small/manifests/v1')));
    for (const b of otherSmall.blobs.filter((b) => !hubSmall.blobs.some((h) => h.digest === b.digest))) {
      assert.ok(!hubPaths.some((p) => p.includes(b.digest)), `docker.io was not asked for ${b.digest}`);
    }
    assert.ok(otherPaths.some((p) => p === '/v2/library/small/manifests/v1'));
    assert.ok(otherPaths.some((p) => p.startsWith('/v2/team/multi/')));
    assert.ok(![...hubPaths, ...otherPaths].some((p) => p.includes('ns=')));

    const viaNs = await fetch(`${mirror.url}/v2/library/small/manifests/v1?ns=${encodeURIComponent(secondWithPort)}`, { method: 'HEAD' });
    assert.equal(viaNs.headers.get('oci-namespace'), secondWithPort);
    assert.equal(viaNs.headers.get('docker-content-digest'), otherSmall.digest);
  });

  it('skopeo: a registry-host path prefix picks the upstream; no prefix is the default upstream', async () => {
    const out = tempDir('multi-skopeo');
    const viaPrefix = await skopeoCopyToDir(`${mirror.host}/${second}/library/small:v1`, join(out, 'other'));
    assert.equal(viaPrefix.manifestDigest, otherSmall.digest);
    const viaDefault = await skopeoCopyToDir(`${mirror.host}/library/small:v1`, join(out, 'hub'));
    assert.equal(viaDefault.manifestDigest, hubSmall.digest);
    const explicitHub = await skopeoCopyToDir(`${mirror.host}/docker.io/library/small:v1`, join(out, 'hub2'));
    assert.equal(explicitHub.manifestDigest, hubSmall.digest);
    const multi = await skopeoCopyToDir(`${mirror.host}/${second}/team/multi:v1`, join(out, 'multi'), { all: true });
    assert.equal(multi.manifestDigest, otherMulti.digest);
    // Only Docker Hub gets the implicit library/: "small" on the second registry is "small".
    const bare = await getManifestVia(mirror.url, `/v2/${second}/small/manifests/v1`);
    assert.equal(bare.status, 404);
    const bareHub = await getManifestVia(mirror.url, `/v2/small/manifests/v1`);
    assert.equal(bareHub.digest, hubSmall.digest);
  });
});

describe('the cross-repository rule', { timeout: 300_000 }, () => {
  let fixtures: FixtureSet;
  let registry: RegistryHandle;
  let mirror: MirrorHandle;
  let a: PushedImage;
  let c: PushedImage;
  let b: PushedImage;

  before(async () => {
    fixtures = await buildFixtures();
    registry = await startRegistry();
    a = await pushImage(fixtures.images.small, registry.host, { repository: 'team/a', tag: 'v1' });
    c = await pushImage(fixtures.images.small, registry.host, { repository: 'team/c', tag: 'v1' });
    // B exists upstream but holds other content.
    b = await pushImage(fixtures.images['multi-oci'], registry.host, { repository: 'team/b', tag: 'v1' });
    mirror = await startMirror({ upstreams: { 'docker.io': { url: registry.url } } });
  });

  after(async () => {
    await mirror?.stop();
    await registry?.stop();
  });

  it('a digest cached under A is not served under B (upstream lacks it) nor under a repository that does not exist', async () => {
    const layer = a.blobs.find((x) => !b.blobs.some((y) => y.digest === x.digest))!;
    const warm = await fetchHashed(`${mirror.url}/v2/team/a/blobs/${layer.digest}`);
    assert.equal(warm.digest, layer.digest);
    const manifest = await getManifestVia(mirror.url, `/v2/team/a/manifests/v1`);
    assert.equal(manifest.digest, a.digest);

    for (const repo of ['team/b', 'team/nothing-here']) {
      const get = await fetch(`${mirror.url}/v2/${repo}/blobs/${layer.digest}`);
      assert.equal(get.status, 404, repo);
      assert.equal(await ociError(get), 'BLOB_UNKNOWN', repo);
      const head = await fetch(`${mirror.url}/v2/${repo}/blobs/${layer.digest}`, { method: 'HEAD' });
      assert.equal(head.status, 404, repo);
      const m = await getManifestVia(mirror.url, `/v2/${repo}/manifests/${a.digest}`);
      assert.equal(m.status, 404, repo);
      assert.equal(JSON.parse(m.body.toString('utf8')).errors[0].code, 'MANIFEST_UNKNOWN', repo);
      // Asking again asks the upstream again: a refusal is not remembered as a link.
      const again = await fetch(`${mirror.url}/v2/${repo}/blobs/${layer.digest}`);
      assert.equal(again.status, 404);
      await again.arrayBuffer();
    }
    // Two GETs and one HEAD per repository, each answered by asking the upstream (HEAD).
    await registry.waitForRequestCount('HEAD', `/v2/team/b/blobs/${layer.digest}`, 3);
    await registry.waitForRequestCount('HEAD', `/v2/team/nothing-here/blobs/${layer.digest}`, 3);
    assert.equal(await registry.countRequests('GET', `/v2/team/b/blobs/${layer.digest}`), 0);
  });

  it('under C, which the upstream confirms has it, it is served from cache after one HEAD, no GET', async () => {
    const layer = a.blobs.find((x) => !b.blobs.some((y) => y.digest === x.digest))!;
    // The push itself HEADed and uploaded the blob: count only what comes after.
    const heads0 = await registry.countRequests('HEAD', `/v2/team/c/blobs/${layer.digest}`);
    const manifestGets0 = await registry.countRequests('GET', `/v2/team/c/manifests/`);
    const got = await fetchHashed(`${mirror.url}/v2/team/c/blobs/${layer.digest}`);
    assert.equal(got.status, 200);
    assert.equal(got.digest, layer.digest);
    const again = await fetchHashed(`${mirror.url}/v2/team/c/blobs/${layer.digest}`);
    assert.equal(again.digest, layer.digest);
    await registry.waitForRequestCount('HEAD', `/v2/team/c/blobs/${layer.digest}`, heads0 + 1);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(await registry.countRequests('HEAD', `/v2/team/c/blobs/${layer.digest}`), heads0 + 1, 'confirmed once, then linked');
    assert.equal(await registry.countRequests('GET', `/v2/team/c/blobs/${layer.digest}`), 0, 'bytes came from the cache');
    assert.equal(await registry.countRequests('GET', `/v2/team/a/blobs/${layer.digest}`), 1);
    const m = await getManifestVia(mirror.url, `/v2/team/c/manifests/${c.digest}`);
    assert.equal(m.status, 200);
    assert.equal(await registry.countRequests('GET', `/v2/team/c/manifests/`), manifestGets0);
  });
});
