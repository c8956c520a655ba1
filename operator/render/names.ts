// Names and labels of the objects a RegistryMirror owns. Stable: renaming any of these orphans
// existing objects, and the Deployment selector can never change after creation.
import type { RegistryMirror } from '../types.js';
import { MIRROR_PORT } from '../types.js';

export const MANAGED_BY = 'registry-mirror-operator';
/** Label selector that matches everything this operator creates (informers filter on it). */
export const MANAGED_SELECTOR = `app.kubernetes.io/managed-by=${MANAGED_BY}`;
export const INSTANCE_LABEL = 'app.kubernetes.io/instance';

export const ANNOTATION = {
  configHash: 'registry-mirror.io/config-hash',
  credentialsHash: 'registry-mirror.io/credentials-hash',
  /** HMAC of the client-auth Secret's data: rotating htpasswd or tokens rolls the pods. */
  authHash: 'registry-mirror.io/auth-hash',
  /** HMAC of the S3 credentials Secret's data (spec.storage.s3.credentialsSecret): rotating the keys rolls the pods. */
  s3CredentialsHash: 'registry-mirror.io/s3-credentials-hash',
  /** Hash of the rendered object itself: apply is skipped while it is unchanged. */
  appliedHash: 'registry-mirror.io/applied-hash',
} as const;

export const MOUNT = {
  config: '/etc/registry-mirror',
  configFile: '/etc/registry-mirror/config.yaml',
  credentials: '/etc/registry-mirror/credentials',
  auth: '/etc/registry-mirror/auth',
  /** The serving certificate (tls.crt, tls.key): the operator's Secret or the user's. */
  tls: '/etc/registry-mirror/tls',
  /** The <name>-ca ConfigMap: ca.crt (peers' CA), client-ca.crt (the CA of node client certificates). */
  ca: '/etc/registry-mirror/ca',
  /** The S3 credentials Secret's accessKeyId and secretAccessKey. */
  s3Credentials: '/etc/registry-mirror/s3',
  /** The cache (PVC or emptyDir), or with S3 only the scratch space for downloads in flight. */
  data: '/var/lib/registry-mirror',
  tmp: '/tmp',
} as const;

export function objectNames(cr: RegistryMirror) {
  const n = cr.metadata.name;
  return {
    deployment: n,
    service: n,
    configMap: `${n}-config`,
    pvc: `${n}-cache`,
    /** spec.storage.s3 only: the headless Service the replicas find each other by. */
    peers: `${n}${PEERS_SUFFIX}`,
    /** spec.storage.s3 only. */
    pdb: n,
    /** spec.tls generated: the serving certificate the operator issues. */
    tlsSecret: `${n}-tls`,
    /** spec.tls not disabled: the CA bundle for clients (key ca.crt). */
    caConfigMap: `${n}-ca`,
  };
}

/** Suffix of the peers Service's name; a Service name is a DNS label, so the RegistryMirror's
 * name may be at most 63 - PEERS_SUFFIX.length characters when it gets one. */
export const PEERS_SUFFIX = '-peers';

/** The peers Service's DNS name, as the mirrors resolve it: <name>-peers.<namespace>.svc */
export function peersDnsName(cr: RegistryMirror): string {
  return `${objectNames(cr).peers}.${cr.metadata.namespace}.svc`;
}

export function selectorLabels(cr: RegistryMirror): Record<string, string> {
  return { 'app.kubernetes.io/name': 'registry-mirror', [INSTANCE_LABEL]: cr.metadata.name };
}

export function commonLabels(cr: RegistryMirror): Record<string, string> {
  return {
    ...selectorLabels(cr),
    'app.kubernetes.io/component': 'mirror',
    'app.kubernetes.io/managed-by': MANAGED_BY,
  };
}

/** What clients (and the node agent, via the ClusterIP) use: https://<name>.<ns>.svc:5000 (http with spec.tls disabled). */
export function endpointOf(cr: RegistryMirror, tls = true): string {
  return `${tls ? 'https' : 'http'}://${objectNames(cr).service}.${cr.metadata.namespace}.svc:${MIRROR_PORT}`;
}

/** The cluster's DNS domain, as kubelet's --cluster-domain has it unless configured otherwise. */
export const DEFAULT_CLUSTER_DOMAIN = 'cluster.local';

/** The Service's DNS names, as a serving certificate lists them (the first is its CN). */
export function serviceDnsNames(cr: RegistryMirror, clusterDomain = DEFAULT_CLUSTER_DOMAIN): string[] {
  const n = objectNames(cr).service;
  const ns = cr.metadata.namespace;
  return [n, `${n}.${ns}`, `${n}.${ns}.svc`, `${n}.${ns}.svc.${clusterDomain}`];
}
