// Issue 12 items 5 and 6 (and 4 on the real apiserver): memory stays bounded whatever tenants
// create or a mirror pod answers.
//  - The /stats scraper against real HTTP servers standing in for hostile mirror pods (nothing
//    real plays one): no redirect followed, bodies cut at STATS_MAX_BYTES, a time limit, only
//    figures accepted, and pods scraped STATS_PARALLELISM at a time by the controller.
//  - On a real kube-apiserver: the CRD refuses oversized values at admission (422) and accepts
//    real-world ones; the operator's caches hold transformed objects only.
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { Agent } from 'undici';
import { Controller } from '../../operator/controller.js';
import { createMetrics } from '../../operator/metrics.js';
import { INSTANCE_LABEL, MANAGED_BY, MANAGED_SELECTOR, commonLabels } from '../../operator/render/names.js';
import { httpStatsFetcher, STATS_MAX_BYTES, STATS_PARALLELISM } from '../../operator/stats-scraper.js';
import { GROUP, PLURAL, VERSION } from '../../operator/types.js';
import { kubeAvailable } from '../rig/kube.js';
import { waitFor } from '../../tools/launch/proc.js';
import { createMirror, createNamespace, fakeReadyPod, getMirror, startClusterWithCrd, type Cluster } from './operator-kit.js';

const STATS = { hits: 3, misses: 1, staleServed: 0, bytesServed: 10, bytesFromUpstream: 5, storedBytes: 7, blobs: 2, upstreamErrors: 0 };

async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ server: Server; url: string; close: () => Promise<void> }> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    server,
    url,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

describe('the /stats scraper and hostile pods', () => {
  test('a redirect is not followed (a 302 to a metadata-like path never lands in status.cache)', async () => {
    let metadataHits = 0;
    const metadata = await serve((_req, res) => {
      metadataHits++;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ ...STATS, hits: 999_999 }));
    });
    const pod = await serve((_req, res) => {
      res.writeHead(302, { location: `${metadata.url}/latest/meta-data/` });
      res.end();
    });
    try {
      await assert.rejects(httpStatsFetcher(2000)(`${pod.url}/stats`), /answered 302 \(redirects are not followed\)/);
      assert.equal(metadataHits, 0);
    } finally {
      await pod.close();
      await metadata.close();
    }
  });

  test(`a huge body is cut after ${STATS_MAX_BYTES} bytes: bytes sent and RSS stay bounded`, async () => {
    let sent = 0;
    const total = 200 * 2 ** 20;
    const chunk = Buffer.alloc(64 * 1024, 0x31);
    const pod = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"hits":');
      const pump = () => {
        while (sent < total) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end('}');
      };
      res.on('close', () => (sent = Math.max(sent, 0)));
      pump();
    });
    try {
      const rss0 = process.memoryUsage().rss;
      const t0 = Date.now();
      await assert.rejects(httpStatsFetcher(10_000)(`${pod.url}/stats`), new RegExp(`more than ${STATS_MAX_BYTES} bytes`));
      const grew = process.memoryUsage().rss - rss0;
      await new Promise((r) => setTimeout(r, 200));
      assert.ok(Date.now() - t0 < 3000, 'cut without waiting for the body');
      assert.ok(sent < 32 * 2 ** 20, `the server could send only ${(sent / 2 ** 20).toFixed(1)} MiB (socket buffers), not 200 MiB`);
      assert.ok(grew < 40 * 2 ** 20, `RSS grew ${(grew / 2 ** 20).toFixed(1)} MiB`);
    } finally {
      await pod.close();
    }
  });

  test('a declared Content-Length over the cap is refused before reading; a slow body hits the time limit', async () => {
    const big = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(250 * 2 ** 20) });
      res.write('{');
    });
    const slow = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      const t = setInterval(() => res.write(' '), 100);
      res.on('close', () => clearInterval(t));
    });
    try {
      await assert.rejects(httpStatsFetcher(5000)(`${big.url}/stats`), /announced 262144000 bytes/);
      const t0 = Date.now();
      await assert.rejects(httpStatsFetcher(600)(`${slow.url}/stats`), /did not answer within 600 ms/);
      assert.ok(Date.now() - t0 < 2000);
    } finally {
      await big.close();
      await slow.close();
    }
  });

  test('only figures are accepted: wrong types are refused, unknown fields dropped', async () => {
    let body = '';
    const pod = await serve((_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(body);
    });
    try {
      const fetchStats = httpStatsFetcher(2000);
      for (const bad of [JSON.stringify({ ...STATS, hits: '999' }), JSON.stringify({ ...STATS, blobs: { a: 1 } }), JSON.stringify([STATS]), 'not json', JSON.stringify({ ...STATS, hits: -5 })]) {
        body = bad;
        await assert.rejects(fetchStats(`${pod.url}/stats`), /not mirror stats|not JSON/, bad);
      }
      body = JSON.stringify({ ...STATS, evil: 'x'.repeat(50_000) });
      const ok = await fetchStats(`${pod.url}/stats`);
      assert.deepEqual(ok, STATS);
    } finally {
      await pod.close();
    }
  });
});

const skip = !kubeAvailable() && 'kube-apiserver not built (test/rig/build-kube.sh)';

describe('on a real kube-apiserver', { skip }, () => {
  let cluster: Cluster;
  let controller: Controller | undefined;
  let concurrent = 0;
  let maxConcurrent = 0;
  let scrapes = 0;
  let stats: Awaited<ReturnType<typeof serve>>;
  const NS = 'bounds';
  const OTHER = 'tenant-x';

  before(async () => {
    cluster = await startClusterWithCrd();
    await createNamespace(cluster.kube, NS);
    await createNamespace(cluster.kube, OTHER);
    stats = await serve((_req, res) => {
      scrapes++;
      maxConcurrent = Math.max(maxConcurrent, ++concurrent);
      setTimeout(() => {
        concurrent--;
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify(STATS));
      }, 250);
    });
  });
  after(async () => {
    await controller?.stop();
    await stats?.close();
    await cluster?.stop();
  });

  const create = (namespace: string, name: string, spec: unknown) =>
    cluster.kube.custom.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      plural: PLURAL,
      namespace,
      body: { apiVersion: `${GROUP}/${VERSION}`, kind: 'RegistryMirror', metadata: { name, namespace }, spec },
    });

  test('the CRD refuses oversized values at admission (422) and keeps real-world ones', async () => {
    const refused: Array<[string, unknown]> = [
      ['huge-limit', { upstream: { registry: 'docker.io' }, resources: { limits: { memory: '1'.repeat(1_400_000) } } }],
      ['long-request', { upstream: { registry: 'docker.io' }, resources: { requests: { cpu: '1'.repeat(65) } } }],
      ['not-quantity', { upstream: { registry: 'docker.io' }, resources: { requests: { memory: 'lots' } } }],
    ];
    for (const [name, spec] of refused) {
      await assert.rejects(create(NS, name, spec), (err: any) => err?.code === 422, name);
    }
    // Real-world values pass; keys the schema does not name are pruned (they cannot carry a huge key).
    await create(NS, 'real', {
      upstream: { registry: 'docker.io' },
      resources: { requests: { cpu: '250m', memory: '256Mi', 'ephemeral-storage': '2Gi' }, limits: { cpu: 2, memory: '1Gi', 'hugepages-2Mi': '0' } },
    });
    await create(NS, 'key', { upstream: { registry: 'docker.io' }, resources: { limits: { ['k'.repeat(1_000_000)]: '1', memory: '1Gi' } } });
    const real = await getMirror(cluster.kube, NS, 'real');
    assert.deepEqual(real.spec.resources, { requests: { cpu: '250m', memory: '256Mi', 'ephemeral-storage': '2Gi' }, limits: { cpu: 2, memory: '1Gi', 'hugepages-2Mi': '0' } });
    assert.deepEqual((await getMirror(cluster.kube, NS, 'key')).spec.resources, { limits: { memory: '1Gi' } });
    // The status is bounded too (conditions, messages, strings).
    const insecure = new Agent({ connect: { rejectUnauthorized: false } });
    const patchStatus = (status: unknown) =>
      fetch(`${cluster.server}/apis/${GROUP}/${VERSION}/namespaces/${NS}/${PLURAL}/real/status`, {
        method: 'PATCH',
        headers: { authorization: `Bearer ${cluster.adminToken}`, 'content-type': 'application/merge-patch+json' },
        body: JSON.stringify({ status }),
        // @ts-expect-error undici dispatcher
        dispatcher: insecure,
      });
    const now = new Date().toISOString();
    assert.equal((await patchStatus({ endpoint: 'e'.repeat(2000) })).status, 422);
    assert.equal((await patchStatus({ conditions: [{ type: 'Ready', status: 'True', message: 'm'.repeat(40_000), lastTransitionTime: now }] })).status, 422);
    assert.equal((await patchStatus({ cache: { stored: 's'.repeat(100) } })).status, 422);
    const many = Array.from({ length: 17 }, (_, i) => ({ type: `T${i}`, status: 'True', lastTransitionTime: now }));
    assert.equal((await patchStatus({ conditions: many })).status, 422);
    assert.equal((await patchStatus({ endpoint: 'http://real.bounds.svc:5000', conditions: [{ type: 'Ready', status: 'False', reason: 'X', message: 'm'.repeat(2000), lastTransitionTime: now }] })).status, 200);
  });

  test(`the operator's caches hold transformed objects; /stats is scraped ${STATS_PARALLELISM} pods at a time`, async () => {
    const big = 'x'.repeat(200_000);
    // A tenant's RegistryMirror with a big annotation (kubectl's last-applied-configuration does this).
    await cluster.kube.custom.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      plural: PLURAL,
      namespace: OTHER,
      body: {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: 'RegistryMirror',
        metadata: { name: 'annotated', namespace: OTHER, annotations: { note: big }, labels: { team: 'x' } },
        spec: { upstream: { registry: 'quay.io' } },
      },
    });
    // Secrets in any namespace, no RegistryMirror needed: 1 MiB tokens keys of one-character lines.
    for (let i = 0; i < 3; i++) {
      await cluster.kube.objects.create({
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: { name: `tokens-${i}`, namespace: OTHER },
        stringData: { tokens: 'a\n'.repeat(400 * 1024), other: big },
      } as any);
    }
    // Objects carrying our managed-by label that a tenant made, with big payloads.
    await cluster.kube.objects.create({
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'fake-config', namespace: OTHER, labels: { 'app.kubernetes.io/managed-by': MANAGED_BY, [INSTANCE_LABEL]: 'annotated' }, annotations: { note: big } },
      data: { blob: big },
    } as any);

    // Plain http: the fake pods' /stats server speaks http (TLS scraping: operator-tls.test.ts).
    const cr = await createMirror(cluster.kube, NS, 'hub', { upstream: { registry: 'docker.io' }, tls: { mode: 'disabled' } });
    const PODS = 20;
    for (let i = 0; i < PODS; i++) {
      await fakeReadyPod(cluster, NS, `hub-${i}`, { ...commonLabels(cr), [INSTANCE_LABEL]: 'hub' }, '127.0.0.1');
    }

    const log = pino({ level: 'debug' }, createWriteStream(join(cluster.dir, 'bounds-operator.log'), { flags: 'a' }));
    controller = new Controller({
      kube: cluster.kube,
      log,
      metrics: createMetrics(),
      defaultImage: 'registry-mirror:test',
      statusIntervalMs: 1000,
      resyncIntervalMs: 60_000,
      statsPort: Number(new URL(stats.url).port),
      fetchStats: httpStatsFetcher(3000),
    });
    await controller.start();

    // status.cache comes from all 20 pods, never more than STATS_PARALLELISM scraped at once.
    const withCache = await waitFor(async () => {
      const m = await getMirror(cluster.kube, NS, 'hub');
      return m.status?.cache?.pods === PODS ? m : undefined;
    }, 60_000, 'status.cache from all pods');
    assert.ok(withCache);
    assert.equal(withCache.status!.cache!.hits, STATS.hits * PODS);
    assert.ok(scrapes >= PODS);
    assert.ok(maxConcurrent <= STATS_PARALLELISM, `at most ${STATS_PARALLELISM} scrapes at once, saw ${maxConcurrent}`);
    assert.ok(maxConcurrent >= 2, `scrapes do run in parallel (saw ${maxConcurrent})`);

    await waitFor(() => controller!.cached().secrets.length >= 3 && controller!.cached().owned.some((o) => o.metadata?.name === 'fake-config'), 20_000, 'caches filled');
    const cached = controller.cached();
    const sizes = Object.fromEntries(Object.entries(cached).map(([k, list]) => [k, Math.max(...list.map((o) => JSON.stringify(o).length))]));
    for (const [kind, list] of Object.entries(cached)) {
      for (const o of list) {
        const text = JSON.stringify(o);
        assert.ok(!text.includes('xxxxxxxxxxxxxxxx'), `${kind} ${o.metadata?.name}: no annotation, label or data payload kept`);
        assert.equal((o.metadata as any)?.managedFields, undefined, `${kind}: no managedFields`);
        assert.equal((o.metadata as any)?.annotations?.note, undefined);
        assert.ok(text.length < 8192, `${kind} ${o.metadata?.name} is ${text.length} bytes`);
      }
    }
    const secret = cached.secrets.find((s) => s.metadata?.name === 'tokens-0') as any;
    assert.equal(secret.data, undefined);
    assert.equal(secret.auth.tokens.problemCount, 400 * 1024);
    assert.equal(secret.auth.tokens.problems.length, 3);
    const pod = cached.pods.find((p) => p.metadata?.name === 'hub-0') as any;
    assert.deepEqual(Object.keys(pod).sort(), ['apiVersion', 'kind', 'metadata', 'status']);
    assert.deepEqual(pod.metadata.labels, { [INSTANCE_LABEL]: 'hub' });
    const annotated = cached.registryMirrors.find((m) => m.metadata?.name === 'annotated') as any;
    assert.deepEqual(annotated.spec.upstream, { registry: 'quay.io' });
    assert.equal(annotated.metadata.labels, undefined);
    assert.ok(annotated.labelsDigest);
    assert.ok(MANAGED_SELECTOR.length > 0);
    console.log(`largest cached object per kind (bytes): ${JSON.stringify(sizes)}`);
  });
});
