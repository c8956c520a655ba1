import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parse } from 'yaml';
import { render, renderConfigMap, renderDeployment, renderPdb, renderPvc, renderService } from '../../operator/render/index.js';
import { renderMirrorConfig, maxBytesFor, mirrorConfigProblem } from '../../operator/render/mirror-config.js';
import { ANNOTATION, endpointOf, objectNames, peersDnsName } from '../../operator/render/names.js';
import { pvcChange } from '../../operator/render/pvc.js';
import { resolveSpec, type ResolvedSpec } from '../../operator/spec.js';
import type { RegistryMirror, RegistryMirrorSpec } from '../../operator/types.js';

function cr(spec: RegistryMirrorSpec, name = 'hub'): RegistryMirror {
  return {
    apiVersion: 'registry-mirror.io/v1alpha1',
    kind: 'RegistryMirror',
    metadata: { name, namespace: 'ns1', uid: 'uid-1', generation: 3 },
    spec,
  };
}
function resolved(c: RegistryMirror): ResolvedSpec {
  const r = resolveSpec(c);
  assert.ok(r.ok, JSON.stringify(r));
  return r.spec;
}
const basic = { form: 'basic' as const, hash: 'h-basic' };
const dockercfg = { form: 'dockerconfigjson' as const, hash: 'h-dcj' };

test('mirror config follows the DESIGN §3 contract', () => {
  const c = cr({ upstream: { registry: 'docker.io' }, cache: { ttl: '24h', tagTTL: '1m' }, v1: { enabled: true } });
  assert.deepEqual(renderMirrorConfig(resolved(c)), {
    listen: '0.0.0.0:5000',
    logLevel: 'info',
    // Still serving while the Service drops the terminating pod (a refused connection sends
    // containerd around the mirror).
    shutdownDelay: '5s',
    storage: { path: '/var/lib/registry-mirror', maxBytes: 0 },
    cache: { ttl: '24h', tagTTL: '1m' },
    defaultUpstream: 'docker.io',
    upstreams: { 'docker.io': { url: 'https://registry-1.docker.io' } },
    v1: { enabled: true, source: 'https://index.docker.io', tagsCacheTTL: '48h' },
    // spec.tls defaults to generated: the operator's certificate, mounted from <name>-tls.
    tls: { certFile: '/etc/registry-mirror/tls/tls.crt', keyFile: '/etc/registry-mirror/tls/tls.key' },
  });
  const plain = cr({ upstream: { registry: 'docker.io' }, tls: { mode: 'disabled' } });
  assert.equal(renderMirrorConfig(resolved(plain)).tls, undefined, 'disabled: plain http, no tls section');
});

test('credentials: dockerconfigjson -> credentialsFile, username/password -> files', () => {
  const spec = resolved(cr({ upstream: { registry: 'ghcr.io', credentialsSecret: { name: 's' } } }));
  assert.deepEqual(renderMirrorConfig(spec, dockercfg).upstreams['ghcr.io'], {
    url: 'https://ghcr.io',
    credentialsFile: '/etc/registry-mirror/credentials/.dockerconfigjson',
  });
  assert.deepEqual(renderMirrorConfig(spec, basic).upstreams['ghcr.io'], {
    url: 'https://ghcr.io',
    usernameFile: '/etc/registry-mirror/credentials/username',
    passwordFile: '/etc/registry-mirror/credentials/password',
  });
});

test('maxBytes is 90% of the PVC size; 0 on emptyDir', () => {
  assert.equal(maxBytesFor(resolved(cr({ upstream: { registry: 'docker.io' }, storage: { size: '10Gi' } }))), Math.floor(10 * 2 ** 30 * 0.9));
  assert.equal(maxBytesFor(resolved(cr({ upstream: { registry: 'docker.io' } }))), 0);
});

test('ConfigMap holds config.yaml that parses back to the config, owned by the CR', () => {
  const c = cr({ upstream: { registry: 'quay.io' } });
  const cm = renderConfigMap(c, resolved(c));
  assert.equal(cm.metadata.name, 'hub-config');
  assert.equal(cm.metadata.namespace, 'ns1');
  assert.deepEqual(parse((cm.data as Record<string, string>)['config.yaml']), renderMirrorConfig(resolved(c)));
  assert.deepEqual(cm.metadata.ownerReferences, [
    { apiVersion: 'registry-mirror.io/v1alpha1', kind: 'RegistryMirror', name: 'hub', uid: 'uid-1', controller: true, blockOwnerDeletion: true },
  ]);
  assert.equal(cm.metadata.labels?.['app.kubernetes.io/managed-by'], 'registry-mirror-operator');
});

test('Deployment: image, args, probes, security, volumes, hash annotations', () => {
  const c = cr({ upstream: { registry: 'ghcr.io', credentialsSecret: { name: 'creds' } }, replicas: 2 });
  const d = renderDeployment(c, resolved(c), { defaultImage: 'img:1', configHash: 'cfg1', credentials: basic }) as any;
  assert.equal(d.metadata.name, 'hub');
  assert.equal(d.spec.replicas, 2);
  assert.deepEqual(d.spec.selector.matchLabels, { 'app.kubernetes.io/name': 'registry-mirror', 'app.kubernetes.io/instance': 'hub' });
  assert.equal(d.spec.strategy.type, 'RollingUpdate');
  const pod = d.spec.template;
  assert.deepEqual(pod.metadata.annotations, { [ANNOTATION.configHash]: 'cfg1', [ANNOTATION.credentialsHash]: 'h-basic' });
  for (const [k, v] of Object.entries(d.spec.selector.matchLabels)) assert.equal(pod.metadata.labels[k], v);
  assert.equal(pod.spec.securityContext.runAsNonRoot, true);
  assert.equal(pod.spec.automountServiceAccountToken, false);
  const ctr = pod.spec.containers[0];
  assert.equal(ctr.image, 'img:1');
  assert.deepEqual(ctr.args, ['serve', '--config', '/etc/registry-mirror/config.yaml']);
  assert.equal(ctr.livenessProbe.httpGet.path, '/healthz');
  assert.equal(ctr.readinessProbe.httpGet.path, '/readyz');
  assert.equal(ctr.ports[0].containerPort, 5000);
  assert.equal(ctr.securityContext.readOnlyRootFilesystem, true);
  assert.equal(ctr.securityContext.allowPrivilegeEscalation, false);
  assert.deepEqual(ctr.resources, { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } });
  const vols = Object.fromEntries(pod.spec.volumes.map((v: any) => [v.name, v]));
  assert.deepEqual(vols['cache-tmp'], { name: 'cache-tmp', emptyDir: {} });
  assert.equal(vols.config.configMap.name, 'hub-config');
  assert.deepEqual(vols.credentials.secret.items.map((i: any) => i.key), ['username', 'password']);
  const mounts = Object.fromEntries(ctr.volumeMounts.map((m: any) => [m.name, m.mountPath]));
  assert.deepEqual(mounts, {
    config: '/etc/registry-mirror',
    'cache-tmp': '/var/lib/registry-mirror',
    tmp: '/tmp',
    credentials: '/etc/registry-mirror/credentials',
    tls: '/etc/registry-mirror/tls',
  });
  assert.deepEqual(vols.tls.secret, { secretName: 'hub-tls', defaultMode: 0o440, items: [{ key: 'tls.crt', path: 'tls.crt' }, { key: 'tls.key', path: 'tls.key' }] });
  assert.deepEqual(ctr.readinessProbe.httpGet, { path: '/readyz', port: 'https', scheme: 'HTTPS' });
  assert.equal(ctr.ports[0].name, 'https');
});

test('Deployment: spec.image overrides the default; PVC storage uses Recreate; no credentials, no volume', () => {
  const c = cr({ upstream: { registry: 'docker.io' }, image: 'mine:2', storage: { size: '5Gi' } });
  const d = renderDeployment(c, resolved(c), { defaultImage: 'img:1', configHash: 'x' }) as any;
  assert.equal(d.spec.template.spec.containers[0].image, 'mine:2');
  assert.equal(d.spec.strategy.type, 'Recreate');
  assert.deepEqual(d.spec.template.spec.volumes.find((v: any) => v.name === 'cache-pvc').persistentVolumeClaim, { claimName: 'hub-cache' });
  assert.equal(d.spec.template.spec.volumes.find((v: any) => v.name === 'credentials'), undefined);
  assert.equal(d.spec.template.metadata.annotations[ANNOTATION.credentialsHash], undefined);
});

test('PVC: only with storage.size; retain drops the ownerReference; storageClassName passed', () => {
  assert.equal(renderPvc(cr({ upstream: { registry: 'docker.io' } }), resolved(cr({ upstream: { registry: 'docker.io' } }))), undefined);
  const c = cr({ upstream: { registry: 'docker.io' }, storage: { size: '50Gi', storageClassName: 'fast' } });
  const p = renderPvc(c, resolved(c)) as any;
  assert.equal(p.metadata.name, 'hub-cache');
  assert.deepEqual(p.spec, { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '50Gi' } }, storageClassName: 'fast' });
  assert.equal(p.metadata.ownerReferences[0].controller, true);
  const kept = cr({ upstream: { registry: 'docker.io' }, storage: { size: '50Gi', retain: true } });
  assert.equal((renderPvc(kept, resolved(kept)) as any).metadata.ownerReferences, undefined);
});

test('pvcChange: create, grow, shrink, unchanged', () => {
  const c = cr({ upstream: { registry: 'docker.io' }, storage: { size: '10Gi' } });
  const want = renderPvc(c, resolved(c))!;
  const live = (s: string) => ({ spec: { resources: { requests: { storage: s } } } });
  assert.equal(pvcChange(undefined, want), 'create');
  assert.equal(pvcChange(live('5Gi'), want), 'grow');
  assert.equal(pvcChange(live('20Gi'), want), 'shrink');
  assert.equal(pvcChange(live('10240Mi'), want), 'unchanged');
});

test('Service: stable name, port 5000 to the https port (http with tls disabled), selects the pods', () => {
  const c = cr({ upstream: { registry: 'docker.io' } });
  const s = renderService(c) as any;
  assert.equal(s.metadata.name, objectNames(c).service);
  assert.deepEqual(s.spec.ports, [{ name: 'https', port: 5000, targetPort: 'https', protocol: 'TCP' }]);
  assert.deepEqual(s.spec.selector, { 'app.kubernetes.io/name': 'registry-mirror', 'app.kubernetes.io/instance': 'hub' });
  assert.equal(endpointOf(c), 'https://hub.ns1.svc:5000');
  assert.deepEqual((renderService(c, false) as any).spec.ports, [{ name: 'http', port: 5000, targetPort: 'http', protocol: 'TCP' }]);
  assert.equal(endpointOf(c, false), 'http://hub.ns1.svc:5000');
});

test('render: pure and deterministic; a config or credentials change changes the pod template', () => {
  const c = cr({ upstream: { registry: 'ghcr.io', credentialsSecret: { name: 's' } } });
  const a = render(c, resolved(c), { defaultImage: 'i', credentials: basic });
  const b = render(c, resolved(c), { defaultImage: 'i', credentials: basic });
  assert.deepEqual(a, b);
  for (const m of Object.values(a)) if (m) assert.ok(m.metadata.annotations?.[ANNOTATION.appliedHash]);
  const rotated = render(c, resolved(c), { defaultImage: 'i', credentials: { ...basic, hash: 'other' } });
  assert.notEqual(
    (rotated.deployment as any).spec.template.metadata.annotations[ANNOTATION.credentialsHash],
    (a.deployment as any).spec.template.metadata.annotations[ANNOTATION.credentialsHash],
  );
  assert.notEqual(rotated.deployment.metadata.annotations![ANNOTATION.appliedHash], a.deployment.metadata.annotations![ANNOTATION.appliedHash]);
  const c2 = cr({ upstream: { registry: 'ghcr.io', credentialsSecret: { name: 's' } }, cache: { tagTTL: '1m' } });
  const changed = render(c2, resolved(c2), { defaultImage: 'i', credentials: basic });
  assert.notEqual(
    (changed.deployment as any).spec.template.metadata.annotations[ANNOTATION.configHash],
    (a.deployment as any).spec.template.metadata.annotations[ANNOTATION.configHash],
  );
  assert.equal(changed.service.metadata.annotations![ANNOTATION.appliedHash], a.service.metadata.annotations![ANNOTATION.appliedHash]);
});

describe('spec.storage.s3', () => {
  const s3Full = {
    bucket: 'my-bucket',
    endpoint: 'https://rgw.example:443',
    region: 'us-east-1',
    prefix: 'registry-mirror',
    forcePathStyle: false,
    redirect: true,
    presignTTL: '20m',
    partSize: '16Mi',
    credentialsSecret: { name: 's3-creds' },
  };
  const s3Hash = { hash: 'h-s3' };

  test('mirror config: storage.s3 with credential files from the mounted Secret; path is the scratch emptyDir', () => {
    const c = cr({ upstream: { registry: 'docker.io' }, storage: { size: '50Gi', s3: s3Full } });
    const config = renderMirrorConfig(resolved(c));
    assert.deepEqual(config.storage, {
      path: '/var/lib/registry-mirror',
      maxBytes: 50 * 2 ** 30,
      s3: {
        bucket: 'my-bucket',
        endpoint: 'https://rgw.example:443',
        region: 'us-east-1',
        prefix: 'registry-mirror',
        forcePathStyle: false,
        accessKeyIdFile: '/etc/registry-mirror/s3/accessKeyId',
        secretAccessKeyFile: '/etc/registry-mirror/s3/secretAccessKey',
        redirect: true,
        presignTTL: '20m',
        partSize: 16 * 2 ** 20,
      },
    });
    // What the ConfigMap holds is that, as YAML.
    const cm = renderConfigMap(c, resolved(c));
    assert.deepEqual(parse((cm.data as Record<string, string>)['config.yaml']).storage, config.storage);
  });

  test('mirror config: without credentialsSecret no credentials keys at all (the SDK default chain); no size, no bound', () => {
    const c = cr({ upstream: { registry: 'docker.io' }, storage: { s3: { bucket: 'bkt', serviceAccountName: 'irsa' } } });
    assert.deepEqual(renderMirrorConfig(resolved(c)).storage, { path: '/var/lib/registry-mirror', maxBytes: 0, s3: { bucket: 'bkt' } });
    assert.equal(maxBytesFor(resolved(c)), 0);
  });

  test('Deployment: Secret volume of the two keys, emptyDir scratch, RollingUpdate, hash annotation; no PVC', () => {
    const c = cr({ upstream: { registry: 'docker.io' }, storage: { size: '50Gi', s3: s3Full } });
    const r = render(c, resolved(c), { defaultImage: 'img:1', s3Credentials: s3Hash });
    assert.equal(r.pvc, undefined, 'no PersistentVolumeClaim with s3');
    assert.equal(renderPvc(c, resolved(c)), undefined);
    const d = r.deployment as any;
    assert.equal(d.spec.strategy.type, 'RollingUpdate', 'no single-writer volume, so no Recreate');
    const pod = d.spec.template;
    assert.equal(pod.metadata.annotations[ANNOTATION.s3CredentialsHash], 'h-s3');
    assert.equal(pod.spec.serviceAccountName, undefined);
    assert.equal(pod.spec.automountServiceAccountToken, false);
    const vols = Object.fromEntries(pod.spec.volumes.map((v: any) => [v.name, v]));
    assert.deepEqual(vols['s3-scratch'], { name: 's3-scratch', emptyDir: {} });
    assert.equal(vols['cache-pvc'], undefined);
    assert.equal(vols['cache-tmp'], undefined);
    assert.deepEqual(vols['s3-credentials'], {
      name: 's3-credentials',
      secret: {
        secretName: 's3-creds',
        defaultMode: 0o440,
        items: [
          { key: 'accessKeyId', path: 'accessKeyId' },
          { key: 'secretAccessKey', path: 'secretAccessKey' },
        ],
      },
    });
    const mounts = Object.fromEntries(pod.spec.containers[0].volumeMounts.map((m: any) => [m.name, m]));
    assert.equal(mounts['s3-scratch'].mountPath, '/var/lib/registry-mirror');
    assert.deepEqual(mounts['s3-credentials'], { name: 's3-credentials', mountPath: '/etc/registry-mirror/s3', readOnly: true });
    // The config's file paths are where the Secret is mounted.
    const config = parse((r.configMap.data as Record<string, string>)['config.yaml']);
    for (const k of ['accessKeyIdFile', 'secretAccessKeyFile']) assert.ok(config.storage.s3[k].startsWith(`${mounts['s3-credentials'].mountPath}/`));
  });

  test('Deployment: rotating the S3 Secret changes the pod template; serviceAccountName sets the pods\' ServiceAccount', () => {
    const c = cr({ upstream: { registry: 'docker.io' }, storage: { s3: s3Full } });
    const a = render(c, resolved(c), { defaultImage: 'i', s3Credentials: s3Hash });
    const b = render(c, resolved(c), { defaultImage: 'i', s3Credentials: { hash: 'rotated' } });
    assert.notEqual((b.deployment as any).spec.template.metadata.annotations[ANNOTATION.s3CredentialsHash], (a.deployment as any).spec.template.metadata.annotations[ANNOTATION.s3CredentialsHash]);
    assert.notEqual(b.deployment.metadata.annotations![ANNOTATION.appliedHash], a.deployment.metadata.annotations![ANNOTATION.appliedHash]);
    assert.equal(b.configMap.metadata.annotations![ANNOTATION.appliedHash], a.configMap.metadata.annotations![ANNOTATION.appliedHash], 'the config names files, not values');

    const w = cr({ upstream: { registry: 'docker.io' }, replicas: 2, storage: { s3: { bucket: 'bkt', serviceAccountName: 'mirror-irsa' } } });
    const d = render(w, resolved(w), { defaultImage: 'i' }).deployment as any;
    assert.equal(d.spec.replicas, 2, 'replicas as given');
    assert.equal(d.spec.template.spec.serviceAccountName, 'mirror-irsa');
    assert.equal(d.spec.template.spec.serviceAccount, 'mirror-irsa', 'the deprecated alias too, so that dropping the name later removes both');
    assert.equal(d.spec.template.spec.automountServiceAccountToken, false, 'no Kubernetes API token: the identity webhooks project their own');
    assert.equal(d.spec.template.spec.volumes.find((v: any) => v.name === 's3-credentials'), undefined);
    assert.equal(d.spec.template.metadata.annotations[ANNOTATION.s3CredentialsHash], undefined);
  });

  // Needs the mirror's config parser to accept storage.s3: until then it answers
  // "config: storage.s3: unknown key", and reconcile refuses to apply any S3 mirror.
  test('the rendered config is one the mirror itself accepts (mirrorConfigProblem)', () => {
    for (const s3 of [s3Full, { bucket: 'bkt' }, { bucket: 'bkt', serviceAccountName: 'irsa' }]) {
      const c = cr({ upstream: { registry: 'docker.io' }, storage: { size: '50Gi', s3 } });
      const cm = renderConfigMap(c, resolved(c));
      assert.equal(mirrorConfigProblem((cm.data as Record<string, string>)['config.yaml']), undefined, JSON.stringify(s3));
    }
  });

  test('the other storage kinds keep their Deployment exactly (no serviceAccountName, no S3 volumes)', () => {
    for (const storage of [undefined, { size: '5Gi' }]) {
      const c = cr({ upstream: { registry: 'docker.io' }, ...(storage ? { storage } : {}) });
      const d = renderDeployment(c, resolved(c), { defaultImage: 'i', configHash: 'x' }) as any;
      assert.equal('serviceAccountName' in d.spec.template.spec, false);
      assert.equal('serviceAccount' in d.spec.template.spec, false);
      assert.deepEqual(d.spec.template.spec.volumes.map((v: any) => v.name), ['config', storage ? 'cache-pvc' : 'cache-tmp', 'tmp', 'tls']);
    }
  });
});

describe('a fleet on one bucket (spec.storage.s3)', () => {
  const fleet = (replicas: number, extra: Partial<RegistryMirrorSpec> = {}) =>
    cr({ upstream: { registry: 'docker.io' }, replicas, storage: { s3: { bucket: 'bkt' } }, ...extra });
  const selector = { 'app.kubernetes.io/name': 'registry-mirror', 'app.kubernetes.io/instance': 'hub' };

  test('config: the cluster section names the headless Service and the mirror port; no self (it comes from the pod)', () => {
    for (const replicas of [1, 3]) {
      const c = fleet(replicas);
      const config = parse((renderConfigMap(c, resolved(c)).data as Record<string, string>)['config.yaml']);
      assert.deepEqual(config.cluster, { peers: { dns: 'hub-peers.ns1.svc', port: 5000 }, refresh: '5s' }, `replicas ${replicas}`);
      assert.equal(peersDnsName(c), 'hub-peers.ns1.svc');
    }
  });

  test('scaling changes the Deployment alone: config, peers Service and PDB stay as they are (no roll)', () => {
    const one = render(fleet(1), resolved(fleet(1)), { defaultImage: 'i' });
    const three = render(fleet(3), resolved(fleet(3)), { defaultImage: 'i' });
    for (const k of ['configMap', 'peersService', 'service', 'pdb'] as const) {
      assert.equal(three[k]!.metadata.annotations![ANNOTATION.appliedHash], one[k]!.metadata.annotations![ANNOTATION.appliedHash], k);
    }
    assert.deepEqual((three.deployment as any).spec.template, (one.deployment as any).spec.template, 'same pod template');
    assert.equal((three.deployment as any).spec.replicas, 3);
  });

  test('Deployment: replicas, RollingUpdate 0/1, spread over nodes (ScheduleAnyway), POD_IP and MIRROR_CLUSTER_SELF, /readyz', () => {
    const c = fleet(3);
    const d = render(c, resolved(c), { defaultImage: 'i' }).deployment as any;
    assert.equal(d.spec.replicas, 3);
    assert.deepEqual(d.spec.strategy, { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } });
    const pod = d.spec.template.spec;
    assert.deepEqual(pod.topologySpreadConstraints, [
      { maxSkew: 1, topologyKey: 'kubernetes.io/hostname', whenUnsatisfiable: 'ScheduleAnyway', labelSelector: { matchLabels: selector } },
    ]);
    assert.deepEqual(d.spec.selector.matchLabels, selector, 'the spread counts the pods the Deployment selects');
    const container = pod.containers[0];
    // POD_IP first: Kubernetes expands $(VAR) only from variables defined before.
    assert.deepEqual(container.env, [
      { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
      { name: 'MIRROR_CLUSTER_SELF', value: '$(POD_IP):5000' },
    ]);
    assert.equal(container.readinessProbe.httpGet.path, '/readyz');
    assert.equal(pod.automountServiceAccountToken, false, 'the mirrors never talk to the Kubernetes API');
  });

  test('peers Service: headless, lists pods before they are ready, port 5000, selects the pods; the client Service is unchanged', () => {
    const c = fleet(3);
    const r = render(c, resolved(c), { defaultImage: 'i' });
    const svc = r.peersService!;
    assert.equal(svc.metadata.name, 'hub-peers');
    assert.equal(svc.metadata.namespace, 'ns1');
    assert.equal(svc.metadata.ownerReferences![0]!.uid, 'uid-1');
    assert.deepEqual(svc.spec, {
      type: 'ClusterIP',
      clusterIP: 'None',
      publishNotReadyAddresses: true,
      selector,
      ports: [{ name: 'https', port: 5000, targetPort: 'https', protocol: 'TCP' }],
    });
    assert.deepEqual(r.service.spec, renderService(c).spec);
    assert.equal((r.service.spec as any).clusterIP, undefined, 'clients keep a ClusterIP of ready pods');
  });

  test('PodDisruptionBudget: maxUnavailable 1 over the pods, in the API version the apiserver serves', () => {
    const c = fleet(3);
    const v1 = render(c, resolved(c), { defaultImage: 'i' }).pdb!;
    assert.equal(v1.apiVersion, 'policy/v1');
    assert.equal(v1.kind, 'PodDisruptionBudget');
    assert.equal(v1.metadata.name, 'hub');
    assert.deepEqual(v1.spec, { maxUnavailable: 1, selector: { matchLabels: selector } });
    const beta = render(c, resolved(c), { defaultImage: 'i', pdbApiVersion: 'policy/v1beta1' }).pdb!;
    assert.equal(beta.apiVersion, 'policy/v1beta1');
    assert.deepEqual(beta.spec, v1.spec);
    assert.deepEqual(renderPdb(c, 'policy/v1beta1').spec, v1.spec);
    assert.equal(render(c, resolved(c), { defaultImage: 'i', pdbApiVersion: 'none' }).pdb, undefined);
  });

  test('emptyDir and PVC mirrors get none of it: no cluster section, env, spread, peers Service or PDB', () => {
    for (const spec of [{ replicas: 3 }, { replicas: 1, storage: { size: '5Gi' } }] as Array<Partial<RegistryMirrorSpec>>) {
      const c = cr({ upstream: { registry: 'docker.io' }, ...spec });
      const r = render(c, resolved(c), { defaultImage: 'i' });
      const config = parse((r.configMap.data as Record<string, string>)['config.yaml']);
      assert.equal(config.cluster, undefined);
      assert.equal(r.peersService, undefined);
      assert.equal(r.pdb, undefined);
      const pod = (r.deployment as any).spec.template.spec;
      assert.equal('topologySpreadConstraints' in pod, false);
      assert.equal('env' in pod.containers[0], false);
    }
  });

  test('the rendered config is one the mirror accepts, MIRROR_CLUSTER_SELF standing in for the pod IP', () => {
    for (const c of [fleet(1), fleet(3), fleet(2, { storage: { size: '50Gi', s3: { bucket: 'bkt', credentialsSecret: { name: 'k' } } } })]) {
      const cm = renderConfigMap(c, resolved(c), undefined);
      assert.equal(mirrorConfigProblem((cm.data as Record<string, string>)['config.yaml']), undefined);
    }
    // Whatever else is wrong is still found with the cluster section there.
    assert.match(
      mirrorConfigProblem('cluster: {peers: {dns: a.b.svc, port: 5000}, refresh: 5s}\nupstreams: {docker.io: {url: "ftp://x"}}')!,
      /upstreams\.docker\.io\.url/,
    );
  });
});
