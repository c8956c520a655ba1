// One reconcile of one RegistryMirror: validate, look up the referenced Secrets, render,
// server-side apply what changed, then write the status if it differs. Reads come from the
// informer caches; the only API calls are applies, a GET for objects we are about to create
// (to refuse taking over a foreign object of the same name), and the status write.
import type { Logger } from 'pino';
import { apply, getObject, replaceStatus, type Kube } from './kube/client.js';
import { errorText, statusOf } from './kube/informer.js';
import type { Metrics } from './metrics.js';
import { render } from './render/index.js';
import { CONFIG_KEY } from './render/config-map.js';
import { mirrorConfigProblem } from './render/mirror-config.js';
import { ANNOTATION, endpointOf, INSTANCE_LABEL, MANAGED_BY } from './render/names.js';
import type { PdbApiVersion } from './render/pdb.js';
import { pvcChange } from './render/pvc.js';
import { authForm, credentialsForm, s3CredentialsForm, type SecretSummary } from './secrets.js';
import { DEFAULT_POLICY, nodeConfigRefusal, POLICY_REASONS, upstreamRefusal, type NodePolicy } from './node-policy.js';
import { resolveSpec, type ResolvedSpec } from './spec.js';
import { computeStatus, NODE_CONFIG, rolloutState, statusEqual, type DeploymentLike, type NodeConfigUpdate, type Outcome } from './status.js';
import type { CaBundles } from './render/ca-config-map.js';
import { DEFAULT_CLUSTER_DOMAIN, objectNames, serviceDnsNames } from './render/names.js';
import { issueServingSecret, servingAction, servingDates, type OperatorCa } from './tls/serving.js';
import type { AuthForm, CacheStatus, CredentialsForm, Manifest, RegistryMirror, RegistryMirrorStatus, S3CredentialsForm, TlsStatus } from './types.js';
import type { EventRecorder } from './events.js';
import { appliedEvent, eventObject, reconcileEvents } from './event-reasons.js';
import { splitKey } from './types.js';

export interface ReconcileCaches {
  registryMirror(namespace: string, name: string): RegistryMirror | undefined;
  secret(namespace: string, name: string): SecretSummary | undefined;
  /** The live owned object of that kind, as the informer last saw it. */
  owned(kind: string, namespace: string, name: string): Record<string, any> | undefined;
  cacheStats(key: string): CacheStatus | undefined;
}

export interface ReconcileDeps {
  kube: Kube;
  caches: ReconcileCaches;
  defaultImage: string;
  log: Logger;
  metrics: Metrics;
  /** The admin's node policy (operator/node-policy.ts); the node agents apply the same. */
  policy?: NodePolicy;
  /** The PodDisruptionBudget API the apiserver serves (detected at start; default policy/v1). */
  pdbApiVersion?: PdbApiVersion;
  /** Kubernetes Events about the RegistryMirror (best effort; none when absent). */
  events?: EventRecorder;
  now?: () => Date;
  /** The operator's CA (tls/serving.ts CaStore); needed by spec.tls generated and spec.auth. */
  ca?: () => Promise<OperatorCa>;
  /** The cluster's DNS domain for the serving certificates' names (default cluster.local). */
  clusterDomain?: string;
  /** Asks for another reconcile of key at that time (a certificate's renewal). */
  requeueAt?: (key: string, at: Date) => void;
}

/** An apply the apiserver refused; the status says so and the key is retried with backoff. */
export class ApplyError extends Error {}

export async function reconcile(key: string, d: ReconcileDeps): Promise<void> {
  const { namespace, name } = splitKey(key);
  const cr = d.caches.registryMirror(namespace, name);
  // Deleted: the apiserver's garbage collector removes what carries our ownerReference.
  if (!cr || cr.metadata.deletionTimestamp) return;
  const log = d.log.child({ registryMirror: key, generation: cr.metadata.generation });

  let outcome: Outcome;
  let failure: unknown;
  let tlsStatus: TlsStatus | undefined;
  const policy = d.policy ?? DEFAULT_POLICY;
  const resolved = resolveSpec(cr);
  const upstreamProblem = resolved.ok ? upstreamRefusal(policy, namespace, resolved.spec) : undefined;
  if (!resolved.ok) {
    outcome = { kind: 'blocked', reason: 'InvalidSpec', message: resolved.problems.join('; ') };
  } else if (upstreamProblem) {
    outcome = { kind: 'blocked', reason: 'UpstreamNotAllowed', message: `${upstreamProblem}; nothing was applied` };
  } else {
    const spec = resolved.spec;
    let credentials: CredentialsForm | undefined;
    let auth: AuthForm | undefined;
    let s3Credentials: S3CredentialsForm | undefined;
    let blocked: Outcome | undefined;
    if (spec.credentialsSecret) {
      const r = secretForm(d, namespace, spec.credentialsSecret, 'spec.upstream.credentialsSecret', 'CredentialsSecret', credentialsForm);
      if ('blocked' in r) blocked = r.blocked;
      else credentials = r.form;
    }
    if (!blocked && spec.auth) {
      const r = secretForm(d, namespace, spec.auth.secret, 'spec.auth.secret', 'AuthSecret', authForm);
      if ('blocked' in r) blocked = r.blocked;
      else auth = r.form;
    }
    if (!blocked && spec.s3?.credentialsSecret) {
      const r = secretForm(d, namespace, spec.s3.credentialsSecret, 'spec.storage.s3.credentialsSecret', 'S3CredentialsSecret', s3CredentialsForm);
      if ('blocked' in r) blocked = r.blocked;
      else s3Credentials = r.form;
    }
    let tls: TlsPlan | undefined;
    if (!blocked && spec.tls.mode !== 'disabled') {
      try {
        const r = await planTls(cr, spec, d);
        if ('blocked' in r) blocked = r.blocked;
        else tls = r;
      } catch (err) {
        failure = err;
        blocked = { kind: 'applyFailed', message: `TLS: ${errorText(err)}` };
      }
    }
    tlsStatus = tls?.status;
    const rendered = blocked
      ? undefined
      : render(cr, spec, { defaultImage: d.defaultImage, credentials, auth, s3Credentials, pdbApiVersion: d.pdbApiVersion, ca: tls?.bundles });
    const configProblem = rendered && mirrorConfigProblem((rendered.configMap.data as Record<string, string>)[CONFIG_KEY] ?? '');
    if (configProblem) {
      blocked = { kind: 'blocked', reason: 'InvalidSpec', message: `the mirror would refuse the rendered configuration (${configProblem}); nothing was applied` };
    }
    if (blocked || !rendered) outcome = blocked!;
    else {
      try {
        if (tls?.servingSecret) {
          // Before the Deployment that mounts it. A private key: its content is never logged.
          await apply(d.kube, tls.servingSecret);
          d.metrics.applies.inc({ kind: 'Secret' });
          log.info({ kind: 'Secret', name: tls.servingSecret.metadata.name, reason: tls.issuedBecause, notAfter: tls.status.notAfter }, 'serving certificate issued');
        }
        if (tls?.status.renewAfter) d.requeueAt?.(key, new Date(tls.status.renewAfter));
        outcome = await applyAll(cr, rendered, d, log);
      } catch (err) {
        failure = err;
        outcome =
          err instanceof ConflictError
            ? { kind: 'blocked', reason: 'ObjectConflict', message: err.message }
            : { kind: 'applyFailed', message: `apply failed: ${errorText(err)}` };
      }
    }
  }

  if (outcome.kind !== 'applied') log.info({ reason: 'reason' in outcome ? outcome.reason : 'ApplyFailed', message: outcome.message }, 'not applied');
  const tlsOn = resolved.ok ? resolved.spec.tls.mode !== 'disabled' : cr.spec?.tls?.mode !== 'disabled';
  const nodeConfig = nodeConfigUpdate(cr, resolved.ok ? resolved.spec : undefined, policy);
  const status = await writeStatus(cr, outcome, nodeConfig, d, log, { tls: tlsOn, status: tlsStatus });
  if (status && d.events) {
    const r = outcome.kind === 'applied' ? rolloutState(outcome.deployment) : undefined;
    const rollout = r && { desired: r.desired, rollingOut: !r.complete && r.updated < r.desired };
    for (const e of reconcileEvents({ previous: cr.status, next: status, rollout, nodeConfig })) d.events.record(eventObject(cr), e);
  }
  if (failure && !(failure instanceof ConflictError)) throw failure;
}

class ConflictError extends Error {}

/**
 * The NodeConfig condition as far as the operator speaks for it: a RegistryMirror the admin's
 * policy keeps off the nodes says so (the node agents, applying the same policy, agree); a
 * refusal that no longer applies is cleared for the agents to report the node state.
 */
export function nodeConfigUpdate(cr: RegistryMirror, spec: ResolvedSpec | undefined, policy: NodePolicy): NodeConfigUpdate {
  const current = cr.status?.conditions?.find((c) => (c.type as string) === NODE_CONFIG);
  const stale: NodeConfigUpdate = current && POLICY_REASONS.includes(current.reason) ? { kind: 'clear' } : { kind: 'keep' };
  if (cr.spec?.nodeConfig?.enabled === false) return stale;
  if (!spec) return { kind: 'keep' };
  const refusal = nodeConfigRefusal(policy, cr.metadata.namespace, spec);
  return refusal ? { kind: 'refuse', reason: refusal.reason, message: refusal.message } : stale;
}

/**
 * A referenced Secret in the form the renderer needs, or why the RegistryMirror is blocked:
 * <reasonPrefix>NotFound, or <reasonPrefix>Invalid with the parser's problem.
 */
function secretForm<F extends object>(
  d: ReconcileDeps,
  namespace: string,
  name: string,
  field: string,
  reasonPrefix: 'CredentialsSecret' | 'AuthSecret' | 'S3CredentialsSecret' | 'TLSSecret',
  parse: (s: SecretSummary) => F | { problem: string },
): { form: F } | { blocked: Outcome } {
  const secret = d.caches.secret(namespace, name);
  if (!secret) {
    return {
      blocked: { kind: 'blocked', reason: `${reasonPrefix}NotFound`, message: `Secret "${name}" named by ${field} does not exist in namespace "${namespace}"` },
    };
  }
  const form = parse(secret);
  if ('problem' in form) return { blocked: { kind: 'blocked', reason: `${reasonPrefix}Invalid`, message: form.problem } };
  return { form };
}

async function applyAll(cr: RegistryMirror, r: ReturnType<typeof render>, d: ReconcileDeps, log: Logger): Promise<Outcome> {
  const ns = cr.metadata.namespace;
  let deployment = d.caches.owned('Deployment', ns, r.deployment.metadata.name) as DeploymentLike | undefined;
  let warning: { reason: string; message: string } | undefined;
  // ConfigMaps and PVC before the Deployment that mounts them, and the peers Service before the
  // pods that resolve it; the client Service and the PodDisruptionBudget last.
  for (const m of [r.configMap, r.caConfigMap, r.pvc, r.peersService, r.deployment, r.service, r.pdb]) {
    if (!m) continue;
    let live = d.caches.owned(m.kind, ns, m.metadata.name);
    if (!live) {
      live = await getObject(d.kube, m.apiVersion, m.kind, ns, m.metadata.name);
      if (live && !isOurs(live, cr)) {
        throw new ConflictError(
          `${m.kind} "${m.metadata.name}" already exists and is not managed by this RegistryMirror; rename or delete it`,
        );
      }
    }
    if (m.kind === 'PersistentVolumeClaim') {
      const change = pvcChange(live, m);
      if (change === 'shrink') {
        warning = {
          reason: 'StorageShrinkRefused',
          message: `spec.storage.size is smaller than PVC "${m.metadata.name}" (${String(live?.spec?.resources?.requests?.storage)}); a PVC cannot shrink, so it is kept as it is`,
        };
        continue;
      }
      if (change === 'unchanged' && live) continue;
    }
    if (live && live.metadata?.annotations?.[ANNOTATION.appliedHash] === m.metadata.annotations?.[ANNOTATION.appliedHash]) continue;
    const applied = await apply(d.kube, m);
    d.metrics.applies.inc({ kind: m.kind });
    d.events?.record(eventObject(cr), appliedEvent(m.kind, m.metadata.name, !live));
    log.info({ kind: m.kind, name: m.metadata.name }, live ? 'updated' : 'created');
    if (m.kind === 'Deployment') deployment = applied as DeploymentLike;
  }
  return { kind: 'applied', deployment, warning };
}

function isOurs(live: Record<string, any>, cr: RegistryMirror): boolean {
  const refs = (live.metadata?.ownerReferences ?? []) as Array<{ uid?: string; controller?: boolean }>;
  if (refs.some((r) => r.uid === cr.metadata.uid)) return true;
  // Uncontrolled and labelled as ours for this name: a retained PVC (or an object orphaned by
  // an earlier RegistryMirror of the same name). Adopt it.
  const labels = live.metadata?.labels ?? {};
  return !refs.some((r) => r.controller) && labels[INSTANCE_LABEL] === cr.metadata.name && labels['app.kubernetes.io/managed-by'] === MANAGED_BY;
}

/** Writes the status if it changed; returns it (undefined when the RegistryMirror is gone). */
async function writeStatus(
  cr: RegistryMirror,
  outcome: Outcome,
  nodeConfig: NodeConfigUpdate,
  d: ReconcileDeps,
  log: Logger,
  tls: { tls: boolean; status?: TlsStatus },
): Promise<RegistryMirrorStatus | undefined> {
  const key = `${cr.metadata.namespace}/${cr.metadata.name}`;
  const now = d.now?.() ?? new Date();
  const status = computeStatus(cr, outcome, { endpoint: endpointOf(cr, tls.tls), cache: d.caches.cacheStats(key), nodeConfig, tls: tls.status }, now);
  if (statusEqual(cr.status, status)) return status;
  try {
    await replaceStatus(d.kube, cr, status);
    d.metrics.statusWrites.inc();
    const ready = status.conditions?.find((c) => c.type === 'Ready');
    log.info({ ready: ready?.status, reason: ready?.reason, readyReplicas: status.readyReplicas }, 'status updated');
    return status;
  } catch (err) {
    // 409: our cached copy is stale; the informer delivers the newer one, which re-queues.
    if (statusOf(err) === 409) throw new Error(`status write conflict for ${key}; retrying with the newer object`);
    if (statusOf(err) === 404) return undefined;
    throw err;
  }
}

/** What spec.tls adds to a reconcile: the CA bundles to publish, status.tls, and a new serving Secret to apply. */
interface TlsPlan {
  bundles: CaBundles;
  status: TlsStatus;
  servingSecret?: Manifest;
  issuedBecause?: string;
}

/**
 * spec.tls generated or secret: what the mirror's clients are to trust, and in generated mode
 * the serving certificate, (re)issued when missing, for other names or addresses than the
 * Service has now, from another CA, or past its renewal time. With spec.auth the operator's
 * CA is published as client-ca.crt too: it signs the nodes' client certificates.
 */
async function planTls(cr: RegistryMirror, spec: ResolvedSpec, d: ReconcileDeps): Promise<TlsPlan | { blocked: Outcome }> {
  const ns = cr.metadata.namespace;
  const names = objectNames(cr);
  const needCa = spec.tls.mode === 'generated' || !!spec.auth;
  if (needCa && !d.ca) throw new Error('the operator has no CA configured');
  const ca = needCa ? await d.ca!() : undefined;
  if (spec.tls.mode === 'secret') {
    const r = secretForm(d, ns, spec.tls.secretName, 'spec.tls.secretName', 'TLSSecret', (s) => {
      const missing = ['tls.crt', 'tls.key'].filter((k) => !s.keys.includes(k));
      if (missing.length > 0) return { problem: `Secret "${s.metadata.name}" named by spec.tls.secretName lacks ${missing.join(' and ')}` };
      if (spec.s3 && !s.caCrt) {
        return {
          problem: `Secret "${s.metadata.name}" named by spec.tls.secretName has no ca.crt (of at most 16 KiB): with spec.storage.s3 the replicas check each other's certificates against it`,
        };
      }
      return { caCrt: s.caCrt };
    });
    if ('blocked' in r) return r;
    const serving = r.form.caCrt;
    return {
      bundles: { serving, operator: ca?.certPem },
      status: { mode: 'secret', caConfigMap: names.caConfigMap, ...(serving ? { caBundle: serving } : {}) },
    };
  }
  const svc = d.caches.owned('Service', ns, names.service) as { spec?: { clusterIPs?: string[] } } | undefined;
  const hosts = [...serviceDnsNames(cr, d.clusterDomain ?? DEFAULT_CLUSTER_DOMAIN), ...(svc?.spec?.clusterIPs ?? [])];
  const live = d.caches.secret(ns, names.tlsSecret);
  const now = d.now?.() ?? new Date();
  const action = servingAction(live, { ownerUid: cr.metadata.uid, hosts, caFingerprint: ca!.fingerprint }, now);
  const base = { mode: 'generated' as const, caConfigMap: names.caConfigMap, caBundle: ca!.certPem };
  const bundles = { serving: ca!.certPem, operator: ca!.certPem };
  if (action.issue && action.why === 'foreign') {
    return {
      blocked: {
        kind: 'blocked',
        reason: 'ObjectConflict',
        message: `Secret "${names.tlsSecret}" already exists and is not managed by this RegistryMirror; rename or delete it (spec.tls generated keeps the serving certificate there)`,
      },
    };
  }
  if (!action.issue) return { bundles, status: { ...base, ...servingDates(live) } };
  const issued = await issueServingSecret(cr, ca!, hosts, now);
  return {
    bundles,
    status: { ...base, notAfter: issued.notAfter.toISOString(), renewAfter: issued.renewAfter.toISOString() },
    servingSecret: issued.secret,
    issuedBecause: action.why,
  };
}

export type { Manifest };
