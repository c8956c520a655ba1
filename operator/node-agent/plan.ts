// What every node's certs.d should hold, from the RegistryMirrors and their Services. Pure.
//
// One hosts.toml per registry, so two RegistryMirrors for the same registry cannot both be
// used by nodes. The winner is chosen the same way by every node agent, whatever order events
// arrive in: the oldest creationTimestamp, then namespace/name. Every loser gets the
// NodeConfig condition False/RegistryConflict naming the winner; the winner (once its Service
// has a ClusterIP) True/HostsConfigured. Mirrors with spec.auth are never candidates
// (False/ClientAuthRequired): nodes have no credentials for them.
import { MIRROR_PORT, type RegistryMirror } from '../types.js';
import { defaultUpstreamUrl } from '../well-known-registries.js';
import { objectNames } from '../render/names.js';
import type { HostsEntry } from './hosts-toml.js';

export const NODE_CONFIG_CONDITION = 'NodeConfig';

export interface ServiceLike {
  metadata?: { name?: string; namespace?: string };
  spec?: { clusterIP?: string };
}

export interface MirrorLike {
  metadata: { name: string; namespace: string; creationTimestamp?: string; deletionTimestamp?: string; uid?: string };
  spec?: Partial<RegistryMirror['spec']>;
}

export interface NodeConfigState {
  status: 'True' | 'False';
  reason: 'HostsConfigured' | 'RegistryConflict' | 'WaitingForService' | 'NoUpstreamURL' | 'ClientAuthRequired' | 'Disabled';
  message: string;
}

export interface Plan {
  /** registry -> the entry the node agent writes. */
  entries: Map<string, HostsEntry>;
  /** namespace/name -> the NodeConfig condition it should carry (only nodeConfig-enabled ones). */
  conditions: Map<string, NodeConfigState>;
}

function key(m: MirrorLike): string {
  return `${m.metadata.namespace}/${m.metadata.name}`;
}

/** Total order: older first, then namespace/name. */
export function compareMirrors(a: MirrorLike, b: MirrorLike): number {
  const ta = Date.parse(a.metadata.creationTimestamp ?? '') || 0;
  const tb = Date.parse(b.metadata.creationTimestamp ?? '') || 0;
  if (ta !== tb) return ta - tb;
  return key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0;
}

export function nodeConfigEnabled(m: MirrorLike): boolean {
  return m.spec?.nodeConfig?.enabled !== false && !m.metadata.deletionTimestamp && !!m.spec?.upstream?.registry;
}

export function upstreamUrl(m: MirrorLike): string | undefined {
  const u = m.spec?.upstream;
  if (!u?.registry) return undefined;
  return u.url || defaultUpstreamUrl(u.registry);
}

/** IPv6 ClusterIPs need brackets in a URL. */
export function mirrorUrl(clusterIP: string): string {
  return clusterIP.includes(':') ? `http://[${clusterIP}]:${MIRROR_PORT}` : `http://${clusterIP}:${MIRROR_PORT}`;
}

export function plan(mirrors: MirrorLike[], services: ServiceLike[], opts: { dialTimeout?: string } = {}): Plan {
  const svcByKey = new Map<string, ServiceLike>();
  for (const s of services) svcByKey.set(`${s.metadata?.namespace}/${s.metadata?.name}`, s);
  const byRegistry = new Map<string, MirrorLike[]>();
  for (const m of mirrors.filter(nodeConfigEnabled)) {
    const r = m.spec!.upstream!.registry;
    byRegistry.set(r, [...(byRegistry.get(r) ?? []), m]);
  }
  const entries = new Map<string, HostsEntry>();
  const conditions = new Map<string, NodeConfigState>();
  for (const [registry, list] of [...byRegistry].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    // A mirror that requires client credentials cannot serve the nodes: the agent has no
    // credentials to give containerd (the Secret holds bcrypt hashes or token digests), so
    // every pull would be refused by the mirror first (at best falling back to the upstream,
    // at worst failing). Such mirrors are not candidates; another mirror of the registry may
    // serve the nodes.
    const candidates = list.filter((m) => !m.spec?.auth?.secret).sort(compareMirrors);
    for (const m of list.filter((x) => x.spec?.auth?.secret)) {
      conditions.set(key(m), {
        status: 'False',
        reason: 'ClientAuthRequired',
        message: `spec.auth makes the mirror ask clients for credentials, which nodes cannot give; it is not configured on nodes (set nodeConfig.enabled: false to silence this)`,
      });
    }
    if (candidates.length === 0) continue;
    const [winner, ...losers] = candidates as [MirrorLike, ...MirrorLike[]];
    for (const l of losers) {
      conditions.set(key(l), {
        status: 'False',
        reason: 'RegistryConflict',
        message: `Nodes use ${key(winner)} for ${registry} (of the RegistryMirrors nodes can use for a registry, the oldest wins); this one is not configured on nodes`,
      });
    }
    const server = upstreamUrl(winner);
    if (!server) {
      conditions.set(key(winner), { status: 'False', reason: 'NoUpstreamURL', message: `spec.upstream.url is needed for ${registry}` });
      continue;
    }
    const svc = svcByKey.get(`${winner.metadata.namespace}/${objectNames(winner as RegistryMirror).service}`);
    const ip = svc?.spec?.clusterIP;
    if (!ip || ip === 'None') {
      conditions.set(key(winner), { status: 'False', reason: 'WaitingForService', message: `Service ${objectNames(winner as RegistryMirror).service} has no ClusterIP yet` });
      continue;
    }
    const entry: HostsEntry = { registry, server, mirrorUrl: mirrorUrl(ip), owner: key(winner) };
    if (opts.dialTimeout) entry.dialTimeout = opts.dialTimeout;
    entries.set(registry, entry);
    conditions.set(key(winner), {
      status: 'True',
      reason: 'HostsConfigured',
      message: `Node agents point containerd's ${registry} pulls at ${entry.mirrorUrl} (fallback ${server})`,
    });
  }
  return { entries, conditions };
}
