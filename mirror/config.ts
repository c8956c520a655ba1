// The mirror's configuration: YAML (every key optional) merged over the embedded default,
// then MIRROR_* environment overrides. Parsing is pure; a bad value raises ConfigError naming
// the key so start-up can fail with one clear line.

import { parse as parseYaml } from 'yaml';
import { parseBytes, parseDuration } from './duration.js';
import { isValidName, isValidRegistryHost } from './reference.js';
import { patternListProblems } from './access/patterns.js';

export interface UpstreamConfig {
  /** The registry host clients use for it (the key in `upstreams`, containerd's ?ns=). */
  name: string;
  url: string;
  username?: string;
  password?: string;
  usernameFile?: string;
  passwordFile?: string;
  /** A docker config.json (what a kubernetes.io/dockerconfigjson Secret mounts). */
  credentialsFile?: string;
  /** Repository patterns (access/patterns.ts): only these names, and never the denied ones. */
  allow?: string[];
  deny?: string[];
  /** This upstream's own circuit breaker thresholds, over `upstreamBreaker` (upstreamBreakerFor). */
  breaker?: Partial<BreakerConfig>;
}

/** A circuit breaker's thresholds (upstream/circuit-breaker.ts). */
export interface BreakerConfig {
  /** Failed requests in a row (each after its retries) that open it; 0 = no breaker. */
  failures: number;
  /** How long it stays open before one probe request goes through. */
  openForMs: number;
}

export interface MirrorConfig {
  listen: { host: string; port: number };
  logLevel: string;
  /** With s3, the cache lives in the bucket and `path` holds only downloads in flight. */
  storage: { path: string; maxBytes: number; s3?: S3StorageConfig };
  /** notFoundTTLMs: how long an upstream 404 for a manifest is remembered (0 = never). */
  cache: { ttlMs: number; tagTTLMs: number; notFoundTTLMs: number };
  defaultUpstream: string;
  upstreams: Record<string, UpstreamConfig>;
  /** The legacy v1 API; sourceIndex (for /v1/repositories/<name>/images) defaults to source. */
  v1: { enabled: boolean; source: string; tagsCacheTTLMs: number; sourceIndex?: string; allow?: string[]; deny?: string[] };
  /** Client authentication (access/client-auth.ts); absent = every client may pull. */
  auth?: { htpasswdFile?: string; tokensFile?: string; protectMetrics: boolean };
  /** Per-request limits towards every upstream and the v1 source. */
  upstreamTimeouts: UpstreamTimeouts;
  /** Retries of idempotent upstream requests (see upstream/retry.ts). */
  upstreamRetries: { attempts: number; backoffMs: number; maxDelayMs: number };
  /** The circuit breaker of every upstream (and the v1 source) unless an upstream sets its own. */
  upstreamBreaker: BreakerConfig;
  /** Bounds on client connections (client-connections.ts). */
  clientTimeouts: ClientTimeouts;
  limits: { maxConnections: number };
  /** After SIGTERM: /readyz says 503 but new connections are still served this long, so a
   * Service stops routing here before the listener closes (0 = close at once). */
  shutdownDelayMs: number;
  /** Images pulled at start and again when their tag moves (prefetch.ts); empty = none. */
  prefetch: PrefetchConfig[];
  /** Replicas on one shared store (storage.s3): who the peers are (cluster/peers.ts). */
  cluster?: ClusterConfig;
  /** HTTPS instead of plain HTTP (tls/serving.ts); absent = plain HTTP. */
  tls?: TlsConfig;
}

/** `tls`: the serving certificate, and optionally client and peer CAs, all PEM files. */
export interface TlsConfig {
  certFile: string;
  keyFile: string;
  /** Client certificates that verify against this CA authenticate their requests (access/client-auth.ts). */
  clientCAFile?: string;
  /** The CA peers' serving certificates verify against (cluster/forward.ts); required with `cluster`. */
  peerCAFile?: string;
  /** How often the files are checked for new content (a rotated Secret). */
  reloadIntervalMs: number;
}

export interface ClusterConfig {
  /** A DNS name whose A/AAAA records are the peers (a headless Service), or a fixed list. */
  peers: { dns: string; port: number } | { static: string[] };
  /** This process as its peers reach it, host:port (env MIRROR_CLUSTER_SELF, from the pod IP). */
  self: string;
  /** How often the DNS name is resolved again. */
  refreshMs: number;
}

/** One `prefetch` entry, parsed: the image split into upstream, repository and reference. */
export interface PrefetchConfig {
  /** The reference as written (what status and metrics name it by). */
  image: string;
  /** The upstream key (the reference's registry host). */
  upstream: string;
  /** Repository as written after the host (Docker Hub's library/ is applied at routing). */
  repository: string;
  /** A tag, or a digest (sha256:...); a digest is never re-checked. */
  reference: string;
  /** os/arch[/variant]; empty = every platform of an index. */
  platforms: string[];
  pin: boolean;
}

/** Bounds on `prefetch`: entries, platforms per entry, length of a reference. */
export const prefetchLimits = { entries: 100, platforms: 16, imageLength: 512 };
/**
 * storage.maxBytes, when set, must leave at least this much per pinned image: a bound smaller
 * than that cannot hold any real image pinned. The runtime check (prefetch.ts) refuses a pin
 * once pinned content would pass 90% of storage.maxBytes.
 */
export const pinMinBytesPerImage = 1 << 20;
const platformPattern = /^[a-z0-9]+\/[a-z0-9_]+(?:\/[a-z0-9_.]+)?$/;

export interface ClientTimeouts {
  /** A connection with no request in flight (one that never sent a byte included) is closed after this. */
  idleMs: number;
  /** A response whose socket accepts no bytes for this long (the client stopped reading) is cut. */
  writeMs: number;
}

export interface UpstreamTimeouts {
  /** TCP (and TLS) connection set-up. */
  connectMs: number;
  /** From the request sent to the response headers. */
  headersMs: number;
  /** Longest pause between two body chunks: a stalled transfer is aborted. */
  idleMs: number;
}

/** storage.s3: the cache in an S3-compatible bucket (store/drivers/s3-driver.ts). */
export interface S3StorageConfig {
  bucket: string;
  /** http(s) URL of the service; absent = AWS. */
  endpoint?: string;
  region: string;
  /** '' or segments without leading or trailing '/': objects live at <prefix>/<key>. */
  prefix: string;
  forcePathStyle: boolean;
  /** Inline keys, or files read at start; neither = the AWS SDK's default chain (env, IRSA, Pod Identity). */
  accessKeyId?: string;
  secretAccessKey?: string;
  accessKeyIdFile?: string;
  secretAccessKeyFile?: string;
  /** Warm blob GETs answer 307 to a presigned URL. */
  redirect: boolean;
  presignTTLMs: number;
  partSize: number;
  /** Multipart uploads under the prefix older than this are abandoned (a killed process): aborted. */
  uploadExpiryMs: number;
}

/** S3's own bounds on a multipart part (5 MiB..5 GiB, the last part excepted). */
export const s3PartSizeBounds = { min: 5 * 2 ** 20, max: 5 * 2 ** 30 };
/** SigV4 presigned URLs live at most 7 days. */
const presignTTLMaxMs = 7 * 24 * 3_600_000;

export class ConfigError extends Error {
  constructor(readonly key: string, message: string) {
    super(`config: ${key}: ${message}`);
    this.name = 'ConfigError';
  }
}

export const embeddedDefault = {
  listen: '0.0.0.0:5000',
  logLevel: 'info',
  storage: { path: './data', maxBytes: 0 },
  s3: { region: 'us-east-1', presignTTL: '20m', partSize: '16Mi', uploadExpiry: '24h' },
  cache: { ttl: '168h', tagTTL: '5m', notFoundTTL: '15s' },
  defaultUpstream: 'docker.io',
  upstreams: { 'docker.io': { url: 'https://registry-1.docker.io' } },
  v1: { enabled: true, source: 'https://index.docker.io', tagsCacheTTL: '48h' },
  upstreamTimeouts: { connect: '10s', headers: '30s', idle: '60s' },
  upstreamRetries: { attempts: 3, backoff: '200ms', maxDelay: '5s' },
  upstreamBreaker: { failures: 3, openFor: '10s' },
  clientTimeouts: { idle: '60s', write: '60s' },
  limits: { maxConnections: 1024 },
  shutdownDelay: '0s',
};

const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const topKeys = ['listen', 'logLevel', 'storage', 'cache', 'defaultUpstream', 'upstreams', 'v1', 'upstreamTimeouts', 'upstreamRetries', 'upstreamBreaker', 'clientTimeouts', 'limits', 'shutdownDelay', 'auth', 'prefetch', 'cluster', 'tls'];
/** upstreamBreaker.failures: at most this many failed requests in a row. */
const breakerFailuresBound = 100;
/** limits.maxConnections: the listener's hard ceiling is twice this (client-connections.ts). */
const maxConnectionsBound = 100_000;
const upstreamKeys = ['url', 'username', 'password', 'usernameFile', 'passwordFile', 'credentialsFile', 'allow', 'deny', 'breaker'];
const breakerKeys = ['failures', 'openFor'];

type Env = Record<string, string | undefined>;
type Obj = Record<string, unknown>;

export function parseConfigText(text: string, env: Env = {}): MirrorConfig {
  let doc: unknown;
  try {
    doc = parseYaml(text) ?? {};
  } catch (err) {
    throw new ConfigError('(file)', `not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  return parseConfig(doc, env);
}

export function parseConfig(doc: unknown, env: Env = {}): MirrorConfig {
  const user = object(doc, '(root)');
  unknownKeys(user, topKeys, '');
  const storage = object(user.storage ?? {}, 'storage');
  const cache = object(user.cache ?? {}, 'cache');
  const v1 = object(user.v1 ?? {}, 'v1');
  unknownKeys(storage, ['path', 'maxBytes', 's3'], 'storage.');
  unknownKeys(cache, ['ttl', 'tagTTL', 'notFoundTTL'], 'cache.');
  unknownKeys(v1, ['enabled', 'source', 'sourceIndex', 'tagsCacheTTL', 'allow', 'deny'], 'v1.');
  const timeouts = object(user.upstreamTimeouts ?? {}, 'upstreamTimeouts');
  const retries = object(user.upstreamRetries ?? {}, 'upstreamRetries');
  unknownKeys(timeouts, ['connect', 'headers', 'idle'], 'upstreamTimeouts.');
  unknownKeys(retries, ['attempts', 'backoff', 'maxDelay'], 'upstreamRetries.');
  const breaker = object(user.upstreamBreaker ?? {}, 'upstreamBreaker');
  unknownKeys(breaker, breakerKeys, 'upstreamBreaker.');
  const clientTimeouts = object(user.clientTimeouts ?? {}, 'clientTimeouts');
  const limits = object(user.limits ?? {}, 'limits');
  unknownKeys(clientTimeouts, ['idle', 'write'], 'clientTimeouts.');
  unknownKeys(limits, ['maxConnections'], 'limits.');

  // A user who lists upstreams replaces the embedded docker.io entry rather than merging with
  // it, so a private-registry mirror never silently proxies Docker Hub too.
  const rawUpstreams = object(user.upstreams ?? embeddedDefault.upstreams, 'upstreams');
  const defaultUpstream = str(
    env.MIRROR_DEFAULTUPSTREAM ?? user.defaultUpstream ?? firstKeyOr(rawUpstreams, embeddedDefault.defaultUpstream),
    'defaultUpstream',
  );

  const upstreams: Record<string, UpstreamConfig> = {};
  for (const [name, value] of Object.entries(rawUpstreams)) {
    upstreams[name] = parseUpstream(name, value);
  }
  if (env.MIRROR_UPSTREAM_URL !== undefined || !upstreams[defaultUpstream]) {
    if (env.MIRROR_UPSTREAM_URL === undefined) {
      throw new ConfigError('defaultUpstream', `"${defaultUpstream}" is not a key of upstreams`);
    }
    const { name: _name, ...existing } = upstreams[defaultUpstream] ?? { name: defaultUpstream };
    upstreams[defaultUpstream] = parseUpstream(defaultUpstream, { ...existing, url: env.MIRROR_UPSTREAM_URL });
  }
  const d = upstreams[defaultUpstream]!;
  if (env.MIRROR_UPSTREAM_USERNAME !== undefined) d.username = env.MIRROR_UPSTREAM_USERNAME;
  if (env.MIRROR_UPSTREAM_PASSWORD !== undefined) d.password = env.MIRROR_UPSTREAM_PASSWORD;

  const maxBytes = bytes(env.MIRROR_STORAGE_MAXBYTES ?? storage.maxBytes ?? 0, 'storage.maxBytes');
  const prefetch = parsePrefetch(user.prefetch ?? [], upstreams, maxBytes);

  const logLevel = str(env.MIRROR_LOGLEVEL ?? user.logLevel ?? embeddedDefault.logLevel, 'logLevel');
  if (!logLevels.includes(logLevel)) throw new ConfigError('logLevel', `must be one of ${logLevels.join(', ')}`);

  return {
    listen: listenAddress(str(env.MIRROR_LISTEN ?? user.listen ?? embeddedDefault.listen, 'listen')),
    logLevel,
    storage: {
      path: nonEmpty(env.MIRROR_STORAGE_PATH ?? storage.path ?? embeddedDefault.storage.path, 'storage.path'),
      maxBytes,
      ...(storage.s3 !== undefined ? { s3: parseS3(storage.s3) } : {}),
    },
    cache: {
      ttlMs: duration(env.MIRROR_CACHE_TTL ?? cache.ttl ?? embeddedDefault.cache.ttl, 'cache.ttl'),
      tagTTLMs: duration(env.MIRROR_CACHE_TAGTTL ?? cache.tagTTL ?? embeddedDefault.cache.tagTTL, 'cache.tagTTL'),
      notFoundTTLMs: notFoundTTL(env.MIRROR_CACHE_NOTFOUNDTTL ?? cache.notFoundTTL ?? embeddedDefault.cache.notFoundTTL, 'cache.notFoundTTL'),
    },
    defaultUpstream,
    upstreams,
    v1: {
      enabled: bool(v1.enabled ?? embeddedDefault.v1.enabled, 'v1.enabled'),
      source: url(v1.source ?? embeddedDefault.v1.source, 'v1.source'),
      tagsCacheTTLMs: duration(v1.tagsCacheTTL ?? embeddedDefault.v1.tagsCacheTTL, 'v1.tagsCacheTTL'),
      ...(v1.sourceIndex !== undefined ? { sourceIndex: url(v1.sourceIndex, 'v1.sourceIndex') } : {}),
      // v1 serves Docker Hub's legacy API: without lists of its own it follows the default upstream's.
      ...(v1.allow !== undefined || v1.deny !== undefined
        ? patternLists(v1, 'v1')
        : { ...(d.allow ? { allow: d.allow } : {}), ...(d.deny ? { deny: d.deny } : {}) }),
    },
    ...(user.auth !== undefined ? { auth: parseAuth(user.auth) } : {}),
    upstreamTimeouts: {
      connectMs: limit(timeouts.connect ?? embeddedDefault.upstreamTimeouts.connect, 'upstreamTimeouts.connect'),
      headersMs: limit(timeouts.headers ?? embeddedDefault.upstreamTimeouts.headers, 'upstreamTimeouts.headers'),
      idleMs: limit(timeouts.idle ?? embeddedDefault.upstreamTimeouts.idle, 'upstreamTimeouts.idle'),
    },
    upstreamRetries: {
      attempts: attempts(retries.attempts ?? embeddedDefault.upstreamRetries.attempts, 'upstreamRetries.attempts'),
      backoffMs: limit(retries.backoff ?? embeddedDefault.upstreamRetries.backoff, 'upstreamRetries.backoff'),
      maxDelayMs: limit(retries.maxDelay ?? embeddedDefault.upstreamRetries.maxDelay, 'upstreamRetries.maxDelay'),
    },
    upstreamBreaker: {
      failures: breakerFailures(breaker.failures ?? embeddedDefault.upstreamBreaker.failures, 'upstreamBreaker.failures'),
      openForMs: limit(breaker.openFor ?? embeddedDefault.upstreamBreaker.openFor, 'upstreamBreaker.openFor'),
    },
    clientTimeouts: {
      idleMs: limit(clientTimeouts.idle ?? embeddedDefault.clientTimeouts.idle, 'clientTimeouts.idle'),
      writeMs: limit(clientTimeouts.write ?? embeddedDefault.clientTimeouts.write, 'clientTimeouts.write'),
    },
    limits: {
      maxConnections: connections(limits.maxConnections ?? embeddedDefault.limits.maxConnections, 'limits.maxConnections'),
    },
    shutdownDelayMs: shutdownDelay(user.shutdownDelay ?? embeddedDefault.shutdownDelay, 'shutdownDelay'),
    prefetch,
    ...(user.cluster !== undefined ? { cluster: parseCluster(user.cluster, env, storage.s3 !== undefined) } : {}),
    ...(user.tls !== undefined ? { tls: parseTls(user.tls, user.cluster !== undefined) } : {}),
  };
}

/** tls.reloadInterval bounds: often enough for a rotation to land quickly, never a busy loop. */
export const tlsReloadIntervalBounds = { minMs: 100, maxMs: 3_600_000 };

function parseTls(v: unknown, cluster: boolean): TlsConfig {
  const key = 'tls';
  const o = object(v, key);
  unknownKeys(o, ['certFile', 'keyFile', 'clientCAFile', 'peerCAFile', 'reloadInterval'], `${key}.`);
  if (o.certFile === undefined || o.keyFile === undefined) {
    throw new ConfigError(o.certFile === undefined ? `${key}.certFile` : `${key}.keyFile`, 'certFile and keyFile are both required (PEM files of the serving certificate and its private key)');
  }
  const tls: TlsConfig = {
    certFile: nonEmpty(o.certFile, `${key}.certFile`),
    keyFile: nonEmpty(o.keyFile, `${key}.keyFile`),
    reloadIntervalMs: duration(o.reloadInterval ?? '5s', `${key}.reloadInterval`),
  };
  const { minMs, maxMs } = tlsReloadIntervalBounds;
  if (tls.reloadIntervalMs < minMs || tls.reloadIntervalMs > maxMs) throw new ConfigError(`${key}.reloadInterval`, 'must be from 100ms to 1h');
  if (o.clientCAFile !== undefined) tls.clientCAFile = nonEmpty(o.clientCAFile, `${key}.clientCAFile`);
  if (o.peerCAFile !== undefined) tls.peerCAFile = nonEmpty(o.peerCAFile, `${key}.peerCAFile`);
  // Replicas reach each other over https: without a CA to check them a forward could be
  // answered by anything on the pod network.
  if (cluster && tls.peerCAFile === undefined) throw new ConfigError(`${key}.peerCAFile`, 'is required with cluster: peers are reached over https and their certificates are checked against it');
  return tls;
}

/**
 * A timeout or wait: a duration above 0 and at most 1h. 0 would switch undici's timeouts off
 * (a stalled upstream would hold a client forever), and timers past 2^31 ms fire at once.
 */
function limit(v: unknown, key: string): number {
  const ms = duration(v, key);
  if (ms <= 0 || ms > 3_600_000) throw new ConfigError(key, `"${String(v)}" must be above 0 and at most 1h`);
  return ms;
}

/**
 * cache.notFoundTTL: 0 (off) up to 1h. A remembered 404 hides a tag pushed meanwhile for this
 * long, so it is meant to be seconds; an hour is already far past any use.
 */
function notFoundTTL(v: unknown, key: string): number {
  const ms = duration(v, key);
  if (ms > 3_600_000) throw new ConfigError(key, `"${String(v)}" must be at most 1h (0 turns it off)`);
  return ms;
}

/**
 * shutdownDelay: 0 up to 1m. kube-proxy and endpoint controllers take a few seconds to stop
 * sending new connections to a terminating pod; longer only delays every rollout.
 */
function shutdownDelay(v: unknown, key: string): number {
  const ms = duration(v, key);
  if (ms > 60_000) throw new ConfigError(key, `"${String(v)}" must be at most 1m (0 closes at once)`);
  return ms;
}

/** A count of failed requests in a row: 0 (the breaker off) to breakerFailuresBound. */
function breakerFailures(v: unknown, key: string): number {
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > breakerFailuresBound) {
    throw new ConfigError(key, `"${String(v)}" must be a whole number of failed requests from 1 to ${breakerFailuresBound}, or 0 to turn the breaker off`);
  }
  return n;
}

/** An upstream's `breaker` override: either key, each checked as in upstreamBreaker. */
function parseBreakerOverride(v: unknown, key: string): Partial<BreakerConfig> {
  const o = object(v, key);
  unknownKeys(o, breakerKeys, `${key}.`);
  const out: Partial<BreakerConfig> = {};
  if (o.failures !== undefined) out.failures = breakerFailures(o.failures, `${key}.failures`);
  if (o.openFor !== undefined) out.openForMs = limit(o.openFor, `${key}.openFor`);
  return out;
}

/** The breaker thresholds an upstream runs with: its own `breaker` keys over `upstreamBreaker`. */
export function upstreamBreakerFor(config: Pick<MirrorConfig, 'upstreamBreaker'>, upstream: UpstreamConfig): BreakerConfig {
  return { ...config.upstreamBreaker, ...upstream.breaker };
}

function attempts(v: unknown, key: string): number {
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 10) {
    throw new ConfigError(key, `"${String(v)}" must be a whole number of tries from 1 (no retries) to 10`);
  }
  return n;
}

/** A count of concurrent client connections: a whole number from 1 to maxConnectionsBound. */
function connections(v: unknown, key: string): number {
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > maxConnectionsBound) {
    throw new ConfigError(key, `"${String(v)}" must be a whole number of connections from 1 to ${maxConnectionsBound}`);
  }
  return n;
}

function parseUpstream(name: string, value: unknown): UpstreamConfig {
  const key = `upstreams.${name}`;
  if (!isValidRegistryHost(name)) throw new ConfigError(key, 'the key must be a registry host such as docker.io or ghcr.io');
  const o = object(value, key);
  unknownKeys(o, upstreamKeys, `${key}.`);
  const u: UpstreamConfig = { name, url: url(o.url, `${key}.url`) };
  for (const k of ['username', 'password', 'usernameFile', 'passwordFile', 'credentialsFile'] as const) {
    if (o[k] !== undefined) u[k] = nonEmpty(o[k], `${key}.${k}`);
  }
  if ((u.username === undefined) !== (u.password === undefined)) {
    throw new ConfigError(`${key}.username`, 'username and password go together');
  }
  if ((u.usernameFile === undefined) !== (u.passwordFile === undefined)) {
    throw new ConfigError(`${key}.usernameFile`, 'usernameFile and passwordFile go together');
  }
  Object.assign(u, patternLists(o, key));
  if (o.breaker !== undefined) u.breaker = parseBreakerOverride(o.breaker, `${key}.breaker`);
  return u;
}

const s3Keys = ['bucket', 'endpoint', 'region', 'prefix', 'forcePathStyle', 'accessKeyId', 'secretAccessKey', 'accessKeyIdFile', 'secretAccessKeyFile', 'redirect', 'presignTTL', 'partSize', 'uploadExpiry'];

function parseS3(v: unknown): S3StorageConfig {
  const key = 'storage.s3';
  const o = object(v, key);
  unknownKeys(o, s3Keys, `${key}.`);
  const bucket = nonEmpty(o.bucket, `${key}.bucket`);
  // S3's bucket naming rules (3-63 of a-z 0-9 . -), which every S3-compatible service takes.
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) throw new ConfigError(`${key}.bucket`, `"${bucket}" is not a valid bucket name`);
  const prefix = o.prefix === undefined ? '' : str(o.prefix, `${key}.prefix`);
  const badSegment = prefix.split('/').some((seg) => seg === '.' || seg === '..');
  if (prefix !== '' && (!/^[A-Za-z0-9._-]+(?:\/[A-Za-z0-9._-]+)*$/.test(prefix) || badSegment)) {
    throw new ConfigError(`${key}.prefix`, 'must be path segments of A-Z a-z 0-9 . _ - without a leading or trailing "/"');
  }
  const d = embeddedDefault.s3;
  const c: S3StorageConfig = {
    bucket,
    region: nonEmpty(o.region ?? d.region, `${key}.region`),
    prefix,
    forcePathStyle: bool(o.forcePathStyle ?? false, `${key}.forcePathStyle`),
    redirect: bool(o.redirect ?? false, `${key}.redirect`),
    presignTTLMs: duration(o.presignTTL ?? d.presignTTL, `${key}.presignTTL`),
    partSize: bytes(o.partSize ?? d.partSize, `${key}.partSize`),
    uploadExpiryMs: duration(o.uploadExpiry ?? d.uploadExpiry, `${key}.uploadExpiry`),
  };
  if (o.endpoint !== undefined) c.endpoint = url(o.endpoint, `${key}.endpoint`);
  if (c.presignTTLMs < 1000 || c.presignTTLMs > presignTTLMaxMs) throw new ConfigError(`${key}.presignTTL`, 'must be from 1s to 168h (SigV4 presigned URLs live at most 7 days)');
  if (c.partSize < s3PartSizeBounds.min || c.partSize > s3PartSizeBounds.max) throw new ConfigError(`${key}.partSize`, 'must be from 5Mi to 5Gi (S3 multipart bounds)');
  // Keep it longer than any upload could take: a shorter one aborts uploads other processes
  // on the bucket are still running (they then serve that blob uncached). 1s is for tests.
  if (c.uploadExpiryMs < 1000) throw new ConfigError(`${key}.uploadExpiry`, 'must be at least 1s');
  for (const k of ['accessKeyId', 'secretAccessKey', 'accessKeyIdFile', 'secretAccessKeyFile'] as const) {
    if (o[k] !== undefined) c[k] = nonEmpty(o[k], `${key}.${k}`);
  }
  if ((c.accessKeyId === undefined) !== (c.secretAccessKey === undefined)) throw new ConfigError(`${key}.accessKeyId`, 'accessKeyId and secretAccessKey go together');
  if ((c.accessKeyIdFile === undefined) !== (c.secretAccessKeyFile === undefined)) throw new ConfigError(`${key}.accessKeyIdFile`, 'accessKeyIdFile and secretAccessKeyFile go together');
  if (c.accessKeyId !== undefined && c.accessKeyIdFile !== undefined) throw new ConfigError(`${key}.accessKeyId`, 'inline keys and key files exclude each other');
  return c;
}

/** A fleet of at most this many peers: each request hashes over all of them. */
export const clusterPeersBound = 64;

function parseCluster(v: unknown, env: Env, shared: boolean): ClusterConfig {
  const key = 'cluster';
  const o = object(v, key);
  unknownKeys(o, ['peers', 'self', 'refresh'], `${key}.`);
  // Replicas share what they cache through the bucket; a directory store is one process's.
  if (!shared) throw new ConfigError(key, 'needs storage.s3: replicas share one bucket (a directory store serves one process)');
  const peers = object(o.peers ?? {}, `${key}.peers`);
  unknownKeys(peers, ['dns', 'port', 'static'], `${key}.peers.`);
  const self = hostPort(env.MIRROR_CLUSTER_SELF ?? o.self, `${key}.self`);
  let source: ClusterConfig['peers'];
  if (peers.static !== undefined) {
    if (peers.dns !== undefined) throw new ConfigError(`${key}.peers`, 'dns and static exclude each other');
    if (!Array.isArray(peers.static) || peers.static.length === 0) throw new ConfigError(`${key}.peers.static`, 'must be a non-empty list of host:port');
    if (peers.static.length > clusterPeersBound) throw new ConfigError(`${key}.peers.static`, `at most ${clusterPeersBound} peers`);
    source = { static: peers.static.map((p, i) => hostPort(p, `${key}.peers.static[${i}]`)) };
  } else {
    const dns = nonEmpty(peers.dns, `${key}.peers.dns`);
    if (!/^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?$/i.test(dns) || dns.length > 253) throw new ConfigError(`${key}.peers.dns`, `"${dns}" is not a DNS name`);
    const port = Number(peers.port ?? 5000);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new ConfigError(`${key}.peers.port`, 'must be a port number');
    source = { dns, port };
  }
  const refreshMs = duration(o.refresh ?? '5s', `${key}.refresh`);
  if (refreshMs < 100 || refreshMs > 3_600_000) throw new ConfigError(`${key}.refresh`, 'must be from 100ms to 1h');
  return { peers: source, self, refreshMs };
}

/**
 * host:port with an IPv4, a [IPv6] or a DNS host, as peers dial it. An unbracketed IPv6
 * (Kubernetes' $(POD_IP):5000 on an IPv6 pod) is split at its last colon and bracketed.
 */
function hostPort(v: unknown, key: string): string {
  let s = nonEmpty(v, key);
  const colons = s.split(':').length - 1;
  if (colons > 1 && !s.startsWith('[')) s = `[${s.slice(0, s.lastIndexOf(':'))}]${s.slice(s.lastIndexOf(':'))}`;
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(s);
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) throw new ConfigError(key, `"${s}" is not host:port`);
  return s;
}

function object(v: unknown, key: string): Obj {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new ConfigError(key, 'must be a mapping');
  return v as Obj;
}

function unknownKeys(o: Obj, known: string[], prefix: string): void {
  for (const k of Object.keys(o)) {
    if (!known.includes(k)) throw new ConfigError(`${prefix}${k}`, `unknown key (known: ${known.join(', ')})`);
  }
}

function str(v: unknown, key: string): string {
  if (typeof v !== 'string') throw new ConfigError(key, 'must be a string');
  return v;
}

function nonEmpty(v: unknown, key: string): string {
  const s = str(v, key);
  if (s.length === 0) throw new ConfigError(key, 'must not be empty');
  return s;
}

function bool(v: unknown, key: string): boolean {
  if (typeof v === 'boolean') return v;
  if (v === 'true' || v === 'false') return v === 'true';
  throw new ConfigError(key, 'must be true or false');
}

function duration(v: unknown, key: string): number {
  const ms = typeof v === 'string' ? parseDuration(v) : undefined;
  if (ms === undefined) throw new ConfigError(key, `"${String(v)}" is not a duration such as 168h, 5m or 30s`);
  return ms;
}

function bytes(v: unknown, key: string): number {
  const n = parseBytes(typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v);
  if (n === undefined) throw new ConfigError(key, `"${String(v)}" is not a byte count such as 10737418240 or 10Gi`);
  return n;
}

function url(v: unknown, key: string): string {
  const s = nonEmpty(v, key);
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw new ConfigError(key, `"${s}" is not a URL`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new ConfigError(key, 'must be an http:// or https:// URL');
  if (u.username || u.password) throw new ConfigError(key, 'must not carry credentials; use username/password or credentialsFile');
  return s.replace(/\/+$/, '');
}

function listenAddress(s: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:]*)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new ConfigError('listen', `"${s}" is not host:port such as 0.0.0.0:5000`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

function firstKeyOr(o: Obj, fallback: string): string {
  return Object.keys(o)[0] ?? fallback;
}

/** allow/deny lists of repository patterns under `key`; omitted lists stay undefined. */
function patternLists(o: Obj, key: string): { allow?: string[]; deny?: string[] } {
  const out: { allow?: string[]; deny?: string[] } = {};
  for (const k of ['allow', 'deny'] as const) {
    if (o[k] === undefined) continue;
    const problems = patternListProblems(o[k], `${key}.${k}`);
    if (problems.length > 0) throw new ConfigError(problems[0]!.key, problems[0]!.problem);
    out[k] = [...(o[k] as string[])];
  }
  return out;
}

function parseAuth(v: unknown): NonNullable<MirrorConfig['auth']> {
  const o = object(v, 'auth');
  unknownKeys(o, ['htpasswdFile', 'tokensFile', 'protectMetrics'], 'auth.');
  const auth: NonNullable<MirrorConfig['auth']> = { protectMetrics: bool(o.protectMetrics ?? false, 'auth.protectMetrics') };
  if (o.htpasswdFile !== undefined) auth.htpasswdFile = nonEmpty(o.htpasswdFile, 'auth.htpasswdFile');
  if (o.tokensFile !== undefined) auth.tokensFile = nonEmpty(o.tokensFile, 'auth.tokensFile');
  if (!auth.htpasswdFile && !auth.tokensFile) throw new ConfigError('auth', 'needs htpasswdFile, tokensFile or both');
  return auth;
}

/**
 * `prefetch`: a list of {image, platforms?, pin?}. An image is <upstream key>/<repository>
 * followed by :tag or @digest (no default tag: an implicit "latest" is rarely what is meant),
 * and its registry host must be a configured upstream: the mirror contacts no other host.
 */
export function parsePrefetch(v: unknown, upstreams: Record<string, UpstreamConfig>, maxBytes: number): PrefetchConfig[] {
  if (!Array.isArray(v)) throw new ConfigError('prefetch', 'must be a list of {image, platforms, pin}');
  if (v.length > prefetchLimits.entries) throw new ConfigError('prefetch', `has ${v.length} entries; at most ${prefetchLimits.entries} are allowed`);
  const out: PrefetchConfig[] = [];
  const seen = new Set<string>();
  v.forEach((item, i) => {
    const key = `prefetch[${i}]`;
    const o = object(item, key);
    unknownKeys(o, ['image', 'platforms', 'pin'], `${key}.`);
    const image = nonEmpty(o.image, `${key}.image`);
    if (image.length > prefetchLimits.imageLength) throw new ConfigError(`${key}.image`, `is longer than ${prefetchLimits.imageLength} characters`);
    const slash = image.indexOf('/');
    const host = slash > 0 ? image.slice(0, slash) : '';
    if (!host || !upstreams[host]) {
      throw new ConfigError(`${key}.image`, `must start with the registry host of a configured upstream (${Object.keys(upstreams).join(', ')}), e.g. ${Object.keys(upstreams)[0] ?? 'docker.io'}/library/nginx:1.27`);
    }
    const rest = image.slice(slash + 1);
    const at = rest.indexOf('@');
    let repository: string;
    let reference: string;
    if (at >= 0) {
      repository = rest.slice(0, at);
      reference = rest.slice(at + 1);
      if (!/^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/.test(reference)) throw new ConfigError(`${key}.image`, 'has a digest that is not sha256:<64 hex> or sha512:<128 hex>');
    } else {
      const colon = rest.lastIndexOf(':');
      if (colon < 0) throw new ConfigError(`${key}.image`, 'needs a tag or a digest (name:tag or name@sha256:...)');
      repository = rest.slice(0, colon);
      reference = rest.slice(colon + 1);
      if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(reference)) throw new ConfigError(`${key}.image`, 'has an invalid tag');
    }
    if (!isValidName(repository)) throw new ConfigError(`${key}.image`, 'has an invalid repository name (lower-case path components)');
    if (seen.has(image)) throw new ConfigError(`${key}.image`, 'is listed twice');
    seen.add(image);
    const rawPlatforms = o.platforms ?? [];
    if (!Array.isArray(rawPlatforms)) throw new ConfigError(`${key}.platforms`, 'must be a list such as [linux/amd64, linux/arm64/v8]');
    if (rawPlatforms.length > prefetchLimits.platforms) throw new ConfigError(`${key}.platforms`, `has more than ${prefetchLimits.platforms} entries`);
    const platforms = rawPlatforms.map((p, j) => {
      if (typeof p !== 'string' || !platformPattern.test(p)) throw new ConfigError(`${key}.platforms[${j}]`, 'must be os/arch or os/arch/variant, e.g. linux/amd64');
      return p;
    });
    out.push({ image, upstream: host, repository, reference, platforms, pin: bool(o.pin ?? false, `${key}.pin`) });
  });
  const pinned = out.filter((p) => p.pin).length;
  if (pinned > 0 && maxBytes > 0 && maxBytes < pinned * pinMinBytesPerImage) {
    const i = out.findIndex((p) => p.pin);
    throw new ConfigError(`prefetch[${i}].pin`, `${pinned} pinned image(s) cannot fit in storage.maxBytes ${maxBytes}: pinning needs at least ${pinMinBytesPerImage} bytes per pinned image`);
  }
  return out;
}
