// The RegistryMirror resource as the operator sees it (DESIGN.md §3), plus the names that tie
// the operator's objects together. The CRD in crds/registrymirrors.yaml is the source of truth
// for the schema; these types follow it and must change with it.

export const GROUP = 'registry-mirror.io';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = 'RegistryMirror';
export const PLURAL = 'registrymirrors';

/** The single server-side-apply field manager for everything the operator writes. */
export const FIELD_MANAGER = 'registry-mirror';

/** Port the mirror listens on in its pod and the Service exposes. */
export const MIRROR_PORT = 5000;

export interface SecretReference {
  name: string;
}

export interface RegistryMirrorSpec {
  upstream: {
    /** Host name (optionally :port) used in image references, e.g. docker.io. */
    registry: string;
    /** Base URL of the upstream registry; defaulted for well-known registries. */
    url?: string;
    credentialsSecret?: SecretReference;
    /** Repository patterns (README "Access"): only these names, never the denied ones. */
    allow?: string[];
    deny?: string[];
  };
  /** Client authentication: a Secret with `htpasswd` (bcrypt) and/or `tokens` keys. */
  auth?: { secret?: SecretReference; protectMetrics?: boolean };
  cache?: { ttl?: string; tagTTL?: string };
  storage?: {
    /** Kubernetes quantity; when set the cache lives on a PVC of that size, else on an emptyDir. */
    size?: string | number;
    storageClassName?: string;
    /** Keep the PVC when the RegistryMirror is deleted (no ownerReference on it). */
    retain?: boolean;
    /** The cache in an S3 (or S3-compatible) bucket: no PVC; size then bounds the bucket's content. */
    s3?: S3Spec;
  };
  replicas?: number;
  nodeConfig?: { enabled?: boolean };
  v1?: { enabled?: boolean; source?: string; tagsCacheTTL?: string };
  image?: string;
  logLevel?: string;
  resources?: {
    requests?: Record<string, string | number>;
    limits?: Record<string, string | number>;
  };
  /** Images the mirror pulls at start and again when their tag moves (README "Prefetch and pin"). */
  prefetch?: Array<{ image?: string; platforms?: string[]; pin?: boolean }>;
  /** How the mirror serves TLS (README "TLS"); absent = generated. */
  tls?: { mode?: TlsMode; secretName?: string };
}

/** generated: the operator's CA issues the certificate; secret: the user's Secret; disabled: plain http. */
export type TlsMode = 'generated' | 'secret' | 'disabled';
export const TLS_MODES: readonly TlsMode[] = ['generated', 'secret', 'disabled'];

/** status.tls: how clients find the CA that signs the mirror's certificate. */
export interface TlsStatus {
  mode: TlsMode;
  /** ConfigMap in the mirror's namespace whose key ca.crt holds caBundle (absent when there is none). */
  caConfigMap?: string;
  /** The PEM CA certificate(s) clients trust for this mirror (public; the node agents read it here). */
  caBundle?: string;
  /** Serving certificate's end of validity (generated mode). */
  notAfter?: string;
  /** When the operator replaces it (generated mode). */
  renewAfter?: string;
}

/** spec.storage.s3. Credentials only by reference: a Secret, or the pods' ServiceAccount. */
export interface S3Spec {
  bucket: string;
  /** http(s) URL of an S3-compatible service; absent = AWS. */
  endpoint?: string;
  region?: string;
  /** Key prefix inside the bucket, without leading or trailing "/". */
  prefix?: string;
  forcePathStyle?: boolean;
  /** Warm blob GETs answer 307 to a presigned URL. */
  redirect?: boolean;
  /** Go duration: how long a presigned URL is valid. */
  presignTTL?: string;
  /** Multipart upload part size (a Kubernetes quantity, at least 5Mi). */
  partSize?: string | number;
  /** Secret in the same namespace with accessKeyId and secretAccessKey keys. */
  credentialsSecret?: SecretReference;
  /** ServiceAccount the mirror pods run as (workload identity), when there is no credentialsSecret. */
  serviceAccountName?: string;
}

export type ConditionType = 'Ready' | 'Progressing' | 'Degraded';
export type ConditionStatus = 'True' | 'False' | 'Unknown';

export interface Condition {
  type: ConditionType;
  status: ConditionStatus;
  reason: string;
  message: string;
  lastTransitionTime: string;
  observedGeneration?: number;
}

export interface CacheStatus {
  hits: number;
  misses: number;
  hitRatio: number;
  staleServed: number;
  bytesServed: number;
  bytesFromUpstream: number;
  storedBytes: number;
  /** storedBytes for humans (printer column "Stored"), e.g. "1.5Gi". */
  stored: string;
  blobs: number;
  upstreamErrors: number;
  /** Blob transfers from the upstream (GETs answered 200), summed over the pods that report it. */
  upstreamBlobFetches?: number;
  /** Blobs the pods added to the store (content not there before), summed likewise. */
  blobsAdded?: number;
  /** upstreamBlobFetches / blobsAdded, 4 places: 1 = one upstream transfer per stored blob. */
  fetchesPerBlob?: number;
  /** How many ready pods answered /stats for these figures. */
  pods: number;
  updated: string;
  /** Merged per-image prefetch status; written to status.prefetch, not under status.cache. */
  prefetch?: PrefetchImageStatus[];
  /** Merged per-upstream rate limits; written to status.rateLimits, not under status.cache. */
  rateLimits?: UpstreamRateLimit[];
}

/**
 * An upstream's rate limit as the mirror pods last saw it in its answers (Docker Hub's
 * ratelimit-limit / ratelimit-remaining): the lowest remaining any pod reports. An answer may
 * state only one of limit and remaining.
 */
export interface UpstreamRateLimit {
  upstream: string;
  limit?: number;
  remaining?: number;
  windowSeconds?: number;
  observedAt: string;
}

/** One prefetched image over the ready pods (status.prefetch). */
export interface PrefetchImageStatus {
  image: string;
  /** The digest most pods resolved it to. */
  digest?: string;
  /** Bytes of the image's manifests and blobs (the largest any pod reports). */
  bytes: number;
  /** Every pod that answered /stats has it wholly in its store. */
  ready: boolean;
  /** Pods that have it ready, of those that answered. */
  readyPods: number;
  /** Every pod that has it ready keeps it pinned. */
  pinned: boolean;
  /** A pod's last problem with it, if any. */
  error?: string;
}

export interface RegistryMirrorStatus {
  observedGeneration?: number;
  conditions?: Condition[];
  readyReplicas?: number;
  endpoint?: string;
  cache?: CacheStatus;
  prefetch?: PrefetchImageStatus[];
  tls?: TlsStatus;
  rateLimits?: UpstreamRateLimit[];
}

export interface ObjectMeta {
  name: string;
  namespace: string;
  uid: string;
  generation?: number;
  resourceVersion?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  deletionTimestamp?: string;
}

export interface RegistryMirror {
  apiVersion: typeof API_VERSION;
  kind: typeof KIND;
  metadata: ObjectMeta;
  spec: RegistryMirrorSpec;
  status?: RegistryMirrorStatus;
}

/** A Kubernetes object as the operator renders it: plain JSON, ready for server-side apply. */
export interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    ownerReferences?: OwnerReference[];
  };
  [field: string]: unknown;
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller: boolean;
  blockOwnerDeletion: boolean;
}

/** What the credentials Secret holds, as far as rendering needs to know. Never the values. */
export type CredentialsForm =
  | { form: 'dockerconfigjson'; hash: string }
  | { form: 'basic'; hash: string };

/** The S3 credentials Secret holds both keys the mirror reads; its data hash. Never the values. */
export interface S3CredentialsForm {
  hash: string;
}

/** Which client-auth keys the auth Secret holds (checked, never the values) and its data hash. */
export interface AuthForm {
  keys: Array<'htpasswd' | 'tokens'>;
  hash: string;
}

export function keyOf(obj: { metadata?: { namespace?: string; name?: string } }): string {
  return `${obj.metadata?.namespace ?? ''}/${obj.metadata?.name ?? ''}`;
}

export function splitKey(key: string): { namespace: string; name: string } {
  const i = key.indexOf('/');
  return { namespace: key.slice(0, i), name: key.slice(i + 1) };
}
