// OCI 1.1 referrers through the mirror (issue 19, item 1).
//
// (a) docker-registry 2.8 has no referrers API (it answers 404): referrer artifacts are
//     attached to a fixture image the way clients do it for such a registry, as an OCI index
//     under the referrers tag `sha256-<hex>`; the mirror answers the API from that tag,
//     applying the artifactType filter itself, and serves its cached answer stale when the
//     upstream (behind the fault proxy) is gone.
// (b) An upstream that serves the referrers API (the scripted server, well-behaved here: no
//     registry with the API installs on this machine): proxied, its OCI-Filters-Applied passed
//     through, cached within tagTTL, refreshed after, served stale on 503.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { after, before, beforeEach, describe, it } from 'node:test';
import { buildFixtures, pushImage } from '../fixtures/images.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startHostileUpstream, type HostileUpstream } from '../rig/hostile-upstream.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { MEDIA, type PushedImage } from '../../tools/oci/oci-client.js';
import { sleep } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { getMetrics, getStats, metricValue, ociError } from './helpers.js';

const tagTTLMs = 1000;
const sigType = 'application/vnd.example.signature.v1';
const sbomType = 'application/vnd.example.sbom.v1';
const emptyType = 'application/vnd.oci.empty.v1+json';
const sha = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const emptyIndexJson = { schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: [] };

interface Desc {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

async function putBlob(registryUrl: string, repository: string, bytes: Buffer): Promise<Desc> {
  const digest = sha(bytes);
  const start = await fetch(`${registryUrl}/v2/${repository}/blobs/uploads/`, { method: 'POST' });
  await start.arrayBuffer();
  assert.equal(start.status, 202, `upload start ${repository}`);
  const loc = new URL(start.headers.get('location')!, registryUrl);
  loc.searchParams.set('digest', digest);
  const put = await fetch(loc, { method: 'PUT', body: new Uint8Array(bytes), headers: { 'content-type': 'application/octet-stream' } });
  await put.arrayBuffer();
  assert.equal(put.status, 201, `upload ${repository}@${digest}`);
  return { mediaType: 'application/octet-stream', digest, size: bytes.length };
}

async function putManifest(registryUrl: string, repository: string, reference: string, mediaType: string, bytes: Buffer): Promise<string> {
  const res = await fetch(`${registryUrl}/v2/${repository}/manifests/${reference}`, { method: 'PUT', body: new Uint8Array(bytes), headers: { 'content-type': mediaType } });
  const text = await res.text();
  assert.equal(res.status, 201, `manifest ${repository}:${reference}: ${text}`);
  return sha(bytes);
}

/** An artifact manifest (OCI 1.1 image manifest with artifactType and subject) with a tiny layer. */
async function pushReferrer(registryUrl: string, repository: string, subject: PushedImage, artifactType: string, content: string): Promise<Desc> {
  const config = await putBlob(registryUrl, repository, Buffer.from('{}'));
  const layer = await putBlob(registryUrl, repository, Buffer.from(content));
  const annotations = { 'org.example.content': content };
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA.ociManifest,
      artifactType,
      config: { mediaType: emptyType, digest: config.digest, size: config.size },
      layers: [{ mediaType: 'application/vnd.example.blob', digest: layer.digest, size: layer.size }],
      subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
      annotations,
    }),
  );
  // Pushed by digest (untagged), as clients push referrers.
  const digest = await putManifest(registryUrl, repository, sha(manifest), MEDIA.ociManifest, manifest);
  return { mediaType: MEDIA.ociManifest, digest, size: manifest.length, artifactType, annotations };
}

async function referrers(base: string, path: string, method = 'GET') {
  const res = await fetch(`${base}${path}`, { method });
  const body = Buffer.from(await res.arrayBuffer());
  return { status: res.status, headers: res.headers, body, json: body.length > 0 && method === 'GET' ? JSON.parse(body.toString('utf8')) : undefined };
}

const referrersCount = async (mirror: MirrorHandle, result: string) =>
  metricValue(await getMetrics(mirror.url), 'registry_mirror_requests_total', { api: 'v2', kind: 'referrers', result }) ?? 0;

describe('referrers from the tag schema (docker-registry 2.8)', { timeout: 300_000 }, () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  let small: PushedImage;
  let sig: Desc;
  let sbom: Desc;
  let path: string;

  before(async () => {
    const fixtures = await buildFixtures();
    registry = await startRegistry();
    small = await pushImage(fixtures.images.small, registry.host, { repository: 'team/signed', tag: 'v1' });
    sig = await pushReferrer(registry.url, small.repository, small, sigType, 'signature of small');
    sbom = await pushReferrer(registry.url, small.repository, small, sbomType, 'sbom of small');
    const tag = `sha256-${small.digest.slice('sha256:'.length)}`;
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: [sig, sbom] }));
    await putManifest(registry.url, small.repository, tag, MEDIA.ociIndex, index);
    proxy = await startFaultProxy(registry.url);
    mirror = await startMirror({ cache: { tagTTL: '1s' }, upstreams: { 'docker.io': { url: proxy.url, deny: ['team/forbidden'] } } });
    path = `/v2/${small.repository}/referrers/${small.digest}`;
  });

  after(async () => {
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it('the upstream has no referrers API: the mirror answers from the referrers tag', async () => {
    const direct = await fetch(`${registry.url}${path}`);
    await direct.arrayBuffer();
    assert.equal(direct.status, 404, 'docker-registry 2.8 has no referrers API');
    const miss0 = await referrersCount(mirror, 'miss');
    const r = await referrers(mirror.url, path);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-type'), MEDIA.ociIndex);
    assert.equal(r.headers.get('oci-filters-applied'), null, 'no filter asked, none applied');
    assert.equal(r.json.mediaType, MEDIA.ociIndex);
    assert.deepEqual(
      r.json.manifests.map((d: Desc) => [d.digest, d.artifactType]).sort(),
      [
        [sig.digest, sigType],
        [sbom.digest, sbomType],
      ].sort(),
    );
    assert.equal(proxy.countRequests('GET', path), 1, 'asked the API once');
    assert.ok(proxy.countRequests('GET', `/manifests/sha256-${small.digest.slice(7)}`) >= 1, 'then the referrers tag');
    assert.equal((await referrersCount(mirror, 'miss')) - miss0, 1);
    // Each referrer is then a manifest by digest, through the mirror like any other.
    const m = await fetch(`${mirror.url}/v2/${small.repository}/manifests/${sig.digest}`, { headers: { accept: MEDIA.ociManifest } });
    assert.equal(m.status, 200);
    assert.equal(sha(Buffer.from(await m.arrayBuffer())), sig.digest);
  });

  it('artifactType filters, applied by the mirror (OCI-Filters-Applied)', async () => {
    const r = await referrers(mirror.url, `${path}?artifactType=${encodeURIComponent(sbomType)}`);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('oci-filters-applied'), 'artifactType');
    assert.deepEqual(r.json.manifests, [sbom]);
    const none = await referrers(mirror.url, `${path}?artifactType=${encodeURIComponent('application/vnd.example.other')}`);
    assert.equal(none.status, 200);
    assert.equal(none.headers.get('oci-filters-applied'), 'artifactType');
    assert.deepEqual(none.json.manifests, []);
  });

  it('a digest nothing refers to gets 200 and the empty index; HEAD answers alike', async () => {
    const lonely = `/v2/${small.repository}/referrers/${sha('nothing refers to this')}`;
    const r = await referrers(mirror.url, lonely);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-type'), MEDIA.ociIndex);
    assert.deepEqual(r.json, emptyIndexJson);
    const head = await referrers(mirror.url, lonely, 'HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), String(r.body.length));
    // An unknown repository has no referrers either.
    assert.deepEqual((await referrers(mirror.url, `/v2/team/never-pushed/referrers/${small.digest}`)).json, emptyIndexJson);
  });

  it('validates like the other routes: bad digest 400, bad name 400, denied name 403, ?ns= routing', async () => {
    const bad = await fetch(`${mirror.url}/v2/${small.repository}/referrers/sha256:not-hex`);
    assert.equal(bad.status, 400);
    assert.equal(await ociError(bad), 'DIGEST_INVALID');
    const badName = await fetch(`${mirror.url}/v2/Team/UPPER/referrers/${small.digest}`);
    assert.equal(badName.status, 400);
    assert.equal(await ociError(badName), 'NAME_INVALID');
    const denied = await fetch(`${mirror.url}/v2/team/forbidden/referrers/${small.digest}`);
    assert.equal(denied.status, 403);
    assert.equal(await ociError(denied), 'DENIED');
    const push = await fetch(`${mirror.url}${path}`, { method: 'PUT' });
    assert.equal(push.status, 405);
    const longType = await fetch(`${mirror.url}${path}?artifactType=${'a'.repeat(300)}`);
    assert.equal(longType.status, 400);
    const viaNs = await referrers(mirror.url, `${path}?ns=docker.io`);
    assert.equal(viaNs.status, 200);
    assert.equal(viaNs.headers.get('oci-namespace'), 'docker.io');
    assert.equal(viaNs.json.manifests.length, 2);
    const unknownNs = await fetch(`${mirror.url}${path}?ns=nowhere.example.test`);
    assert.equal(unknownNs.status, 404);
    assert.equal(await ociError(unknownNs), 'NAME_UNKNOWN');
  });

  it('cached like a tag: nothing asked within tagTTL; the upstream stopped, served stale and counted', async () => {
    await sleep(tagTTLMs + 200);
    assert.equal((await referrers(mirror.url, path)).status, 200, 'refreshed');
    const apiGets = proxy.countRequests('GET', path);
    const again = await referrers(mirror.url, path);
    assert.equal(again.json.manifests.length, 2);
    assert.equal(proxy.countRequests('GET', path), apiGets, 'within tagTTL: from memory');
    const stats0 = await getStats(mirror.url);
    const stale0 = await referrersCount(mirror, 'stale');
    await sleep(tagTTLMs + 200);
    await proxy.stop();
    const stale = await referrers(mirror.url, path);
    assert.equal(stale.status, 200);
    assert.deepEqual(stale.body, again.body, 'the last answer, byte for byte');
    const filtered = await referrers(mirror.url, `${path}?artifactType=${encodeURIComponent(sbomType)}`);
    assert.equal(filtered.status, 200);
    assert.deepEqual(filtered.json.manifests, [sbom]);
    assert.equal(filtered.headers.get('oci-filters-applied'), 'artifactType');
    assert.equal((await referrersCount(mirror, 'stale')) - stale0, 2);
    assert.equal((await getStats(mirror.url)).staleServed - stats0.staleServed, 2);
    assert.match(mirror.logText(), /serving stale referrers/);
    // Never asked before and the upstream gone: no answer to make up.
    const unknown = await fetch(`${mirror.url}/v2/team/other/referrers/${small.digest}`);
    assert.equal(unknown.status, 503);
    assert.equal(await ociError(unknown), 'UNAVAILABLE');
    // Answers are held in memory, but the referrers tag's index is in the store: after a
    // restart with the upstream still gone, it is served stale from there.
    await mirror.restart();
    const afterRestart = await referrers(mirror.url, `${path}?artifactType=${encodeURIComponent(sigType)}`);
    assert.equal(afterRestart.status, 200);
    assert.deepEqual(afterRestart.json.manifests, [sig]);
    assert.equal(await referrersCount(mirror, 'stale'), 1);
  });
});

describe('referrers from an upstream with the referrers API', { timeout: 120_000 }, () => {
  let api: HostileUpstream;
  let mirror: MirrorHandle;
  const subject = sha('the subject image');
  const other = sha('another subject');
  const paged = sha('a subject with two pages of referrers');
  const descs: Desc[] = [
    { mediaType: MEDIA.ociManifest, digest: sha('sig'), size: 10, artifactType: sigType, annotations: { n: '1' } },
    { mediaType: MEDIA.ociManifest, digest: sha('sbom'), size: 11, artifactType: sbomType },
    { mediaType: MEDIA.ociIndex, digest: sha('nested'), size: 12 },
  ];
  const indexOf = (manifests: Desc[]) => Buffer.from(`${JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests }, null, 2)}\n`);
  let apiStatus = 200;

  const send = (res: ServerResponse, body: Buffer, headers: Record<string, string> = {}) => {
    res.writeHead(200, { 'content-type': MEDIA.ociIndex, 'content-length': body.length, ...headers });
    res.end(body);
  };

  function script(): void {
    // A registry with the API: filters when asked (and says so), pages when it likes.
    api.route('GET', new RegExp(`^/v2/team/app/referrers/${subject}$`), (_req, res, url) => {
      if (apiStatus !== 200) {
        res.writeHead(apiStatus, { 'content-type': 'application/json' });
        res.end('{"errors":[{"code":"UNAVAILABLE","message":"scripted"}]}');
        return;
      }
      const type = url.searchParams.get('artifactType');
      if (type === null) return send(res, indexOf(descs));
      send(res, indexOf(descs.filter((d) => d.artifactType === type)), { 'oci-filters-applied': 'artifactType' });
    });
    // One that ignores the filter.
    api.route('GET', new RegExp(`^/v2/team/app/referrers/${other}$`), (_req, res) => send(res, indexOf(descs)));
    api.route('GET', new RegExp(`^/v2/team/app/referrers/${paged}$`), (_req, res, url) => {
      if (url.searchParams.get('page') === '2') return send(res, indexOf(descs.slice(1)));
      send(res, indexOf(descs.slice(0, 1)), { link: `</v2/team/app/referrers/${paged}?page=2>; rel="next"` });
    });
    api.route('GET', /^\/v2\/team\/app\/referrers\/sha256:0{64}$/, (_req, res) => {
      res.writeHead(200, { 'content-type': MEDIA.ociIndex, 'content-length': String(5 << 20) });
      res.end();
    });
  }

  const apiGets = (digest: string) => api.requests().filter((r) => r.method === 'GET' && r.path.startsWith(`/v2/team/app/referrers/${digest}`)).length;

  before(async () => {
    api = await startHostileUpstream();
    mirror = await startMirror({ cache: { tagTTL: '1s' }, upstreams: { 'api.example.test': { url: api.url } } });
  });

  after(async () => {
    await mirror?.stop();
    await api?.stop();
  });

  beforeEach(() => {
    api.reset();
    apiStatus = 200;
    script();
  });

  it('proxies the answer as it came, cached within tagTTL, refreshed after', async () => {
    const path = `/v2/team/app/referrers/${subject}`;
    const r = await referrers(mirror.url, path);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-type'), MEDIA.ociIndex);
    assert.deepEqual(r.body, indexOf(descs), 'the upstream bytes');
    assert.equal(apiGets(subject), 1);
    const again = await referrers(mirror.url, `/v2/api.example.test/team/app/referrers/${subject}`);
    assert.deepEqual(again.body, r.body, 'path prefix routing, same cached answer');
    assert.equal(apiGets(subject), 1, 'within tagTTL: not asked again');
    await sleep(tagTTLMs + 200);
    await referrers(mirror.url, path);
    assert.equal(apiGets(subject), 2, 'refreshed after tagTTL');
    assert.equal(api.requests().filter((q) => q.path.includes('/manifests/')).length, 0, 'no tag schema look-up when the API answers');
  });

  it("passes the filter on and the upstream's OCI-Filters-Applied through; applies it itself when the upstream did not", async () => {
    const r = await referrers(mirror.url, `/v2/team/app/referrers/${subject}?artifactType=${encodeURIComponent(sigType)}`);
    assert.equal(r.headers.get('oci-filters-applied'), 'artifactType');
    assert.deepEqual(r.body, indexOf([descs[0]!]), "the upstream's filtered bytes");
    assert.ok(api.requests().some((q) => q.path.endsWith(`?artifactType=${encodeURIComponent(sigType)}`)), 'the filter went upstream');
    const ignored = await referrers(mirror.url, `/v2/team/app/referrers/${other}?artifactType=${encodeURIComponent(sbomType)}`);
    assert.equal(ignored.headers.get('oci-filters-applied'), 'artifactType');
    assert.deepEqual(ignored.json.manifests, [descs[1]]);
  });

  it('follows the upstream Link pages and joins them', async () => {
    const r = await referrers(mirror.url, `/v2/team/app/referrers/${paged}`);
    assert.equal(r.status, 200);
    assert.deepEqual(r.json.manifests, descs);
    assert.equal(r.headers.get('link'), null, 'one page to the client');
  });

  it('a list past 4 MiB is refused before it is read', async () => {
    const r = await fetch(`${mirror.url}/v2/team/app/referrers/sha256:${'0'.repeat(64)}`);
    assert.equal(r.status, 502);
    assert.equal(await ociError(r), 'MANIFEST_INVALID');
  });

  it('upstream 503 after tagTTL: the last answer is served stale and counted', async () => {
    const path = `/v2/team/app/referrers/${subject}`;
    await sleep(tagTTLMs + 200);
    const fresh = await referrers(mirror.url, path);
    const stale0 = await referrersCount(mirror, 'stale');
    await sleep(tagTTLMs + 200);
    apiStatus = 503;
    const r = await referrers(mirror.url, path);
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, fresh.body);
    assert.equal((await referrersCount(mirror, 'stale')) - stale0, 1);
    assert.ok(apiGets(subject) >= 3, 'the mirror did ask (and retried)');
    apiStatus = 200;
    await referrers(mirror.url, path);
    assert.equal((await referrersCount(mirror, 'stale')) - stale0, 1, 'fresh again once the upstream answers');
  });
});
