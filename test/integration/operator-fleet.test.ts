// A fleet of mirror replicas on one bucket (spec.storage.s3 with replicas > 1) against a real
// kube-apiserver + etcd, the operator running with exactly the RBAC of deploy/rbac/operator.yaml:
// the Deployment (replicas, RollingUpdate 0/1, spread over nodes, MIRROR_CLUSTER_SELF from the
// pod IP), the headless peers Service, the PodDisruptionBudget in the version the apiserver
// serves (policy/v1beta1 on the rig's 1.20), the config's cluster section; scaling changes the
// Deployment alone. replicas > 1 on a PVC is still refused. Status: readyReplicas from the
// Deployment, and the figures of every ready pod's /stats (scraped pod by pod, not through a
// Service), the bucket's own counted once.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { Agent } from 'undici';
import { parse } from 'yaml';
import { detectPdbApiVersion } from '../../operator/kube/client.js';
import { commonLabels } from '../../operator/render/names.js';
import type { RegistryMirror } from '../../operator/types.js';
import { kubeAvailable } from '../rig/kube.js';
import { tail, waitFor } from '../../tools/launch/proc.js';
import { condition, createMirror, fakeReadyPod, get, getMirror, patchMirror, startInProcessOperator, waitMirror, type Cluster, startRbacCluster } from './operator-kit.js';

const NS = 'fleet';
const OPS_NS = 'registry-mirror-system';
const insecure = new Agent({ connect: { rejectUnauthorized: false } });

/** What the two fake pods' /stats answer, one after the other (both pods have 127.0.0.1). */
const POD_STATS = [
  { hits: 10, misses: 2, staleServed: 0, bytesServed: 1000, bytesFromUpstream: 300, storedBytes: 5000, blobs: 7, upstreamErrors: 0, upstreamBlobFetches: 4, blobsAdded: 4 },
  { hits: 5, misses: 3, staleServed: 1, bytesServed: 500, bytesFromUpstream: 200, storedBytes: 5100, blobs: 8, upstreamErrors: 1, upstreamBlobFetches: 2, blobsAdded: 1 },
];

describe('operator: a fleet on one bucket', { skip: !kubeAvailable() && 'kube-apiserver not built (test/rig/build-kube.sh)' }, () => {
  let cluster: Cluster;
  let op: Awaited<ReturnType<typeof startInProcessOperator>>;
  let stats: Server;
  let statsRequests = 0;

  before(async () => {
    cluster = await startRbacCluster(OPS_NS, [NS]);
    stats = createServer((req, res) => {
      const body = JSON.stringify(POD_STATS[statsRequests++ % 2]);
      res.writeHead(req.url === '/stats' ? 200 : 404, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
    await new Promise<void>((r) => stats.listen(0, '127.0.0.1', r));
    const statsPort = (stats.address() as AddressInfo).port;
    // The chart's permissions, not the admin's.
    op = await startInProcessOperator(cluster, ['--kubeconfig', cluster.kubeconfigFor('operator-user'), '--stats-port', String(statsPort), '--ca-namespace', OPS_NS]);
  });
  after(async () => {
    await op?.stop();
    await cluster?.stop();
    await new Promise((r) => stats?.close(r));
  });
  const dump = (err: unknown): never => {
    throw new Error(`${(err as Error).message}\n--- operator log ---\n${tail(readFileSync(op.logFile, 'utf8'), 40)}`);
  };
  const object = (apiVersion: string, kind: string, name: string, pred: (o: any) => boolean = () => true): Promise<any> =>
    waitFor(
      async () => {
        const o = await get(cluster.kube, apiVersion, kind, NS, name);
        return o && pred(o) ? o : undefined;
      },
      15_000,
      `${kind} ${name}`,
    ).catch(dump);
  const selector = { 'app.kubernetes.io/name': 'registry-mirror', 'app.kubernetes.io/instance': 'fleet' };

  test('replicas: 3 on a bucket: Deployment, headless peers Service, PodDisruptionBudget, cluster config', async () => {
    // Plain http: the stand-in pods' /stats server below speaks http (a TLS fleet: operator-tls.test.ts).
    await createMirror(cluster.kube, NS, 'fleet', { upstream: { registry: 'docker.io' }, replicas: 3, storage: { s3: { bucket: 'fleet-bucket' } }, tls: { mode: 'disabled' } });

    const dep = await object('apps/v1', 'Deployment', 'fleet');
    assert.equal(dep.spec.replicas, 3);
    assert.equal(dep.spec.strategy.type, 'RollingUpdate');
    assert.equal(dep.spec.strategy.rollingUpdate.maxUnavailable, 0);
    assert.equal(dep.spec.strategy.rollingUpdate.maxSurge, 1);
    const pod = dep.spec.template.spec;
    assert.deepEqual(pod.topologySpreadConstraints, [
      { maxSkew: 1, topologyKey: 'kubernetes.io/hostname', whenUnsatisfiable: 'ScheduleAnyway', labelSelector: { matchLabels: selector } },
    ]);
    assert.deepEqual(pod.containers[0].env, [
      { name: 'POD_IP', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'status.podIP' } } },
      { name: 'MIRROR_CLUSTER_SELF', value: '$(POD_IP):5000' },
    ]);
    assert.equal(pod.containers[0].readinessProbe.httpGet.path, '/readyz');
    assert.equal(pod.automountServiceAccountToken, false);

    const peers = await object('v1', 'Service', 'fleet-peers');
    assert.equal(peers.spec.clusterIP, 'None');
    assert.equal(peers.spec.publishNotReadyAddresses, true);
    assert.deepEqual(peers.spec.selector, selector);
    assert.deepEqual(
      peers.spec.ports.map((p: any) => [p.name, p.port, p.targetPort, p.protocol]),
      [['http', 5000, 'http', 'TCP']],
    );
    assert.equal(peers.metadata.ownerReferences[0].kind, 'RegistryMirror');
    const client = await object('v1', 'Service', 'fleet');
    assert.notEqual(client.spec.clusterIP, 'None', 'clients keep a ClusterIP of ready pods');

    // The rig runs kube-apiserver 1.20: policy/v1 came with 1.21.
    const version = (await (await fetch(`${cluster.server}/version`, { dispatcher: insecure } as RequestInit)).json()) as { minor: string };
    const expected = Number.parseInt(version.minor, 10) >= 21 ? 'policy/v1' : 'policy/v1beta1';
    assert.equal(await detectPdbApiVersion(cluster.kube), expected);
    const pdb = await object(expected, 'PodDisruptionBudget', 'fleet');
    assert.equal(pdb.spec.maxUnavailable, 1);
    assert.deepEqual(pdb.spec.selector, { matchLabels: selector });
    assert.equal(pdb.metadata.ownerReferences[0].kind, 'RegistryMirror');

    const config = parse((await object('v1', 'ConfigMap', 'fleet-config')).data['config.yaml']);
    assert.deepEqual(config.cluster, { peers: { dns: 'fleet-peers.fleet.svc', port: 5000 }, refresh: '5s' });
    assert.deepEqual(config.storage.s3, { bucket: 'fleet-bucket' });

    const cr = await waitMirror(cluster.kube, NS, 'fleet', (m) => condition(m, 'Degraded')?.status === 'False', 'fleet applied').catch(dump);
    assert.equal(condition(cr, 'Degraded')!.reason, 'AsExpected');
  });

  test('status: readyReplicas from the Deployment; cache figures of every ready pod, the bucket counted once', async () => {
    const dep = await object('apps/v1', 'Deployment', 'fleet');
    // No controller-manager runs: the Deployment status a controller would write.
    const res = await fetch(`${cluster.server}/apis/apps/v1/namespaces/${NS}/deployments/fleet/status`, {
      method: 'PATCH',
      headers: { authorization: `Bearer ${cluster.adminToken}`, 'content-type': 'application/merge-patch+json' },
      body: JSON.stringify({
        status: { observedGeneration: dep.metadata.generation, replicas: 3, updatedReplicas: 3, readyReplicas: 2, availableReplicas: 2 },
      }),
      dispatcher: insecure,
    } as RequestInit);
    assert.equal(res.status, 200, await res.text());
    const labels = commonLabels((await getMirror(cluster.kube, NS, 'fleet')) as RegistryMirror);
    await fakeReadyPod(cluster, NS, 'fleet-a', labels, '127.0.0.1');
    await fakeReadyPod(cluster, NS, 'fleet-b', labels, '127.0.0.1');

    const m = await waitMirror(
      cluster.kube,
      NS,
      'fleet',
      (x) => x.status?.readyReplicas === 2 && x.status?.cache?.pods === 2,
      'readyReplicas 2 and /stats of 2 pods',
    ).catch(dump);
    assert.match(condition(m, 'Ready')!.message, /\(2\/3 replicas ready\)/);
    const c = m.status!.cache!;
    assert.equal(c.hits, 15);
    assert.equal(c.misses, 5);
    assert.equal(c.hitRatio, 0.75);
    assert.equal(c.staleServed, 1);
    assert.equal(c.bytesServed, 1500);
    assert.equal(c.bytesFromUpstream, 500);
    assert.equal(c.upstreamErrors, 1);
    assert.equal(c.storedBytes, 5100, 'one bucket: the fullest view of it, not the sum');
    assert.equal(c.blobs, 8);
    assert.equal(c.upstreamBlobFetches, 6);
    assert.equal(c.blobsAdded, 5);
    assert.equal(c.fetchesPerBlob, 1.2);
  });

  test('scaling to 1 changes the Deployment alone: the config (no roll), peers Service and PDB stay', async () => {
    const cm = await object('v1', 'ConfigMap', 'fleet-config');
    const before = await object('apps/v1', 'Deployment', 'fleet');
    await patchMirror(cluster.kube, NS, 'fleet', { spec: { replicas: 1 } });
    const dep = await object('apps/v1', 'Deployment', 'fleet', (d) => d.spec.replicas === 1);
    assert.deepEqual(dep.spec.template, before.spec.template, 'same pod template');
    assert.equal((await object('v1', 'ConfigMap', 'fleet-config')).metadata.resourceVersion, cm.metadata.resourceVersion);
    assert.ok(await get(cluster.kube, 'v1', 'Service', NS, 'fleet-peers'));
  });

  test('replicas: 3 on a PVC (storage.size alone) is still refused; nothing is applied', async () => {
    await createMirror(cluster.kube, NS, 'on-disk', { upstream: { registry: 'docker.io' }, replicas: 3, storage: { size: '10Gi' } });
    const m = await waitMirror(cluster.kube, NS, 'on-disk', (x) => condition(x, 'Degraded')?.reason === 'InvalidSpec', 'on-disk refused').catch(dump);
    assert.match(condition(m, 'Degraded')!.message, /spec\.replicas is 3 but spec\.storage\.size puts the cache on one ReadWriteOnce volume/);
    assert.equal(condition(m, 'Ready')!.status, 'False');
    for (const [v, kind, name] of [['apps/v1', 'Deployment', 'on-disk'], ['v1', 'PersistentVolumeClaim', 'on-disk-cache'], ['v1', 'ConfigMap', 'on-disk-config']]) {
      assert.equal(await get(cluster.kube, v!, kind!, NS, name!), undefined, `${kind} not applied`);
    }
  });

  test('a name too long for <name>-peers is refused with s3', async () => {
    const name = `f${'x'.repeat(57)}`;
    await createMirror(cluster.kube, NS, name, { upstream: { registry: 'docker.io' }, replicas: 2, storage: { s3: { bucket: 'fleet-bucket' } } });
    const m = await waitMirror(cluster.kube, NS, name, (x) => condition(x, 'Degraded')?.reason === 'InvalidSpec', 'long name refused').catch(dump);
    assert.match(condition(m, 'Degraded')!.message, /with spec\.storage\.s3 it may have at most 57/);
    assert.equal(await get(cluster.kube, 'apps/v1', 'Deployment', NS, name), undefined);
  });
});
