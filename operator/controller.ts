// Wires the parts together while this replica leads: informers on RegistryMirrors, the
// objects they own (filtered by our managed-by label so the caches hold only ours), their
// Pods (for /stats) and Secrets (values stripped), feeding keys into the work queue whose
// worker is reconcile(). Also runs the periodic resync and the /stats refresh.
import type { Logger } from 'pino';
import { jitter } from './backoff.js';
import { aggregateCache } from './cache-stats.js';
import { slimOwned, slimPod, slimRegistryMirror, type CachedRegistryMirror } from './cache-transforms.js';
import { collectionPath, lister, RESOURCES, type Kube, type ResourceType } from './kube/client.js';
import { errorText, Informer, type KubeObject } from './kube/informer.js';
import type { Metrics } from './metrics.js';
import { WorkQueue } from './queue.js';
import { reconcile } from './reconcile.js';
import { INSTANCE_LABEL, MANAGED_SELECTOR } from './render/names.js';
import { summarizeSecret, type SecretSummary } from './secrets.js';
import { isPodReady, mapLimit, STATS_PARALLELISM, statsUrl, type FetchStats, type PodLike } from './stats-scraper.js';
import type { CacheStatus } from './types.js';
import { keyOf } from './types.js';

export interface ControllerOptions {
  kube: Kube;
  log: Logger;
  metrics: Metrics;
  /** Watch one namespace; undefined = all namespaces. */
  namespace?: string;
  defaultImage: string;
  /** How often the mirror pods' /stats are read into status.cache. */
  statusIntervalMs: number;
  /** How often every RegistryMirror is reconciled even without an event. */
  resyncIntervalMs: number;
  statsPort: number;
  fetchStats: FetchStats;
  /** Pods scraped at once (default STATS_PARALLELISM). */
  statsParallelism?: number;
  informer?: { relistIntervalMs?: number; watchdogMs?: number };
  concurrency?: number;
  /** The admin's node policy, handed to reconcile (operator/node-policy.ts). */
  policy?: import('./node-policy.js').NodePolicy;
}

const OWNED_KINDS = {
  Deployment: RESOURCES.deployments,
  ConfigMap: RESOURCES.configMaps,
  Service: RESOURCES.services,
  PersistentVolumeClaim: RESOURCES.pvcs,
} as const;

export class Controller {
  private readonly crs: Informer<CachedRegistryMirror>;
  private readonly owned = new Map<string, Informer<KubeObject>>();
  private readonly pods: Informer<PodLike & KubeObject>;
  private readonly secrets: Informer<SecretSummary & KubeObject>;
  private readonly queue: WorkQueue;
  private readonly stats = new Map<string, CacheStatus>();
  private timers: NodeJS.Timeout[] = [];
  private stopped = false;

  constructor(private readonly o: ControllerOptions) {
    const make = <T extends KubeObject>(rt: ResourceType, selector?: string, transform?: (x: any) => T) =>
      new Informer<T>({
        name: rt.plural,
        path: collectionPath(rt, o.namespace),
        list: lister(o.kube, rt, o.namespace, selector),
        watch: o.kube.watch,
        labelSelector: selector,
        transform,
        log: o.log,
        relistIntervalMs: o.informer?.relistIntervalMs,
        watchdogMs: o.informer?.watchdogMs,
        onRestart: (reason) => o.metrics.informerRestarts.inc({ informer: rt.plural, reason }),
      });
    // Every cache keeps only what is read (cache-transforms.ts, secrets.ts).
    this.crs = make(RESOURCES.registryMirrors, undefined, slimRegistryMirror);
    for (const [kind, rt] of Object.entries(OWNED_KINDS)) this.owned.set(kind, make(rt, MANAGED_SELECTOR, slimOwned(rt)));
    this.pods = make(RESOURCES.pods, MANAGED_SELECTOR, slimPod);
    this.secrets = make(RESOURCES.secrets, undefined, summarizeSecret as (x: any) => SecretSummary & KubeObject);

    this.queue = new WorkQueue((key) => this.reconcileKey(key), {
      concurrency: o.concurrency ?? 2,
      onError: (key, err, retryInMs) => o.log.warn({ registryMirror: key, err: errorText(err), retryInMs }, 'reconcile failed; will retry'),
      onDepth: (n) => o.metrics.queueDepth.set(n),
    });

    this.crs.on('add', (cr) => this.queue.add(keyOf(cr)));
    this.crs.on('update', (cr, old) => {
      // Our own status writes come back as updates; only spec/metadata changes need work.
      if (
        cr.metadata.generation !== old?.metadata.generation ||
        cr.metadata.deletionTimestamp !== old?.metadata.deletionTimestamp ||
        cr.labelsDigest !== old?.labelsDigest
      ) {
        this.queue.add(keyOf(cr));
      }
    });
    this.crs.on('delete', (cr) => this.stats.delete(keyOf(cr)));
    for (const inf of this.owned.values()) {
      const toOwner = (obj: KubeObject) => {
        const name = (obj.metadata?.labels as Record<string, string> | undefined)?.[INSTANCE_LABEL];
        if (name && obj.metadata?.namespace) this.queue.add(`${obj.metadata.namespace}/${name}`);
      };
      inf.on('add', toOwner).on('update', toOwner).on('delete', toOwner);
    }
    const toReferrers = (s: SecretSummary) => {
      for (const cr of this.crs.list(s.metadata.namespace)) {
        if (
          cr.spec?.upstream?.credentialsSecret?.name === s.metadata.name ||
          cr.spec?.auth?.secret?.name === s.metadata.name ||
          cr.spec?.storage?.s3?.credentialsSecret?.name === s.metadata.name
        ) {
          this.queue.add(keyOf(cr));
        }
      }
    };
    this.secrets.on('add', toReferrers).on('update', toReferrers).on('delete', toReferrers);
  }

  private all(): Informer<any>[] {
    return [this.crs, ...this.owned.values(), this.pods, this.secrets];
  }

  /** All caches have listed once. */
  get ready(): boolean {
    return this.all().every((i) => i.ready);
  }

  async start(): Promise<void> {
    for (const i of this.all()) i.start();
    await Promise.all(this.all().map((i) => i.synced));
    if (this.stopped) return;
    this.o.log.info({ registryMirrors: this.crs.list().length, namespace: this.o.namespace ?? '(all)' }, 'caches synced; reconciling');
    for (const cr of this.crs.list()) this.queue.add(keyOf(cr));
    const resync = () => {
      for (const cr of this.crs.list()) this.queue.add(keyOf(cr));
      this.o.metrics.managed.set(this.crs.list().length);
      this.timers[0] = setTimeout(resync, jitter(this.o.resyncIntervalMs));
    };
    const refresh = async () => {
      await this.refreshStats().catch((err) => this.o.log.warn({ err: errorText(err) }, 'stats refresh failed'));
      if (!this.stopped) this.timers[1] = setTimeout(refresh, this.o.statusIntervalMs);
    };
    this.timers[0] = setTimeout(resync, jitter(this.o.resyncIntervalMs));
    void refresh();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    await this.queue.stop();
    await Promise.all(this.all().map((i) => i.stop()));
  }

  /** For tests: what the caches hold (after the informers' transforms). */
  cached(): Record<'registryMirrors' | 'pods' | 'secrets' | 'owned', KubeObject[]> {
    return {
      registryMirrors: this.crs.list(),
      pods: this.pods.list(),
      secrets: this.secrets.list() as unknown as KubeObject[],
      owned: [...this.owned.values()].flatMap((i) => i.list()),
    };
  }

  /** For tests: resolves when the queue has nothing to do. */
  idle(): Promise<void> {
    return this.queue.idle();
  }

  private reconcileKey(key: string): Promise<void> {
    const end = this.o.metrics.reconcileSeconds.startTimer();
    const caches = {
      registryMirror: (ns: string, n: string) => this.crs.get(ns, n),
      secret: (ns: string, n: string) => this.secrets.get(ns, n),
      owned: (kind: string, ns: string, n: string) => this.owned.get(kind)?.get(ns, n),
      cacheStats: (k: string) => this.stats.get(k),
    };
    return reconcile(key, { kube: this.o.kube, caches, defaultImage: this.o.defaultImage, log: this.o.log, metrics: this.o.metrics, policy: this.o.policy }).then(
      () => {
        end();
        this.o.metrics.reconciles.inc({ result: 'ok' });
      },
      (err) => {
        end();
        this.o.metrics.reconciles.inc({ result: 'error' });
        throw err;
      },
    );
  }

  /**
   * Reads /stats of every ready mirror pod, STATS_PARALLELISM pods at once over all
   * RegistryMirrors; queues the RegistryMirrors whose figures moved.
   */
  private async refreshStats(): Promise<void> {
    // With protectMetrics the mirror's /stats wants credentials the operator does not hold
    // (it never reads Secret values): no scrape, status.cache stays as it was.
    const crs = this.crs.list().filter((cr) => cr.spec?.auth?.protectMetrics !== true);
    const jobs = crs.flatMap((cr, i) =>
      this.pods
        .list(cr.metadata.namespace)
        .filter((p) => p.metadata?.labels?.[INSTANCE_LABEL] === cr.metadata.name && isPodReady(p))
        .map((p) => ({ cr: i, pod: p })),
    );
    const results = await mapLimit(jobs, this.o.statsParallelism ?? STATS_PARALLELISM, (j) =>
      this.o.fetchStats(statsUrl(j.pod.status!.podIP!, this.o.statsPort)).catch((err) => {
        this.o.metrics.statsScrapeErrors.inc();
        this.o.log.debug({ pod: j.pod.metadata?.name, err: errorText(err) }, 'stats scrape failed');
        return undefined;
      }),
    );
    crs.forEach((cr, i) => {
      const key = keyOf(cr);
      const samples = results.filter((s, k): s is NonNullable<typeof s> => jobs[k]!.cr === i && s !== undefined);
      const previous = this.stats.get(key) ?? cr.status?.cache;
      const next = aggregateCache(samples, previous, new Date());
      if (!next) return;
      this.stats.set(key, next);
      if (next.updated !== cr.status?.cache?.updated || next.pods !== cr.status?.cache?.pods) this.queue.add(key);
    });
  }
}
