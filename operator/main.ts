// `registry-mirror operator`: connects to the apiserver, serves /healthz /readyz /metrics,
// and runs the controller while this replica holds the Lease (or always, without leader
// election). SIGTERM/SIGINT stop it cleanly: the controller stops, the Lease is released,
// the health server closes, and runOperator() resolves.
import type { Logger } from 'pino';
import { Controller } from './controller.js';
import { parseFlags, USAGE, type OperatorFlags } from './flags.js';
import { startHealthServer } from './health.js';
import { connect } from './kube/client.js';
import { errorText } from './kube/informer.js';
import { LeaderElector } from './leader.js';
import { createLogger } from './log.js';
import { createMetrics } from './metrics.js';
import { EventRecorder } from './events.js';
import { OPERATOR_CONTROLLER } from './event-reasons.js';
import { httpStatsFetcher, type FetchStats } from './stats-scraper.js';
import { CaStore } from './tls/serving.js';

export interface OperatorHandle {
  /** Port of /healthz /readyz /metrics. */
  healthPort: number;
  isLeader(): boolean;
  /** Leading with synced caches (or standing by with the Lease reachable). */
  ready(): boolean;
  /** For tests: resolves when the controller's queue is empty (immediately if not leading). */
  idle(): Promise<void>;
  stop(): Promise<void>;
}

export interface StartOptions {
  log?: Logger;
  fetchStats?: FetchStats;
}

/** Starts the operator in this process; the caller decides when to stop it. */
export async function startOperator(flags: OperatorFlags, opts: StartOptions = {}): Promise<OperatorHandle> {
  const log = opts.log ?? createLogger(flags.logLevel);
  const metrics = createMetrics();
  const kube = connect(flags.kubeconfig);
  // One CA per process, loaded (or made) on first need and kept across leadership changes.
  const ca = new CaStore(kube, flags.caNamespace, flags.caSecret);
  // One recorder for the process: its aggregation outlives a lost and regained leadership.
  const events = new EventRecorder({
    kc: kube.kc,
    log,
    controller: OPERATOR_CONTROLLER,
    instance: flags.identity,
    count: (result) => metrics.events.inc({ result }),
  });
  let controller: Controller | undefined;
  let transition = Promise.resolve();

  const newController = () =>
    new Controller({
      kube,
      log,
      metrics,
      namespace: flags.namespace,
      defaultImage: flags.mirrorImage,
      statusIntervalMs: flags.statusIntervalMs,
      resyncIntervalMs: flags.resyncIntervalMs,
      statsPort: flags.statsPort,
      fetchStats: opts.fetchStats ?? httpStatsFetcher(3000),
      policy: flags.policy,
      ca: () => ca.get(),
      clusterDomain: flags.clusterDomain,
      nodeAgentUser: flags.nodeAgentUser,
      events,
    });
  // Leadership changes are serialised: a stop always completes before the next start.
  const startLeading = () => {
    transition = transition.then(async () => {
      metrics.leader.set(1);
      controller = newController();
      controller.start().catch((err) => log.error({ err: errorText(err) }, 'controller failed to start'));
    });
    return transition;
  };
  const stopLeading = () => {
    transition = transition.then(async () => {
      metrics.leader.set(0);
      const c = controller;
      controller = undefined;
      await c?.stop();
    });
    return transition;
  };

  const abort = new AbortController();
  let elector: LeaderElector | undefined;
  let electorDone: Promise<void> = Promise.resolve();
  if (flags.leaderElect) {
    elector = new LeaderElector({
      api: kube.coordination,
      namespace: flags.leaseNamespace,
      name: flags.leaseName,
      identity: flags.identity,
      leaseDurationMs: flags.leaseDurationMs,
      renewDeadlineMs: flags.renewDeadlineMs,
      retryPeriodMs: flags.retryPeriodMs,
      log,
      onStartedLeading: startLeading,
      onStoppedLeading: stopLeading,
    });
    electorDone = elector.run(abort.signal);
  } else {
    await startLeading();
  }

  const ready = () => {
    if (controller) return { ok: controller.ready, detail: controller.ready ? 'leading, caches synced' : 'caches not synced yet' };
    if (elector) return { ok: elector.contacted, detail: elector.contacted ? 'standing by' : 'lease not reachable yet' };
    return { ok: false, detail: 'starting' };
  };
  const health = await startHealthServer({ host: flags.healthHost, port: flags.healthPort, ready, registry: metrics.registry });
  log.info(
    {
      healthPort: health.port,
      namespace: flags.namespace ?? '(all)',
      leaderElect: flags.leaderElect,
      identity: flags.identity,
      adminNamespace: flags.policy.adminNamespace ?? '(none)',
      nodeConfigNamespaces: flags.policy.namespaces,
    },
    'operator started',
  );

  let stopping: Promise<void> | undefined;
  return {
    healthPort: health.port,
    isLeader: () => controller !== undefined,
    ready: () => ready().ok,
    idle: async () => {
      await transition;
      await controller?.idle();
    },
    stop() {
      stopping ??= (async () => {
        abort.abort();
        await electorDone; // releases the Lease after stopping the controller
        await stopLeading();
        await health.server.close();
        log.info('operator stopped');
        log.flush?.();
      })();
      return stopping;
    },
  };
}

/** Entry point of `registry-mirror operator ARGS`: runs until SIGTERM or SIGINT. */
export async function runOperator(argv: string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  let flags: OperatorFlags;
  try {
    flags = parseFlags(argv);
  } catch (err) {
    process.stderr.write(`registry-mirror operator: ${(err as Error).message}\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  const handle = await startOperator(flags);
  await new Promise<void>((resolve) => {
    const onSignal = (sig: string) => {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      createLogger(flags.logLevel).info({ signal: sig }, 'stopping');
      handle.stop().then(resolve, resolve);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
