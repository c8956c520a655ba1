// Command-line flags of `registry-mirror operator`. Pure: argv in, options or an error out.
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { parseDuration } from '../mirror/duration.js';
import { parsePolicy, POLICY_OPTIONS, POLICY_USAGE, type NodePolicy } from './node-policy.js';

export interface OperatorFlags {
  kubeconfig?: string;
  namespace?: string;
  leaderElect: boolean;
  leaseNamespace: string;
  leaseName: string;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
  identity: string;
  healthHost: string;
  healthPort: number;
  mirrorImage: string;
  statusIntervalMs: number;
  resyncIntervalMs: number;
  statsPort: number;
  logLevel: string;
  /** Who may configure the nodes, and which upstreams a namespace may use (node agents share it). */
  policy: NodePolicy;
  /** Where the operator's CA Secret lives (its own namespace). */
  caNamespace: string;
  caSecret: string;
  /** DNS domain of the cluster, for the serving certificates' names. */
  clusterDomain: string;
  /** The node agents' ServiceAccount user: the only requester whose client-certificate CSRs are approved. */
  nodeAgentUser: string;
}

export const USAGE = `registry-mirror operator [flags]
  --kubeconfig FILE        kubeconfig (default: $KUBECONFIG, ~/.kube/config, then in-cluster)
  --namespace NS           watch only this namespace (default: all namespaces)
  --leader-elect / --no-leader-elect   run leader election on a Lease (default: on)
  --lease-namespace NS     namespace of the Lease (default: $POD_NAMESPACE, --namespace, or default)
  --lease-name NAME        (default: registry-mirror-operator)
  --lease-duration D       (default: 15s)   --renew-deadline D (default: 10s)   --retry-period D (default: 2s)
  --identity ID            this replica's name in the Lease (default: $POD_NAME or hostname_pid)
  --health-host H          address of /healthz /readyz /metrics (default: 0.0.0.0)
  --health-port N          (default: 8081; 0 picks a free port)
  --mirror-image IMAGE     image of the mirror Deployments when spec.image is empty
                           (default: $REGISTRY_MIRROR_IMAGE or registry-mirror:latest)
  --status-interval D      how often mirror pods' /stats are read into status.cache (default: 30s)
  --resync-interval D      how often every RegistryMirror is reconciled without an event (default: 5m)
  --stats-port N           port of the mirror pods' /stats (default: 5000; tests only)
  --log-level L            trace|debug|info|warn|error (default: info)
  --ca-namespace NS        namespace of the operator's CA Secret (default: the Lease's namespace)
  --ca-secret NAME         the CA Secret (default: registry-mirror-ca; made when absent)
  --cluster-domain D       the cluster's DNS domain, named in serving certificates (default: cluster.local)
  --node-agent-service-account NS/NAME   the node agents' ServiceAccount: only its CSRs for
                           node:<node> client certificates are approved
                           (default: <ca-namespace>/registry-mirror-node-agent)
Node policy (give the node agents the same flags):
${POLICY_USAGE}`;

export function parseFlags(argv: string[], env: NodeJS.ProcessEnv = process.env): OperatorFlags {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      kubeconfig: { type: 'string' },
      namespace: { type: 'string' },
      'leader-elect': { type: 'boolean' },
      'no-leader-elect': { type: 'boolean' },
      'lease-namespace': { type: 'string' },
      'lease-name': { type: 'string' },
      'lease-duration': { type: 'string' },
      'renew-deadline': { type: 'string' },
      'retry-period': { type: 'string' },
      identity: { type: 'string' },
      'health-host': { type: 'string' },
      'health-port': { type: 'string' },
      'mirror-image': { type: 'string' },
      'status-interval': { type: 'string' },
      'resync-interval': { type: 'string' },
      'stats-port': { type: 'string' },
      'log-level': { type: 'string' },
      'ca-namespace': { type: 'string' },
      'ca-secret': { type: 'string' },
      'cluster-domain': { type: 'string' },
      'node-agent-service-account': { type: 'string' },
      ...POLICY_OPTIONS,
    },
  });
  const duration = (flag: string, fallback: string) => {
    const raw = (values as Record<string, string | undefined>)[flag] ?? fallback;
    const ms = parseDuration(raw);
    if (ms === undefined || ms <= 0) throw new Error(`--${flag} "${raw}" is not a positive duration (e.g. 30s, 5m)`);
    return ms;
  };
  const port = (flag: string, fallback: number) => {
    const raw = (values as Record<string, string | undefined>)[flag];
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 0 || n > 65535) throw new Error(`--${flag} "${raw}" is not a port number`);
    return n;
  };
  const namespace = values.namespace || undefined;
  // The operator's own namespace, as for its Lease.
  const caNamespace = values['ca-namespace'] || values['lease-namespace'] || env.POD_NAMESPACE || namespace || 'default';
  const agentSa = values['node-agent-service-account'] || `${caNamespace}/registry-mirror-node-agent`;
  const sa = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\/([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$/.exec(agentSa);
  if (!sa) throw new Error(`--node-agent-service-account "${agentSa}" must be NAMESPACE/NAME`);
  const clusterDomain = values['cluster-domain'] || 'cluster.local';
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/.test(clusterDomain)) {
    throw new Error(`--cluster-domain "${clusterDomain}" is not a DNS name`);
  }
  const flags: OperatorFlags = {
    kubeconfig: values.kubeconfig,
    namespace,
    leaderElect: values['no-leader-elect'] ? false : (values['leader-elect'] ?? true),
    leaseNamespace: values['lease-namespace'] || env.POD_NAMESPACE || namespace || 'default',
    leaseName: values['lease-name'] || 'registry-mirror-operator',
    leaseDurationMs: duration('lease-duration', '15s'),
    renewDeadlineMs: duration('renew-deadline', '10s'),
    retryPeriodMs: duration('retry-period', '2s'),
    identity: values.identity || env.POD_NAME || `${hostname()}_${process.pid}`,
    healthHost: values['health-host'] || '0.0.0.0',
    healthPort: port('health-port', 8081),
    mirrorImage: values['mirror-image'] || env.REGISTRY_MIRROR_IMAGE || 'registry-mirror:latest',
    statusIntervalMs: duration('status-interval', '30s'),
    resyncIntervalMs: duration('resync-interval', '5m'),
    statsPort: port('stats-port', 5000),
    logLevel: values['log-level'] || 'info',
    policy: parsePolicy(values, env),
    caNamespace,
    caSecret: values['ca-secret'] || 'registry-mirror-ca',
    clusterDomain,
    nodeAgentUser: `system:serviceaccount:${sa[1]}:${sa[3]}`,
  };
  if (flags.renewDeadlineMs >= flags.leaseDurationMs) {
    throw new Error('--renew-deadline must be shorter than --lease-duration (a leader must stop before others may take over)');
  }
  if (flags.retryPeriodMs >= flags.renewDeadlineMs) throw new Error('--retry-period must be shorter than --renew-deadline');
  return flags;
}
