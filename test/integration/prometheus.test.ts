// The chart's monitoring against real parts (issue 18 item 4). The chart is rendered with
// helm; promtool checks the rendered rules and fires each alert on synthetic series
// (test/fixtures/prometheus/rules.test.yaml); then one real Prometheus scrapes a running mirror
// and a running operator with the scrape settings derived from the PodMonitors the chart
// renders, onto the pods the operator and the chart really define (labels, port names), and
// every metric name the alerts and the dashboard use must be among what it scraped.
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse, parseAllDocuments, stringify } from 'yaml';
import { helmTools } from '../rig/cluster.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { kubeAvailable } from '../rig/kube.js';
import { podMonitorScrapeConfigs, type Pod, type PodMonitor } from '../rig/pod-monitor.js';
import { dashboardExpressions, metricNames, ruleExpressions } from '../rig/promql.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { startPrometheus, type PrometheusHandle } from '../../tools/launch/prometheus.js';
import { run, tempDir, waitFor } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { pullImage, pushRandomImage } from './helpers.js';
import { MIRROR_PORT } from '../../operator/types.js';
import { createMirror, createNamespace, get, REPO, startClusterWithCrd, startInProcessOperator, type Cluster } from './operator-kit.js';

const CHART = join(REPO, 'charts/registry-mirror');
const RULES_TEST = join(REPO, 'test/fixtures/prometheus/rules.test.yaml');
const RELEASE_NS = 'rm-system';

type Rules = { groups: Array<{ name: string; rules: Array<{ alert: string; expr: string }> }> };
interface Chart {
  podMonitors: PodMonitor[];
  rules: Rules;
  dashboard: { panels?: unknown[] };
  operatorDeployment: any;
}

/** `helm template` with every monitoring part on, a short interval so the test need not wait 30 s per scrape. */
async function renderChart(dir: string): Promise<Chart> {
  const { helm } = await helmTools();
  const env = { HELM_CACHE_HOME: join(dir, 'cache'), HELM_CONFIG_HOME: join(dir, 'config'), HELM_DATA_HOME: join(dir, 'data') };
  const r = await run(
    helm,
    [
      'template', 'rm', CHART, '--namespace', RELEASE_NS,
      '--set', 'monitoring.podMonitor.enabled=true',
      '--set', 'monitoring.podMonitor.interval=2s',
      '--set', 'monitoring.podMonitor.scrapeTimeout=1s',
      '--set', 'monitoring.prometheusRule.enabled=true',
      '--set', 'monitoring.grafanaDashboard.enabled=true',
    ],
    { env },
  );
  const objs = parseAllDocuments(r.stdout).map((d) => d.toJS()).filter(Boolean) as any[];
  const rule = objs.find((o) => o.kind === 'PrometheusRule');
  const dashboards = objs.find((o) => o.kind === 'ConfigMap' && o.metadata.labels?.grafana_dashboard === '1');
  assert.ok(rule && dashboards, 'PrometheusRule and dashboard ConfigMap rendered');
  return {
    podMonitors: objs.filter((o) => o.kind === 'PodMonitor'),
    rules: rule.spec,
    dashboard: JSON.parse(dashboards.data['registry-mirror.json']),
    operatorDeployment: objs.find((o) => o.kind === 'Deployment'),
  };
}

let dir: string;
let chart: Chart;
let rulesFile: string;

before(async () => {
  dir = tempDir('prometheus-chart');
  chart = await renderChart(dir);
  rulesFile = join(dir, 'prometheus-rules.yaml');
  writeFileSync(rulesFile, stringify(chart.rules));
});

describe('the chart\'s alerts under promtool', () => {
  it('promtool check rules accepts the rendered PrometheusRule', async () => {
    const r = await run('promtool', ['check', 'rules', rulesFile], { allowFail: true });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /SUCCESS: 6 rules found/);
  });

  it('promtool test rules fires each alert on synthetic series, and not on its quiet neighbours', async () => {
    copyFileSync(RULES_TEST, join(dir, 'rules.test.yaml'));
    const r = await run('promtool', ['test', 'rules', join(dir, 'rules.test.yaml')], { allowFail: true });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    // Every alert is tested both ways: an evaluation where it fires and one where it does not.
    const tests = (parse(readFileSync(RULES_TEST, 'utf8')) as { tests: Array<{ alert_rule_test: Array<{ alertname: string; exp_alerts: unknown[] }> }> }).tests.flatMap((t) => t.alert_rule_test);
    for (const alert of chart.rules.groups.flatMap((g) => g.rules.map((x) => x.alert))) {
      assert.ok(tests.some((t) => t.alertname === alert && t.exp_alerts.length > 0), `${alert} fires in rules.test.yaml`);
      assert.ok(tests.some((t) => t.alertname === alert && t.exp_alerts.length === 0), `${alert} is quiet in rules.test.yaml`);
    }
  });
});

describe('a real Prometheus scraping with the chart\'s PodMonitors', { skip: !kubeAvailable() && 'kube-apiserver not built (test/rig/build-kube.sh)' }, () => {
  let upstream: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  let cluster: Cluster;
  let op: Awaited<ReturnType<typeof startInProcessOperator>>;
  let prom: PrometheusHandle;

  before(async () => {
    upstream = await startRegistry();
    const image = await pushRandomImage(upstream.url, 'team/app', 'v1', [20_000, 30_000], 'prometheus-test');
    // Docker Hub states its pull rate limit on manifest answers; the registry here does not.
    proxy = await startFaultProxy(upstream.url);
    proxy.addHeaders('/manifests/', { 'ratelimit-limit': '100;w=21600', 'ratelimit-remaining': '76;w=21600' });
    mirror = await startMirror({ upstreams: { 'docker.io': { url: proxy.url } }, storage: { maxBytes: 10_000_000 } });
    // A miss, then a hit: the request, byte and upstream series exist with real values.
    for (let i = 0; i < 2; i++) await pullImage(mirror.url, '', image.repository, image.tag, '?ns=docker.io');

    cluster = await startClusterWithCrd();
    await createNamespace(cluster.kube, 'mirrors');
    op = await startInProcessOperator(cluster);
    // The operator renders the mirror pods' Deployment: its labels and port names are what the PodMonitor must select.
    // Plain http: the mirror process standing in for the pod serves http (the https endpoint
    // is rendered and modelled too: unit/pod-monitor).
    await createMirror(cluster.kube, 'mirrors', 'hub', { upstream: { registry: 'docker.io' }, tls: { mode: 'disabled' } });
    const mirrorDeployment = await waitFor(() => get(cluster.kube, 'apps/v1', 'Deployment', 'mirrors', 'hub'), 20_000, 'mirror Deployment applied');
    // Our processes stand in for the pods: each named container port maps to where they listen.
    const operatorArgs = chart.operatorDeployment.spec.template.spec.containers[0].args as string[];
    const healthPort = Number(operatorArgs.find((a) => a.startsWith('--health-port='))?.split('=')[1]);
    const pods: Pod[] = [
      podOf(mirrorDeployment, 'mirrors', 'hub-0', { [portNamed(mirrorDeployment, MIRROR_PORT)]: mirror.port }),
      podOf(chart.operatorDeployment, RELEASE_NS, 'rm-operator-0', { [portNamed(chart.operatorDeployment, healthPort)]: op.healthPort }),
    ];
    const scrapeConfigs = chart.podMonitors.flatMap((pm) => podMonitorScrapeConfigs(pm, pods));
    prom = await startPrometheus({ config: { global: { evaluation_interval: '1s' }, scrape_configs: scrapeConfigs }, ruleFiles: [stringify(chart.rules)] });
  });
  after(async () => {
    await prom?.stop();
    await op?.stop();
    await cluster?.stop();
    await mirror?.stop();
    await proxy?.stop();
    await upstream?.stop();
  });

  it('scrapes the mirror and the operator, labelled as the alerts expect', async () => {
    type Series = Array<{ metric: Record<string, string>; value: [number, string] }>;
    let last: Series = [];
    const up = (await waitFor(async () => {
      last = (await prom.api<{ result: Series }>('query', { query: 'up' })).result;
      return last.length === 2 && last.every((x) => x.value[1] === '1') ? last : undefined;
    }, 30_000, 'both targets up').catch(async (err) => {
      const targets = await prom.api<{ activeTargets: Array<{ scrapeUrl: string; health: string; lastError: string }> }>('targets');
      throw new Error(`${(err as Error).message}: up ${JSON.stringify(last)}; targets ${JSON.stringify(targets.activeTargets.map((t) => [t.scrapeUrl, t.health, t.lastError]))}`);
    }))!;
    const byJob = Object.fromEntries(up.map((s) => [s.metric.job, s.metric]));
    assert.deepEqual(Object.keys(byJob).sort(), ['registry-mirror', 'registry-mirror-operator']);
    assert.equal(byJob['registry-mirror']!.namespace, 'mirrors');
    assert.equal(byJob['registry-mirror']!.pod, 'hub-0');
    assert.equal(byJob['registry-mirror']!.registrymirror, 'hub', "the RegistryMirror's name, from the pod's instance label");
    assert.equal(byJob['registry-mirror-operator']!.namespace, RELEASE_NS);
  });

  it('has every metric the alerts and the dashboard use among what it scraped', async () => {
    const used = new Set([...ruleExpressions(chart.rules), ...dashboardExpressions(chart.dashboard)].flatMap(metricNames));
    // Wait for a scrape of each target after the traffic (the zero-initialised series come with the first).
    const missing = async () => {
      const have = new Set(await prom.api<string[]>('label/__name__/values'));
      return [...used].filter((n) => !have.has(n)).sort();
    };
    await waitFor(async () => (await missing()).length === 0, 15_000, 'every used metric scraped').catch(() => undefined);
    assert.deepEqual(await missing(), [], 'metrics used by files/prometheus-rules.yaml or files/grafana-dashboard.json but not exported');
    assert.ok(used.size >= 15, `a plausible number of names found: ${[...used].join(', ')}`);
  });

  it('evaluates every rule without error on the scraped series', async () => {
    type Groups = { groups: Array<{ rules: Array<{ name: string; health: string; lastError?: string; lastEvaluation: string }> }> };
    const rules = (await waitFor(async () => {
      const g = await prom.api<Groups>('rules');
      const all = g.groups.flatMap((x) => x.rules);
      return all.length > 0 && all.every((r) => !r.lastEvaluation.startsWith('0001')) ? all : undefined;
    }, 15_000, 'every rule evaluated'))!;
    assert.equal(rules.length, 6);
    for (const r of rules) assert.equal(r.health, 'ok', `${r.name}: ${r.lastError ?? ''}`);
  });
});

/** A pod of a Deployment's template: its labels, and where its process really listens. */
function podOf(deployment: any, namespace: string, name: string, ports: Record<string, number>): Pod {
  const declared = (deployment.spec.template.spec.containers as any[]).flatMap((c) => (c.ports ?? []).map((p: any) => p.name as string));
  for (const p of Object.keys(ports)) assert.ok(declared.includes(p), `${deployment.metadata.name} declares a port named ${p} (has ${declared.join(', ')})`);
  return { namespace, name, labels: deployment.spec.template.metadata.labels, host: '127.0.0.1', ports };
}

function portNamed(deployment: any, containerPort: number): string {
  const p = (deployment.spec.template.spec.containers as any[]).flatMap((c) => c.ports ?? []).find((x: any) => x.containerPort === containerPort);
  assert.ok(p?.name, `${deployment.metadata.name} has a named container port ${containerPort}`);
  return p.name;
}
