// Command-line flags of `registry-mirror node-agent`. Pure: argv in, options or an error out.
import { parseArgs } from 'node:util';
import { parseDuration } from '../../mirror/duration.js';
import { parsePolicy, POLICY_OPTIONS, POLICY_USAGE, type NodePolicy } from '../node-policy.js';
import { checkInstance, DEFAULT_INSTANCE } from './files.js';
import { DEFAULT_DIAL_TIMEOUT } from './hosts-toml.js';
import { RUNTIME_SETTINGS, type RuntimeSetting } from './runtime.js';

export interface NodeAgentFlags {
  hostsDir: string;
  /** The certs.d directory as the node sees it (differs from hostsDir inside a pod). */
  nodeHostsPath: string;
  containerdConfig: string;
  kubeconfig?: string;
  namespace?: string;
  dialTimeout: string;
  resyncIntervalMs: number;
  reportStatus: boolean;
  /** DaemonSet this agent runs in; when it is gone at shutdown the agent removes its files. */
  daemonSet?: string;
  podNamespace?: string;
  nodeName?: string;
  healthHost: string;
  healthPort: number;
  cleanup: boolean;
  logLevel: string;
  /** Who may configure the nodes (the operator applies the same policy). */
  policy: NodePolicy;
  /** Owner of the files this agent writes: namespace/DaemonSet of its release. */
  instance: string;
  /** Which runtime's files to write (auto: detected from crioSocket/crioConfig). */
  runtime: RuntimeSetting;
  /** CRI-O's registries.conf.d directory as this process sees it. */
  registriesConfDir: string;
  /** Probes of --runtime auto: CRI-O's socket and config as this process sees them. */
  crioSocket: string;
  crioConfig: string;
}

export const USAGE = `registry-mirror node-agent [flags]
  --hosts-dir DIR          containerd's certs.d directory as this process sees it (default: /etc/containerd/certs.d)
  --node-hosts-path DIR    the same directory as the node sees it, for the config check (default: --hosts-dir)
  --containerd-config F    containerd's config.toml, read to warn when config_path is missing
                           (default: /etc/containerd/config.toml; a missing file is only noted)
  --kubeconfig FILE        (default: $KUBECONFIG, ~/.kube/config, then in-cluster)
  --namespace NS           only RegistryMirrors of this namespace (default: all)
  --dial-timeout D         dial_timeout written for the mirror host (default: ${DEFAULT_DIAL_TIMEOUT}; containerd >= 1.7 honours it)
  --resync-interval D      rewrite the files from the cache this often, repairing edits (default: 1m)
  --no-report-status       do not set the NodeConfig condition on RegistryMirrors
  --daemonset NAME         the DaemonSet running this agent (default: $NODE_AGENT_DAEMONSET); when it
                           no longer exists at shutdown (helm uninstall) the agent removes its files
  --health-host H / --health-port N   /healthz /readyz /metrics (default: 0.0.0.0:8082; 0 picks a port)
  --instance ID            owner recorded in the files this agent writes; it never rewrites or removes
                           files of another instance (default: $POD_NAMESPACE/$NODE_AGENT_DAEMONSET,
                           else ${DEFAULT_INSTANCE})
  --runtime R              auto|containerd|crio (default: auto): containerd gets <hosts-dir>/<registry>/hosts.toml,
                           CRI-O <registries-conf-dir>/50-registry-mirror-<registry>.conf; auto picks CRI-O when
                           --crio-socket or --crio-config exists, containerd otherwise
  --registries-conf-dir D  CRI-O's registries.conf.d as this process sees it (default: /etc/containers/registries.conf.d)
  --crio-socket F          CRI-O's socket, probed by --runtime auto (default: /var/run/crio/crio.sock)
  --crio-config F          CRI-O's config file or directory, probed by --runtime auto (default: /etc/crio/crio.conf)
  --cleanup                remove every file of this --instance (hosts.toml and registries.conf.d drop-ins,
                           restoring backups) and exit
  --log-level L            trace|debug|info|warn|error (default: info)
Node policy (give the operator the same flags):
${POLICY_USAGE}`;

export function parseNodeAgentFlags(argv: string[], env: NodeJS.ProcessEnv = process.env): NodeAgentFlags {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      'hosts-dir': { type: 'string' },
      'node-hosts-path': { type: 'string' },
      'containerd-config': { type: 'string' },
      kubeconfig: { type: 'string' },
      namespace: { type: 'string' },
      'dial-timeout': { type: 'string' },
      'resync-interval': { type: 'string' },
      'no-report-status': { type: 'boolean' },
      daemonset: { type: 'string' },
      'health-host': { type: 'string' },
      'health-port': { type: 'string' },
      cleanup: { type: 'boolean' },
      'log-level': { type: 'string' },
      instance: { type: 'string' },
      runtime: { type: 'string' },
      'registries-conf-dir': { type: 'string' },
      'crio-socket': { type: 'string' },
      'crio-config': { type: 'string' },
      ...POLICY_OPTIONS,
    },
  });
  const hostsDir = values['hosts-dir'] || '/etc/containerd/certs.d';
  const dialTimeout = values['dial-timeout'] || DEFAULT_DIAL_TIMEOUT;
  const dt = parseDuration(dialTimeout);
  if (dt === undefined || dt <= 0) throw new Error(`--dial-timeout "${dialTimeout}" is not a positive duration (e.g. 200ms)`);
  const resync = values['resync-interval'] || '1m';
  const resyncMs = parseDuration(resync);
  if (resyncMs === undefined || resyncMs <= 0) throw new Error(`--resync-interval "${resync}" is not a positive duration`);
  const rawPort = values['health-port'];
  const healthPort = rawPort === undefined ? 8082 : Number(rawPort);
  if (!Number.isInteger(healthPort) || healthPort < 0 || healthPort > 65535) throw new Error(`--health-port "${rawPort}" is not a port number`);
  const daemonSet = values.daemonset || env.NODE_AGENT_DAEMONSET || undefined;
  const instance =
    values.instance || (env.POD_NAMESPACE && daemonSet ? `${env.POD_NAMESPACE}/${daemonSet}` : daemonSet) || DEFAULT_INSTANCE;
  try {
    checkInstance(instance);
  } catch (err) {
    throw new Error(`--instance: ${(err as Error).message}`);
  }
  const runtime = (values.runtime || 'auto') as RuntimeSetting;
  if (!RUNTIME_SETTINGS.includes(runtime)) throw new Error(`--runtime "${values.runtime}" must be one of ${RUNTIME_SETTINGS.join(', ')}`);
  return {
    hostsDir,
    nodeHostsPath: values['node-hosts-path'] || hostsDir,
    containerdConfig: values['containerd-config'] || '/etc/containerd/config.toml',
    kubeconfig: values.kubeconfig,
    namespace: values.namespace || undefined,
    dialTimeout,
    resyncIntervalMs: resyncMs,
    reportStatus: !values['no-report-status'],
    daemonSet,
    podNamespace: env.POD_NAMESPACE || undefined,
    nodeName: env.NODE_NAME || undefined,
    healthHost: values['health-host'] || '0.0.0.0',
    healthPort,
    cleanup: values.cleanup ?? false,
    logLevel: values['log-level'] || 'info',
    policy: parsePolicy(values, env),
    instance,
    runtime,
    registriesConfDir: values['registries-conf-dir'] || '/etc/containers/registries.conf.d',
    crioSocket: values['crio-socket'] || '/var/run/crio/crio.sock',
    crioConfig: values['crio-config'] || '/etc/crio/crio.conf',
  };
}
