// Content negotiation through the mirror, against the real docker-registry 2.8.2: what a tag
// resolves to depends on the client's Accept exactly as at the upstream, whatever other
// clients asked before. distribution converts a schema 2 manifest to schema 1 on the fly for
// an Accept without schema 2 (a manifest list: its linux/amd64 image, converted too when
// needed), and answers 404 to an OCI manifest or index whose type the Accept lacks (checked
// here against the upstream itself, in the first test).
//
// The Accept sets are the real clients': Docker 20.10 (one Accept line per type of
// distribution.ManifestMediaTypes(), in Go map order), containerd 1.6, skopeo 1.9
// (containers/image: one line per type), crane (one line, comma-joined), curl (*/* or none),
// Docker 1.10-17.x (schema 2 + schema 1), and the schema-1-only and schema-2-only requests of
// issue 13. With no Accept or only */*, the mirror asks the upstream for every type (its best
// answer, not distribution's schema 1 conversion): that is what those clients must get.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { request } from 'node:http';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { defaultAccept, manifestMediaTypes as mt } from '../../mirror/manifest-class.js';
import { buildFixtures, pushImage, type FixtureSet } from '../fixtures/images.js';
import type { PushedImage } from '../../tools/oci/oci-client.js';
import { startContainerd, writeHostsToml, type ContainerdHandle } from '../rig/containerd.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { run, sleep, tempDir } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { skopeoInspectDigest } from '../../tools/launch/skopeo.js';

type Accept = string | string[] | undefined;

const ACCEPTS: Record<string, Accept> = {
  'schema1 only': mt.schema1Signed,
  'no Accept': undefined,
  'schema2 only': mt.dockerManifest,
  'curl */*': '*/*',
  'docker 20.10': [mt.schema1Signed, 'application/json', mt.dockerManifest, mt.dockerList, mt.ociIndex, mt.ociManifest],
  containerd: [mt.dockerManifest, mt.dockerList, mt.ociManifest, mt.ociIndex, '*/*'].join(', '),
  skopeo: [mt.ociManifest, mt.dockerManifest, mt.schema1Signed, mt.schema1, mt.dockerList, mt.ociIndex],
  crane: [mt.dockerManifest, mt.ociManifest, mt.schema1, mt.schema1Signed, mt.dockerList, mt.ociIndex].join(','),
  'docker 1.10': [mt.dockerManifest, mt.schema1Signed, 'application/json'],
  'oci only': `${mt.ociIndex}, ${mt.ociManifest}`,
  'docker only': `${mt.dockerList}, ${mt.dockerManifest}`,
};

interface Answer {
  status: number;
  digest: string | undefined;
  contentType: string | undefined;
  body: Buffer;
}

/** A manifest request with the Accept exactly as given: none, one line, or one line per type. */
function ask(base: string, path: string, method: 'GET' | 'HEAD', accept: Accept): Promise<Answer> {
  const u = new URL(base);
  const headers: Record<string, string | string[]> = {};
  if (accept !== undefined) headers.accept = accept;
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path, method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          digest: res.headers['docker-content-digest'] as string | undefined,
          contentType: res.headers['content-type']?.split(';')[0],
          body: Buffer.concat(chunks),
        }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** What the mirror must answer: the upstream's answer to the Accept it forwards. */
function forwarded(accept: Accept): Accept {
  const named = (Array.isArray(accept) ? accept : (accept ?? '').split(',')).map((a) => a.split(';')[0]!.trim());
  return named.some((t) => (Object.values(mt) as string[]).includes(t)) ? accept : defaultAccept;
}

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const short = (a: Answer) => `${a.status} ${a.contentType?.replace(/^application\/vnd\./, '') ?? '-'} ${a.digest?.slice(0, 19) ?? '-'}`;

describe('content negotiation: every client gets what the upstream gives its Accept', { timeout: 600_000 }, () => {
  let fixtures: FixtureSet;
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  let revalidating: MirrorHandle;
  let containerd: ContainerdHandle | undefined;
  const pushed: Record<string, PushedImage> = {};

  before(async () => {
    fixtures = await buildFixtures();
    registry = await startRegistry();
    for (const name of ['docker-v2', 'multi-docker', 'multi-oci', 'small'] as const) pushed[name] = await pushImage(fixtures.images[name], registry.host);
    proxy = await startFaultProxy(registry.url);
    // Long tagTTL: everything after the first answer per class comes from the cache.
    mirror = await startMirror({ upstreams: { 'docker.io': { url: registry.url } } });
    revalidating = await startMirror({ cache: { tagTTL: '1s' }, upstreams: { 'docker.io': { url: proxy.url } } });
  });

  after(async () => {
    await containerd?.stop();
    await revalidating?.stop();
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it('the upstream itself: distribution 2.8.2 converts and picks by Accept (what the other tests rely on)', async () => {
    const dv2 = `/v2/${pushed['docker-v2']!.repository}/manifests/v1`;
    const s1 = await ask(registry.url, dv2, 'GET', mt.schema1Signed);
    assert.equal(s1.contentType, mt.schema1Signed, 'schema 2 converted to schema 1 for a schema-1-only Accept');
    assert.notEqual(s1.digest, pushed['docker-v2']!.digest);
    assert.equal((await ask(registry.url, dv2, 'GET', undefined)).contentType, mt.schema1Signed, 'and for no Accept at all');
    const multi = `/v2/${pushed['multi-docker']!.repository}/manifests/v1`;
    const amd64 = pushed['multi-docker']!.manifests.find((m) => m.platform === 'linux/amd64')!;
    assert.equal((await ask(registry.url, multi, 'GET', mt.dockerManifest)).digest, amd64.digest, 'a list answers schema 2 only with its amd64 image');
    assert.equal((await ask(registry.url, `/v2/${pushed['multi-oci']!.repository}/manifests/v1`, 'GET', mt.dockerManifest)).status, 404);
  });

  it('GET and HEAD: each Accept gets the digest the upstream gives it, whatever was asked before', async () => {
    const problems: string[] = [];
    // Three rounds: the first fills the cache in the order that broke it (schema 1 and
    // schema 2 only first), the second is served from it, the third in reverse order.
    const order = Object.keys(ACCEPTS);
    for (const round of [order, order, [...order].reverse()]) {
      for (const name of ['docker-v2', 'multi-docker', 'multi-oci', 'small']) {
        const path = `/v2/${pushed[name]!.repository}/manifests/v1`;
        for (const client of round) {
          const accept = ACCEPTS[client];
          const want = await ask(registry.url, path, 'GET', forwarded(accept));
          for (const method of ['GET', 'HEAD'] as const) {
            const got = await ask(mirror.url, path, method, accept);
            const same = got.status === want.status && (want.status !== 200 || (got.digest === want.digest && got.contentType === want.contentType));
            if (!same) problems.push(`${name} ${client} ${method}: mirror ${short(got)}, upstream ${short(want)}`);
            if (method === 'GET' && got.status === 200 && got.contentType !== mt.schema1Signed && sha256(got.body) !== got.digest) {
              problems.push(`${name} ${client}: body does not hash to ${got.digest}`);
            }
          }
        }
      }
    }
    assert.deepEqual(problems, []);
  });

  it('issue 13 as reported: one schema-1-only or schema-2-only GET first, then every modern client', async () => {
    const problems: string[] = [];
    const modern = ['docker 20.10', 'containerd', 'skopeo', 'crane', 'curl */*', 'no Accept'];
    for (const first of ['schema1 only', 'schema2 only']) {
      for (const fixture of ['docker-v2', 'multi-docker'] as const) {
        // A tag nobody has asked for yet.
        const repo = `first/${first.replace(/ /g, '-')}-${fixture}`;
        await pushImage(fixtures.images[fixture], registry.host, { repository: repo, tag: 'v1' });
        const path = `/v2/${repo}/manifests/v1`;
        const firstAnswer = await ask(mirror.url, path, 'GET', ACCEPTS[first]);
        assert.equal(firstAnswer.digest, (await ask(registry.url, path, 'GET', ACCEPTS[first])).digest, `${repo}: ${first}`);
        for (const client of modern) {
          const want = await ask(registry.url, path, 'GET', forwarded(ACCEPTS[client]));
          for (const method of ['GET', 'HEAD'] as const) {
            const got = await ask(mirror.url, path, method, ACCEPTS[client]);
            if (got.digest !== want.digest || got.contentType !== want.contentType) problems.push(`${repo} ${client} ${method}: mirror ${short(got)}, upstream ${short(want)}`);
          }
        }
      }
    }
    assert.deepEqual(problems, []);
  });

  it('after schema-2-only requests, skopeo and containerd still get the list and pull arm64', async () => {
    for (const name of ['multi-docker', 'multi-oci']) {
      const p = pushed[name]!;
      // The request that used to replace the list with the amd64 image for everyone.
      await ask(mirror.url, `/v2/${p.repository}/manifests/v1`, 'GET', mt.dockerManifest);
      await ask(mirror.url, `/v2/${p.repository}/manifests/v1`, 'HEAD', mt.dockerManifest);
      assert.equal(await skopeoInspectDigest(`${mirror.host}/${p.repository}:v1`), p.digest, `${name}: skopeo resolves the list`);
      const arm64 = p.manifests.find((m) => m.platform.startsWith('linux/arm64'))!;
      const dir = join(tempDir('negotiation-skopeo'), name);
      const authFile = join(tempDir('negotiation-auth'), 'auth.json');
      writeFileSync(authFile, '{"auths":{}}');
      await run(
        'skopeo',
        ['--insecure-policy', '--override-arch', 'arm64', 'copy', '--quiet', '--src-tls-verify=false', `docker://${mirror.host}/${p.repository}:v1`, `dir:${dir}`],
        { timeoutMs: 120_000, env: { REGISTRY_AUTH_FILE: authFile } },
      );
      assert.equal(sha256(readFileSync(join(dir, 'manifest.json'))), arm64.digest, `${name}: skopeo --override-arch arm64 pulled the arm64 image`);
    }
    containerd = await startContainerd();
    const hostsDir = tempDir('negotiation-hosts');
    writeHostsToml(hostsDir, 'docker.io', mirror.url, { server: 'http://127.0.0.1:9' });
    for (const name of ['multi-docker', 'multi-oci']) {
      const p = pushed[name]!;
      await containerd.pull(`docker.io/${p.repository}:v1`, { hostsDir, platform: 'linux/arm64' });
      const have = new Set(await containerd.contentDigests());
      assert.ok(have.has(p.digest), `${name}: containerd resolved the list`);
      assert.ok(have.has(p.manifests.find((m) => m.platform.startsWith('linux/arm64'))!.digest), `${name}: and pulled the arm64 manifest`);
    }
  });

  it('revalidation is per class, with that class\'s Accept; a moved tag and stale serving too', async () => {
    const repo = 'team/negotiated';
    await pushImage(fixtures.images['docker-v2'], registry.host, { repository: repo, tag: 'v1' });
    const path = `/v2/${repo}/manifests/v1`;
    const docker = ACCEPTS['docker 20.10'];
    const upstream = async (accept: Accept) => (await ask(registry.url, path, 'GET', accept)).digest;
    const s1Digest = await upstream(mt.schema1Signed);
    const s2Digest = await upstream(docker);
    assert.notEqual(s1Digest, s2Digest);
    assert.equal((await ask(revalidating.url, path, 'GET', mt.schema1Signed)).digest, s1Digest);
    assert.equal((await ask(revalidating.url, path, 'GET', docker)).digest, s2Digest);
    // Past tagTTL: one HEAD per class confirms each mapping (a HEAD with another class's
    // Accept would see another digest and GET the manifest again).
    await sleep(1200);
    const heads0 = proxy.countRequests('HEAD', path);
    const gets0 = proxy.countRequests('GET', path);
    assert.equal((await ask(revalidating.url, path, 'GET', mt.schema1Signed)).digest, s1Digest);
    assert.equal((await ask(revalidating.url, path, 'HEAD', docker)).digest, s2Digest);
    assert.equal((await ask(revalidating.url, path, 'GET', ACCEPTS.containerd)).digest, s2Digest, 'containerd: same class, confirmed already');
    assert.equal(proxy.countRequests('HEAD', path) - heads0, 2, 'one HEAD per class');
    assert.equal(proxy.countRequests('GET', path) - gets0, 0, 'both confirmed: no GET');

    // The tag moves: each class follows it with its own Accept.
    await pushImage(fixtures.images.small, registry.host, { repository: repo, tag: 'v1', format: 'v2s2' });
    const s1Moved = await upstream(mt.schema1Signed);
    const s2Moved = await upstream(docker);
    assert.notEqual(s2Moved, s2Digest);
    await sleep(1200);
    assert.equal((await ask(revalidating.url, path, 'GET', docker)).digest, s2Moved);
    assert.equal((await ask(revalidating.url, path, 'GET', mt.schema1Signed)).digest, s1Moved);
    assert.equal((await ask(revalidating.url, path, 'GET', ACCEPTS.skopeo)).digest, s2Moved);

    // Upstream down past tagTTL: each class is served its own mapping, stale.
    await sleep(1200);
    proxy.failNext(path, 503, 100);
    try {
      const s1 = await ask(revalidating.url, path, 'GET', mt.schema1Signed);
      const s2 = await ask(revalidating.url, path, 'GET', ACCEPTS.crane);
      assert.deepEqual([s1.status, s1.digest, s1.contentType], [200, s1Moved, mt.schema1Signed]);
      assert.deepEqual([s2.status, s2.digest, s2.contentType], [200, s2Moved, mt.dockerManifest]);
    } finally {
      proxy.clear();
    }
  });
});
