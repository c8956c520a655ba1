// Who may steer the nodes: the admin's tenancy policy, applied by the operator (conditions,
// and refusing upstreams) and by every node agent (what reaches hosts.toml). Pure: the same
// flags give the same answers in both processes.
//
// A RegistryMirror with nodeConfig enabled makes every node's containerd send pulls of a
// registry to the mirror's Service, falling back to spec.upstream.url. That is a node-level
// decision, so by default only RegistryMirrors in the admin namespace (the release namespace,
// where only admins create objects) reach the nodes. An admin widens it with
//   --node-config-namespaces   namespaces (or "*") whose mirrors may configure nodes,
//   --node-config-registries   the registries those namespaces may configure (default any),
//   --allowed-upstream NS=URL  the upstream URLs a namespace's mirrors may use at all (mirror
//                              pods and nodes); "*=URL" for every namespace but the admin's,
//   --node-config-allow-unsafe nodes may fall back to loopback, link-local or kubelet-port URLs.
// The chart sets them from its nodeConfig.* values on both the operator and the node agent.
import { isIP } from 'node:net';
import type { ResolvedSpec } from './spec.js';
import { show } from './spec.js';

export interface NodePolicy {
  /** Its RegistryMirrors always reach nodes and are not limited by the lists below. */
  adminNamespace?: string;
  /** Further namespaces whose RegistryMirrors may configure nodes; "*" = every namespace. */
  namespaces: string[];
  /** Registries the non-admin namespaces may configure on nodes; empty = any registry. */
  registries: string[];
  /** namespace (or "*" for every non-admin namespace) -> allowed upstream URL prefixes. */
  upstreams: Record<string, string[]>;
  /** Allow loopback, link-local (metadata) and kubelet-port upstreams as the nodes' fallback. */
  allowUnsafe: boolean;
}

export const DEFAULT_POLICY: NodePolicy = { namespaces: [], registries: [], upstreams: {}, allowUnsafe: false };

/** Why a RegistryMirror may not configure nodes (the NodeConfig condition's reason). */
export type PolicyReason = 'NamespaceNotAllowed' | 'RegistryNotAllowed' | 'UpstreamNotAllowed' | 'UnsafeUpstream';
export const POLICY_REASONS: readonly string[] = ['NamespaceNotAllowed', 'RegistryNotAllowed', 'UpstreamNotAllowed', 'UnsafeUpstream'];

export interface Refusal {
  reason: PolicyReason;
  message: string;
}

/** Where an admin changes the policy, for messages. */
const WHERE = 'of the registry-mirror chart (or the operator and node-agent flag';

// ---- flags ----------------------------------------------------------------------------------

export const POLICY_USAGE = `  --admin-namespace NS     RegistryMirrors of NS always may configure nodes (default: $POD_NAMESPACE)
  --node-config-namespaces LIST   further namespaces (comma-separated, "*" = all) whose
                           RegistryMirrors may configure containerd on the nodes (default: none)
  --node-config-registries LIST   registries those namespaces may configure (default: any)
  --allowed-upstream NS=URL[,URL] upstream URL prefixes the RegistryMirrors of NS may use
                           ("*=..." for every namespace but the admin's; repeatable; default: any)
  --node-config-allow-unsafe      let nodes fall back to loopback, link-local (169.254.0.0/16,
                           fe80::/10) or kubelet-port upstreams (default: refused)`;

export const POLICY_OPTIONS = {
  'admin-namespace': { type: 'string' },
  'node-config-namespaces': { type: 'string' },
  'node-config-registries': { type: 'string' },
  'allowed-upstream': { type: 'string', multiple: true },
  'node-config-allow-unsafe': { type: 'boolean' },
} as const;

const LABEL_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

function list(raw: string | undefined): string[] {
  return (raw ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

/** The policy from parsed flag values (see POLICY_OPTIONS); throws naming the flag. */
export function parsePolicy(values: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): NodePolicy {
  const adminNamespace = (values['admin-namespace'] as string | undefined) || env.POD_NAMESPACE || undefined;
  if (adminNamespace !== undefined && !LABEL_RE.test(adminNamespace)) throw new Error(`--admin-namespace "${adminNamespace}" is not a namespace name`);
  const namespaces = list(values['node-config-namespaces'] as string | undefined);
  for (const n of namespaces) if (n !== '*' && !LABEL_RE.test(n)) throw new Error(`--node-config-namespaces: "${n}" is not a namespace name`);
  const registries = list(values['node-config-registries'] as string | undefined).map((r) => r.toLowerCase());
  for (const r of registries) if (!/^[a-z0-9.-]+(:[0-9]{1,5})?$/.test(r)) throw new Error(`--node-config-registries: "${r}" is not a registry host`);
  const upstreams: Record<string, string[]> = {};
  for (const rule of (values['allowed-upstream'] as string[] | undefined) ?? []) {
    const i = rule.indexOf('=');
    const ns = rule.slice(0, i).trim();
    if (i < 0 || (ns !== '*' && !LABEL_RE.test(ns))) throw new Error(`--allowed-upstream "${rule}" is not NAMESPACE=URL[,URL]`);
    const urls = list(rule.slice(i + 1));
    for (const u of urls) {
      if (!prefixUrl(u)) throw new Error(`--allowed-upstream: "${u}" is not an http(s) URL without credentials, query or fragment`);
    }
    upstreams[ns] = [...(upstreams[ns] ?? []), ...urls];
  }
  return { ...(adminNamespace ? { adminNamespace } : {}), namespaces, registries, upstreams, allowUnsafe: values['node-config-allow-unsafe'] === true };
}

// ---- checks -------------------------------------------------------------------------------

function prefixUrl(raw: string): URL | undefined {
  try {
    const u = new URL(raw);
    if ((u.protocol !== 'http:' && u.protocol !== 'https:') || u.username || u.password || u.search || u.hash || !u.hostname) return undefined;
    return u;
  } catch {
    return undefined;
  }
}

/** url is prefix, or below it at a path-segment boundary (same scheme, host and port). */
export function urlUnder(url: string, prefix: string): boolean {
  const u = prefixUrl(url);
  const p = prefixUrl(prefix);
  if (!u || !p || u.origin !== p.origin) return false;
  const base = p.pathname.replace(/\/+$/, '');
  const path = u.pathname.replace(/\/+$/, '');
  return base === '' || path === base || path.startsWith(`${base}/`);
}

/** The URL prefixes namespace may use, or undefined for any. */
export function allowedUpstreams(policy: NodePolicy, namespace: string): string[] | undefined {
  if (Object.hasOwn(policy.upstreams, namespace)) return policy.upstreams[namespace];
  if (namespace !== policy.adminNamespace && Object.hasOwn(policy.upstreams, '*')) return policy.upstreams['*'];
  return undefined;
}

/**
 * The upstream URLs of a validated spec that the policy refuses for its namespace: a message
 * naming the policy, or undefined. The operator then applies nothing (Degraded), and no node
 * agent renders it.
 */
export function upstreamRefusal(policy: NodePolicy, namespace: string, spec: Pick<ResolvedSpec, 'url' | 'v1' | 's3'>): string | undefined {
  const allowed = allowedUpstreams(policy, namespace);
  if (!allowed) return undefined;
  const urls: Array<[string, string]> = [['spec.upstream.url', spec.url]];
  if (spec.v1.enabled) urls.push(['spec.v1.source', spec.v1.source]);
  // The bucket endpoint is as much an outbound target as the upstream (and with redirect on,
  // where clients are sent): a tenant limited to some upstreams must not point it elsewhere.
  // Without an endpoint the SDK talks to AWS's own regional endpoint, which is not a choice.
  if (spec.s3?.endpoint) urls.push(['spec.storage.s3.endpoint', spec.s3.endpoint]);
  for (const [field, url] of urls) {
    if (!allowed.some((p) => urlUnder(url, p))) {
      return (
        `${field} ${show(url)} is not among the upstreams an admin allowed for namespace "${namespace}" ` +
        `(${allowed.length ? allowed.map((a) => show(a)).join(', ') : 'none'}); an admin must add it to nodeConfig.allowedUpstreams ${WHERE} --allowed-upstream)`
      );
    }
  }
  return undefined;
}

const KUBELET_PORTS = new Set([10250, 10255, 10248]);
const METADATA_NAMES = new Set(['localhost', 'metadata', 'metadata.google.internal', 'metadata.goog', 'instance-data', 'instance-data.ec2.internal']);

function ipv4Unsafe(ip: string): string | undefined {
  const [a, b] = ip.split('.').map(Number) as [number, number];
  if (a === 127) return 'a loopback address';
  if (a === 0) return 'an unspecified ("this host") address';
  if (a === 169 && b === 254) return 'a link-local (cloud metadata) address';
  return undefined;
}

function ipv6Unsafe(ip: string): string | undefined {
  const x = ip.toLowerCase();
  if (x === '::1') return 'a loopback address';
  if (x === '::') return 'an unspecified ("this host") address';
  if (/^fe[89ab][0-9a-f]?:/.test(x)) return 'a link-local address';
  // IPv4-mapped (::ffff:a.b.c.d, which URL parsing writes as ::ffff:XXXX:XXXX).
  const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(x);
  if (m) {
    const hi = parseInt(m[1]!, 16);
    const lo = parseInt(m[2]!, 16);
    return ipv4Unsafe(`${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`);
  }
  const d = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(x);
  if (d) return ipv4Unsafe(d[1]!);
  return undefined;
}

/**
 * Why a URL must not become the nodes' `server` fallback: containerd runs in the node's
 * network namespace, so loopback reaches the node's own services (the kubelet's 10250),
 * link-local reaches the cloud's metadata service. undefined when none applies.
 */
export function unsafeTarget(raw: string): string | undefined {
  const u = prefixUrl(raw);
  if (!u) return 'not an http(s) URL';
  let host = u.hostname.toLowerCase().replace(/\.$/, '');
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  let why: string | undefined;
  if (isIP(host) === 4) why = ipv4Unsafe(host);
  else if (isIP(host) === 6) why = ipv6Unsafe(host);
  else if (METADATA_NAMES.has(host) || host.endsWith('.localhost')) why = 'a loopback or metadata host name';
  const port = Number(u.port || (u.protocol === 'https:' ? 443 : 80));
  if (!why && KUBELET_PORTS.has(port)) why = `the kubelet's port ${port}`;
  return why;
}

/**
 * Whether a validated, nodeConfig-enabled RegistryMirror of `namespace` may configure the
 * nodes: undefined, or the refusal for its NodeConfig condition, naming who can allow it.
 */
export function nodeConfigRefusal(policy: NodePolicy, namespace: string, spec: Pick<ResolvedSpec, 'registry' | 'url' | 'v1' | 's3'>): Refusal | undefined {
  const up = upstreamRefusal(policy, namespace, spec);
  if (up) return { reason: 'UpstreamNotAllowed', message: `${up}; it is not configured on nodes` };
  const admin = namespace === policy.adminNamespace;
  if (!admin && !policy.namespaces.includes('*') && !policy.namespaces.includes(namespace)) {
    return {
      reason: 'NamespaceNotAllowed',
      message:
        `RegistryMirrors in namespace "${namespace}" may not configure the nodes' containerd` +
        (policy.adminNamespace ? ` (only those in "${policy.adminNamespace}" and the allowed namespaces may)` : '') +
        `: an admin must list namespace ${namespace} in nodeConfig.allowedNamespaces ${WHERE} --node-config-namespaces)` +
        '; the mirror still serves clients in the cluster',
    };
  }
  if (!admin && policy.registries.length > 0 && !policy.registries.includes(spec.registry.toLowerCase())) {
    return {
      reason: 'RegistryNotAllowed',
      message:
        `namespace "${namespace}" may configure nodes only for ${policy.registries.join(', ')}: an admin must add ${show(spec.registry)} ` +
        `to nodeConfig.allowedRegistries ${WHERE} --node-config-registries)`,
    };
  }
  if (!policy.allowUnsafe) {
    const why = unsafeTarget(spec.url);
    if (why) {
      return {
        reason: 'UnsafeUpstream',
        message:
          `spec.upstream.url ${show(spec.url)} is ${why}; the nodes would fall back to it, so it is not configured on nodes ` +
          `unless an admin sets nodeConfig.allowUnsafeUpstreams ${WHERE} --node-config-allow-unsafe)`,
      };
    }
  }
  return undefined;
}
