// A registry backed by object storage answers blob GETs with a redirect to a pre-signed URL
// on another host. The mirror follows it, but its Authorization belongs to the registry only:
// the storage host must never see it.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { buildFixtures, pushImage } from '../fixtures/images.js';
import type { PushedImage } from '../../tools/oci/oci-client.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { cachedSoon, fetchHashed } from './helpers.js';

describe('upstream redirects to blob storage', { timeout: 120_000 }, () => {
  let registry: RegistryHandle;
  let storage: RegistryHandle;
  let front: FaultProxyHandle;
  let storageFront: FaultProxyHandle;
  let mirror: MirrorHandle;
  let image: PushedImage;

  before(async () => {
    const fixtures = await buildFixtures();
    registry = await startRegistry({ auth: { htpasswd: { users: { alice: 's3cret' } } } });
    image = await pushImage(fixtures.images.small, registry.host, { creds: 'alice:s3cret' });
    // "Blob storage": another origin holding the same bytes, reachable without credentials.
    storage = await startRegistry();
    await pushImage(fixtures.images.small, storage.host);
    front = await startFaultProxy(registry.url);
    storageFront = await startFaultProxy(storage.url);
    mirror = await startMirror({ upstreams: { 'docker.io': { url: front.url, username: 'alice', password: 's3cret' } } });
  });

  after(async () => {
    await mirror?.stop();
    await front?.stop();
    await storageFront?.stop();
    await registry?.stop();
    await storage?.stop();
  });

  it('follows the redirect without sending Authorization to the other origin', async () => {
    for (const blob of image.blobs) front.redirectBlob(blob.digest, storageFront.url);
    // As a client would, the manifest first: the mirror meets the registry's auth challenge.
    const manifest = await fetch(`${mirror.url}/v2/${image.repository}/manifests/${image.tag}`);
    assert.equal(manifest.status, 200);
    await manifest.arrayBuffer();
    for (const blob of image.blobs) {
      const got = await fetchHashed(`${mirror.url}/v2/${image.repository}/blobs/${blob.digest}`);
      assert.equal(got.status, 200);
      assert.equal(got.digest, blob.digest);
      assert.ok(await cachedSoon(mirror.dataDir, blob.digest));
    }
    const redirected = front.requests().filter((e) => e.fault === 'redirect');
    assert.equal(redirected.length, image.blobs.length);
    assert.ok(redirected.every((e) => e.authorization?.startsWith('Basic ')), 'the registry itself got the credentials');
    const atStorage = storageFront.requests().filter((e) => e.path.includes('/blobs/'));
    assert.equal(atStorage.length, image.blobs.length);
    for (const e of atStorage) assert.equal(e.authorization, undefined, `Authorization leaked to ${e.path}`);
  });
});
