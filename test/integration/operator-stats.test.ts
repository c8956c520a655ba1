// status.cache comes from a real mirror process's /stats: a Pod object (no kubelet runs it)
// is marked Ready with podIP 127.0.0.1, and the operator's --stats-port points at the mirror.
// Traffic through the mirror (a miss, then a hit, for a blob pushed to a real upstream
// registry) must show up in the RegistryMirror's status.
// The upstream sits behind the fault proxy, which passes everything through except what a test
// asks it to answer itself (the rate-limit headers Docker Hub sends).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, test } from 'node:test';
import { INSTANCE_LABEL, commonLabels } from '../../operator/render/names.js';
import { kubeAvailable } from '../rig/kube.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { waitFor } from '../../tools/launch/proc.js';
import { pushRandomImage, type RandomImage } from './helpers.js';
import {
  condition,
  createMirror,
  createNamespace,
  eventsAbout,
  fakeReadyPod,
  getMirror,
  startClusterWithCrd,
  startInProcessOperator,
  waitMirror,
  type Cluster,
} from './operator-kit.js';

const skip = !kubeAvailable() && 'kube-apiserver not built (test/rig/build-kube.sh)';
let cluster: Cluster;
let upstream: RegistryHandle;
let proxy: FaultProxyHandle;
let mirror: MirrorHandle;
let op: Awaited<ReturnType<typeof startInProcessOperator>>;
let prefetched: RandomImage;

before(async () => {
  if (skip) return;
  upstream = await startRegistry();
  prefetched = await pushRandomImage(upstream.url, 'warm/app', 'v1', [10_000], 'operator-stats-prefetch');
  proxy = await startFaultProxy(upstream.url);
  mirror = await startMirror({
    defaultUpstream: 'docker.io',
    upstreams: { 'docker.io': { url: proxy.url } },
    prefetch: [{ image: 'docker.io/warm/app:v1', pin: true }],
  });
  // Prefetch done before any figure is compared: it adds to storedBytes.
  await waitFor(async () => {
    const s = (await (await fetch(`${mirror.url}/stats`)).json()) as { prefetch?: Array<{ ready: boolean }> };
    return s.prefetch?.[0]?.ready || undefined;
  }, 20_000, 'prefetch ready');
  cluster = await startClusterWithCrd();
  await createNamespace(cluster.kube, 'stats');
  op = await startInProcessOperator(cluster, ['--stats-port', String(mirror.port)]);
});
after(async () => {
  await op?.stop();
  await cluster?.stop();
  await mirror?.stop();
  await proxy?.stop();
  await upstream?.stop();
});

async function pushBlob(repo: string, data: Buffer): Promise<string> {
  const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
  const start = await fetch(`${upstream.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  assert.equal(start.status, 202);
  const loc = new URL(start.headers.get('location')!, upstream.url);
  loc.searchParams.set('digest', digest);
  const put = await fetch(loc.toString(), { method: 'PUT', body: new Uint8Array(data), headers: { 'content-type': 'application/octet-stream' } });
  assert.equal(put.status, 201, await put.text());
  return digest;
}

test('status.cache is summed from the ready mirror pods\' /stats', { skip }, async () => {
  const data = Buffer.from('a layer of bytes '.repeat(1000));
  const digest = await pushBlob('library/demo', data);
  for (let i = 0; i < 2; i++) {
    const res = await fetch(`${mirror.url}/v2/library/demo/blobs/${digest}?ns=docker.io`);
    assert.equal(res.status, 200);
    assert.equal(Buffer.from(await res.arrayBuffer()).length, data.length);
  }
  const direct = (await (await fetch(`${mirror.url}/stats`)).json()) as Record<string, number>;
  assert.ok(direct.hits >= 1 && direct.misses >= 1, `mirror counted a miss and a hit: ${JSON.stringify(direct)}`);

  // Plain http: the mirror process stands in for the pod and serves http.
  const cr = await createMirror(cluster.kube, 'stats', 'hub', { upstream: { registry: 'docker.io' }, tls: { mode: 'disabled' } });
  // The pod a Deployment would have made: our labels, Ready, reachable at 127.0.0.1.
  await fakeReadyPod(cluster, 'stats', 'hub-abc12', { ...commonLabels(cr), [INSTANCE_LABEL]: 'hub' }, '127.0.0.1');

  const withCache = await waitMirror(cluster.kube, 'stats', 'hub', (m) => (m.status?.cache?.hits ?? 0) >= 1, 'status.cache from /stats', 20_000);
  const c = withCache.status!.cache!;
  const now = (await (await fetch(`${mirror.url}/stats`)).json()) as Record<string, number>;
  assert.equal(c.pods, 1);
  assert.equal(c.hits, now.hits);
  assert.equal(c.misses, now.misses);
  assert.equal(c.bytesServed, now.bytesServed);
  assert.equal(c.storedBytes, now.storedBytes);
  assert.equal(c.blobs, now.blobs);
  assert.ok(c.bytesServed >= 2 * data.length);
  assert.equal(c.hitRatio, Math.round((now.hits / (now.hits + now.misses)) * 10_000) / 10_000);
  assert.ok(c.stored.length > 0);
  assert.ok(condition(withCache, 'Degraded'));

  // More traffic moves the figures; an idle mirror causes no further status writes.
  await fetch(`${mirror.url}/v2/library/demo/blobs/${digest}?ns=docker.io`).then((r) => r.arrayBuffer());
  const moved = await waitMirror(cluster.kube, 'stats', 'hub', (m) => (m.status?.cache?.hits ?? 0) > c.hits, 'hits to grow', 20_000);
  const rv = (await getMirror(cluster.kube, 'stats', 'hub')).metadata.resourceVersion;
  await new Promise((r) => setTimeout(r, 2500)); // more than two --status-interval periods
  assert.equal((await getMirror(cluster.kube, 'stats', 'hub')).metadata.resourceVersion, rv, 'no write while the figures stand still');
  assert.ok(moved.status!.cache!.updated >= c.updated);
});

test('status.prefetch reports each prefetched image from the pods\' /stats', { skip }, async () => {
  const m = await waitMirror(cluster.kube, 'stats', 'hub', (x) => (x.status?.prefetch?.length ?? 0) > 0, 'status.prefetch', 20_000);
  assert.deepEqual(m.status!.prefetch, [
    { image: 'docker.io/warm/app:v1', digest: prefetched.digest, bytes: prefetched.totalBytes, ready: true, readyPods: 1, pinned: true },
  ]);
});

test('an upstream rate limit under 10% is status.rateLimits and a Warning Event UpstreamRateLimitLow', { skip }, async () => {
  const image = await pushRandomImage(upstream.url, 'limited/app', 'v1', [1000], 'operator-stats-limited');
  const direct = await fetch(`${upstream.url}/v2/limited/app/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
  const body = Buffer.from(await direct.arrayBuffer());
  // Docker Hub's answer to an anonymous pull with 4 of 100 pulls left in its 6-hour window.
  proxy.respondWith('/v2/limited/app/manifests/', {
    status: 200,
    headers: {
      'content-type': direct.headers.get('content-type')!,
      'docker-content-digest': image.digest,
      'ratelimit-limit': '100;w=21600',
      'ratelimit-remaining': '4;w=21600',
    },
    body,
  });
  const pulled = await fetch(`${mirror.url}/v2/limited/app/manifests/v1?ns=docker.io`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
  assert.equal(pulled.status, 200, await pulled.text());

  const m = await waitMirror(cluster.kube, 'stats', 'hub', (x) => (x.status?.rateLimits?.length ?? 0) > 0, 'status.rateLimits', 20_000);
  const [limit] = m.status!.rateLimits!;
  assert.deepEqual({ ...limit, observedAt: undefined }, { upstream: 'docker.io', limit: 100, remaining: 4, windowSeconds: 21600, observedAt: undefined });
  assert.ok(Date.parse(limit!.observedAt) > Date.now() - 60_000);
  const event = await waitFor(
    async () => (await eventsAbout(cluster.kube, 'stats', m.metadata.uid)).find((e) => e.reason === 'UpstreamRateLimitLow'),
    20_000,
    'UpstreamRateLimitLow Event',
  );
  assert.equal(event!.type, 'Warning');
  assert.match(event!.note!, /docker\.io.*100 per 21600s/);
});
