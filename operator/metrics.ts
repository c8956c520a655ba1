// The operator's Prometheus metrics (GET /metrics), on a registry of its own so that a
// process embedding it elsewhere does not mix them with other figures.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'registry_mirror_operator_' });
  const p = 'registry_mirror_operator_';
  const reconciles = new Counter({ name: `${p}reconcile_total`, help: 'Reconciles by result', labelNames: ['result'], registers: [registry] });
  // Both results exist from the first scrape, so the chart's error-ratio alert has series to rate().
  for (const result of ['ok', 'error']) reconciles.inc({ result }, 0);
  return {
    registry,
    reconciles,
    reconcileSeconds: new Histogram({
      name: `${p}reconcile_duration_seconds`,
      help: 'Time spent in one reconcile',
      buckets: [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    applies: new Counter({ name: `${p}apply_total`, help: 'Server-side applies by kind', labelNames: ['kind'], registers: [registry] }),
    statusWrites: new Counter({ name: `${p}status_write_total`, help: 'RegistryMirror status writes', registers: [registry] }),
    queueDepth: new Gauge({ name: `${p}queue_depth`, help: 'Keys waiting in the work queue', registers: [registry] }),
    informerRestarts: new Counter({
      name: `${p}informer_restart_total`,
      help: 'List/watch restarts by informer and reason (error, gone, watchdog)',
      labelNames: ['informer', 'reason'],
      registers: [registry],
    }),
    statsScrapeErrors: new Counter({ name: `${p}stats_scrape_error_total`, help: 'Failed /stats scrapes of mirror pods', registers: [registry] }),
    leader: new Gauge({ name: `${p}leader`, help: '1 while this replica holds the Lease', registers: [registry] }),
    events: new Counter({
      name: `${p}events_total`,
      help: 'Kubernetes Events by result: created, series_updated (a repeat), rate_limited and backlog_full (dropped), failed (the write failed)',
      labelNames: ['result'],
      registers: [registry],
    }),
    managed: new Gauge({ name: `${p}registrymirrors`, help: 'RegistryMirrors in the cache', registers: [registry] }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
