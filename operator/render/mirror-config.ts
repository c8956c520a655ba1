// The mirror server's config (DESIGN.md §3 "Mirror config") for one RegistryMirror. Pure.
import { ConfigError, parseConfigText } from '../../mirror/config.js';
import type { ResolvedSpec } from '../spec.js';
import type { AuthForm, CredentialsForm } from '../types.js';
import { MIRROR_PORT } from '../types.js';
import { MOUNT } from './names.js';

/**
 * After SIGTERM a mirror pod keeps serving this long with /readyz at 503: kube-proxy on every
 * node needs a moment to drop the endpoint, and a connection refused meanwhile sends
 * containerd around the mirror to the upstream. The Deployment's grace period covers it.
 */
export const MIRROR_SHUTDOWN_DELAY = '5s';

/** Share of the volume the mirror may fill; the rest is headroom for temp files and the fs. */
export const STORAGE_FILL_RATIO = 0.9;

export interface MirrorConfig {
  listen: string;
  logLevel: string;
  shutdownDelay: string;
  storage: { path: string; maxBytes: number; s3?: MirrorS3Config };
  cache: { ttl: string; tagTTL: string };
  defaultUpstream: string;
  upstreams: Record<
    string,
    { url: string; credentialsFile?: string; usernameFile?: string; passwordFile?: string; allow?: string[]; deny?: string[] }
  >;
  v1: { enabled: boolean; source: string; tagsCacheTTL: string };
  auth?: { htpasswdFile?: string; tokensFile?: string; protectMetrics: boolean };
  prefetch?: Array<{ image: string; platforms?: string[]; pin: boolean }>;
  cluster?: MirrorClusterConfig;
  tls?: MirrorTlsConfig;
}

/**
 * The `tls` section (spec.tls not disabled): files the Deployment mounts; the mirror re-reads
 * them when they change, so a renewed certificate needs no restart.
 *  - clientCAFile with spec.auth: the operator's CA, which signs the nodes' client
 *    certificates (a node then pulls as cert:node:<name>; others still use basic/bearer);
 *  - peerCAFile in a fleet (spec.storage.s3): the CA the replicas check each other against.
 */
export interface MirrorTlsConfig {
  certFile: string;
  keyFile: string;
  clientCAFile?: string;
  peerCAFile?: string;
}

/** The keys of the <name>-ca ConfigMap. */
export const CA_BUNDLE_KEY = 'ca.crt';
export const CLIENT_CA_KEY = 'client-ca.crt';

export function renderTls(spec: ResolvedSpec): MirrorTlsConfig | undefined {
  if (spec.tls.mode === 'disabled') return undefined;
  return {
    certFile: `${MOUNT.tls}/tls.crt`,
    keyFile: `${MOUNT.tls}/tls.key`,
    ...(spec.auth ? { clientCAFile: `${MOUNT.ca}/${CLIENT_CA_KEY}` } : {}),
    ...(spec.s3 ? { peerCAFile: `${MOUNT.ca}/${CA_BUNDLE_KEY}` } : {}),
  };
}

/**
 * The `cluster` section: how the replicas of one bucket find each other. Rendered whenever
 * the cache is in a bucket (spec.storage.s3), one replica included, so that scaling changes
 * only the Deployment's replica count and never the config (no roll of the running pods).
 * `self` is not in the file: the ConfigMap is shared by every replica, so each pod's own
 * address comes from MIRROR_CLUSTER_SELF (the downward API; see deployment.ts).
 */
export interface MirrorClusterConfig {
  /** dns: the headless Service's name (A records, one per pod); port: the mirror's port on each. */
  peers: { dns: string; port: number };
  /** How often the peer list is resolved again. */
  refresh: string;
}

/** The environment variable that gives a mirror its own address as its peers see it. */
export const CLUSTER_SELF_ENV = 'MIRROR_CLUSTER_SELF';
/** How often the mirrors resolve the peers Service (cluster.refresh). */
export const CLUSTER_REFRESH = '5s';
/**
 * What MIRROR_CLUSTER_SELF holds when the operator checks a rendered config (the real value,
 * the pod's IP, exists only in the pod): an address of TEST-NET-1 (RFC 5737).
 */
const CHECK_SELF = `192.0.2.1:${MIRROR_PORT}`;

/**
 * storage.s3 of the mirror config. Credentials only as files from the mounted Secret, never
 * inline; with neither file the mirror uses the AWS SDK's default chain (the pod's identity).
 */
export interface MirrorS3Config {
  bucket: string;
  endpoint?: string;
  region?: string;
  prefix?: string;
  forcePathStyle?: boolean;
  accessKeyIdFile?: string;
  secretAccessKeyFile?: string;
  redirect?: boolean;
  presignTTL?: string;
  /** Bytes. */
  partSize?: number;
}

/**
 * The mirror's storage bound: 90% of a PVC (the rest is headroom for temp files and the
 * filesystem), all of spec.storage.size in a bucket (its scratch space is an emptyDir of its
 * own), 0 (no bound) on an emptyDir or a bucket without a size.
 */
export function maxBytesFor(spec: ResolvedSpec): number {
  if (spec.s3) return spec.s3.maxBytes;
  return spec.storage ? Math.floor(spec.storage.bytes * STORAGE_FILL_RATIO) : 0;
}

function renderS3(s3: NonNullable<ResolvedSpec['s3']>): MirrorS3Config {
  return {
    bucket: s3.bucket,
    ...(s3.endpoint !== undefined ? { endpoint: s3.endpoint } : {}),
    ...(s3.region !== undefined ? { region: s3.region } : {}),
    ...(s3.prefix !== undefined ? { prefix: s3.prefix } : {}),
    ...(s3.forcePathStyle !== undefined ? { forcePathStyle: s3.forcePathStyle } : {}),
    // The files follow the spec alone (the Deployment mounts the Secret whenever it is named),
    // so a config never silently falls back to the pod's identity.
    ...(s3.credentialsSecret
      ? { accessKeyIdFile: `${MOUNT.s3Credentials}/accessKeyId`, secretAccessKeyFile: `${MOUNT.s3Credentials}/secretAccessKey` }
      : {}),
    ...(s3.redirect !== undefined ? { redirect: s3.redirect } : {}),
    ...(s3.presignTTL !== undefined ? { presignTTL: s3.presignTTL } : {}),
    ...(s3.partSize !== undefined ? { partSize: s3.partSize } : {}),
  };
}

/**
 * peersDns: the peers Service's DNS name (names.ts peersDnsName); with spec.storage.s3 the
 * config gets its `cluster` section from it.
 */
export function renderMirrorConfig(spec: ResolvedSpec, credentials?: CredentialsForm, auth?: AuthForm, peersDns?: string): MirrorConfig {
  const upstream: MirrorConfig['upstreams'][string] = { url: spec.url };
  if (credentials?.form === 'dockerconfigjson') {
    upstream.credentialsFile = `${MOUNT.credentials}/.dockerconfigjson`;
  } else if (credentials?.form === 'basic') {
    upstream.usernameFile = `${MOUNT.credentials}/username`;
    upstream.passwordFile = `${MOUNT.credentials}/password`;
  }
  // v1 has no lists of its own here: the mirror applies the default upstream's to it.
  if (spec.allow) upstream.allow = [...spec.allow];
  if (spec.deny) upstream.deny = [...spec.deny];
  return {
    listen: `0.0.0.0:${MIRROR_PORT}`,
    logLevel: spec.logLevel,
    shutdownDelay: MIRROR_SHUTDOWN_DELAY,
    storage: { path: MOUNT.data, maxBytes: maxBytesFor(spec), ...(spec.s3 ? { s3: renderS3(spec.s3) } : {}) },
    cache: { ttl: spec.ttl, tagTTL: spec.tagTTL },
    defaultUpstream: spec.registry,
    upstreams: { [spec.registry]: upstream },
    v1: { ...spec.v1 },
    ...(spec.auth && auth
      ? {
          auth: {
            ...(auth.keys.includes('htpasswd') ? { htpasswdFile: `${MOUNT.auth}/htpasswd` } : {}),
            ...(auth.keys.includes('tokens') ? { tokensFile: `${MOUNT.auth}/tokens` } : {}),
            protectMetrics: spec.auth.protectMetrics,
          },
        }
      : {}),
    ...(spec.prefetch.length > 0
      ? { prefetch: spec.prefetch.map((p) => ({ image: p.image, ...(p.platforms.length > 0 ? { platforms: [...p.platforms] } : {}), pin: p.pin })) }
      : {}),
    ...(spec.s3 && peersDns ? { cluster: { peers: { dns: peersDns, port: MIRROR_PORT }, refresh: CLUSTER_REFRESH } } : {}),
    ...(spec.tls.mode !== 'disabled' ? { tls: renderTls(spec) } : {}),
  };
}

/**
 * The last check before anything is applied: the rendered config.yaml must be one the mirror
 * itself accepts (its own parser, no environment), or the pods would only crash-loop on it.
 * Returns the mirror's one-line complaint, or undefined.
 */
export function mirrorConfigProblem(configYaml: string): string | undefined {
  // The pods always have MIRROR_CLUSTER_SELF (deployment.ts); the check stands in for it.
  const env = { [CLUSTER_SELF_ENV]: CHECK_SELF };
  try {
    parseConfigText(configYaml, env);
    return undefined;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.message;
  }
}
