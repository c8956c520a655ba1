// The Prometheus scrape config a Prometheus Operator would generate from a PodMonitor, for pods
// we run ourselves (no kubelet): the test's Prometheus then scrapes with the chart's settings
// (path, port by name, scheme, interval, timeout, relabelings) instead of ones written by hand.
// Targets are static, with the __meta_kubernetes_* labels Kubernetes discovery would attach, so
// the PodMonitor's relabelings run in Prometheus exactly as they would in a cluster. Fields this
// does not model are refused rather than ignored.

export interface PodMonitor {
  kind: string;
  metadata: { name: string; namespace: string };
  spec: {
    namespaceSelector?: { any?: boolean; matchNames?: string[] };
    selector: { matchLabels?: Record<string, string>; matchExpressions?: unknown[] };
    podMetricsEndpoints: Array<Record<string, unknown>>;
  };
}

/** A pod as discovery sees it; host and ports are where its process really listens. */
export interface Pod {
  namespace: string;
  name: string;
  labels: Record<string, string>;
  host: string;
  /** Container port name -> the port its process listens on. */
  ports: Record<string, number>;
}

const ENDPOINT_FIELDS = new Set(['port', 'path', 'scheme', 'tlsConfig', 'interval', 'scrapeTimeout', 'relabelings', 'honorLabels']);

/** Kubernetes discovery's label-name sanitising (__meta_kubernetes_pod_label_<name>). */
const metaName = (label: string) => label.replace(/[^a-zA-Z0-9_]/g, '_');
const snake = (key: string) => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

function selects(pm: PodMonitor, pod: Pod): boolean {
  const ns = pm.spec.namespaceSelector;
  const inNamespace = ns?.any === true || (ns?.matchNames ?? [pm.metadata.namespace]).includes(pod.namespace);
  return inNamespace && Object.entries(pm.spec.selector.matchLabels ?? {}).every(([k, v]) => pod.labels[k] === v);
}

/** One scrape config per podMetricsEndpoint (as the Prometheus Operator does), over the pods it selects. */
export function podMonitorScrapeConfigs(pm: PodMonitor, pods: Pod[]): Array<Record<string, unknown>> {
  if (pm.kind !== 'PodMonitor') throw new Error(`not a PodMonitor: ${pm.kind}`);
  if (pm.spec.selector.matchExpressions?.length) throw new Error(`${pm.metadata.name}: selector.matchExpressions is not modelled`);
  const selected = pods.filter((p) => selects(pm, p));
  if (selected.length === 0) throw new Error(`PodMonitor ${pm.metadata.name} selects none of ${pods.map((p) => `${p.namespace}/${p.name}`).join(', ')}`);
  const configs = pm.spec.podMetricsEndpoints.map((ep, i) => {
    const unknown = Object.keys(ep).filter((k) => !ENDPOINT_FIELDS.has(k));
    if (unknown.length > 0) throw new Error(`${pm.metadata.name} endpoint ${i}: ${unknown.join(', ')} not modelled`);
    const tlsConfig = (ep.tlsConfig ?? {}) as Record<string, unknown>;
    const unknownTls = Object.keys(tlsConfig).filter((k) => k !== 'insecureSkipVerify');
    if (unknownTls.length > 0) throw new Error(`${pm.metadata.name} endpoint ${i}: tlsConfig.${unknownTls.join(', ')} not modelled`);
    const portName = String(ep.port);
    // As the Prometheus Operator's relabeling does: a pod without the endpoint's port is not a target of it.
    const targets = selected.filter((p) => p.ports[portName] !== undefined).map((p) => {
      const port = p.ports[portName]!;
      const meta: Record<string, string> = {
        __meta_kubernetes_namespace: p.namespace,
        __meta_kubernetes_pod_name: p.name,
        __meta_kubernetes_pod_container_port_name: portName,
      };
      for (const [k, v] of Object.entries(p.labels)) meta[`__meta_kubernetes_pod_label_${metaName(k)}`] = v;
      return { targets: [`${p.host}:${port}`], labels: meta };
    });
    const relabelings = ((ep.relabelings as Array<Record<string, unknown>> | undefined) ?? []).map((r) =>
      Object.fromEntries(Object.entries(r).map(([k, v]) => [snake(k), k === 'action' ? String(v).toLowerCase() : v])),
    );
    return {
      job_name: `podMonitor/${pm.metadata.namespace}/${pm.metadata.name}/${i}`,
      ...(ep.interval ? { scrape_interval: ep.interval } : {}),
      ...(ep.scrapeTimeout ? { scrape_timeout: ep.scrapeTimeout } : {}),
      metrics_path: ep.path ?? '/metrics',
      scheme: ep.scheme ?? 'http',
      ...(tlsConfig.insecureSkipVerify ? { tls_config: { insecure_skip_verify: true } } : {}),
      ...(ep.honorLabels ? { honor_labels: true } : {}),
      static_configs: targets,
      // The Prometheus Operator's own relabelings come first, then the PodMonitor's.
      relabel_configs: [
        { source_labels: ['__meta_kubernetes_namespace'], target_label: 'namespace' },
        { source_labels: ['__meta_kubernetes_pod_name'], target_label: 'pod' },
        { source_labels: ['__meta_kubernetes_pod_container_port_name'], target_label: 'endpoint' },
        { target_label: 'job', replacement: `${pm.metadata.namespace}/${pm.metadata.name}` },
        ...relabelings,
      ],
    };
  });
  const live = configs.filter((c) => c.static_configs.length > 0);
  if (live.length === 0) throw new Error(`${pm.metadata.name}: no selected pod has the port of any endpoint`);
  return live;
}
