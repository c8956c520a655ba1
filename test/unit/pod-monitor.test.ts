import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { podMonitorScrapeConfigs, type Pod, type PodMonitor } from '../rig/pod-monitor.js';

const pm = (endpoint: Record<string, unknown>, namespaceSelector?: PodMonitor['spec']['namespaceSelector']): PodMonitor => ({
  kind: 'PodMonitor',
  metadata: { name: 'mon', namespace: 'monitoring' },
  spec: { ...(namespaceSelector ? { namespaceSelector } : {}), selector: { matchLabels: { app: 'a' } }, podMetricsEndpoints: [endpoint] },
});
const pod = (namespace: string, name: string, labels: Record<string, string>): Pod => ({ namespace, name, labels, host: '127.0.0.1', ports: { http: 5000 } });

describe('podMonitorScrapeConfigs', () => {
  it('scrapes the selected pods on the named port with the endpoint settings and relabelings', () => {
    const [c] = podMonitorScrapeConfigs(
      pm({ port: 'http', path: '/m', scheme: 'https', interval: '2s', scrapeTimeout: '1s', relabelings: [{ sourceLabels: ['__meta_kubernetes_pod_label_app_kubernetes_io_instance'], targetLabel: 'x', action: 'Replace' }] }, { any: true }),
      [pod('ns1', 'p1', { app: 'a', 'app.kubernetes.io/instance': 'hub' }), pod('ns2', 'p2', { app: 'b' })],
    );
    assert.equal(c!.metrics_path, '/m');
    assert.equal(c!.scheme, 'https');
    assert.equal(c!.scrape_interval, '2s');
    assert.equal(c!.scrape_timeout, '1s');
    assert.deepEqual(c!.static_configs, [
      {
        targets: ['127.0.0.1:5000'],
        labels: {
          __meta_kubernetes_namespace: 'ns1',
          __meta_kubernetes_pod_name: 'p1',
          __meta_kubernetes_pod_container_port_name: 'http',
          __meta_kubernetes_pod_label_app: 'a',
          __meta_kubernetes_pod_label_app_kubernetes_io_instance: 'hub',
        },
      },
    ]);
    assert.deepEqual((c!.relabel_configs as unknown[]).at(-1), { source_labels: ['__meta_kubernetes_pod_label_app_kubernetes_io_instance'], target_label: 'x', action: 'replace' });
  });

  it("selects only its own namespace's pods without a namespaceSelector", () => {
    assert.throws(() => podMonitorScrapeConfigs(pm({ port: 'http' }), [pod('other', 'p', { app: 'a' })]), /selects none/);
    assert.equal(podMonitorScrapeConfigs(pm({ port: 'http' }), [pod('monitoring', 'p', { app: 'a' })]).length, 1);
  });

  it('refuses a port no pod has and endpoint fields it does not model', () => {
    assert.throws(() => podMonitorScrapeConfigs(pm({ port: 'metrics' }, { any: true }), [pod('n', 'p', { app: 'a' })]), /no selected pod has the port/);
    assert.throws(() => podMonitorScrapeConfigs(pm({ port: 'http', tlsConfig: { ca: {} } }, { any: true }), [pod('n', 'p', { app: 'a' })]), /tlsConfig\.ca not modelled/);
    assert.throws(() => podMonitorScrapeConfigs(pm({ port: 'http', basicAuth: {} }, { any: true }), [pod('n', 'p', { app: 'a' })]), /basicAuth not modelled/);
  });

  it('a pod is a target only of the endpoint whose port it has; https without name checks', () => {
    const both = { spec: { selector: { matchLabels: { app: 'a' } }, namespaceSelector: { any: true }, podMetricsEndpoints: [{ port: 'http' }, { port: 'https', scheme: 'https', tlsConfig: { insecureSkipVerify: true } }] } };
    const tlsPod: Pod = { ...pod('n', 'q', { app: 'a' }), ports: { https: 5443 } };
    const configs = podMonitorScrapeConfigs({ ...pm({ port: 'http' }), ...both } as any, [pod('n', 'p', { app: 'a' }), tlsPod]);
    assert.deepEqual(configs.map((c: any) => [c.scheme, c.static_configs.map((t: any) => t.targets[0]), c.tls_config]), [
      ['http', ['127.0.0.1:5000'], undefined],
      ['https', ['127.0.0.1:5443'], { insecure_skip_verify: true }],
    ]);
  });
});
