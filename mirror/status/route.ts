// GET / : the status page (page.ts), protected like /metrics (access/client-auth.ts), with a
// Content-Security-Policy that allows nothing but the page's own hashed stylesheet.

import type { FastifyInstance } from 'fastify';
import type { MirrorConfig } from '../config.js';
import type { MirrorMetrics } from '../metrics.js';
import { configSummary, type ConfigRow } from './config-summary.js';
import { contentSecurityPolicy, renderStatusPage, type StatusPageState, type UpstreamHealth } from './page.js';
import { mirrorVersion } from './version.js';

/** Rows of each top list, and downloads listed (the rest is counted). */
export const statusPageLimits = { topRepositories: 10, downloads: 50 } as const;

export function statusState(metrics: MirrorMetrics, config: MirrorConfig, summary: ConfigRow[], now = Date.now()): StatusPageState {
  const stats = metrics.stats();
  const rateLimits = new Map((stats.rateLimits ?? []).map((r) => [r.upstream, r]));
  const names = stats.upstreams ? Object.keys(stats.upstreams) : Object.keys(config.upstreams);
  const upstreams: UpstreamHealth[] = names.map((name) => {
    const f = metrics.upstreamFigures(name);
    const breaker = stats.upstreams?.[name]?.breaker;
    const rateLimit = rateLimits.get(name);
    return {
      name,
      retries: f.retries,
      errors: f.errors,
      ...(breaker ? { breaker } : {}),
      ...(f.lastError ? { lastError: f.lastError } : {}),
      ...(rateLimit ? { rateLimit } : {}),
    };
  });
  return {
    version: mirrorVersion(),
    now,
    since: stats.since,
    totals: {
      hits: stats.hits,
      misses: stats.misses,
      staleServed: stats.staleServed,
      bytesServed: stats.bytesServed,
      bytesFromUpstream: stats.bytesFromUpstream,
      upstreamErrors: stats.upstreamErrors,
    },
    storage: { storedBytes: stats.storedBytes, blobs: stats.blobs, maxBytes: config.storage.maxBytes },
    history: metrics.history.samples(),
    historyMinutes: metrics.history.minutes,
    topByBytes: metrics.repositories.top('bytesServed', statusPageLimits.topRepositories),
    topByMisses: metrics.repositories.top('misses', statusPageLimits.topRepositories),
    downloads: metrics.downloads.list(statusPageLimits.downloads),
    downloadsRunning: metrics.downloads.size,
    upstreams,
    config: summary,
  };
}

export function registerStatusPage(app: FastifyInstance, metrics: MirrorMetrics, config: MirrorConfig): void {
  const summary = configSummary(config);
  app.get('/', async (_req, reply) =>
    reply
      .header('Content-Type', 'text/html; charset=utf-8')
      .header('Content-Security-Policy', contentSecurityPolicy)
      .header('X-Content-Type-Options', 'nosniff')
      .header('Referrer-Policy', 'no-referrer')
      .header('Cache-Control', 'no-store')
      .send(renderStatusPage(statusState(metrics, config, summary))),
  );
}
