// What every node's certs.d should hold, from the RegistryMirrors and their Services. Pure.
//
// Only RegistryMirrors that pass the operator's own validation (resolveSpec) and the admin's
// node policy (operator/node-policy.ts: the admin namespace, allowed namespaces, registries
// and upstreams, no loopback/link-local/kubelet fallbacks) are candidates; the others get the
// NodeConfig condition False with the reason (InvalidSpec, NamespaceNotAllowed, ...), whose
// message says who can allow them. The mirror's address is the ClusterIP of the Service that
// the RegistryMirror owns (controller ownerReference with its uid), never merely a Service
// with the right name and label.
//
// One hosts.toml per registry, so two candidates for the same registry cannot both be used by
// nodes. The winner is chosen the same way by every node agent, whatever order events arrive
// in: the oldest creationTimestamp, then namespace/name. Every loser gets False/RegistryConflict
// naming the winner; the winner (once its Service has a ClusterIP) True/HostsConfigured.
// Mirrors with spec.auth are candidates over TLS only (nodes present their client
// certificate); with spec.tls disabled they get False/ClientAuthRequired. An https mirror is
// configured once status.tls publishes its CA (False/WaitingForCertificate until then).
//
// The node agent's informers keep only summaries (summarizeMirror, summarizeService): the
// verdict is computed on the whole object as it arrives, then the object is dropped.
import { MIRROR_PORT, type RegistryMirror } from '../types.js';
import { DEFAULT_POLICY, nodeConfigRefusal, type NodePolicy } from '../node-policy.js';
import { resolveSpec } from '../spec.js';
import { objectNames } from '../render/names.js';
import type { HostsEntry } from './hosts-toml.js';

export const NODE_CONFIG_CONDITION = 'NodeConfig';

export interface ServiceLike {
  metadata?: {
    name?: string;
    namespace?: string;
    resourceVersion?: string;
    ownerReferences?: Array<{ apiVersion?: string; kind?: string; name?: string; uid?: string; controller?: boolean }>;
  };
  spec?: { clusterIP?: string; ports?: Array<{ name?: string; port?: number; protocol?: string }> };
}

/** A RegistryMirror as the API serves it (tests, and the input of summarizeMirror). */
export interface MirrorLike {
  metadata: {
    name: string;
    namespace: string;
    creationTimestamp?: string;
    deletionTimestamp?: string;
    uid?: string;
    generation?: number;
    resourceVersion?: string;
  };
  spec?: Partial<RegistryMirror['spec']>;
  status?: { conditions?: unknown[]; [k: string]: unknown };
}

export interface NodeConfigCondition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
  lastTransitionTime?: string;
  observedGeneration?: number;
}

/** What the node agent keeps of a RegistryMirror: what plan() and the condition write use. */
export interface NodeMirror {
  metadata: MirrorLike['metadata'];
  /** spec.nodeConfig.enabled is not false. */
  nodeConfig: boolean;
  /** The validated spec's fields the nodes need; absent when the spec is refused. */
  spec?: { upstream: { registry: string; url: string }; auth?: { secret: { name: string } }; tls?: NodeMirrorTls };
  /** Why the operator's validation or the admin's policy refuses it for nodes. */
  refused?: { reason: string; message: string };
  /** Where the NodeConfig condition is in status.conditions (for a JSON patch). */
  nodeStatus: { hasStatus: boolean; conditions?: number; index: number; current?: NodeConfigCondition };
}

/** spec.tls not disabled: the mode, and what status.tls publishes (once the operator has). */
export interface NodeMirrorTls {
  mode: 'generated' | 'secret';
  /** status.tls.mode, when the operator has written it. */
  published?: string;
  /** status.tls.caBundle (at most MAX_CA_BUNDLE characters). */
  caBundle?: string;
}

/** The largest status.tls.caBundle a node agent keeps (the CRD allows 64 KiB). */
export const MAX_CA_BUNDLE = 64 * 1024;

export interface NodeConfigState {
  status: 'True' | 'False';
  reason: string;
  message: string;
}

export interface Plan {
  /** registry -> the entry the node agent writes. */
  entries: Map<string, HostsEntry>;
  /** A mirror nodes should use asks for client credentials: the node needs its certificate. */
  needsClientCredential: boolean;
  /** namespace/name -> the NodeConfig condition it should carry (only nodeConfig-enabled ones). */
  conditions: Map<string, NodeConfigState>;
}

export interface PlanOptions {
  dialTimeout?: string;
  /** This node's client certificate (spec.auth mirrors are configured only once it exists). */
  clientCredential?: { certPem: string; keyPem: string };
  /** The admin's node policy; the default lets only nothing through (no admin namespace). */
  policy?: NodePolicy;
}

function key(m: { metadata: { namespace: string; name: string } }): string {
  return `${m.metadata.namespace}/${m.metadata.name}`;
}

const clip = (s: unknown, n = 1024) => (typeof s === 'string' ? (s.length > n ? `${s.slice(0, n)}…` : s) : undefined);

/**
 * The summary the node agent caches for a RegistryMirror (its informer transform): metadata,
 * the verdict of resolveSpec and the policy on the whole spec, the validated registry and URL,
 * and the NodeConfig condition. A spec of any size leaves a summary of bounded size.
 */
export function summarizeMirror(raw: MirrorLike, policy: NodePolicy = DEFAULT_POLICY): NodeMirror {
  const md = raw.metadata ?? ({} as MirrorLike['metadata']);
  const metadata: NodeMirror['metadata'] = { name: clip(md.name, 253) ?? '', namespace: clip(md.namespace, 63) ?? '' };
  for (const k of ['uid', 'creationTimestamp', 'deletionTimestamp', 'resourceVersion'] as const) {
    const v = clip(md[k], 128);
    if (v !== undefined) metadata[k] = v;
  }
  if (typeof md.generation === 'number') metadata.generation = md.generation;
  const nodeConfig = raw.spec?.nodeConfig?.enabled !== false;

  const conds = Array.isArray(raw.status?.conditions) ? (raw.status!.conditions as NodeConfigCondition[]) : undefined;
  const index = conds ? conds.findIndex((c) => c && typeof c === 'object' && c.type === NODE_CONFIG_CONDITION) : -1;
  const c = index >= 0 ? conds![index]! : undefined;
  const nodeStatus: NodeMirror['nodeStatus'] = { hasStatus: raw.status !== undefined && raw.status !== null, index };
  if (conds) nodeStatus.conditions = conds.length;
  if (c) {
    nodeStatus.current = {
      type: NODE_CONFIG_CONDITION,
      status: String(clip(c.status, 16)),
      reason: clip(c.reason, 128),
      message: clip(c.message, 4096),
      lastTransitionTime: clip(c.lastTransitionTime, 64),
      ...(typeof c.observedGeneration === 'number' ? { observedGeneration: c.observedGeneration } : {}),
    };
  }

  const out: NodeMirror = { metadata, nodeConfig, nodeStatus };
  if (!nodeConfig || md.deletionTimestamp) return out;
  const resolved = resolveSpec(raw as RegistryMirror);
  if (!resolved.ok) {
    out.refused = {
      reason: 'InvalidSpec',
      message: 'the operator refuses this spec (see the Degraded condition for the fields to fix); it is not configured on nodes',
    };
    return out;
  }
  const s = resolved.spec;
  const refusal = nodeConfigRefusal(policy, metadata.namespace, s);
  if (refusal) {
    out.refused = refusal;
    return out;
  }
  out.spec = { upstream: { registry: s.registry, url: s.url }, ...(s.auth ? { auth: { secret: { name: s.auth.secret } } } : {}) };
  if (s.tls.mode !== 'disabled') {
    const st = raw.status?.tls as { mode?: unknown; caBundle?: unknown } | undefined;
    out.spec.tls = { mode: s.tls.mode };
    if (typeof st?.mode === 'string') out.spec.tls.published = st.mode.slice(0, 16);
    if (typeof st?.caBundle === 'string' && st.caBundle.length <= MAX_CA_BUNDLE) out.spec.tls.caBundle = st.caBundle;
  }
  return out;
}

/** What the node agent keeps of a Service: the ClusterIP, ports and who owns it. */
export function summarizeService(raw: ServiceLike): ServiceLike {
  const md = raw.metadata ?? {};
  return {
    metadata: {
      name: clip(md.name, 253),
      namespace: clip(md.namespace, 63),
      resourceVersion: clip(md.resourceVersion, 128),
      ownerReferences: (Array.isArray(md.ownerReferences) ? md.ownerReferences.slice(0, 16) : []).map((r) => ({
        apiVersion: clip(r?.apiVersion, 253),
        kind: clip(r?.kind, 253),
        name: clip(r?.name, 253),
        uid: clip(r?.uid, 128),
        controller: r?.controller === true,
      })),
    },
    spec: {
      clusterIP: clip(raw.spec?.clusterIP, 64),
      ports: (Array.isArray(raw.spec?.ports) ? raw.spec!.ports.slice(0, 16) : []).map((p) => ({
        name: clip(p?.name, 63),
        port: typeof p?.port === 'number' ? p.port : undefined,
        protocol: clip(p?.protocol, 16),
      })),
    },
  };
}

function isSummary(m: MirrorLike | NodeMirror): m is NodeMirror {
  return 'nodeStatus' in m;
}

/** Total order: older first, then namespace/name. */
export function compareMirrors(a: { metadata: MirrorLike['metadata'] }, b: { metadata: MirrorLike['metadata'] }): number {
  const ta = Date.parse(a.metadata.creationTimestamp ?? '') || 0;
  const tb = Date.parse(b.metadata.creationTimestamp ?? '') || 0;
  if (ta !== tb) return ta - tb;
  return key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0;
}

/** True when the Service's controller is the RegistryMirror with this uid. */
export function ownedBy(svc: ServiceLike, uid: string | undefined): boolean {
  if (!uid) return false;
  return (svc.metadata?.ownerReferences ?? []).some((r) => r.controller === true && r.kind === 'RegistryMirror' && r.uid === uid);
}

/** IPv6 ClusterIPs need brackets in a URL. */
export function mirrorUrl(clusterIP: string, tls = false): string {
  const scheme = tls ? 'https' : 'http';
  return clusterIP.includes(':') ? `${scheme}://[${clusterIP}]:${MIRROR_PORT}` : `${scheme}://${clusterIP}:${MIRROR_PORT}`;
}

export function plan(mirrors: Array<MirrorLike | NodeMirror>, services: ServiceLike[], opts: PlanOptions = {}): Plan {
  const policy = opts.policy ?? DEFAULT_POLICY;
  const svcByKey = new Map<string, ServiceLike>();
  for (const s of services) svcByKey.set(`${s.metadata?.namespace}/${s.metadata?.name}`, s);
  const entries = new Map<string, HostsEntry>();
  const conditions = new Map<string, NodeConfigState>();
  const byRegistry = new Map<string, NodeMirror[]>();
  let needsClientCredential = false;
  for (const raw of mirrors) {
    const m = isSummary(raw) ? raw : summarizeMirror(raw, policy);
    if (!m.nodeConfig || m.metadata.deletionTimestamp) continue;
    if (m.refused || !m.spec) {
      const r = m.refused ?? { reason: 'InvalidSpec', message: 'the spec could not be read; it is not configured on nodes' };
      conditions.set(key(m), { status: 'False', reason: r.reason, message: r.message });
      continue;
    }
    const r = m.spec.upstream.registry;
    byRegistry.set(r, [...(byRegistry.get(r) ?? []), m]);
  }
  for (const [registry, list] of [...byRegistry].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    // A mirror that requires client credentials serves the nodes over TLS only: each node
    // authenticates with its own client certificate from the operator's CA (CN node:<name>).
    // With spec.tls disabled nodes have nothing to give (the auth Secret holds bcrypt hashes
    // or token digests), so every pull would be refused: such a mirror is not a candidate;
    // another mirror of the registry may serve the nodes.
    const noCredentials = (m: NodeMirror) => !!m.spec?.auth && !m.spec.tls;
    const candidates = list.filter((m) => !noCredentials(m)).sort(compareMirrors);
    for (const m of list.filter(noCredentials)) {
      conditions.set(key(m), {
        status: 'False',
        reason: 'ClientAuthRequired',
        message: `spec.auth makes the mirror ask clients for credentials, and with spec.tls disabled nodes have none (their client certificates need TLS); it is not configured on nodes (enable spec.tls, or set nodeConfig.enabled: false to silence this)`,
      });
    }
    if (candidates.length === 0) continue;
    const [winner, ...losers] = candidates as [NodeMirror, ...NodeMirror[]];
    for (const l of losers) {
      conditions.set(key(l), {
        status: 'False',
        reason: 'RegistryConflict',
        message: `Nodes use ${key(winner)} for ${registry} (of the RegistryMirrors nodes can use for a registry, the oldest wins); this one is not configured on nodes`,
      });
    }
    const server = winner.spec!.upstream.url;
    const svcName = objectNames({ metadata: winner.metadata } as RegistryMirror).service;
    const svc = svcByKey.get(`${winner.metadata.namespace}/${svcName}`);
    if (svc && !ownedBy(svc, winner.metadata.uid)) {
      conditions.set(key(winner), {
        status: 'False',
        reason: 'WaitingForService',
        message: `Service ${svcName} is not owned by this RegistryMirror (no controller ownerReference with its uid); it is not used for nodes`,
      });
      continue;
    }
    const ip = svc?.spec?.clusterIP;
    if (!ip || ip === 'None') {
      conditions.set(key(winner), { status: 'False', reason: 'WaitingForService', message: `Service ${svcName} has no ClusterIP yet` });
      continue;
    }
    const tls = winner.spec!.tls;
    if (tls && (tls.published !== tls.mode || (tls.mode === 'generated' && !tls.caBundle))) {
      conditions.set(key(winner), {
        status: 'False',
        reason: 'WaitingForCertificate',
        message: `the operator has not published the mirror's ${tls.mode} TLS certificate authority in status.tls yet`,
      });
      continue;
    }
    const entry: HostsEntry = { registry, server, mirrorUrl: mirrorUrl(ip, !!tls), owner: key(winner) };
    if (opts.dialTimeout) entry.dialTimeout = opts.dialTimeout;
    if (tls?.caBundle) entry.caPem = tls.caBundle;
    if (winner.spec!.auth) {
      needsClientCredential = true;
      // Until this node holds its certificate, its pulls skip the mirror (no file): a mirror
      // that refuses them would only cost a round trip each.
      if (opts.clientCredential) entry.client = opts.clientCredential;
    }
    if (!winner.spec!.auth || entry.client) entries.set(registry, entry);
    conditions.set(key(winner), {
      status: 'True',
      reason: 'HostsConfigured',
      message: `Node agents point containerd's ${registry} pulls at ${entry.mirrorUrl} (fallback ${server})`,
    });
  }
  return { entries, conditions, needsClientCredential };
}
