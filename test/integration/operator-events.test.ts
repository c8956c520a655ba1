// Issue 18 item 1 on a real kube-apiserver: the operator, running with exactly the RBAC of
// deploy/rbac/operator.yaml, records events.k8s.io/v1 Events on RegistryMirrors for objects
// applied, a Degraded reason, replicas ready and lost, and a storage shrink refused. The
// operator resyncs every 100 ms (a forced hot loop): a no-op reconcile records nothing, and a
// Degraded reason found on every reconcile is one Event whose series count stops at the rate
// bound (BURST per object and reason) instead of a storm.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { EventsV1Event } from '@kubernetes/client-node';
import { BURST } from '../../operator/events.js';
import { OPERATOR_CONTROLLER } from '../../operator/event-reasons.js';
import { kubeAvailable } from '../rig/kube.js';
import { waitFor } from '../../tools/launch/proc.js';
import { createMirror, eventsAbout, get, patchMirror, patchStatus, startInProcessOperator, waitMirror, type Cluster, startRbacCluster } from './operator-kit.js';

const skip = !kubeAvailable() && 'kube-apiserver not built (test/rig/build-kube.sh)';
const OPS_NS = 'registry-mirror-system';
const NS = 'ev';
const IDENTITY = 'operator-0';
let cluster: Cluster;
let op: Awaited<ReturnType<typeof startInProcessOperator>>;

before(async () => {
  if (skip) return;
  cluster = await startRbacCluster(OPS_NS, [NS]);
  op = await startInProcessOperator(cluster, [
    '--kubeconfig',
    cluster.kubeconfigFor('operator-user'),
    '--identity',
    IDENTITY,
    '--ca-namespace',
    OPS_NS,
    '--resync-interval',
    '100ms',
  ]);
});
after(async () => {
  await op?.stop();
  await cluster?.stop();
});

const summary = (e: EventsV1Event) => `${e.type} ${e.reason} ${e.action} "${e.note}" x${e.series?.count ?? 1}`;

async function waitEvent(uid: string, pred: (e: EventsV1Event) => boolean, what: string, timeoutMs = 20_000): Promise<EventsV1Event> {
  let seen: EventsV1Event[] = [];
  try {
    return await waitFor(
      async () => {
        seen = await eventsAbout(cluster.kube, NS, uid);
        return seen.find(pred) as EventsV1Event;
      },
      timeoutMs,
      what,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}; events: ${JSON.stringify(seen.map(summary))}\n(operator log: ${op.logFile})`);
  }
}

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${op.healthPort}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name));
  return line ? Number(line.split(' ').pop()) : 0;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('objects applied are Normal Events, one per object and change; no-op reconciles record none', { skip }, async () => {
  const cr = await createMirror(cluster.kube, NS, 'hub', { upstream: { registry: 'docker.io' }, storage: { size: '2Gi' } });
  const uid = cr.metadata.uid;
  const created = await waitEvent(uid, (e) => e.reason === 'Applied' && e.note === 'Created Deployment "hub"', 'Applied Create Deployment');
  assert.equal(created.type, 'Normal');
  assert.equal(created.action, 'Create');
  assert.equal(created.reportingController, OPERATOR_CONTROLLER);
  assert.equal(created.reportingInstance, IDENTITY);
  assert.deepEqual(
    { kind: created.regarding?.kind, name: created.regarding?.name, namespace: created.regarding?.namespace, apiVersion: created.regarding?.apiVersion },
    { kind: 'RegistryMirror', name: 'hub', namespace: NS, apiVersion: cr.apiVersion },
  );
  for (const obj of ['ConfigMap', 'PersistentVolumeClaim', 'Service']) {
    await waitEvent(uid, (e) => e.reason === 'Applied' && e.action === 'Create' && e.note!.startsWith(`Created ${obj} `), `Applied Create ${obj}`);
  }
  const before = (await eventsAbout(cluster.kube, NS, uid)).filter((e) => e.reason === 'Applied');
  // Twenty resyncs and more: every one a no-op.
  await sleep(2500);
  const afterIdle = (await eventsAbout(cluster.kube, NS, uid)).filter((e) => e.reason === 'Applied');
  assert.deepEqual(afterIdle.map(summary).sort(), before.map(summary).sort(), 'no-op reconciles recorded nothing');
  assert.ok(afterIdle.every((e) => e.series === undefined));

  // The admin's default node policy keeps namespace ev off the nodes: a Warning too.
  const refused = await waitEvent(uid, (e) => e.reason === 'NamespaceNotAllowed', 'NamespaceNotAllowed');
  assert.equal(refused.type, 'Warning');
  assert.equal(refused.action, 'ConfigureNodes');

  await patchMirror(cluster.kube, NS, 'hub', { spec: { image: 'registry-mirror:other' } });
  const updated = await waitEvent(uid, (e) => e.reason === 'Applied' && e.note === 'Updated Deployment "hub"', 'Applied Update Deployment');
  assert.equal(updated.action, 'Update');
});

test('replicas ready and replicas lost are Events on readyReplicas transitions', { skip }, async () => {
  const cr = await waitMirror(cluster.kube, NS, 'hub', (m) => m.status?.observedGeneration === m.metadata.generation, 'hub reconciled');
  const uid = cr.metadata.uid;
  const path = `/apis/apps/v1/namespaces/${NS}/deployments/hub`;
  const dep = await get(cluster.kube, 'apps/v1', 'Deployment', NS, 'hub');
  const generation = dep!.metadata.generation;
  // The Deployment controller's part (no controller-manager runs here).
  await patchStatus(cluster, path, { observedGeneration: generation, replicas: 1, updatedReplicas: 1, readyReplicas: 1, availableReplicas: 1 });
  const ready = await waitEvent(uid, (e) => e.reason === 'ReplicasReady', 'ReplicasReady');
  assert.equal(ready.type, 'Normal');
  assert.equal(ready.note, '1/1 replicas ready');
  await patchStatus(cluster, path, { observedGeneration: generation, replicas: 1, updatedReplicas: 1, readyReplicas: 0, availableReplicas: 0 });
  const lost = await waitEvent(uid, (e) => e.reason === 'ReplicasLost', 'ReplicasLost');
  assert.equal(lost.type, 'Warning');
  assert.equal(lost.note, '0/1 replicas ready (was 1)');
});

test('a storage shrink refused is a Warning Event', { skip }, async () => {
  const cr = await patchMirror(cluster.kube, NS, 'hub', { spec: { storage: { size: '1Gi' } } });
  const e = await waitEvent(cr.metadata.uid, (x) => x.reason === 'StorageShrinkRefused', 'StorageShrinkRefused');
  assert.equal(e.type, 'Warning');
  assert.match(e.note!, /cannot shrink/);
});

test('a Degraded reason found on every reconcile of a hot loop is one Event, its series bounded by the rate limit', { skip }, async () => {
  const limitedBefore = await metric('registry_mirror_operator_events_total{result="rate_limited"}');
  const cr = await createMirror(cluster.kube, NS, 'locked', { upstream: { registry: 'quay.io', credentialsSecret: { name: 'missing' } } });
  const uid = cr.metadata.uid;
  const first = await waitEvent(uid, (e) => e.reason === 'CredentialsSecretNotFound', 'CredentialsSecretNotFound');
  assert.equal(first.type, 'Warning');
  assert.equal(first.action, 'Reconcile');
  assert.match(first.note!, /Secret "missing"/);
  // Reconciled every 100 ms: the series grows to BURST (the first Event is one of them), then stops.
  const full = await waitEvent(uid, (e) => e.reason === 'CredentialsSecretNotFound' && e.series?.count === BURST, `series count ${BURST}`);
  await sleep(2000);
  const all = (await eventsAbout(cluster.kube, NS, uid)).filter((e) => e.reason === 'CredentialsSecretNotFound');
  assert.equal(all.length, 1, `one Event, not one per reconcile: ${JSON.stringify(all.map(summary))}`);
  assert.equal(all[0]!.metadata?.name, full.metadata?.name);
  assert.equal(all[0]!.series?.count, BURST, 'no write beyond the rate bound');
  assert.ok(all[0]!.series!.lastObservedTime, 'the series says when it was last seen');
  assert.ok((await metric('registry_mirror_operator_events_total{result="rate_limited"}')) > limitedBefore + 5, 'the hot loop went on; its Events were dropped');
  assert.equal(await metric('registry_mirror_operator_events_total{result="failed"}'), 0, 'every write the RBAC allows went through');
});
