// The RegistryMirror's status from what reconcile found: whether the spec was usable, whether
// the apply went through, how the Deployment is doing, and the cache figures. Pure; the
// controller writes the result only when it differs from the live status.
import { setConditions, type ConditionInput } from './conditions.js';
import { stableStringify } from './hash.js';
import type { CacheStatus, Condition, RegistryMirror, RegistryMirrorStatus, TlsStatus } from './types.js';

/** The node agent's condition; the operator sets it only for the admin policy's refusals. */
export const NODE_CONFIG = 'NodeConfig';

/**
 * What the operator does with the NodeConfig condition: leave it (the node agents own it),
 * set a policy refusal, or clear a refusal that no longer applies (the agents then write theirs).
 */
export type NodeConfigUpdate = { kind: 'keep' } | { kind: 'refuse'; reason: string; message: string } | { kind: 'clear' };

export type Outcome =
  /** The spec or its references cannot be used; nothing was applied. */
  | { kind: 'blocked'; reason: string; message: string }
  /** Objects were applied (or already up to date); deployment is the live object, if seen. */
  | { kind: 'applied'; deployment?: DeploymentLike; warning?: { reason: string; message: string } }
  /** The apiserver refused an apply. */
  | { kind: 'applyFailed'; message: string };

export interface DeploymentLike {
  metadata?: { generation?: number };
  spec?: { replicas?: number };
  status?: {
    observedGeneration?: number;
    replicas?: number;
    updatedReplicas?: number;
    readyReplicas?: number;
    availableReplicas?: number;
    conditions?: Array<{ type?: string; status?: string; reason?: string; message?: string }>;
  };
}

export interface RolloutState {
  desired: number;
  ready: number;
  updated: number;
  /** The Deployment controller has seen the current template and every pod runs it. */
  complete: boolean;
  /** The Deployment controller gave up (ProgressDeadlineExceeded) or reports no available pod
   * although the rollout is not moving. */
  failed: boolean;
  /** PodsNotCreated when the ReplicaSet cannot create pods at all (a missing ServiceAccount,
   * a quota, an admission policy): said at once, not after the progress deadline. */
  failureReason: 'DeploymentUnavailable' | 'PodsNotCreated';
  failureMessage: string;
}

export function rolloutState(d: DeploymentLike | undefined): RolloutState {
  const desired = d?.spec?.replicas ?? 1;
  const st = d?.status ?? {};
  const ready = st.readyReplicas ?? 0;
  const updated = st.updatedReplicas ?? 0;
  const observed = d?.metadata?.generation === undefined || (st.observedGeneration ?? 0) >= d.metadata.generation;
  const conds = st.conditions ?? [];
  const progressing = conds.find((c) => c.type === 'Progressing');
  const available = conds.find((c) => c.type === 'Available');
  const replicaFailure = conds.find((c) => c.type === 'ReplicaFailure' && c.status === 'True');
  const deadline = progressing?.reason === 'ProgressDeadlineExceeded';
  const complete = observed && updated >= desired && ready >= desired && (st.replicas ?? desired) <= desired;
  const stuck = observed && updated >= desired && available?.status === 'False' && ready === 0;
  const failed = !!replicaFailure || deadline || stuck;
  const source = replicaFailure ?? (deadline ? progressing : available);
  const failureMessage = failed
    ? `Deployment has ${ready}/${desired} ready replicas${source?.message ? `: ${source.message}` : ''}`
    : '';
  return { desired, ready, updated, complete, failed, failureReason: replicaFailure ? 'PodsNotCreated' : 'DeploymentUnavailable', failureMessage };
}

export function computeStatus(
  cr: RegistryMirror,
  outcome: Outcome,
  extra: { endpoint: string; cache?: CacheStatus; nodeConfig?: NodeConfigUpdate; tls?: TlsStatus },
  now: Date,
): RegistryMirrorStatus {
  const prev = cr.status ?? {};
  const gen = cr.metadata.generation;
  let conds: ConditionInput[];
  let readyReplicas = prev.readyReplicas ?? 0;

  if (outcome.kind === 'blocked') {
    conds = [
      { type: 'Ready', status: 'False', reason: outcome.reason, message: outcome.message },
      { type: 'Progressing', status: 'False', reason: outcome.reason, message: 'Waiting for the problem to be fixed' },
      { type: 'Degraded', status: 'True', reason: outcome.reason, message: outcome.message },
    ];
  } else if (outcome.kind === 'applyFailed') {
    conds = [
      { type: 'Ready', status: readyReplicas > 0 ? 'True' : 'False', reason: 'ApplyFailed', message: outcome.message },
      { type: 'Progressing', status: 'False', reason: 'ApplyFailed', message: outcome.message },
      { type: 'Degraded', status: 'True', reason: 'ApplyFailed', message: outcome.message },
    ];
  } else {
    const r = rolloutState(outcome.deployment);
    readyReplicas = r.ready;
    const counts = `${r.ready}/${r.desired} replicas ready`;
    const ready: ConditionInput =
      r.ready > 0
        ? { type: 'Ready', status: 'True', reason: 'MirrorAvailable', message: `Mirror serves at ${extra.endpoint} (${counts})` }
        : { type: 'Ready', status: 'False', reason: r.failed ? 'DeploymentUnavailable' : 'PodsNotReady', message: `No mirror pod is ready yet (${counts})` };
    const progressing: ConditionInput = r.complete
      ? { type: 'Progressing', status: 'False', reason: 'RolloutComplete', message: counts }
      : r.failed
        ? { type: 'Progressing', status: 'False', reason: 'RolloutFailed', message: r.failureMessage }
        : { type: 'Progressing', status: 'True', reason: 'RollingOut', message: `${r.updated}/${r.desired} pods updated, ${counts}` };
    const degraded: ConditionInput = r.failed
      ? { type: 'Degraded', status: 'True', reason: r.failureReason, message: r.failureMessage }
      : outcome.warning
        ? { type: 'Degraded', status: 'True', reason: outcome.warning.reason, message: outcome.warning.message }
        : { type: 'Degraded', status: 'False', reason: 'AsExpected', message: 'All objects applied' };
    conds = [ready, progressing, degraded];
  }

  let conditions = setConditions(prev.conditions, conds, gen, now);
  const nc = extra.nodeConfig ?? { kind: 'keep' };
  if (nc.kind !== 'keep') {
    const i = conditions.findIndex((c) => (c.type as string) === NODE_CONFIG);
    const old = i >= 0 ? conditions[i] : undefined;
    if (nc.kind === 'clear') {
      if (old) conditions = conditions.filter((_, k) => k !== i);
    } else {
      const c = {
        type: NODE_CONFIG,
        status: 'False',
        reason: nc.reason,
        message: nc.message,
        lastTransitionTime: old && old.status === 'False' ? old.lastTransitionTime : now.toISOString(),
        ...(gen !== undefined ? { observedGeneration: gen } : {}),
      } as unknown as Condition;
      conditions = old ? conditions.map((x, k) => (k === i ? c : x)) : [...conditions, c];
    }
  }
  const status: RegistryMirrorStatus = {
    observedGeneration: gen,
    conditions,
    readyReplicas,
    endpoint: extra.endpoint,
  };
  // A blocked reconcile keeps what clients were last told to trust (the pods still serve it).
  const tls = extra.tls ?? (outcome.kind === 'applied' ? undefined : prev.tls);
  if (tls) status.tls = tls;
  const cache = extra.cache ?? prev.cache;
  if (cache) {
    // The merged prefetch status travels with the figures but is its own status field.
    const { prefetch, rateLimits, ...figures } = cache;
    status.cache = figures;
    const images = extra.cache ? prefetch : prev.prefetch;
    if (images && images.length > 0) status.prefetch = images;
    // Likewise the upstreams' rate limits (status.rateLimits).
    const limits = extra.cache ? rateLimits : prev.rateLimits;
    if (limits && limits.length > 0) status.rateLimits = limits;
  }
  return status;
}

export function statusEqual(a: RegistryMirrorStatus | undefined, b: RegistryMirrorStatus | undefined): boolean {
  return stableStringify(a ?? {}) === stableStringify(b ?? {});
}
