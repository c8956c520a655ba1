// The node agent's loop: informers on RegistryMirrors and the operator's Services (by the
// managed-by label, so the cache holds only mirror Services) -> plan() -> ManagedDir.sync(), on
// containerd nodes of <certs.d>/<registry>/hosts.toml, on CRI-O nodes of
// <registries.conf.d>/50-registry-mirror-<registry>.conf (files.ts, runtime.ts).
// Every event schedules one full sync (debounced), which is idempotent: the files are always
// made to match the whole plan, so no event ordering or missed event can leave a stale file
// behind for longer than the next event or the periodic resync.
//
// Memory: both informers keep summaries, not objects (plan.ts summarizeMirror and
// summarizeService). A RegistryMirror is validated (resolveSpec) and checked against the
// admin's node policy as it arrives; the cache keeps its metadata, the verdict, the validated
// registry and upstream URL and its NodeConfig condition, so a tenant's oversized spec costs
// the agent a few hundred bytes whatever its size.
//
// Status: each RegistryMirror with nodeConfig enabled gets a `NodeConfig` condition (True:
// HostsConfigured; False: InvalidSpec, a policy refusal naming who can allow it,
// RegistryConflict naming the winner, WaitingForService, ClientAuthRequired). The operator
// owns the rest of status; the agent touches only its own condition, with a JSON patch that
// first tests the resourceVersion it read (a concurrent write makes it fail; the resulting
// update event brings the next attempt) and then replaces or appends that one list entry.
// Every agent computes the same condition, so after the first write on a cluster the others
// find nothing to change. A conflict only the agents can see (RegistryConflict,
// ClientAuthRequired) is also a Warning Event on the RegistryMirror, recorded by the agent that
// wrote the condition (so one per cluster, not one per node). Files another agent instance (another release) manages on this node
// are left alone and reported (log, metric, /readyz detail), never fought over.
import type { Logger } from 'pino';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { collectionPath, lister, RESOURCES, type Kube } from '../kube/client.js';
import { errorText, Informer, statusOf, type KubeObject } from '../kube/informer.js';
import { MANAGED_SELECTOR } from '../render/names.js';
import { DEFAULT_POLICY, type NodePolicy } from '../node-policy.js';
import { API_VERSION, GROUP, KIND, PLURAL, VERSION } from '../types.js';
import { HostsDir, RegistriesConfDir, type ManagedDir } from './files.js';
import type { Runtime } from './runtime.js';
import { NodeCredential } from './client-cert.js';
import { EventRecorder } from '../events.js';
import { NODE_CONFIG_CONDITION, plan, summarizeMirror, summarizeService, type MirrorLike, type NodeConfigState, type NodeMirror, type ServiceLike } from './plan.js';

export interface AgentOptions {
  kube: Kube;
  log: Logger;
  hostsDir: string;
  /** The node's runtime (default containerd): which files the agent writes. */
  runtime?: Runtime;
  /** CRI-O's registries.conf.d (runtime crio). */
  registriesConfDir?: string;
  namespace?: string;
  dialTimeout?: string;
  /** The admin's node policy (the same flags as the operator's). */
  policy?: NodePolicy;
  /** This agent's instance (namespace/DaemonSet): the owner of the files it writes. */
  instance?: string;
  /** The node this agent runs on: the CN of its client certificate for spec.auth mirrors (node:<name>). */
  nodeName?: string;
  reportStatus: boolean;
  /** reportingInstance of the agent's Events (its node); with reportStatus, conflicts are Events. */
  eventInstance?: string;
  resyncIntervalMs: number;
  /** Debounce between an event and the sync it triggers. */
  debounceMs?: number;
  informer?: { relistIntervalMs?: number; watchdogMs?: number };
}

export function createAgentMetrics() {
  const registry = new Registry();
  const p = 'registry_mirror_node_agent_';
  collectDefaultMetrics({ register: registry, prefix: p });
  return {
    registry,
    syncs: new Counter({ name: `${p}sync_total`, help: 'Syncs of the hosts directory by result', labelNames: ['result'], registers: [registry] }),
    changes: new Counter({ name: `${p}file_change_total`, help: 'hosts.toml files written or removed', labelNames: ['action'], registers: [registry] }),
    managed: new Gauge({ name: `${p}managed_files`, help: 'hosts.toml files this agent manages', registers: [registry] }),
    statusWrites: new Counter({ name: `${p}status_write_total`, help: 'NodeConfig condition writes by result', labelNames: ['result'], registers: [registry] }),
    events: new Counter({
      name: `${p}events_total`,
      help: 'Kubernetes Events by result: created, series_updated, rate_limited, backlog_full, failed',
      labelNames: ['result'],
      registers: [registry],
    }),
    foreign: new Gauge({
      name: `${p}foreign_owner_files`,
      help: 'Registries this agent would configure whose hosts.toml another agent instance (release) manages on this node',
      registers: [registry],
    }),
  };
}

type Mirror = NodeMirror & KubeObject;

/** reportingController of the node agents' Events. */
export const NODE_AGENT_CONTROLLER = 'registry-mirror.io/node-agent';
/** NodeConfig reasons only the agents determine (the operator records the policy refusals). */
export const NODE_CONFLICT_REASONS: ReadonlySet<string> = new Set(['RegistryConflict', 'ClientAuthRequired']);
type Service = ServiceLike & KubeObject;

export class NodeAgent {
  readonly metrics = createAgentMetrics();
  readonly dir: ManagedDir;
  private readonly mirrors: Informer<Mirror>;
  private readonly services: Informer<Service>;
  private timer: NodeJS.Timeout | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();
  private stopped = false;
  private firstSync = false;
  private lastError = '';
  private lastForeign = '';
  private readonly credential: NodeCredential | undefined;
  private warnedNoNode = false;
  private readonly events: EventRecorder | undefined;

  constructor(private readonly o: AgentOptions) {
    this.events =
      o.reportStatus && o.eventInstance
        ? new EventRecorder({
            kc: o.kube.kc,
            log: o.log,
            controller: NODE_AGENT_CONTROLLER,
            instance: o.eventInstance,
            count: (result) => this.metrics.events.inc({ result }),
          })
        : undefined;
    this.dir =
      o.runtime === 'crio'
        ? new RegistriesConfDir(o.registriesConfDir ?? '/etc/containers/registries.conf.d', o.instance)
        : new HostsDir(o.hostsDir, o.instance);
    const policy = o.policy ?? DEFAULT_POLICY;
    const make = <T extends KubeObject>(rt: typeof RESOURCES.services, transform: (x: any) => T, selector?: string) =>
      new Informer<T>({
        name: `node-agent-${rt.plural}`,
        path: collectionPath(rt, o.namespace),
        list: lister(o.kube, rt, o.namespace, selector),
        watch: o.kube.watch,
        labelSelector: selector,
        transform,
        log: o.log,
        relistIntervalMs: o.informer?.relistIntervalMs,
        watchdogMs: o.informer?.watchdogMs,
      });
    this.mirrors = make<Mirror>(RESOURCES.registryMirrors, (x: MirrorLike) => summarizeMirror(x, policy) as Mirror);
    this.services = make<Service>(RESOURCES.services, (x: ServiceLike) => summarizeService(x) as Service, MANAGED_SELECTOR);
    if (o.nodeName) this.credential = new NodeCredential({ kube: o.kube, nodeName: o.nodeName, log: o.log, onChange: () => this.schedule(0) });
    for (const inf of [this.mirrors, this.services] as Informer<KubeObject>[]) {
      inf.on('add', () => this.schedule()).on('update', () => this.schedule()).on('delete', () => this.schedule());
    }
  }

  /** Caches listed and the directory synced at least once. */
  get ready(): boolean {
    return this.firstSync;
  }

  readiness(): { ok: boolean; detail: string } {
    if (!this.firstSync) return { ok: false, detail: 'caches not synced yet' };
    const detail = [this.lastError && `last sync failed: ${this.lastError}`, this.lastForeign].filter(Boolean).join('; ');
    return { ok: true, detail: detail || 'synced' };
  }

  async start(): Promise<void> {
    this.mirrors.start();
    this.services.start();
    await Promise.all([this.mirrors.synced, this.services.synced]);
    if (this.stopped) return;
    await this.syncNow();
    this.firstSync = true;
    const resync = () => {
      this.schedule(0);
      this.resyncTimer = setTimeout(resync, this.o.resyncIntervalMs);
    };
    this.resyncTimer = setTimeout(resync, this.o.resyncIntervalMs);
  }

  /** Resolves when no sync is pending or running (tests). */
  async idle(): Promise<void> {
    while (this.timer) await new Promise((r) => setTimeout(r, 10));
    await this.running;
  }

  private schedule(delay = this.o.debounceMs ?? 100): void {
    // Before the first list completes, start() runs the first sync itself.
    if (this.stopped || !this.mirrors.ready || !this.services.ready) return;
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.syncNow();
    }, delay);
  }

  /** One full sync: files, then conditions. Serialised. */
  syncNow(): Promise<void> {
    this.running = this.running.then(() => this.syncOnce());
    return this.running;
  }

  private async syncOnce(): Promise<void> {
    if (this.stopped) return;
    const mirrors = this.mirrors.list();
    const p = plan(mirrors, this.services.list(), {
      dialTimeout: this.o.dialTimeout,
      policy: this.o.policy ?? DEFAULT_POLICY,
      clientCredential: this.credential?.current(),
    });
    if (p.needsClientCredential) {
      if (this.credential) this.credential.want();
      else if (!this.warnedNoNode) {
        this.warnedNoNode = true;
        this.o.log.warn('a mirror nodes use asks for client credentials, but this agent does not know its node ($NODE_NAME): it is not configured here');
      }
    }
    const { changes, errors, foreign } = this.dir.sync(p.entries);
    this.lastError = errors.map((e) => `${e.registry}: ${e.message}`).join('; ');
    const foreignText = foreign.map((f) => f.message).join('; ');
    if (foreignText !== this.lastForeign) {
      for (const f of foreign) this.o.log.warn({ registry: f.registry, otherAgent: f.instance, dir: this.dir.dir }, f.message);
    }
    this.lastForeign = foreignText;
    this.metrics.foreign.set(foreign.length);
    this.metrics.syncs.inc({ result: errors.length ? 'error' : 'ok' });
    const kind = this.dir.kind.name;
    for (const e of errors) this.o.log.error({ registry: e.registry, err: e.message, dir: this.dir.dir }, `could not update ${kind}`);
    for (const c of changes) {
      this.metrics.changes.inc({ action: c.action });
      const e = p.entries.get(c.registry);
      if (c.action === 'written') {
        this.o.log.info(
          { registry: c.registry, mirror: e?.mirrorUrl, server: e?.server, owner: e?.owner, backedUpExisting: c.backedUp },
          `wrote ${kind}`,
        );
      } else {
        this.o.log.info({ registry: c.registry, restoredBackup: c.restored }, `removed ${kind}`);
      }
    }
    this.metrics.managed.set(p.entries.size);
    if (this.o.reportStatus) await this.writeConditions(mirrors, p.conditions);
  }

  private async writeConditions(mirrors: Mirror[], wanted: Map<string, NodeConfigState>): Promise<void> {
    for (const m of mirrors) {
      if (m.metadata.deletionTimestamp) continue;
      const key = `${m.metadata.namespace}/${m.metadata.name}`;
      const current = m.nodeStatus.current;
      let want = wanted.get(key);
      if (!want) {
        // nodeConfig disabled: say so only where an earlier condition would otherwise mislead.
        if (!current || current.reason === 'Disabled') continue;
        want = { status: 'False', reason: 'Disabled', message: 'spec.nodeConfig.enabled is false' };
      }
      if (current && current.status === want.status && current.reason === want.reason && current.message === want.message) continue;
      const next = {
        type: NODE_CONFIG_CONDITION,
        status: want.status,
        reason: want.reason,
        message: want.message,
        lastTransitionTime: current && current.status === want.status && current.lastTransitionTime ? current.lastTransitionTime : new Date().toISOString(),
        ...(m.metadata.generation !== undefined ? { observedGeneration: m.metadata.generation } : {}),
      };
      // Only the NodeConfig entry changes; the resourceVersion test makes the index safe.
      const ops: object[] = [{ op: 'test', path: '/metadata/resourceVersion', value: m.metadata.resourceVersion }];
      const st = m.nodeStatus;
      if (!st.hasStatus) ops.push({ op: 'add', path: '/status', value: { conditions: [next] } });
      else if (st.conditions === undefined) ops.push({ op: 'add', path: '/status/conditions', value: [next] });
      else if (st.index >= 0) ops.push({ op: 'replace', path: `/status/conditions/${st.index}`, value: next });
      else ops.push({ op: 'add', path: '/status/conditions/-', value: next });
      try {
        await this.o.kube.custom.patchNamespacedCustomObjectStatus({
          group: GROUP,
          version: VERSION,
          plural: PLURAL,
          namespace: m.metadata.namespace,
          name: m.metadata.name,
          body: ops,
        });
        this.metrics.statusWrites.inc({ result: 'ok' });
        this.o.log.info({ registryMirror: key, condition: NODE_CONFIG_CONDITION, status: want.status, reason: want.reason }, 'condition set');
        if (want.status === 'False' && NODE_CONFLICT_REASONS.has(want.reason) && m.metadata.uid) {
          const obj = { apiVersion: API_VERSION, kind: KIND, namespace: m.metadata.namespace, name: m.metadata.name, uid: m.metadata.uid };
          this.events?.record(obj, { type: 'Warning', reason: want.reason, action: 'ConfigureNodes', note: want.message });
        }
      } catch (err) {
        const code = statusOf(err);
        // 409/422: someone wrote in between (the failed test op); the update event retries.
        this.metrics.statusWrites.inc({ result: code === 409 || code === 422 ? 'conflict' : 'error' });
        if (code !== 409 && code !== 422 && code !== 404) {
          this.o.log.warn({ registryMirror: key, err: errorText(err) }, 'could not set the NodeConfig condition');
        }
      }
    }
  }

  /** For tests and memory checks: the summaries the informers hold. */
  cached(): { mirrors: NodeMirror[]; services: ServiceLike[] } {
    return { mirrors: this.mirrors.list(), services: this.services.list() };
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.credential?.stop();
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.resyncTimer) clearTimeout(this.resyncTimer);
    await Promise.all([this.mirrors.stop(), this.services.stop()]);
    await this.running;
  }
}
