// The operator against a real kube-apiserver + etcd: objects appear with the right content
// and ownerReferences, spec changes and Secret rotations roll through, invalid resources are
// reported without blocking the others, and dependents carry what makes deletion cascade.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { ANNOTATION } from '../../operator/render/names.js';
import { kubeAvailable } from '../rig/kube.js';
import { tail, waitFor } from '../../tools/launch/proc.js';
import {
  condition,
  createMirror,
  createNamespace,
  deleteMirror,
  get,
  getMirror,
  patchMirror,
  startClusterWithCrd,
  startInProcessOperator,
  waitMirror,
  type Cluster,
} from './operator-kit.js';

const NS = 'mirrors';

describe('operator reconciles RegistryMirrors', { skip: !kubeAvailable() && 'kube-apiserver not built (test/rig/build-kube.sh)' }, () => {
  let cluster: Cluster;
  let op: Awaited<ReturnType<typeof startInProcessOperator>>;

  before(async () => {
    cluster = await startClusterWithCrd();
    await createNamespace(cluster.kube, NS);
    op = await startInProcessOperator(cluster);
  });
  after(async () => {
    await op?.stop();
    await cluster?.stop();
  });
  const dumpOnFailure = (err: unknown) => {
    throw new Error(`${(err as Error).message}\n--- operator log ---\n${tail(readFileSync(op.logFile, 'utf8'), 40)}`);
  };

  test('apply: ConfigMap, Deployment, Service appear with content and ownerReferences', async () => {
    const created = await createMirror(cluster.kube, NS, 'hub', { upstream: { registry: 'docker.io' } });
    await waitFor(() => get(cluster.kube, 'v1', 'Service', NS, 'hub'), 15_000, 'Service hub').catch(dumpOnFailure);
    const dep = await get(cluster.kube, 'apps/v1', 'Deployment', NS, 'hub');
    const cm = await get(cluster.kube, 'v1', 'ConfigMap', NS, 'hub-config');
    const svc = await get(cluster.kube, 'v1', 'Service', NS, 'hub');
    assert.ok(cm && svc, 'ConfigMap and Service exist');
    for (const o of [dep, cm, svc]) {
      assert.deepEqual(
        o!.metadata.ownerReferences.map((r: any) => ({ kind: r.kind, name: r.name, uid: r.uid, controller: r.controller, block: r.blockOwnerDeletion })),
        [{ kind: 'RegistryMirror', name: 'hub', uid: created.metadata.uid, controller: true, block: true }],
      );
    }
    const config = parse(cm!.data['config.yaml']);
    assert.equal(config.defaultUpstream, 'docker.io');
    assert.deepEqual(config.upstreams, { 'docker.io': { url: 'https://registry-1.docker.io' } });
    assert.equal(config.storage.maxBytes, 0);
    assert.equal(config.cache.ttl, '168h', 'CRD default applied');
    const c = dep!.spec.template.spec.containers[0];
    assert.equal(c.image, 'registry-mirror:test');
    assert.deepEqual(c.args, ['serve', '--config', '/etc/registry-mirror/config.yaml']);
    assert.equal(c.readinessProbe.httpGet.path, '/readyz');
    assert.equal(c.securityContext.readOnlyRootFilesystem, true);
    assert.equal(svc!.spec.ports[0].port, 5000);
    const managers = (dep!.metadata.managedFields ?? []).map((m: any) => `${m.manager}/${m.operation}`);
    assert.ok(managers.includes('registry-mirror/Apply'), `server-side applied: ${managers}`);

    const cr = await waitMirror(cluster.kube, NS, 'hub', (m) => m.status?.observedGeneration === 1, 'status written');
    assert.equal(cr.status?.endpoint, 'https://hub.mirrors.svc:5000', 'TLS by default (spec.tls generated)');
    assert.equal(condition(cr, 'Ready')?.status, 'False', 'no pods run without a controller-manager');
    assert.equal(condition(cr, 'Progressing')?.status, 'True');
    assert.equal(condition(cr, 'Degraded')?.status, 'False');
  });

  test('spec change: the Deployment follows and observedGeneration advances', async () => {
    const before = await get(cluster.kube, 'apps/v1', 'Deployment', NS, 'hub');
    await patchMirror(cluster.kube, NS, 'hub', { spec: { cache: { tagTTL: '1m' }, image: 'registry-mirror:v2', storage: { size: '10Gi' } } });
    const dep = await waitFor(
      async () => {
        const d = await get(cluster.kube, 'apps/v1', 'Deployment', NS, 'hub');
        return d?.spec.template.spec.containers[0].image === 'registry-mirror:v2' ? d : undefined;
      },
      15_000,
      'new image',
    ).catch(dumpOnFailure);
    assert.notEqual(
      dep!.spec.template.metadata.annotations[ANNOTATION.configHash],
      before!.spec.template.metadata.annotations[ANNOTATION.configHash],
      'config hash changed with the config',
    );
    assert.equal(dep!.spec.strategy.type, 'Recreate', 'a PVC-backed mirror recreates its pod');
    assert.deepEqual(
      dep!.spec.template.spec.volumes.filter((v: any) => v.name.startsWith('cache-')),
      [{ name: 'cache-pvc', persistentVolumeClaim: { claimName: 'hub-cache' } }],
      'the emptyDir is gone, the PVC mounted',
    );
    const pvc = await get(cluster.kube, 'v1', 'PersistentVolumeClaim', NS, 'hub-cache');
    assert.equal(pvc?.spec.resources.requests.storage, '10Gi');
    assert.equal(pvc?.metadata.ownerReferences?.[0]?.controller, true);
    const cm = await get(cluster.kube, 'v1', 'ConfigMap', NS, 'hub-config');
    const config = parse(cm!.data['config.yaml']);
    assert.equal(config.cache.tagTTL, '1m');
    assert.equal(config.storage.maxBytes, Math.floor(10 * 2 ** 30 * 0.9));
    await waitMirror(cluster.kube, NS, 'hub', (m) => m.status?.observedGeneration === 2, 'observedGeneration 2');

    // Shrinking is refused and reported; the PVC stays.
    await patchMirror(cluster.kube, NS, 'hub', { spec: { storage: { size: '5Gi' } } });
    const cr = await waitMirror(cluster.kube, NS, 'hub', (m) => condition(m, 'Degraded')?.reason === 'StorageShrinkRefused', 'shrink refused');
    assert.match(condition(cr, 'Degraded')!.message, /cannot shrink/);
    assert.equal((await get(cluster.kube, 'v1', 'PersistentVolumeClaim', NS, 'hub-cache'))?.spec.resources.requests.storage, '10Gi');
    await patchMirror(cluster.kube, NS, 'hub', { spec: { storage: { size: '10Gi' } } });
  });

  test('rotating the credentials Secret changes the pod template hash', async () => {
    await cluster.kube.objects.create({
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'ghcr-creds', namespace: NS },
      stringData: { username: 'robot', password: 'first-password' },
    } as any);
    await createMirror(cluster.kube, NS, 'ghcr', { upstream: { registry: 'ghcr.io', credentialsSecret: { name: 'ghcr-creds' } } });
    const first = await waitFor(() => get(cluster.kube, 'apps/v1', 'Deployment', NS, 'ghcr'), 15_000, 'Deployment ghcr').catch(dumpOnFailure);
    const hash1 = first!.spec.template.metadata.annotations[ANNOTATION.credentialsHash];
    assert.ok(hash1, 'credentials hash annotation present');
    const vol = first!.spec.template.spec.volumes.find((v: any) => v.name === 'credentials');
    assert.equal(vol.secret.secretName, 'ghcr-creds');
    const cm = await get(cluster.kube, 'v1', 'ConfigMap', NS, 'ghcr-config');
    assert.deepEqual(parse(cm!.data['config.yaml']).upstreams['ghcr.io'], {
      url: 'https://ghcr.io',
      usernameFile: '/etc/registry-mirror/credentials/username',
      passwordFile: '/etc/registry-mirror/credentials/password',
    });

    await cluster.kube.objects.patch(
      { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'ghcr-creds', namespace: NS }, stringData: { password: 'second-password' } } as any,
      undefined,
      undefined,
      'test',
      undefined,
      'application/merge-patch+json',
    );
    const rolled = await waitFor(
      async () => {
        const d = await get(cluster.kube, 'apps/v1', 'Deployment', NS, 'ghcr');
        const h = d?.spec.template.metadata.annotations[ANNOTATION.credentialsHash];
        return h && h !== hash1 ? d : undefined;
      },
      15_000,
      'credentials hash to change',
    ).catch(dumpOnFailure);
    assert.notEqual(rolled!.spec.template.metadata.annotations[ANNOTATION.credentialsHash], hash1);
    const log = readFileSync(op.logFile, 'utf8');
    assert.ok(!log.includes('first-password') && !log.includes('second-password'), 'no secret value in the logs');
    assert.ok(!JSON.stringify(rolled).includes('second-password'));
  });

  test('invalid resources get Degraded with a clear message; others still reconcile', async () => {
    await createMirror(cluster.kube, NS, 'bad-url', { upstream: { registry: 'registry.example.com', url: 'https://user:secret@registry.example.com' } });
    await createMirror(cluster.kube, NS, 'no-secret', { upstream: { registry: 'quay.io', credentialsSecret: { name: 'missing' } } });
    await createMirror(cluster.kube, NS, 'no-url', { upstream: { registry: 'registry.internal.example' } });
    await createMirror(cluster.kube, NS, 'fine', { upstream: { registry: 'registry.k8s.io' } });

    const badUrl = await waitMirror(cluster.kube, NS, 'bad-url', (m) => condition(m, 'Degraded')?.status === 'True', 'bad-url degraded').catch(dumpOnFailure);
    assert.equal(condition(badUrl, 'Degraded')!.reason, 'InvalidSpec');
    assert.match(condition(badUrl, 'Degraded')!.message, /spec\.upstream\.url must not contain credentials/);
    assert.ok(!JSON.stringify(badUrl.status).includes('secret@'), 'message does not echo the credentials');
    assert.equal(condition(badUrl, 'Ready')!.status, 'False');

    const noSecret = await waitMirror(cluster.kube, NS, 'no-secret', (m) => condition(m, 'Degraded')?.status === 'True', 'no-secret degraded');
    assert.equal(condition(noSecret, 'Degraded')!.reason, 'CredentialsSecretNotFound');
    assert.match(condition(noSecret, 'Degraded')!.message, /Secret "missing" .* does not exist in namespace "mirrors"/);

    const noUrl = await waitMirror(cluster.kube, NS, 'no-url', (m) => condition(m, 'Degraded')?.status === 'True', 'no-url degraded');
    assert.match(condition(noUrl, 'Degraded')!.message, /spec\.upstream\.url is required/);

    for (const name of ['bad-url', 'no-secret', 'no-url']) {
      assert.equal(await get(cluster.kube, 'apps/v1', 'Deployment', NS, name), undefined, `${name}: nothing applied`);
    }
    await waitFor(() => get(cluster.kube, 'apps/v1', 'Deployment', NS, 'fine'), 15_000, 'fine reconciled');
    const fine = await waitMirror(cluster.kube, NS, 'fine', (m) => condition(m, 'Degraded')?.status === 'False', 'fine not degraded');
    assert.equal(condition(fine, 'Degraded')!.reason, 'AsExpected');

    // The schema itself refuses what it can: a non-http URL and replicas 0 never get stored.
    await assert.rejects(
      createMirror(cluster.kube, NS, 'ftp', { upstream: { registry: 'docker.io', url: 'ftp://example.com' } }),
      (err: any) => err.code === 422,
    );
    await assert.rejects(createMirror(cluster.kube, NS, 'zero', { upstream: { registry: 'docker.io' }, replicas: 0 }), (err: any) => err.code === 422);

    // Creating the missing Secret heals no-secret without any edit to it.
    await cluster.kube.objects.create({
      apiVersion: 'v1',
      kind: 'Secret',
      type: 'kubernetes.io/dockerconfigjson',
      metadata: { name: 'missing', namespace: NS },
      stringData: { '.dockerconfigjson': '{"auths":{}}' },
    } as any);
    const healed = await waitMirror(cluster.kube, NS, 'no-secret', (m) => condition(m, 'Degraded')?.status === 'False', 'no-secret healed');
    assert.equal(condition(healed, 'Degraded')!.reason, 'AsExpected');
    const cm = await get(cluster.kube, 'v1', 'ConfigMap', NS, 'no-secret-config');
    assert.equal(parse(cm!.data['config.yaml']).upstreams['quay.io'].credentialsFile, '/etc/registry-mirror/credentials/.dockerconfigjson');
  });

  test('Deployment status drives Ready and Degraded=DeploymentUnavailable', async () => {
    const dep = await get(cluster.kube, 'apps/v1', 'Deployment', NS, 'fine');
    const { default: https } = await import('node:https');
    const patchStatus = (status: unknown) =>
      new Promise<void>((resolve, reject) => {
        const body = JSON.stringify({ status });
        const req = https.request(
          `${cluster.server}/apis/apps/v1/namespaces/${NS}/deployments/fine/status`,
          {
            method: 'PATCH',
            rejectUnauthorized: false,
            headers: { authorization: `Bearer ${cluster.adminToken}`, 'content-type': 'application/merge-patch+json' },
          },
          (res) => {
            res.resume();
            res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`status patch: ${res.statusCode}`))));
          },
        );
        req.on('error', reject);
        req.end(body);
      });
    const gen = dep!.metadata.generation;
    await patchStatus({
      observedGeneration: gen,
      replicas: 1,
      updatedReplicas: 1,
      readyReplicas: 0,
      availableReplicas: 0,
      conditions: [{ type: 'Available', status: 'False', reason: 'MinimumReplicasUnavailable', message: 'Deployment does not have minimum availability.' }],
    });
    const down = await waitMirror(cluster.kube, NS, 'fine', (m) => condition(m, 'Degraded')?.reason === 'DeploymentUnavailable', 'DeploymentUnavailable').catch(dumpOnFailure);
    assert.match(condition(down, 'Degraded')!.message, /0\/1 ready replicas: Deployment does not have minimum availability/);
    assert.equal(condition(down, 'Ready')!.status, 'False');

    await patchStatus({
      observedGeneration: gen,
      replicas: 1,
      updatedReplicas: 1,
      readyReplicas: 1,
      availableReplicas: 1,
      conditions: [{ type: 'Available', status: 'True', reason: 'MinimumReplicasAvailable', message: 'ok' }],
    });
    const up = await waitMirror(cluster.kube, NS, 'fine', (m) => condition(m, 'Ready')?.status === 'True', 'Ready');
    assert.equal(up.status?.readyReplicas, 1);
    assert.equal(condition(up, 'Degraded')!.status, 'False');
    assert.equal(condition(up, 'Progressing')!.reason, 'RolloutComplete');

    // The ReplicaSet cannot create a pod (here: a ServiceAccount that does not exist): Degraded
    // says so with the controller's message at once, not after the 10-minute progress deadline.
    await patchStatus({
      observedGeneration: gen,
      replicas: 1,
      updatedReplicas: 0,
      readyReplicas: 0,
      availableReplicas: 0,
      conditions: [
        { type: 'Available', status: 'False', reason: 'MinimumReplicasUnavailable', message: 'Deployment does not have minimum availability.' },
        { type: 'Progressing', status: 'True', reason: 'NewReplicaSetCreated', message: 'Created new replica set' },
        { type: 'ReplicaFailure', status: 'True', reason: 'FailedCreate', message: 'pods "fine-1" is forbidden: error looking up service account mirrors/irsa: serviceaccount "irsa" not found' },
      ],
    });
    const cannot = await waitMirror(cluster.kube, NS, 'fine', (m) => condition(m, 'Degraded')?.reason === 'PodsNotCreated', 'PodsNotCreated').catch(dumpOnFailure);
    assert.match(condition(cannot, 'Degraded')!.message, /0\/1 ready replicas: .*serviceaccount "irsa" not found/);
  });

  test('delete: every dependent carries the ownerReference that cascades (or is retained)', async () => {
    await createMirror(cluster.kube, NS, 'keep', { upstream: { registry: 'docker.io' }, storage: { size: '1Gi', retain: true } });
    await waitFor(() => get(cluster.kube, 'apps/v1', 'Deployment', NS, 'keep'), 15_000, 'Deployment keep').catch(dumpOnFailure);
    const pvc = await get(cluster.kube, 'v1', 'PersistentVolumeClaim', NS, 'keep-cache');
    assert.ok(pvc, 'PVC created');
    assert.equal(pvc!.metadata.ownerReferences, undefined, 'retained PVC has no owner, so GC leaves it');

    const hub = await getMirror(cluster.kube, NS, 'hub');
    for (const [apiVersion, kind, name] of [
      ['apps/v1', 'Deployment', 'hub'],
      ['v1', 'ConfigMap', 'hub-config'],
      ['v1', 'Service', 'hub'],
      ['v1', 'PersistentVolumeClaim', 'hub-cache'],
    ] as const) {
      const o = await get(cluster.kube, apiVersion, kind, NS, name);
      const ref = o!.metadata.ownerReferences?.find((r: any) => r.uid === hub.metadata.uid);
      assert.ok(ref?.controller && ref.blockOwnerDeletion, `${kind} ${name} is controlled by hub`);
    }
    await deleteMirror(cluster.kube, NS, 'hub');
    await waitFor(async () => !(await getMirror(cluster.kube, NS, 'hub').catch(() => undefined)), 10_000, 'hub gone');
    // No garbage collector runs here; the operator must not fight deletion by re-creating.
    await op.idle();
    const dep = await get(cluster.kube, 'apps/v1', 'Deployment', NS, 'hub');
    assert.ok(dep, 'without a controller-manager the dependents stay; GC would remove them via the ownerReference');
  });
});
