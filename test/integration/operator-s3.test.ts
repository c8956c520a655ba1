// spec.storage.s3 against a real kube-apiserver + etcd: the CRD schema refuses what it can, the
// operator reports what slips past it (and the credentials Secret's problems) as Degraded, and
// a good spec renders a ConfigMap with storage.s3, a Deployment with the Secret mounted and an
// emptyDir for scratch, and no PVC. Secret values never reach logs or status.
//
// The tests that apply objects need the mirror's own config parser to accept storage.s3:
// reconcile refuses to apply a config the mirror would refuse (mirrorConfigProblem).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { parse } from 'yaml';
import { ANNOTATION } from '../../operator/render/names.js';
import type { RegistryMirrorSpec } from '../../operator/types.js';
import { kubeAvailable } from '../rig/kube.js';
import { tail, waitFor } from '../../tools/launch/proc.js';
import {
  condition,
  createMirror,
  createNamespace,
  get,
  getMirror,
  patchMirror,
  startClusterWithCrd,
  startInProcessOperator,
  waitMirror,
  type Cluster,
} from './operator-kit.js';

const NS = 's3-mirrors';
const ACCESS_KEY = 'AKIAS3TESTACCESSKEY';
const SECRET_KEY = 's3-test-secret-key-first';
const ROTATED_KEY = 's3-test-secret-key-second';

describe('operator: spec.storage.s3', { skip: !kubeAvailable() && 'kube-apiserver not built (test/rig/build-kube.sh)' }, () => {
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
  const createSecret = (name: string, stringData: Record<string, string>) =>
    cluster.kube.objects.create({ apiVersion: 'v1', kind: 'Secret', metadata: { name, namespace: NS }, stringData } as any);
  const patchSecret = (name: string, stringData: Record<string, string>) =>
    cluster.kube.objects.patch(
      { apiVersion: 'v1', kind: 'Secret', metadata: { name, namespace: NS }, stringData } as any,
      undefined,
      undefined,
      'test',
      undefined,
      'application/merge-patch+json',
    );
  const degraded = (name: string, reason: string) =>
    waitMirror(cluster.kube, NS, name, (m) => condition(m, 'Degraded')?.reason === reason, `${name}: Degraded=${reason}`).catch(dumpOnFailure);
  const deployment = (name: string, pred: (d: any) => boolean, what: string) =>
    waitFor(
      async () => {
        const d = await get(cluster.kube, 'apps/v1', 'Deployment', NS, name);
        return d && pred(d) ? d : undefined;
      },
      15_000,
      what,
    ).catch(async (err) => {
      const cr = await getMirror(cluster.kube, NS, name).catch(() => undefined);
      return dumpOnFailure(new Error(`${(err as Error).message}; status: ${JSON.stringify(cr?.status?.conditions)}`));
    });
  const noSecretValues = () => {
    const log = readFileSync(op.logFile, 'utf8');
    for (const v of [ACCESS_KEY, SECRET_KEY, ROTATED_KEY]) assert.ok(!log.includes(v), 'no S3 credential in the operator log');
  };

  test('the CRD schema refuses what it can (422 at the apiserver)', async () => {
    const bad: Array<[string, unknown]> = [
      ['no-bucket', { region: 'us-east-1' }],
      ['short-bucket', { bucket: 'ab' }],
      ['upper-bucket', { bucket: 'My_Bucket' }],
      ['ftp-endpoint', { bucket: 'bkt', endpoint: 'ftp://rgw.example' }],
      ['slash-prefix', { bucket: 'bkt', prefix: '/cache/' }],
      ['day-ttl', { bucket: 'bkt', presignTTL: '7d' }],
      ['word-part', { bucket: 'bkt', partSize: 'big' }],
      ['string-flag', { bucket: 'bkt', redirect: 'yes' }],
      ['nameless-secret', { bucket: 'bkt', credentialsSecret: {} }],
      ['bad-sa', { bucket: 'bkt', serviceAccountName: 'Not_A_Name' }],
    ];
    for (const [name, s3] of bad) {
      await assert.rejects(
        createMirror(cluster.kube, NS, name, { upstream: { registry: 'docker.io' }, storage: { s3: s3 as any } }),
        (err: any) => err.code === 422 && /spec\.storage\.s3/.test(String(err.body ?? err.message)),
        name,
      );
    }
  });

  test('Degraded: Secret missing, Secret without a key, both identities, partSize below 5Mi; no value in status or log', async () => {
    const spec = (s3: object): RegistryMirrorSpec => ({ upstream: { registry: 'docker.io' }, storage: { s3: { bucket: 'bkt', ...s3 } } });
    await createMirror(cluster.kube, NS, 'no-secret', spec({ credentialsSecret: { name: 's3-later' } }));
    await createMirror(cluster.kube, NS, 'both', spec({ credentialsSecret: { name: 's3-later' }, serviceAccountName: 'irsa' }));
    await createMirror(cluster.kube, NS, 'tiny-parts', spec({ partSize: '1Mi' }));

    const missing = await degraded('no-secret', 'S3CredentialsSecretNotFound');
    assert.equal(condition(missing, 'Degraded')!.message, 'Secret "s3-later" named by spec.storage.s3.credentialsSecret does not exist in namespace "s3-mirrors"');
    assert.equal(condition(missing, 'Ready')!.status, 'False');
    const both = await degraded('both', 'InvalidSpec');
    assert.match(condition(both, 'Degraded')!.message, /spec\.storage\.s3\.credentialsSecret and spec\.storage\.s3\.serviceAccountName are mutually exclusive/);
    const tiny = await degraded('tiny-parts', 'InvalidSpec');
    assert.match(condition(tiny, 'Degraded')!.message, /spec\.storage\.s3\.partSize "1Mi" must be from 5Mi to 5Gi/);

    // The Secret appears without secretAccessKey: the watch on it re-queues the mirror.
    await createSecret('s3-later', { accessKeyId: ACCESS_KEY, region: 'us-east-1' });
    const partial = await degraded('no-secret', 'S3CredentialsSecretInvalid');
    assert.equal(
      condition(partial, 'Degraded')!.message,
      'Secret "s3-later" named by spec.storage.s3.credentialsSecret lacks the secretAccessKey key (it has: accessKeyId, region)',
    );
    assert.ok(!JSON.stringify(partial.status).includes(ACCESS_KEY), 'no key material in status');

    for (const name of ['no-secret', 'both', 'tiny-parts']) {
      assert.equal(await get(cluster.kube, 'apps/v1', 'Deployment', NS, name), undefined, `${name}: nothing applied`);
      assert.equal(await get(cluster.kube, 'v1', 'ConfigMap', NS, `${name}-config`), undefined, `${name}: nothing applied`);
    }
    noSecretValues();
  });

  // Needs the mirror's config parser to accept storage.s3 (see the header).
  test('credentialsSecret: storage.s3 in the ConfigMap, the Secret mounted, an emptyDir for scratch, no PVC; rotation rolls the pods', async () => {
    await createSecret('s3-creds', { accessKeyId: ACCESS_KEY, secretAccessKey: SECRET_KEY, unrelated: 'x' });
    await createMirror(cluster.kube, NS, 'bucket', {
      upstream: { registry: 'docker.io' },
      storage: {
        size: '100Gi',
        s3: {
          bucket: 'my-bucket',
          endpoint: 'https://rgw.example:443',
          region: 'us-east-1',
          prefix: 'registry-mirror',
          forcePathStyle: true,
          redirect: true,
          presignTTL: '20m',
          partSize: '16Mi',
          credentialsSecret: { name: 's3-creds' },
        },
      },
    });
    const dep = await deployment('bucket', () => true, 'Deployment bucket');
    const cm = await get(cluster.kube, 'v1', 'ConfigMap', NS, 'bucket-config');
    assert.deepEqual(parse(cm!.data['config.yaml']).storage, {
      path: '/var/lib/registry-mirror',
      maxBytes: 100 * 2 ** 30,
      s3: {
        bucket: 'my-bucket',
        endpoint: 'https://rgw.example:443',
        region: 'us-east-1',
        prefix: 'registry-mirror',
        forcePathStyle: true,
        accessKeyIdFile: '/etc/registry-mirror/s3/accessKeyId',
        secretAccessKeyFile: '/etc/registry-mirror/s3/secretAccessKey',
        redirect: true,
        presignTTL: '20m',
        partSize: 16 * 2 ** 20,
      },
    });
    const pod = dep!.spec.template;
    const vols = Object.fromEntries(pod.spec.volumes.map((v: any) => [v.name, v]));
    assert.deepEqual(vols['s3-credentials'].secret, {
      secretName: 's3-creds',
      defaultMode: 0o440,
      items: [
        { key: 'accessKeyId', path: 'accessKeyId' },
        { key: 'secretAccessKey', path: 'secretAccessKey' },
      ],
    });
    assert.deepEqual(vols['s3-scratch'], { name: 's3-scratch', emptyDir: {} });
    assert.equal(
      pod.spec.volumes.find((v: any) => v.persistentVolumeClaim),
      undefined,
      'no PVC mounted',
    );
    const mounts = Object.fromEntries(pod.spec.containers[0].volumeMounts.map((m: any) => [m.name, m]));
    assert.equal(mounts['s3-credentials'].mountPath, '/etc/registry-mirror/s3');
    assert.equal(mounts['s3-credentials'].readOnly, true);
    assert.equal(mounts['s3-scratch'].mountPath, '/var/lib/registry-mirror');
    assert.equal(dep!.spec.strategy.type, 'RollingUpdate');
    assert.equal(pod.spec.serviceAccountName, undefined);
    assert.equal(await get(cluster.kube, 'v1', 'PersistentVolumeClaim', NS, 'bucket-cache'), undefined, 'no PVC rendered');
    const hash1 = pod.metadata.annotations[ANNOTATION.s3CredentialsHash];
    assert.ok(hash1, 'S3 credentials hash on the pod template');
    const ok = await waitMirror(cluster.kube, NS, 'bucket', (m) => condition(m, 'Degraded')?.status === 'False', 'bucket not degraded');
    assert.equal(condition(ok, 'Degraded')!.reason, 'AsExpected');

    await patchSecret('s3-creds', { secretAccessKey: ROTATED_KEY });
    const rolled = await deployment('bucket', (d) => d.spec.template.metadata.annotations[ANNOTATION.s3CredentialsHash] !== hash1, 'S3 credentials hash to change');
    assert.ok(rolled!.spec.template.metadata.annotations[ANNOTATION.s3CredentialsHash]);
    assert.ok(!JSON.stringify(rolled).includes(ROTATED_KEY) && !JSON.stringify(await get(cluster.kube, 'v1', 'ConfigMap', NS, 'bucket-config')).includes(ACCESS_KEY));
    noSecretValues();
  });

  // Needs the mirror's config parser to accept storage.s3 (see the header).
  test('serviceAccountName: the pods run as it, no credentials in the config; dropping it gives the pods back the default', async () => {
    await createMirror(cluster.kube, NS, 'irsa', {
      upstream: { registry: 'docker.io' },
      replicas: 2,
      storage: { s3: { bucket: 'irsa-bucket', serviceAccountName: 'registry-mirror-s3' } },
    });
    const dep = await deployment('irsa', () => true, 'Deployment irsa');
    assert.equal(dep!.spec.replicas, 2, 'replicas as given');
    assert.equal(dep!.spec.template.spec.serviceAccountName, 'registry-mirror-s3');
    assert.equal(dep!.spec.template.spec.automountServiceAccountToken, false);
    assert.equal(dep!.spec.template.spec.volumes.find((v: any) => v.name === 's3-credentials'), undefined);
    const cm = await get(cluster.kube, 'v1', 'ConfigMap', NS, 'irsa-config');
    assert.deepEqual(parse(cm!.data['config.yaml']).storage, { path: '/var/lib/registry-mirror', maxBytes: 0, s3: { bucket: 'irsa-bucket' } });

    // Server-side apply removes what the operator no longer sets (the deprecated
    // serviceAccount alias included, which would otherwise bring the name back).
    await patchMirror(cluster.kube, NS, 'irsa', { spec: { storage: { s3: { serviceAccountName: null } } } });
    const plain = await deployment('irsa', (d) => d.spec.template.spec.serviceAccountName === undefined, 'serviceAccountName removed');
    assert.equal(plain!.spec.template.spec.serviceAccount, undefined);
  });

  // Needs the mirror's config parser to accept storage.s3 (see the header).
  test('switching a PVC-backed mirror to s3: the Deployment stops mounting the PVC and rolls; the PVC is left as it is', async () => {
    await createMirror(cluster.kube, NS, 'moving', { upstream: { registry: 'docker.io' }, storage: { size: '10Gi' } });
    const first = await deployment('moving', () => true, 'Deployment moving');
    assert.equal(first!.spec.strategy.type, 'Recreate');
    const pvc = await get(cluster.kube, 'v1', 'PersistentVolumeClaim', NS, 'moving-cache');
    assert.ok(pvc, 'PVC made for the filesystem spec');

    await patchMirror(cluster.kube, NS, 'moving', { spec: { storage: { s3: { bucket: 'moved-here' } } } });
    const moved = await deployment('moving', (d) => d.spec.template.spec.volumes.some((v: any) => v.name === 's3-scratch'), 'Deployment on s3');
    assert.equal(moved!.spec.strategy.type, 'RollingUpdate');
    assert.equal(moved!.spec.strategy.rollingUpdate?.maxUnavailable, 0);
    assert.deepEqual(
      moved!.spec.template.spec.volumes.filter((v: any) => v.persistentVolumeClaim || v.name.startsWith('cache-')),
      [],
      'the PVC volume is gone from the pods',
    );
    const config = parse((await get(cluster.kube, 'v1', 'ConfigMap', NS, 'moving-config'))!.data['config.yaml']);
    assert.equal(config.storage.maxBytes, 10 * 2 ** 30, 'storage.size now bounds the bucket');
    assert.equal(config.storage.s3.bucket, 'moved-here');
    // The operator never deletes a PVC: it stays, still owned by the RegistryMirror (garbage
    // collected with it), for the user to delete.
    const kept = await get(cluster.kube, 'v1', 'PersistentVolumeClaim', NS, 'moving-cache');
    assert.equal(kept?.metadata.uid, pvc!.metadata.uid);
    assert.equal(kept?.metadata.ownerReferences?.[0]?.kind, 'RegistryMirror');
    const ok = await waitMirror(cluster.kube, NS, 'moving', (m) => condition(m, 'Degraded')?.status === 'False' && m.status?.observedGeneration === 2, 'moving applied');
    assert.equal(condition(ok, 'Degraded')!.reason, 'AsExpected');
  });
});
