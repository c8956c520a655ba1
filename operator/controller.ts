// Wires the parts together while this replica leads: informers on RegistryMirrors, the
// objects they own (filtered by our managed-by label so the caches hold only ours; the
// PodDisruptionBudgets in the API version discovery names at start), their
// Pods (for /stats) and Secrets (values stripped), feeding keys into the work queue whose
// worker is reconcile(). Also runs the periodic resync and the /stats refresh.
import type { Logger } from 'pino';
import { backoffDelay, jitter, sleep } from './backoff.js';
import { timerDelay } from '../mirror/duration.js';
import { aggregateCache } from './cache-stats.js';
import { slimOwned, slimPod, slimRegistryMirror, type CachedRegistryMirror } from './cache-transforms.js';
import { collectionPath, detectPdbApiVersion, lister, pdbResource, RESOURCES, type Kube, type ResourceType } from './kube/client.js';
import { errorText, Informer, type KubeObject } from './kube/informer.js';
import type { Metrics } from './metrics.js';
import { WorkQueue } from './queue.js';
import { reconcile } from './reconcile.js';
import { INSTANCE_LABEL, MANAGED_SELECTOR } from './render/names.js';
import type { PdbApiVersion } from './render/pdb.js';
import { summarizeSecret, type SecretSummary } from './secrets.js';
import { isPodReady, mapLimit, STATS_PARALLELISM, statsUrl, type FetchStats, type PodLike } from './stats-scraper.js';
import type { OperatorCa } from './tls/serving.js';
import { csrState, CsrSigner, NODE_CLIENT_SIGNER } from './tls/csr.js';
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
  /** Records Kubernetes Events about RegistryMirrors (operator/events.ts); none when absent. */
  events?: import('./events.js').EventRecorder;
  /** The operator's CA (spec.tls generated, spec.auth's node client certificates). */
  ca?: () => Promise<OperatorCa>;
  clusterDomain?: string;
  /** The node agents' user (system:serviceaccount:NS:NAME): with ca, node client CSRs are approved and signed. */
  nodeAgentUser?: string;
}

/** What the CSR informer keeps: the name, and whether it is ours and still to be handled. */
interface CsrSummary extends KubeObject {
  metadata: { name: string; resourceVersion?: string };
  open: boolean;
}

function summarizeCsr(o: any): CsrSummary {
  const state = o?.spec?.signerName === NODE_CLIENT_SIGNER ? csrState(o) : 'issued';
  return {
    metadata: { name: String(o?.metadata?.name ?? '').slice(0, 253), resourceVersion: String(o?.metadata?.resourceVersion ?? '').slice(0, 64) },
    open: state === 'pending' || state === 'approved',
  };
}

const OWNED_KINDS = {
  Deployment: RESOURCES.deployments,
  ConfigMap: RESOURCES.configMaps,
  Service: RESOURCES.services,
  PersistentVolumeClaim: RESOURCES.pvcs,
} as const;

/** Retries of the PodDisruptionBudget API discovery at start (apiserver not reachable yet). */
const DISCOVERY_BACKOFF = { baseMs: 500, maxMs: 30_000 };

export class Controller {
  private readonly crs: Informer<CachedRegistryMirror>;
  private readonly owned = new Map<string, Informer<KubeObject>>();
  private readonly pods: Informer<PodLike & KubeObject>;
  private readonly secrets: Informer<SecretSummary & KubeObject>;
  private readonly queue: WorkQueue;
  /** Node client CSRs (cluster-scoped), and their queue of names; only with a CA and an agent user. */
  private readonly csrs: Informer<CsrSummary> | undefined;
  private readonly csrQueue: WorkQueue | undefined;
  private readonly stats = new Map<string, CacheStatus>();
  private timers: NodeJS.Timeout[] = [];
  /** One pending renewal reconcile per RegistryMirror (bounded by the RegistryMirrors that exist). */
  private readonly renewals = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  private stopped = false;
  private readonly stopping = new AbortController();
  /** Known once start() has asked discovery; PodDisruptionBudgets are watched in that version. */
  private pdbApiVersion: PdbApiVersion | undefined;
  private readonly make: <T extends KubeObject>(rt: ResourceType, selector?: string, transform?: (x: any) => T) => Informer<T>;

  constructor(private readonly o: ControllerOptions) {
    const make = (this.make = <T extends KubeObject>(rt: ResourceType, selector?: string, transform?: (x: any) => T) =>
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
      }));
    // Every cache keeps only what is read (cache-transforms.ts, secrets.ts).
    this.crs = make(RESOURCES.registryMirrors, undefined, slimRegistryMirror);
    for (const [kind, rt] of Object.entries(OWNED_KINDS)) this.watchOwned(kind, rt);
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
    this.crs.on('delete', (cr) => {
      this.stats.delete(keyOf(cr));
      const r = this.renewals.get(keyOf(cr));
      if (r) clearTimeout(r.timer);
      this.renewals.delete(keyOf(cr));
    });
    const toReferrers = (s: SecretSummary) => {
      for (const cr of this.crs.list(s.metadata.namespace)) {
        if (
          cr.spec?.upstream?.credentialsSecret?.name === s.metadata.name ||
          cr.spec?.auth?.secret?.name === s.metadata.name ||
          cr.spec?.storage?.s3?.credentialsSecret?.name === s.metadata.name ||
          cr.spec?.tls?.secretName === s.metadata.name ||
          `${cr.metadata.name}-tls` === s.metadata.name
        ) {
          this.queue.add(keyOf(cr));
        }
      }
    };
    this.secrets.on('add', toReferrers).on('update', toReferrers).on('delete', toReferrers);

    if (o.ca && o.nodeAgentUser) {
      const signer = new CsrSigner({ kube: o.kube, ca: o.ca, agentUser: o.nodeAgentUser, log: o.log });
      this.csrQueue = new WorkQueue((name) => signer.handle(name), {
        concurrency: 1,
        onError: (name, err, retryInMs) => o.log.warn({ csr: name, err: errorText(err), retryInMs }, 'CSR handling failed; will retry'),
      });
      const rt = RESOURCES.csrs;
      this.csrs = new Informer<CsrSummary>({
        name: rt.plural,
        path: collectionPath(rt),
        list: lister(o.kube, rt),
        watch: o.kube.watch,
        transform: summarizeCsr,
        log: o.log,
        relistIntervalMs: o.informer?.relistIntervalMs,
        watchdogMs: o.informer?.watchdogMs,
        onRestart: (reason) => o.metrics.informerRestarts.inc({ informer: rt.plural, reason }),
      });
      const toQueue = (c: CsrSummary) => {
        if (c.open) this.csrQueue!.add(c.metadata.name);
      };
      this.csrs.on('add', toQueue).on('update', toQueue);
    }
  }

  /** An informer on one owned kind (our managed-by label only) whose events queue the owner. */
  private watchOwned(kind: string, rt: ResourceType): Informer<KubeObject> {
    const inf = this.make(rt, MANAGED_SELECTOR, slimOwned(rt));
    const toOwner = (obj: KubeObject) => {
      const name = (obj.metadata?.labels as Record<string, string> | undefined)?.[INSTANCE_LABEL];
      if (name && obj.metadata?.namespace) this.queue.add(`${obj.metadata.namespace}/${name}`);
    };
    inf.on('add', toOwner).on('update', toOwner).on('delete', toOwner);
    this.owned.set(kind, inf);
    return inf;
  }

  /**
   * Asks discovery which PodDisruptionBudget API the apiserver serves (policy/v1 from 1.21,
   * policy/v1beta1 before), retrying while the apiserver cannot be reached. Undefined when
   * stopped first.
   */
  private async discoverPdbApi(): Promise<PdbApiVersion | undefined> {
    for (let attempt = 1; !this.stopped; attempt++) {
      try {
        const v = await detectPdbApiVersion(this.o.kube);
        if (v === 'none') this.o.log.warn('the apiserver serves no PodDisruptionBudget API; fleets (spec.storage.s3) get none');
        else this.o.log.info({ apiVersion: v }, 'PodDisruptionBudget API');
        return v;
      } catch (err) {
        const retryInMs = backoffDelay(attempt, DISCOVERY_BACKOFF);
        this.o.log.warn({ err: errorText(err), retryInMs }, 'API discovery failed; will retry');
        await sleep(retryInMs, this.stopping.signal);
      }
    }
    return undefined;
  }

  private all(): Informer<any>[] {
    return [this.crs, ...this.owned.values(), this.pods, this.secrets, ...(this.csrs ? [this.csrs] : [])];
  }

  /** All caches have listed once. */
  get ready(): boolean {
    return this.all().every((i) => i.ready);
  }

  async start(): Promise<void> {
    // Before any informer starts, so that no reconcile runs without knowing the PDB API.
    this.pdbApiVersion = await this.discoverPdbApi();
    if (this.stopped || this.pdbApiVersion === undefined) return;
    if (this.pdbApiVersion !== 'none') this.watchOwned('PodDisruptionBudget', pdbResource(this.pdbApiVersion));
    for (const i of this.all()) i.start();
    await Promise.all(this.all().map((i) => i.synced));
    if (this.stopped) return;
    this.o.log.info({ registryMirrors: this.crs.list().length, namespace: this.o.namespace ?? '(all)' }, 'caches synced; reconciling');
    for (const cr of this.crs.list()) this.queue.add(keyOf(cr));
    const resync = () => {
      for (const cr of this.crs.list()) this.queue.add(keyOf(cr));
      this.o.metrics.managed.set(this.crs.list().length);
      this.timers[0] = setTimeout(resync, timerDelay(jitter(this.o.resyncIntervalMs)));
    };
    const refresh = async () => {
      await this.refreshStats().catch((err) => this.o.log.warn({ err: errorText(err) }, 'stats refresh failed'));
      if (!this.stopped) this.timers[1] = setTimeout(refresh, timerDelay(this.o.statusIntervalMs));
    };
    this.timers[0] = setTimeout(resync, timerDelay(jitter(this.o.resyncIntervalMs)));
    void refresh();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.stopping.abort();
    for (const t of this.timers) clearTimeout(t);
    for (const r of this.renewals.values()) clearTimeout(r.timer);
    this.renewals.clear();
    await this.queue.stop();
    await this.csrQueue?.stop();
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
    const deps = {
      kube: this.o.kube,
      caches,
      defaultImage: this.o.defaultImage,
      log: this.o.log,
      metrics: this.o.metrics,
      policy: this.o.policy,
      pdbApiVersion: this.pdbApiVersion,
      ca: this.o.ca,
      clusterDomain: this.o.clusterDomain,
      requeueAt: (k: string, at: Date) => this.requeueAt(k, at),
      events: this.o.events,
    };
    return reconcile(key, deps).then(
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

  /** One pod's /stats, over https with the mirror's published CA unless spec.tls is disabled. */
  private fetchStatsOf(cr: CachedRegistryMirror, podIP: string) {
    if (cr.spec?.tls?.mode === 'disabled') return this.o.fetchStats(statsUrl(podIP, this.o.statsPort));
    return this.o.fetchStats(statsUrl(podIP, this.o.statsPort, true), { ca: cr.status?.tls?.caBundle });
  }

  /** Queues key again at `at` (the periodic resync would too, but a renewal should not wait for it). */
  private requeueAt(key: string, at: Date): void {
    const when = at.getTime();
    const pending = this.renewals.get(key);
    if (pending && pending.at === when) return;
    if (pending) clearTimeout(pending.timer);
    const timer = setTimeout(() => {
      this.renewals.delete(key);
      this.queue.add(key);
    }, timerDelay(when - Date.now()));
    timer.unref?.();
    this.renewals.set(key, { at: when, timer });
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
      this.fetchStatsOf(crs[j.cr]!, j.pod.status!.podIP!).catch((err) => {
        this.o.metrics.statsScrapeErrors.inc();
        this.o.log.debug({ pod: j.pod.metadata?.name, err: errorText(err) }, 'stats scrape failed');
        return undefined;
      }),
    );
    crs.forEach((cr, i) => {
      const key = keyOf(cr);
      const samples = results.filter((s, k): s is NonNullable<typeof s> => jobs[k]!.cr === i && s !== undefined);
      const previous = this.stats.get(key) ?? cr.status?.cache;
      // The pods of a bucket share one store: each reports the store's figures, not a share.
      const sharedStore = cr.spec?.storage?.s3 !== undefined && cr.spec?.storage?.s3 !== null;
      const next = aggregateCache(samples, previous, new Date(), { sharedStore });
      if (!next) return;
      this.stats.set(key, next);
      if (next.updated !== cr.status?.cache?.updated || next.pods !== cr.status?.cache?.pods) this.queue.add(key);
    });
  }
}
