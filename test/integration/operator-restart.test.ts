// kube-apiserver restarts while the operator watches: its informers reconnect (with backoff)
// and it keeps reconciling new and changed RegistryMirrors.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { kubeAvailable } from '../rig/kube.js';
import { sleep, tail, waitFor } from '../../tools/launch/proc.js';
import { createMirror, createNamespace, get, patchMirror, startClusterWithCrd, startInProcessOperator, waitMirror, type Cluster } from './operator-kit.js';

const skip = !kubeAvailable() && 'kube-apiserver not built (test/rig/build-kube.sh)';
let cluster: Cluster;
let op: Awaited<ReturnType<typeof startInProcessOperator>>;

before(async () => {
  if (skip) return;
  cluster = await startClusterWithCrd();
  await createNamespace(cluster.kube, 'ns-a');
  op = await startInProcessOperator(cluster);
});
after(async () => {
  await op?.stop();
  await cluster?.stop();
});

test('the operator recovers from an apiserver restart mid-watch', { skip }, async () => {
  const log = () => tail(readFileSync(op.logFile, 'utf8'), 30);
  await createMirror(cluster.kube, 'ns-a', 'before', { upstream: { registry: 'docker.io' } });
  await waitFor(() => get(cluster.kube, 'apps/v1', 'Deployment', 'ns-a', 'before'), 15_000, 'Deployment before').catch((e) => {
    throw new Error(`${e.message}\n${log()}`);
  });

  await cluster.stopApiserver();
  await sleep(2000); // watches drop, reconnects fail and back off
  await cluster.startApiserver();

  await createMirror(cluster.kube, 'ns-a', 'after', { upstream: { registry: 'quay.io' } });
  await patchMirror(cluster.kube, 'ns-a', 'before', { spec: { image: 'registry-mirror:after-restart' } });
  await waitFor(() => get(cluster.kube, 'apps/v1', 'Deployment', 'ns-a', 'after'), 40_000, 'Deployment created after the restart').catch((e) => {
    throw new Error(`${e.message}\n${log()}`);
  });
  await waitFor(
    async () => (await get(cluster.kube, 'apps/v1', 'Deployment', 'ns-a', 'before'))?.spec.template.spec.containers[0].image === 'registry-mirror:after-restart',
    40_000,
    'Deployment updated after the restart',
  );
  await waitMirror(cluster.kube, 'ns-a', 'before', (m) => m.status?.observedGeneration === 2, 'status after restart');

  const metrics = await (await fetch(`http://127.0.0.1:${op.healthPort}/metrics`)).text();
  const restarts = [...metrics.matchAll(/^registry_mirror_operator_informer_restart_total\{[^}]*\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
  assert.ok(restarts > 0, 'informer restarts are counted');
  assert.equal((await fetch(`http://127.0.0.1:${op.healthPort}/readyz`)).status, 200);
  assert.equal((await fetch(`http://127.0.0.1:${op.healthPort}/healthz`)).status, 200);
});
