// Which Events one reconcile of a RegistryMirror records (operator/events.ts writes them),
// from what the reconcile found and the status it wrote. Pure. Only what a user acts on:
// each Degraded reason (Warning, every reconcile that finds it: the recorder aggregates the
// repeats into one Event's series and rate-limits them), the admin policy keeping it off the
// nodes, replicas becoming ready or being lost (transitions of readyReplicas), and an upstream
// rate limit running low. Objects applied are recorded where they are applied (reconcile.ts),
// so a reconcile that changes nothing records nothing.
import type { EventInput, EventObject } from './events.js';
import type { NodeConfigUpdate } from './status.js';
import { API_VERSION, KIND, type RegistryMirror, type RegistryMirrorStatus } from './types.js';

/** reportingController of the operator's Events: the CRD group's operator. */
export const OPERATOR_CONTROLLER = 'registry-mirror.io/operator';

/**
 * Every reason a Degraded=True (Ready=False) condition can take, each the reason of a Warning
 * Event: the spec (InvalidSpec, UpstreamNotAllowed), a referenced Secret missing or unusable,
 * an object of our name we do not own, the apiserver refusing an apply, a PVC that cannot
 * shrink, and the Deployment failing (no pod available, or no pod created at all).
 */
export const DEGRADED_REASONS = [
  'InvalidSpec',
  'UpstreamNotAllowed',
  'CredentialsSecretNotFound',
  'CredentialsSecretInvalid',
  'AuthSecretNotFound',
  'AuthSecretInvalid',
  'S3CredentialsSecretNotFound',
  'S3CredentialsSecretInvalid',
  'ObjectConflict',
  'ApplyFailed',
  'StorageShrinkRefused',
  'DeploymentUnavailable',
  'PodsNotCreated',
] as const;

/** Below this share of its limit left, an upstream's rate limit gets a Warning. */
export const RATE_LIMIT_LOW_FRACTION = 0.1;

export function eventObject(cr: RegistryMirror): EventObject {
  return { apiVersion: API_VERSION, kind: KIND, namespace: cr.metadata.namespace, name: cr.metadata.name, uid: cr.metadata.uid };
}

/** The Normal Event for one object created or changed by an apply. */
export function appliedEvent(kind: string, name: string, created: boolean): EventInput {
  return created
    ? { type: 'Normal', reason: 'Applied', action: 'Create', note: `Created ${kind} "${name}"` }
    : { type: 'Normal', reason: 'Applied', action: 'Update', note: `Updated ${kind} "${name}"` };
}

export interface ReconcileFacts {
  /** The status before this reconcile (the live one it started from). */
  previous: RegistryMirrorStatus | undefined;
  /** The status this reconcile computed (and wrote, if it differed). */
  next: RegistryMirrorStatus;
  /** Replicas the Deployment wants and whether it is rolling out, when objects were applied. */
  rollout?: { desired: number; rollingOut: boolean };
  nodeConfig: NodeConfigUpdate;
}

export function reconcileEvents(f: ReconcileFacts): EventInput[] {
  const out: EventInput[] = [];
  const degraded = f.next.conditions?.find((c) => c.type === 'Degraded');
  if (degraded?.status === 'True') out.push({ type: 'Warning', reason: degraded.reason, action: 'Reconcile', note: degraded.message });
  if (f.nodeConfig.kind === 'refuse' && !(degraded?.status === 'True' && degraded.reason === f.nodeConfig.reason)) {
    out.push({ type: 'Warning', reason: f.nodeConfig.reason, action: 'ConfigureNodes', note: f.nodeConfig.message });
  }
  if (f.rollout && f.rollout.desired > 0) {
    const before = f.previous?.readyReplicas ?? 0;
    const now = f.next.readyReplicas ?? 0;
    const { desired } = f.rollout;
    if (now >= desired && before < desired) {
      out.push({ type: 'Normal', reason: 'ReplicasReady', action: 'Reconcile', note: `${now}/${desired} replicas ready` });
    } else if (now < before && now < desired && !f.rollout.rollingOut) {
      // A rollout takes pods down by design (Recreate, maxUnavailable); outside one, a loss is news.
      out.push({ type: 'Warning', reason: 'ReplicasLost', action: 'Reconcile', note: `${now}/${desired} replicas ready (was ${before})` });
    }
  }
  for (const r of f.next.rateLimits ?? []) {
    if (r.limit !== undefined && r.remaining !== undefined && r.limit > 0 && r.remaining < r.limit * RATE_LIMIT_LOW_FRACTION) {
      const window = r.windowSeconds ? ` per ${r.windowSeconds}s` : '';
      out.push({
        type: 'Warning',
        reason: 'UpstreamRateLimitLow',
        action: 'ReadStats',
        // Stable for as long as the limit is (no live figure), so repeats aggregate.
        note: `Upstream "${r.upstream}" has less than ${RATE_LIMIT_LOW_FRACTION * 100}% of its rate limit (${r.limit}${window}) left; status.rateLimits has the current figure`,
      });
    }
  }
  return out;
}
