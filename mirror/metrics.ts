// Cache metrics: Prometheus exposition on /metrics (prom-client) and the JSON figures on
// /stats that the operator copies into a RegistryMirror's status. One object records both so
// the two can never disagree.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { BreakerSnapshot, BreakerState } from './upstream/circuit-breaker.js';
import type { RateLimitObservation } from './upstream/rate-limit.js';
import { InflightDownloads, type DownloadInfo, type DownloadLike } from './status/inflight-downloads.js';
import { RepositoryTraffic } from './status/repository-traffic.js';
import { TrafficHistory } from './status/traffic-history.js';

export type Api = 'v2' | 'v1';
export type Kind = 'manifest' | 'blob' | 'tags' | 'catalog' | 'tag' | 'image' | 'referrers';
/** negative: a 404 answered from a remembered upstream 404 (cache.notFoundTTL), no upstream asked. */
/** forwarded: answered by the replica that owns the key (cluster/forward.ts). */
export type CacheResult = 'hit' | 'miss' | 'stale' | 'error' | 'pass' | 'negative' | 'forwarded';

export interface Stats {
  hits: number;
  misses: number;
  staleServed: number;
  bytesServed: number;
  bytesFromUpstream: number;
  storedBytes: number;
  blobs: number;
  upstreamErrors: number;
  /** Blob GETs to an upstream that answered 200 (a transfer began), since start. */
  upstreamBlobFetches: number;
  /** v2 blob commits that created the blob in the store (not there before), since start. */
  blobsAdded: number;
  since: string;
  /** Per prefetched image (config `prefetch`); absent when none is configured. */
  prefetch?: PrefetchStatus[];
  /** Per upstream (and the v1 source), by name: its circuit breaker. */
  upstreams?: Record<string, UpstreamStatus>;
  /** Per upstream that stated a rate limit (Docker Hub's ratelimit-* headers); absent until one has. */
  rateLimits?: RateLimitStatus[];
}

/**
 * One upstream's rate limit as its last answer stated it: what the operator copies into the
 * RegistryMirror status (a contract: fields are only ever added).
 */
export interface RateLimitStatus {
  /** The upstream's key in the config (`upstreams`). */
  upstream: string;
  /** Requests allowed per window; absent when the answer stated only what remains. */
  limit?: number;
  /** Requests left in the window; absent when the answer stated only the limit. */
  remaining?: number;
  /** The window in seconds (w=), when stated. */
  windowSeconds?: number;
  /** When the answer was read (ISO 8601). */
  observedAt: string;
}

/** What the status page shows of an upstream beyond its breaker. */
export interface UpstreamFigures {
  retries: number;
  errors: number;
  /** The last upstream error: when, and what (when the caller said). */
  lastError?: { at: number; message?: string };
}

/** One upstream as /stats reports it. */
export interface UpstreamStatus {
  breaker: {
    state: BreakerState;
    /** Requests in a row that got no answer (connection-level failures after their retries). */
    consecutiveFailures: number;
    /** Times it opened (closed -> open, and a failed probe). */
    opens: number;
    /** Requests failed at once while it was open, without asking the upstream. */
    fastFailed: number;
    /** When it last opened (ISO 8601), while open or half-open. */
    openedAt?: string;
    /** While open: when the next probe request may go (ISO 8601). */
    probeAt?: string;
    /** The last failure of the current run of failures (e.g. ECONNREFUSED). */
    lastFailure?: string;
  };
}

/** registry_mirror_upstream_breaker_state's values. */
export const breakerStateValue: Record<BreakerState, number> = { closed: 0, open: 1, 'half-open': 2 };

/** One prefetched image as /stats reports it. */
export interface PrefetchStatus {
  image: string;
  /** The digest the reference resolved to last. */
  digest?: string;
  /** Manifests and blobs of that digest (the listed platforms only). */
  bytes: number;
  /** Everything of that digest is in the store. */
  ready: boolean;
  /** Its content is pinned against expiry and eviction. */
  pinned: boolean;
  /** The last run's problem (or a note, e.g. upstream down and the cached digest kept). */
  error?: string;
  /** When it was last checked (ISO 8601). */
  checkedAt?: string;
}

export class MirrorMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'api' | 'kind' | 'result'>;
  private readonly bytesServedCounter: Counter<'source'>;
  private readonly upstreamRequests: Counter<'upstream' | 'status'>;
  private readonly upstreamErrorsCounter: Counter<'upstream'>;
  private readonly upstreamRetries: Counter<'upstream'>;
  private readonly breakerOpens: Counter<'upstream'>;
  private readonly breakerFastFails: Counter<'upstream'>;
  private readonly breakerCounts = new Map<string, { opens: number; fastFailed: number }>();
  private breakerStates: (() => Array<{ upstream: string } & BreakerSnapshot>) | undefined;
  private readonly evictions: Counter<'reason'>;
  private readonly noRoomCounter: Counter;
  private readonly storeErrors: Counter<'op'>;
  private readonly clusterForwards: Counter<'result'>;
  private readonly inflightDownloads: Gauge;
  readonly duration: Histogram<'api' | 'kind'>;
  private readonly counts = { hits: 0, misses: 0, staleServed: 0, bytesServed: 0, bytesFromUpstream: 0, upstreamErrors: 0, upstreamBlobFetches: 0, blobsAdded: 0 };
  private readonly blobFetches: Counter<'upstream'>;
  private readonly blobsAddedCounter: Counter;
  private readonly since = new Date().toISOString();
  private prefetchStatus: (() => PrefetchStatus[]) | undefined;
  private rateLimitStates: (() => Array<{ upstream: string; rateLimit: RateLimitObservation | undefined }>) | undefined;
  /** Per upstream name (the configured ones and the v1 source: a bounded set). */
  private readonly figures = new Map<string, UpstreamFigures>();
  /** Per-minute traffic of the last hour (the status page's chart). */
  readonly history: TrafficHistory;
  /** Bytes served and misses per repository (the status page's top lists). */
  readonly repositories = new RepositoryTraffic();
  /** The downloads running now (the status page's progress table). */
  readonly downloads: InflightDownloads;

  constructor(
    private readonly storeTotals: () => { storedBytes: number; blobs: number },
    now: () => number = Date.now,
  ) {
    this.history = new TrafficHistory(now);
    this.downloads = new InflightDownloads(now);
    const r = this.registry;
    collectDefaultMetrics({ register: r, prefix: 'registry_mirror_' });
    this.requests = new Counter({
      name: 'registry_mirror_requests_total',
      help: 'Registry API requests by API, object kind and cache result',
      labelNames: ['api', 'kind', 'result'],
      registers: [r],
    });
    this.bytesServedCounter = new Counter({
      name: 'registry_mirror_bytes_served_total',
      help: 'Bytes of blobs and manifests sent to clients, by where they came from',
      labelNames: ['source'],
      registers: [r],
    });
    this.upstreamRequests = new Counter({
      name: 'registry_mirror_upstream_requests_total',
      help: 'Requests sent to upstream registries, by upstream and response status',
      labelNames: ['upstream', 'status'],
      registers: [r],
    });
    this.upstreamErrorsCounter = new Counter({
      name: 'registry_mirror_upstream_errors_total',
      help: 'Upstream failures: unreachable, 5xx, 429, or content that failed verification',
      labelNames: ['upstream'],
      registers: [r],
    });
    this.upstreamRetries = new Counter({
      name: 'registry_mirror_upstream_retries_total',
      help: 'Upstream requests sent again after a connection error, 429 or 5xx',
      labelNames: ['upstream'],
      registers: [r],
    });
    this.breakerOpens = new Counter({
      name: 'registry_mirror_upstream_breaker_opens_total',
      help: 'Times an upstream\'s circuit breaker opened (failed requests in a row, or a failed probe)',
      labelNames: ['upstream'],
      registers: [r],
    });
    this.breakerFastFails = new Counter({
      name: 'registry_mirror_upstream_breaker_fast_failures_total',
      help: 'Requests failed at once, without asking the upstream, because its circuit breaker was open',
      labelNames: ['upstream'],
      registers: [r],
    });
    this.evictions = new Counter({
      name: 'registry_mirror_evictions_total',
      help: 'Cached objects removed, by reason (ttl, size)',
      labelNames: ['reason'],
      registers: [r],
    });
    this.noRoomCounter = new Counter({
      name: 'registry_mirror_store_no_room_total',
      help: 'Blobs and manifests served without caching because eviction could not make room under storage.maxBytes (the rest was in use or pinned)',
      registers: [r],
    });
    this.storeErrors = new Counter({
      name: 'registry_mirror_store_errors_total',
      help: 'Store requests that failed (an S3 store unreachable or refusing): read = warm content answered 503, write = content served without caching',
      labelNames: ['op'],
      registers: [r],
    });
    this.blobFetches = new Counter({
      name: 'registry_mirror_upstream_blob_fetches_total',
      help: 'v2 blob GETs to an upstream that answered 200: transfers begun (fleet-wide, ideally one per blob added)',
      labelNames: ['upstream'],
      registers: [r],
    });
    this.blobsAddedCounter = new Counter({
      name: 'registry_mirror_store_blobs_added_total',
      help: 'v2 blob commits that created the blob in the store (one already there, stored by another replica, is not counted)',
      registers: [r],
    });
    this.clusterForwards = new Counter({
      name: 'registry_mirror_cluster_forwards_total',
      help: 'Misses sent to the replica owning them: forwarded, or owner_unreachable (served here instead)',
      labelNames: ['result'],
      registers: [r],
    });
    this.inflightDownloads = new Gauge({
      name: 'registry_mirror_inflight_downloads',
      help: 'Blob downloads from upstreams in progress',
      registers: [r],
    });
    this.duration = new Histogram({
      name: 'registry_mirror_request_duration_seconds',
      help: 'Time to answer registry API requests (headers sent for streamed bodies)',
      labelNames: ['api', 'kind'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
      registers: [r],
    });
    new Gauge({
      name: 'registry_mirror_stored_bytes',
      help: 'Bytes of content in the store',
      registers: [r],
      collect() {
        this.set(storeTotals().storedBytes);
      },
    });
    // Counters the chart's alerts and dashboard take rate() of start at 0, so their series
    // exist from the first scrape (a counter first seen at 1 loses that first increment).
    for (const reason of ['ttl', 'size'] as const) this.evictions.inc({ reason }, 0);
    this.noRoomCounter.inc(0);
    for (const kind of ['manifest', 'blob'] as const) for (const result of ['hit', 'miss'] as const) this.requests.inc({ api: 'v2', kind, result }, 0);
    new Gauge({
      name: 'registry_mirror_stored_blobs',
      help: 'Blobs in the store',
      registers: [r],
      collect() {
        this.set(storeTotals().blobs);
      },
    });
  }

  /** Gauges of each upstream's token cache (bounded: upstream/client.ts tokenCacheLimits). */
  watchTokenCaches(sizes: () => Array<{ upstream: string; entries: number; bytes: number }>): void {
    const read = (field: 'entries' | 'bytes') =>
      function (this: Gauge<'upstream'>) {
        this.reset();
        for (const s of sizes()) this.set({ upstream: s.upstream }, s[field]);
      };
    new Gauge({
      name: 'registry_mirror_upstream_token_cache_entries',
      help: 'Bearer tokens cached for upstream requests, by upstream',
      labelNames: ['upstream'],
      registers: [this.registry],
      collect: read('entries'),
    });
    new Gauge({
      name: 'registry_mirror_upstream_token_cache_bytes',
      help: 'Bytes of Bearer tokens cached for upstream requests, by upstream',
      labelNames: ['upstream'],
      registers: [this.registry],
      collect: read('bytes'),
    });
  }

  /** registry_mirror_storage_max_bytes: the bound stored bytes are held under (storage.maxBytes; 0 = unbounded). */
  watchStorageBound(maxBytes: number): void {
    new Gauge({
      name: 'registry_mirror_storage_max_bytes',
      help: 'The bound on stored bytes (storage.maxBytes); 0 = unbounded',
      registers: [this.registry],
    }).set(maxBytes);
  }

  /** Gauge of the upstream 404s remembered (bounded: cache/manifest-cache.ts notFoundMax). */
  watchNotFoundCache(entries: () => number): void {
    new Gauge({
      name: 'registry_mirror_not_found_cache_entries',
      help: 'Upstream 404s for manifests remembered for cache.notFoundTTL',
      registers: [this.registry],
      collect() {
        this.set(entries());
      },
    });
  }

  /**
   * Each upstream's circuit breaker: the registry_mirror_upstream_breaker_state gauge (0
   * closed, 1 open, 2 half-open) and /stats `upstreams`. The per-upstream counters (breaker,
   * errors, retries) start at 0 for each.
   */
  watchBreakers(states: () => Array<{ upstream: string } & BreakerSnapshot>): void {
    this.breakerStates = states;
    for (const s of states()) this.breakerCount(s.upstream);
    new Gauge({
      name: 'registry_mirror_upstream_breaker_state',
      help: 'Circuit breaker of each upstream: 0 closed, 1 open (requests fail at once), 2 half-open (one probe out)',
      labelNames: ['upstream'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const s of states()) this.set({ upstream: s.upstream }, breakerStateValue[s.state]);
      },
    });
  }

  breakerOpened(upstream: string): void {
    this.breakerOpens.inc({ upstream });
    this.breakerCount(upstream).opens++;
  }

  breakerFastFailed(upstream: string): void {
    this.breakerFastFails.inc({ upstream });
    this.breakerCount(upstream).fastFailed++;
  }

  private breakerCount(upstream: string): { opens: number; fastFailed: number } {
    let c = this.breakerCounts.get(upstream);
    if (!c) {
      c = { opens: 0, fastFailed: 0 };
      this.breakerCounts.set(upstream, c);
      this.breakerOpens.inc({ upstream }, 0);
      this.breakerFastFails.inc({ upstream }, 0);
      this.upstreamErrorsCounter.inc({ upstream }, 0);
      this.upstreamRetries.inc({ upstream }, 0);
    }
    return c;
  }

  /**
   * Each upstream's last stated rate limit: registry_mirror_upstream_ratelimit_limit and
   * _remaining (a series per upstream that stated one) and /stats `rateLimits`.
   */
  watchRateLimits(states: () => Array<{ upstream: string; rateLimit: RateLimitObservation | undefined }>): void {
    this.rateLimitStates = states;
    const read = (field: 'limit' | 'remaining') =>
      function (this: Gauge<'upstream'>) {
        this.reset();
        for (const s of states()) {
          const v = s.rateLimit?.[field];
          if (v !== undefined) this.set({ upstream: s.upstream }, v);
        }
      };
    new Gauge({
      name: 'registry_mirror_upstream_ratelimit_limit',
      help: 'Requests per window the upstream allows, as its last answer stated (ratelimit-limit header)',
      labelNames: ['upstream'],
      registers: [this.registry],
      collect: read('limit'),
    });
    new Gauge({
      name: 'registry_mirror_upstream_ratelimit_remaining',
      help: 'Requests left in the upstream\'s window, as its last answer stated (ratelimit-remaining header)',
      labelNames: ['upstream'],
      registers: [this.registry],
      collect: read('remaining'),
    });
  }

  /** The rate limits as /stats reports them (empty until an upstream stated one). */
  rateLimits(): RateLimitStatus[] {
    const out: RateLimitStatus[] = [];
    for (const s of this.rateLimitStates?.() ?? []) {
      const r = s.rateLimit;
      if (!r) continue;
      out.push({
        upstream: s.upstream,
        ...(r.limit !== undefined ? { limit: r.limit } : {}),
        ...(r.remaining !== undefined ? { remaining: r.remaining } : {}),
        ...(r.windowSeconds !== undefined ? { windowSeconds: r.windowSeconds } : {}),
        observedAt: new Date(r.observedAt).toISOString(),
      });
    }
    return out;
  }

  /** Retries, errors and the last error of an upstream (for the status page). */
  upstreamFigures(upstream: string): UpstreamFigures {
    let f = this.figures.get(upstream);
    if (!f) {
      f = { retries: 0, errors: 0 };
      this.figures.set(upstream, f);
    }
    return f;
  }

  /** Adds the prefetched images' status to /stats. */
  watchPrefetch(status: () => PrefetchStatus[]): void {
    this.prefetchStatus = status;
  }

  request(api: Api, kind: Kind, result: CacheResult): void {
    this.requests.inc({ api, kind, result });
    if (result === 'hit') {
      this.counts.hits++;
      this.history.add({ hits: 1 });
    } else if (result === 'miss') {
      this.counts.misses++;
      this.history.add({ misses: 1 });
    }
    else if (result === 'stale') this.counts.staleServed++;
  }

  served(source: 'cache' | 'upstream' | 'peer', bytes: number): void {
    if (bytes <= 0) return;
    this.bytesServedCounter.inc({ source }, bytes);
    this.counts.bytesServed += bytes;
    this.history.add({ bytesServed: bytes });
  }

  fromUpstream(bytes: number): void {
    this.counts.bytesFromUpstream += bytes;
    this.history.add({ bytesFromUpstream: bytes });
  }

  upstreamRequest(upstream: string, status: number | 'error'): void {
    this.upstreamRequests.inc({ upstream, status: String(status) });
  }

  /** `message` (no secrets: an upstream status or a transfer failure) shows on the status page. */
  upstreamError(upstream: string, message?: string): void {
    this.upstreamErrorsCounter.inc({ upstream });
    this.counts.upstreamErrors++;
    const f = this.upstreamFigures(upstream);
    f.errors++;
    f.lastError = { at: Date.now(), ...(message !== undefined ? { message } : {}) };
  }

  upstreamRetry(upstream: string): void {
    this.upstreamRetries.inc({ upstream });
    this.upstreamFigures(upstream).retries++;
  }

  evicted(reason: 'ttl' | 'size', n = 1): void {
    this.evictions.inc({ reason }, n);
  }

  /** A size eviction could not make room: the incoming content is not cached. */
  noRoom(): void {
    this.noRoomCounter.inc();
  }

  /** A download from an upstream started: counted in the gauge and listed until `finished()`. */
  downloadStarted(info: DownloadInfo, dl: DownloadLike): () => void {
    this.inflightDownloads.inc();
    const untrack = this.downloads.track(info, dl);
    return () => {
      untrack();
      this.inflightDownloads.dec();
    };
  }

  /** A blob transfer from an upstream began (its GET answered 200). */
  upstreamBlobFetch(upstream: string): void {
    this.blobFetches.inc({ upstream });
    this.counts.upstreamBlobFetches++;
  }

  /** A commit created a blob the store did not have. */
  blobAdded(): void {
    this.blobsAddedCounter.inc();
    this.counts.blobsAdded++;
  }

  /** A miss went to its owner replica, or could not (then served here). */
  clusterForward(result: 'forwarded' | 'owner_unreachable'): void {
    this.clusterForwards.inc({ result });
  }

  /** With a cluster: registry_mirror_cluster_peers, the live replicas misses are routed over (self included). */
  watchClusterPeers(count: () => number): void {
    new Gauge({
      name: 'registry_mirror_cluster_peers',
      help: 'Live replicas this one routes misses over, itself included',
      registers: [this.registry],
      collect() {
        this.set(count());
      },
    });
  }

  /** The store failed a read (answered 503) or a write (served uncached). */
  storeError(op: 'read' | 'write'): void {
    this.storeErrors.inc({ op });
  }

  stats(): Stats {
    const t = this.storeTotals();
    const prefetch = this.prefetchStatus?.();
    const upstreams = this.upstreamStatus();
    const rateLimits = this.rateLimits();
    return {
      ...this.counts,
      storedBytes: t.storedBytes,
      blobs: t.blobs,
      since: this.since,
      ...(prefetch && prefetch.length > 0 ? { prefetch } : {}),
      ...(upstreams ? { upstreams } : {}),
      ...(rateLimits.length > 0 ? { rateLimits } : {}),
    };
  }

  private upstreamStatus(): Record<string, UpstreamStatus> | undefined {
    if (!this.breakerStates) return undefined;
    const out: Record<string, UpstreamStatus> = {};
    for (const s of this.breakerStates()) {
      const c = this.breakerCount(s.upstream);
      out[s.upstream] = {
        breaker: {
          state: s.state,
          consecutiveFailures: s.consecutiveFailures,
          opens: c.opens,
          fastFailed: c.fastFailed,
          ...(s.openedAt !== undefined ? { openedAt: new Date(s.openedAt).toISOString() } : {}),
          ...(s.probeAt !== undefined ? { probeAt: new Date(s.probeAt).toISOString() } : {}),
          ...(s.lastFailure !== undefined ? { lastFailure: s.lastFailure } : {}),
        },
      };
    }
    return out;
  }
}
