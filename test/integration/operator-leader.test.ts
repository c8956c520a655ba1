// Two operator processes with leader election on a Lease, each running with exactly the RBAC
// of deploy/rbac/operator.yaml: only the Lease holder reconciles; when it is killed the other
// takes over; SIGTERM stops a process cleanly and releases the Lease.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { kubeAvailable } from '../rig/kube.js';
import { startProcess, tail, waitFor, type ProcessHandle } from '../../tools/launch/proc.js';
import { createMirror, get, REPO, waitMirror, type Cluster, startRbacCluster } from './operator-kit.js';

const skip = !kubeAvailable() && 'kube-apiserver not built (test/rig/build-kube.sh)';
const OPS_NS = 'registry-mirror-system';
let cluster: Cluster;
const procs: ProcessHandle[] = [];

before(async () => {
  if (skip) return;
  cluster = await startRbacCluster(OPS_NS, ['apps']);
});
after(async () => {
  for (const p of procs) await p.stop(5000);
  await cluster?.stop();
});

function startOperatorProcess(identity: string): ProcessHandle {
  const main = join(REPO, 'dist/operator/main.js');
  const p = startProcess({
    cmd: process.execPath,
    args: [
      '--input-type=module',
      '-e',
      `import { runOperator } from ${JSON.stringify(main)}; await runOperator(process.argv.slice(1));`,
      '--',
      '--kubeconfig', cluster.kubeconfigFor('operator-user'),
      '--leader-elect',
      '--lease-namespace', OPS_NS,
      '--lease-duration', '3s',
      '--renew-deadline', '2s',
      '--retry-period', '500ms',
      '--identity', identity,
      '--health-host', '127.0.0.1',
      '--health-port', '0',
      '--mirror-image', 'registry-mirror:test',
    ],
    logFile: join(cluster.dir, `${identity}.log`),
  });
  procs.push(p);
  return p;
}

async function holder(): Promise<string | undefined> {
  const lease: any = await cluster.kube.coordination.readNamespacedLease({ namespace: OPS_NS, name: 'registry-mirror-operator' }).catch(() => undefined);
  return lease?.spec?.holderIdentity || undefined;
}
const created = (p: ProcessHandle, name: string) => p.logText().split('\n').some((l) => l.includes('"msg":"created"') && l.includes(`apps/${name}`));

test('only the Lease holder reconciles; the standby takes over when it dies', { skip }, async () => {
  const a = startOperatorProcess('op-a');
  await waitFor(async () => (await holder()) === 'op-a', 20_000, 'op-a to hold the Lease').catch((e) => {
    throw new Error(`${e.message}\n${tail(a.logText())}`);
  });
  const b = startOperatorProcess('op-b');
  await waitFor(() => b.logText().includes('"msg":"operator started"'), 20_000, 'op-b started');

  await createMirror(cluster.kube, 'apps', 'one', { upstream: { registry: 'docker.io' } });
  await waitFor(() => get(cluster.kube, 'apps/v1', 'Deployment', 'apps', 'one'), 20_000, 'Deployment one').catch((e) => {
    throw new Error(`${e.message}\n${tail(a.logText())}`);
  });
  await waitFor(() => created(a, 'one'), 5000, 'op-a to log the reconcile');
  assert.equal(created(b, 'one'), false, 'the standby did not reconcile');
  assert.ok(!b.logText().includes('became leader'));

  await a.kill9();
  await createMirror(cluster.kube, 'apps', 'two', { upstream: { registry: 'ghcr.io' } });
  await waitFor(async () => (await holder()) === 'op-b', 20_000, 'op-b to take the Lease').catch((e) => {
    throw new Error(`${e.message}\n${tail(b.logText())}`);
  });
  await waitFor(() => get(cluster.kube, 'apps/v1', 'Deployment', 'apps', 'two'), 20_000, 'Deployment two by op-b').catch((e) => {
    throw new Error(`${e.message}\n${tail(b.logText())}`);
  });
  assert.ok(created(b, 'two'));
  // The status write (PUT /status) works under the same RBAC.
  await waitMirror(cluster.kube, 'apps', 'two', (m) => m.status?.observedGeneration === 1, 'status of two written by op-b');
  assert.ok(!b.logText().includes('"level":50'), `no errors in op-b's log:\n${tail(b.logText())}`);

  // SIGTERM: stops cleanly (exit 0) and gives the Lease up at once.
  const code = await b.stop(10_000);
  assert.equal(code, 0, tail(b.logText()));
  assert.equal(await holder(), undefined, 'Lease released');
});
