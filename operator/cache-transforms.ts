// What the operator's informers keep of each object: only the fields the controller and
// reconcile() read (informer transforms). Whatever else a tenant or another controller puts
// on these objects (annotations such as kubectl's last-applied-configuration, managedFields,
// big labels, Pod specs) is dropped before the object is cached or handed to a handler.
// Secrets are summarised by summarizeSecret (secrets.ts).
//
// Kept, per kind:
//  - RegistryMirror: apiVersion, kind, metadata (name, namespace, uid, resourceVersion,
//    generation, creationTimestamp, deletionTimestamp), spec and status (both bounded by the
//    CRD's schema) and a digest of the labels (update detection);
//  - Pod: name, namespace, resourceVersion, deletionTimestamp, the instance label, podIP,
//    phase and the Ready condition;
//  - owned Deployment/ConfigMap/Service/PVC/PodDisruptionBudget: identity, the instance and managed-by labels, the
//    applied-hash annotation, owner references (uid, controller; at most 8), and for a
//    Deployment its replicas and rollout status (at most 8 conditions, messages clipped to
//    1 KiB), for a PVC its storage request, for a Service its ClusterIPs (at most 2).
import { createHash } from 'node:crypto';
import { ANNOTATION, INSTANCE_LABEL } from './render/names.js';
import type { KubeObject } from './kube/informer.js';
import type { PodLike } from './stats-scraper.js';
import { GROUP, VERSION, type RegistryMirror } from './types.js';

const MANAGED_BY_LABEL = 'app.kubernetes.io/managed-by';
/** Owner references kept of an owned object. */
export const MAX_OWNER_REFS_KEPT = 8;
/** Deployment conditions kept, and the length their messages are clipped to. */
export const MAX_CONDITIONS_KEPT = 8;
export const MAX_CONDITION_MESSAGE = 1024;

type Any = Record<string, any>;

const str = (v: unknown, max = 253): string | undefined => (typeof v === 'string' ? v.slice(0, max) : undefined);
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
function compact<T extends Any>(o: T): T {
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  return o;
}

function identity(m: Any | undefined): Any {
  return compact({
    name: str(m?.name),
    namespace: str(m?.namespace),
    uid: str(m?.uid),
    resourceVersion: str(m?.resourceVersion, 64),
    generation: num(m?.generation),
    creationTimestamp: str(m?.creationTimestamp, 64),
    deletionTimestamp: str(m?.deletionTimestamp, 64),
  });
}

function pick(map: unknown, keys: string[], max = 1024): Record<string, string> | undefined {
  if (!map || typeof map !== 'object') return undefined;
  const out: Record<string, string> = {};
  for (const k of keys) {
    const v = (map as Any)[k];
    if (typeof v === 'string') out[k] = v.slice(0, max);
  }
  return Object.keys(out).length ? out : undefined;
}

export type CachedRegistryMirror = RegistryMirror & KubeObject & { labelsDigest?: string };

export function slimRegistryMirror(o: Any): CachedRegistryMirror {
  const labels = o?.metadata?.labels;
  return compact({
    // List items carry no apiVersion and kind; the status write sends them.
    apiVersion: `${GROUP}/${VERSION}`,
    kind: 'RegistryMirror',
    metadata: identity(o?.metadata),
    spec: o?.spec,
    status: o?.status,
    labelsDigest: labels ? createHash('sha256').update(JSON.stringify(labels)).digest('hex').slice(0, 16) : undefined,
  }) as CachedRegistryMirror;
}

export function slimPod(o: Any): PodLike & KubeObject {
  const ready = Array.isArray(o?.status?.conditions) ? o.status.conditions.find((c: Any) => c?.type === 'Ready') : undefined;
  return compact({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: compact({ ...identity(o?.metadata), labels: pick(o?.metadata?.labels, [INSTANCE_LABEL]) }),
    status: compact({
      podIP: str(o?.status?.podIP, 64),
      phase: str(o?.status?.phase, 64),
      conditions: ready ? [{ type: 'Ready', status: str(ready.status, 16) }] : undefined,
    }),
  }) as PodLike & KubeObject;
}

/** The transform for the informer of one owned kind (list items carry no kind of their own). */
export function slimOwned(rt: { apiVersion: string; kind: string }): (o: Any) => KubeObject {
  return (o) => slimOwnedObject(o, rt);
}

function slimOwnedObject(o: Any, rt: { apiVersion: string; kind: string }): KubeObject {
  const refs = Array.isArray(o?.metadata?.ownerReferences) ? (o.metadata.ownerReferences as Any[]) : undefined;
  const kind = rt.kind;
  const out: Any = {
    apiVersion: rt.apiVersion,
    kind,
    metadata: compact({
      ...identity(o?.metadata),
      labels: pick(o?.metadata?.labels, [INSTANCE_LABEL, MANAGED_BY_LABEL]),
      annotations: pick(o?.metadata?.annotations, [ANNOTATION.appliedHash]),
      ownerReferences: refs?.slice(0, MAX_OWNER_REFS_KEPT).map((r) => compact({ uid: str(r?.uid), controller: r?.controller === true ? true : undefined })),
    }),
  };
  if (kind === 'Deployment') {
    const st = o?.status ?? {};
    out.spec = compact({ replicas: num(o?.spec?.replicas) });
    out.status = compact({
      observedGeneration: num(st.observedGeneration),
      replicas: num(st.replicas),
      updatedReplicas: num(st.updatedReplicas),
      readyReplicas: num(st.readyReplicas),
      availableReplicas: num(st.availableReplicas),
      conditions: Array.isArray(st.conditions)
        ? (st.conditions as Any[]).slice(0, MAX_CONDITIONS_KEPT).map((c) =>
            compact({ type: str(c?.type, 64), status: str(c?.status, 16), reason: str(c?.reason, 256), message: str(c?.message, MAX_CONDITION_MESSAGE) }),
          )
        : undefined,
    });
  } else if (kind === 'Service') {
    // The ClusterIP(s) go into the serving certificate (nodes reach the mirror by address).
    const ips = Array.isArray(o?.spec?.clusterIPs) ? (o.spec.clusterIPs as unknown[]) : [o?.spec?.clusterIP];
    const kept = ips.slice(0, 2).map((ip) => str(ip, 64)).filter((ip): ip is string => !!ip && ip !== 'None');
    if (kept.length > 0) out.spec = { clusterIPs: kept };
  } else if (kind === 'PersistentVolumeClaim') {
    const storage = o?.spec?.resources?.requests?.storage;
    out.spec = { resources: { requests: compact({ storage: typeof storage === 'string' || typeof storage === 'number' ? String(storage).slice(0, 64) : undefined }) } };
  }
  return compact(out) as KubeObject;
}
