// `registry-mirror node-agent`: runs on every node (a DaemonSet with the node's certs.d or
// registries.conf.d mounted) and keeps <certs.d>/<registry>/hosts.toml pointing containerd at
// the mirrors, or on CRI-O nodes <registries.conf.d>/50-registry-mirror-<registry>.conf
// (--runtime auto|containerd|crio, runtime.ts).
//
// Shutdown: SIGTERM stops the watch and leaves the files in place (a rolling update or a
// restart must not flap every node's pull path). When the agent's own DaemonSet is gone (helm
// uninstall, kubectl delete), nothing will maintain the files any more, so the agent removes
// them, restoring any backups, before it exits. `--cleanup` does the same by hand. Either
// way only the files of this agent's instance (its release) go; another release's stay.
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import { connect, getObject, type Kube } from '../kube/client.js';
import { errorText, statusOf } from '../kube/informer.js';
import { startHealthServer } from '../health.js';
import { createLogger } from '../log.js';
import { NodeAgent } from './agent.js';
import { checkContainerdConfig } from './containerd-config.js';
import { HostsDir, RegistriesConfDir } from './files.js';
import { detectRuntime } from './runtime.js';
import { parseNodeAgentFlags, USAGE, type NodeAgentFlags } from './flags.js';

export interface NodeAgentHandle {
  agent: NodeAgent;
  healthPort: number;
  /** Stops the agent; removes its files when the DaemonSet is gone (see the header). */
  stop(): Promise<void>;
}

function nodeLogger(level: string): Logger {
  return createLogger(level).child({ component: 'node-agent' });
}

/** Logs what can be seen of containerd's config (never fails the agent). */
export function reportContainerdConfig(flags: Pick<NodeAgentFlags, 'containerdConfig' | 'nodeHostsPath'>, log: Logger): void {
  let text: string | undefined;
  try {
    text = readFileSync(flags.containerdConfig, 'utf8');
  } catch {
    text = undefined;
  }
  const findings = checkContainerdConfig(text, flags.nodeHostsPath);
  for (const f of findings) log[f.level]({ containerdConfig: flags.containerdConfig }, f.message);
  if (findings.length === 0) log.info({ containerdConfig: flags.containerdConfig, hostsPath: flags.nodeHostsPath }, 'containerd reads hosts.toml files from the hosts directory');
}

/**
 * True when the agent's DaemonSet no longer exists (or is being deleted). Losing access to it
 * (401/403: its ServiceAccount or binding deleted with the chart) counts as gone as well: an
 * agent that cannot read the cluster cannot keep the files right either, and without the files
 * containerd simply pulls from the upstream.
 */
export async function daemonSetGone(kube: Kube, namespace: string, name: string, log: Logger): Promise<boolean> {
  try {
    const ds = await getObject(kube, 'apps/v1', 'DaemonSet', namespace, name);
    return ds === undefined || !!ds.metadata?.deletionTimestamp;
  } catch (err) {
    const code = statusOf(err);
    if (code === 401 || code === 403) return true;
    log.warn({ err: errorText(err) }, 'could not check the DaemonSet at shutdown; leaving hosts.toml files in place');
    return false;
  }
}

export async function startNodeAgent(flags: NodeAgentFlags, opts: { log?: Logger; kube?: Kube } = {}): Promise<NodeAgentHandle> {
  const log = opts.log ?? nodeLogger(flags.logLevel);
  const { runtime, reason } = detectRuntime(flags.runtime, { crioSocket: flags.crioSocket, crioConfig: flags.crioConfig });
  log.info({ runtime, reason }, runtime === 'crio' ? 'configuring CRI-O (registries.conf.d drop-ins)' : 'configuring containerd (hosts.toml)');
  if (runtime === 'containerd') reportContainerdConfig(flags, log);
  const kube = opts.kube ?? connect(flags.kubeconfig);
  const agent = new NodeAgent({
    kube,
    log,
    hostsDir: flags.hostsDir,
    runtime,
    registriesConfDir: flags.registriesConfDir,
    namespace: flags.namespace,
    dialTimeout: flags.dialTimeout,
    policy: flags.policy,
    instance: flags.instance,
    nodeName: flags.nodeName,
    reportStatus: flags.reportStatus,
    eventInstance: flags.nodeName ?? hostname(),
    resyncIntervalMs: flags.resyncIntervalMs,
  });
  const health = await startHealthServer({
    host: flags.healthHost,
    port: flags.healthPort,
    ready: () => agent.readiness(),
    registry: agent.metrics.registry,
  });
  agent.start().catch((err) => log.error({ err: errorText(err) }, 'node agent failed to start'));
  log.info(
    {
      runtime,
      dir: agent.dir.dir,
      node: flags.nodeName,
      namespace: flags.namespace ?? '(all)',
      healthPort: health.port,
      daemonSet: flags.daemonSet,
      instance: flags.instance,
      adminNamespace: flags.policy.adminNamespace ?? '(none)',
      nodeConfigNamespaces: flags.policy.namespaces,
    },
    'node agent started',
  );
  let stopping: Promise<void> | undefined;
  return {
    agent,
    healthPort: health.port,
    stop() {
      stopping ??= (async () => {
        await agent.stop();
        if (flags.daemonSet && flags.podNamespace && (await daemonSetGone(kube, flags.podNamespace, flags.daemonSet, log))) {
          const removed = agent.dir.removeAll();
          log.info({ removed: removed.map((c) => c.registry), dir: agent.dir.dir }, `DaemonSet is gone: removed this agent's ${agent.dir.kind.name} files`);
        }
        await health.server.close();
        log.info('node agent stopped');
        log.flush?.();
      })();
      return stopping;
    },
  };
}

/** Entry point of `registry-mirror node-agent ARGS`: runs until SIGTERM or SIGINT. */
export async function runNodeAgent(argv: string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  let flags: NodeAgentFlags;
  try {
    flags = parseNodeAgentFlags(argv);
  } catch (err) {
    process.stderr.write(`registry-mirror node-agent: ${(err as Error).message}\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  const log = nodeLogger(flags.logLevel);
  if (flags.cleanup) {
    // Both kinds: whichever runtime the node runs, only files of this instance go.
    for (const dir of [new HostsDir(flags.hostsDir, flags.instance), new RegistriesConfDir(flags.registriesConfDir, flags.instance)]) {
      const removed = dir.removeAll();
      log.info({ dir: dir.dir, instance: flags.instance, removed: removed.map((c) => c.registry) }, `removed this agent's ${dir.kind.name} files`);
    }
    return;
  }
  const handle = await startNodeAgent(flags, { log });
  await new Promise<void>((resolve) => {
    const onSignal = (sig: string) => {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      log.info({ signal: sig }, 'stopping');
      handle.stop().then(resolve, (err) => {
        log.error({ err: errorText(err) }, 'error while stopping');
        resolve();
      });
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
