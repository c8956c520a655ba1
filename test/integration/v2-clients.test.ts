// containerd and skopeo pull every fixture through the mirror; with the upstream stopped the
// same pulls succeed from the cache alone.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildFixtures, pushFixtures, FIXTURE_NAMES, type FixtureName } from '../fixtures/images.js';
import type { PushedImage } from '../../tools/oci/oci-client.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { startContainerd, writeHostsToml, type ContainerdHandle } from '../rig/containerd.js';
import { skopeoCopyToDir } from '../../tools/launch/skopeo.js';
import { tempDir } from '../../tools/launch/proc.js';

describe('real clients pull through the mirror', { timeout: 600_000 }, () => {
  let upstream: RegistryHandle;
  let mirror: MirrorHandle;
  let containerd: ContainerdHandle;
  let pushed: Record<FixtureName, PushedImage>;
  let hostsDir: string;

  before(async () => {
    upstream = await startRegistry();
    pushed = await pushFixtures(await buildFixtures(), upstream.host);
    mirror = await startMirror({ upstreams: { 'docker.io': { url: upstream.url } } });
    containerd = await startContainerd();
    hostsDir = tempDir('hosts');
    // The fallback server refuses connections: a pull that succeeds went through the mirror.
    writeHostsToml(hostsDir, 'docker.io', mirror.url, { server: 'http://127.0.0.1:9' });
  });

  after(async () => {
    await containerd?.stop();
    await mirror?.stop();
    await upstream?.stop();
  });

  it('containerd pulls every fixture via hosts.toml, sending ?ns=docker.io', async () => {
    for (const name of FIXTURE_NAMES) {
      await containerd.pull(`docker.io/${pushed[name].repository}:${pushed[name].tag}`, { hostsDir });
    }
    const log = mirror.logText();
    assert.match(log, /ns=docker\.io/);
    const have = new Set(await containerd.contentDigests());
    assert.ok(have.has(pushed.big.bigLayer!.digest), 'the 100 MB layer arrived');
  });

  it('skopeo copies every fixture; digests equal a direct copy', async () => {
    const out = mkdtempSync(join(tmpdir(), 'skopeo-'));
    for (const name of FIXTURE_NAMES) {
      const p = pushed[name];
      const all = p.manifests.length > 1;
      const direct = await skopeoCopyToDir(`${upstream.host}/${p.repository}:${p.tag}`, join(out, `${name}-direct`), { all });
      const viaMirror = await skopeoCopyToDir(`${mirror.host}/${p.repository}:${p.tag}`, join(out, `${name}-mirror`), { all });
      assert.equal(viaMirror.manifestDigest, direct.manifestDigest, name);
      assert.equal(viaMirror.manifestDigest, p.digest, name);
    }
  });

  it('with the upstream stopped, the same pulls succeed from cache', async () => {
    await upstream.stop();
    await containerd.removeAllContent();
    for (const name of FIXTURE_NAMES) {
      await containerd.pull(`docker.io/${pushed[name].repository}:${pushed[name].tag}`, { hostsDir });
    }
    const out = mkdtempSync(join(tmpdir(), 'skopeo-offline-'));
    for (const name of FIXTURE_NAMES) {
      const p = pushed[name];
      const got = await skopeoCopyToDir(`${mirror.host}/${p.repository}:${p.tag}`, join(out, name), { all: p.manifests.length > 1 });
      assert.equal(got.manifestDigest, p.digest);
    }
    const stats = (await (await fetch(`${mirror.url}/stats`)).json()) as { hits: number; blobs: number };
    assert.ok(stats.hits > 0 && stats.blobs > 0, JSON.stringify(stats));
  });
});
