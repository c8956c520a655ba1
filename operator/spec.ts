// Validation of a RegistryMirror's spec and the defaults the operator fills in. The CRD schema
// rejects most bad input at admission; this catches what a schema cannot express (cross-field
// rules, URLs that only look right, registries we cannot default) and turns it into messages
// that tell the user which field to fix. Pure.
//
// The spec is user input and this is the last stop before it becomes a ConfigMap, a Deployment
// and files on nodes, so it is treated as hostile: every string is checked for control
// characters and size, whatever the schema says (an older CRD, or one installed by hand, may
// say less), and a message never repeats a value unescaped, at length, or with the
// credentials of a URL in it.

import { patternListProblems } from '../mirror/access/patterns.js';
import { ConfigError, parsePrefetch } from '../mirror/config.js';
import { STORAGE_FILL_RATIO } from './render/mirror-config.js';
import { PEERS_SUFFIX } from './render/names.js';
import { isDuration, parseDuration } from '../mirror/duration.js';
import { parseQuantity } from './quantity.js';
import type { RegistryMirror } from './types.js';
import { TLS_MODES, type TlsMode } from './types.js';
import { defaultUpstreamUrl, defaultV1Source } from './well-known-registries.js';

/** A spec with every default applied: what render/ works from. */
export interface ResolvedSpec {
  registry: string;
  url: string;
  credentialsSecret?: string;
  /** Repository patterns for the upstream (and v1, which follows it in the mirror config). */
  allow?: string[];
  deny?: string[];
  /** Client authentication: the Secret with htpasswd and/or tokens keys. */
  auth?: { secret: string; protectMetrics: boolean };
  ttl: string;
  tagTTL: string;
  /** PVC size in bytes and its original quantity, or undefined for an emptyDir (or S3). */
  storage?: { quantity: string; bytes: number; storageClassName?: string; retain: boolean };
  /** spec.storage.s3: the cache lives in a bucket; storage (the PVC) is then undefined. */
  s3?: ResolvedS3;
  replicas: number;
  nodeConfig: boolean;
  v1: { enabled: boolean; source: string; tagsCacheTTL: string };
  image?: string;
  logLevel: string;
  resources: { requests: Record<string, string>; limits: Record<string, string> };
  /** spec.prefetch as the mirror config takes it (empty = none). */
  prefetch: Array<{ image: string; platforms: string[]; pin: boolean }>;
  /** spec.tls: generated unless the spec says otherwise; secretName only with mode secret. */
  tls: ResolvedTls;
}

export type ResolvedTls = { mode: 'generated' } | { mode: 'secret'; secretName: string } | { mode: 'disabled' };

/** spec.storage.s3, checked; absent optional fields stay absent (the mirror's defaults apply). */
export interface ResolvedS3 {
  bucket: string;
  endpoint?: string;
  region?: string;
  prefix?: string;
  forcePathStyle?: boolean;
  redirect?: boolean;
  presignTTL?: string;
  /** Part size in bytes. */
  partSize?: number;
  /** Name of the Secret with accessKeyId and secretAccessKey keys. */
  credentialsSecret?: string;
  /** The mirror pods' ServiceAccount (workload identity). */
  serviceAccountName?: string;
  /** spec.storage.size in bytes: the most the mirror keeps in the bucket; 0 = no bound. */
  maxBytes: number;
}

export type SpecResult = { ok: true; spec: ResolvedSpec } | { ok: false; problems: string[] };

export const REGISTRY_PATTERN =
  '^(([a-z0-9]([-a-z0-9]*[a-z0-9])?)(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*|\\[[0-9a-fA-F:]+\\])(:[0-9]{1,5})?$';
const REGISTRY_RE = new RegExp(REGISTRY_PATTERN);
const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'];
const DNS_SUBDOMAIN_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** The Service is named after the RegistryMirror, and a Service name is an RFC 1035 label. */
const DNS_LABEL_RE = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
/** [registry[:port]/]path[:tag][@digest], as the distribution reference grammar has it. */
const IMAGE_RE =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]{1,5})?\/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$/;
/** A resource name: cpu, memory, ephemeral-storage, hugepages-2Mi, example.com/gpu. */
const RESOURCE_NAME_RE = /^(?:[a-z0-9]([-a-z0-9.]*[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

export const MAX_STRING = 2048;
export const MAX_IMAGE = 512;
export const MAX_REPLICAS = 100;
/** Bytes a storage.size may ask for: beyond 2^53 byte counts stop being exact numbers. */
export const MAX_STORAGE_BYTES = Number.MAX_SAFE_INTEGER;
/** S3 multipart limits: every part but the last is at least 5 MiB, none more than 5 GiB. */
export const S3_MIN_PART_SIZE = 5 * 2 ** 20;
export const S3_MAX_PART_SIZE = 5 * 2 ** 30;
/** A SigV4 presigned URL is valid for at most 7 days; below a second it is useless. */
export const S3_MAX_PRESIGN_TTL_MS = 7 * 24 * 3_600_000;
export const S3_MIN_PRESIGN_TTL_MS = 1000;
/** Bucket names as AWS accepts them today (3-63 characters; the pattern in the CRD). */
export const S3_BUCKET_PATTERN = '^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$';
const S3_BUCKET_RE = new RegExp(S3_BUCKET_PATTERN);
/** '/'-separated segments of safe key characters, no leading or trailing '/' (the CRD's pattern). */
export const S3_PREFIX_PATTERN = '^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$';
const S3_PREFIX_RE = new RegExp(S3_PREFIX_PATTERN);
export const S3_REGION_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]*$';
const S3_REGION_RE = new RegExp(S3_REGION_PATTERN);
/** At most this many problems are listed; the status message stays readable. */
const MAX_PROBLEMS = 10;

export const DEFAULT_RESOURCES = {
  requests: { cpu: '100m', memory: '128Mi' },
  limits: { memory: '512Mi' },
};

/**
 * A value as a message may show it: the credentials of anything URL-like cut out, clipped to
 * 64 characters, and JSON-quoted so control characters appear escaped.
 */
export function show(v: unknown): string {
  let s = typeof v === 'string' ? v : String(v);
  s = s.replace(/^([a-z][a-z0-9+.-]*:\/\/)?[^/?#\s]*@/i, (_m, scheme: string | undefined) => `${scheme ?? ''}…@`);
  if (s.length > 64) s = `${s.slice(0, 64)}…`;
  return JSON.stringify(s).replace(/[\u007f-\u009f\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Checks a URL of the spec (upstream, v1 source, S3 endpoint); returns a problem message or undefined. */
export function checkUrl(field: string, raw: string, credentialsHint = 'spec.upstream.credentialsSecret'): string | undefined {
  if (CONTROL_RE.test(raw) || /\s/.test(raw)) return `${field} ${show(raw)} is not a valid URL: it contains spaces or control characters`;
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return `${field} ${show(raw)} is not a valid URL (expected e.g. https://registry.example.com)`;
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') return `${field} ${show(raw)} must use http or https`;
  if (u.username || u.password || /^[a-z]+:\/\/[^/?#]*@/i.test(raw)) {
    return `${field} must not contain credentials; put them in a Secret named by ${credentialsHint}`;
  }
  if (u.search || u.hash || raw.includes('?') || raw.includes('#')) return `${field} ${show(raw)} must not have a query or fragment`;
  if (!u.hostname) return `${field} ${show(raw)} has no host`;
  if (/[^\u0000-\u007f]/.test(raw)) return `${field} ${show(raw)} must be ASCII (write an internationalised host in its xn-- form)`;
  return undefined;
}

/** Problems of a registry host name beyond the pattern: label and port ranges, IPv6 literals. */
function registryProblem(registry: string): string | undefined {
  if (!REGISTRY_RE.test(registry) || registry.length > 253) {
    return `spec.upstream.registry ${show(registry)} is not a registry host name (lower-case host, optional :port)`;
  }
  if (registry.startsWith('[')) return `spec.upstream.registry ${show(registry)}: IPv6 literals are not supported; use a host name`;
  const [host, port] = registry.split(':') as [string, string | undefined];
  if (host.split('.').some((l) => l.length > 63)) return `spec.upstream.registry ${show(registry)} has a DNS label longer than 63 characters`;
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) {
    return `spec.upstream.registry ${show(registry)} has a port outside 1-65535`;
  }
  return undefined;
}

/**
 * Every string in the spec (map keys included), wherever it sits: no control characters, no
 * more than MAX_STRING characters; lists and maps of sane size. Reports the field, never the
 * value.
 */
function scan(v: unknown, path: string, problems: string[], depth = 0): void {
  if (depth > 8) {
    problems.push(`${path} is nested too deeply`);
  } else if (typeof v === 'string') {
    if (v.length > MAX_STRING) problems.push(`${path} is ${v.length} characters long; at most ${MAX_STRING} are allowed`);
    else if (CONTROL_RE.test(v)) problems.push(`${path} contains control characters`);
  } else if (Array.isArray(v)) {
    if (v.length > 256) problems.push(`${path} has ${v.length} entries; at most 256 are allowed`);
    else v.forEach((x, i) => scan(x, `${path}[${i}]`, problems, depth + 1));
  } else if (v !== null && typeof v === 'object') {
    const entries = Object.entries(v);
    if (entries.length > 64) problems.push(`${path} has ${entries.length} keys; at most 64 are allowed`);
    else {
      for (const [k, x] of entries) {
        if (k.length > 253 || CONTROL_RE.test(k)) problems.push(`${path} has a key that is too long or holds control characters`);
        else scan(x, `${path}.${k}`, problems, depth + 1);
      }
    }
  }
}

/** A string field: undefined when absent; a problem when it is of another type. */
function text(v: unknown, field: string, problems: string[]): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') {
    problems.push(`${field} must be a string`);
    return undefined;
  }
  return v;
}

export function resolveSpec(cr: RegistryMirror): SpecResult {
  const problems: string[] = [];
  const s = (cr.spec ?? {}) as RegistryMirror['spec'];
  if (typeof s !== 'object' || Array.isArray(s)) return { ok: false, problems: ['spec must be an object'] };
  const up = (s.upstream ?? {}) as RegistryMirror['spec']['upstream'];

  const name = cr.metadata?.name ?? '';
  if (!DNS_LABEL_RE.test(name) || name.length > 63) {
    problems.push(
      `metadata.name ${show(name)} must be a DNS label (at most 63 lower-case letters, digits and "-", starting with a letter): it names the mirror's Service`,
    );
  }

  // Control characters and sizes first: a field that fails here is not looked at again, so
  // no later message quotes it.
  const before = problems.length;
  scan(s, 'spec', problems);
  if (problems.length > before) return finish(problems);

  const registry = text(up.registry, 'spec.upstream.registry', problems)?.trim() ?? '';
  if (!registry) problems.push('spec.upstream.registry is required (the registry host in image references, e.g. docker.io)');
  else {
    const p = registryProblem(registry);
    if (p) problems.push(p);
  }

  let url = text(up.url, 'spec.upstream.url', problems)?.trim() || (registry ? defaultUpstreamUrl(registry) : undefined) || '';
  if (!url && registry) {
    problems.push(`spec.upstream.url is required: ${show(registry)} is not a well-known registry, so its API URL cannot be guessed`);
  } else if (url) {
    const p = checkUrl('spec.upstream.url', url);
    if (p) problems.push(p);
    url = url.replace(/\/+$/, '');
  }

  const secret = secretName(up.credentialsSecret, 'spec.upstream.credentialsSecret', problems);

  for (const k of ['allow', 'deny'] as const) {
    for (const p of patternListProblems(up[k], `spec.upstream.${k}`)) problems.push(`${p.key} ${p.problem}`);
  }

  let auth: ResolvedSpec['auth'];
  if (s.auth !== undefined && s.auth !== null) {
    const authSecret = secretName(s.auth.secret, 'spec.auth.secret', problems);
    if (!s.auth.secret) problems.push('spec.auth.secret is required: a Secret with an htpasswd key, a tokens key, or both');
    const protectMetrics = s.auth.protectMetrics ?? false;
    if (typeof protectMetrics !== 'boolean') problems.push('spec.auth.protectMetrics must be true or false');
    if (authSecret) auth = { secret: authSecret, protectMetrics: protectMetrics === true };
  }

  const ttl = text(s.cache?.ttl, 'spec.cache.ttl', problems) ?? '168h';
  const tagTTL = text(s.cache?.tagTTL, 'spec.cache.tagTTL', problems) ?? '5m';
  if (!isDuration(ttl)) problems.push(`spec.cache.ttl ${show(ttl)} is not a duration (e.g. 168h, 30m)`);
  if (!isDuration(tagTTL)) problems.push(`spec.cache.tagTTL ${show(tagTTL)} is not a duration (e.g. 5m, 30s)`);

  const replicas = s.replicas ?? 1;
  if (!Number.isInteger(replicas) || replicas < 1) problems.push(`spec.replicas must be an integer >= 1 (got ${show(replicas)})`);
  else if (replicas > MAX_REPLICAS) problems.push(`spec.replicas is ${replicas}; at most ${MAX_REPLICAS} are supported`);

  let storage: ResolvedSpec['storage'];
  let s3: ResolvedSpec['s3'];
  const size = s.storage?.size;
  const rawS3 = s.storage?.s3;
  let sizeBytes: number | undefined;
  if (size !== undefined && size !== null && size !== '') {
    const bytes = typeof size === 'string' || typeof size === 'number' ? parseQuantity(size) : undefined;
    if (bytes === undefined || bytes <= 0) {
      problems.push(`spec.storage.size ${show(size)} is not a positive quantity (e.g. 50Gi)`);
    } else if (bytes > MAX_STORAGE_BYTES) {
      problems.push(`spec.storage.size ${show(size)} is larger than 8Pi`);
    } else {
      sizeBytes = bytes;
    }
  }
  if (rawS3 !== undefined && rawS3 !== null) {
    // The bucket holds the cache: no PVC, so what only a PVC uses is a mistake worth naming.
    s3 = resolveS3(rawS3, problems, sizeBytes ?? 0);
    // The replicas of a bucket find each other through the headless Service <name>-peers,
    // whose name is a DNS label too.
    if (DNS_LABEL_RE.test(name) && name.length > 63 - PEERS_SUFFIX.length) {
      problems.push(
        `metadata.name ${show(name)} is ${name.length} characters long; with spec.storage.s3 it may have at most ${63 - PEERS_SUFFIX.length}, because it also names the Service "<name>${PEERS_SUFFIX}" the replicas find each other by`,
      );
    }
    if (text(s.storage?.storageClassName, 'spec.storage.storageClassName', problems)) {
      problems.push('spec.storage.storageClassName does not apply with spec.storage.s3 (no PVC is made); remove it');
    }
    if (s.storage?.retain === true) {
      problems.push('spec.storage.retain does not apply with spec.storage.s3 (no PVC is made; the bucket outlives the mirror anyway); remove it');
    }
  } else if (sizeBytes !== undefined) {
    const storageClassName = text(s.storage?.storageClassName, 'spec.storage.storageClassName', problems) || undefined;
    if (storageClassName && (!DNS_SUBDOMAIN_RE.test(storageClassName) || storageClassName.length > 253)) {
      problems.push(`spec.storage.storageClassName ${show(storageClassName)} is not a valid StorageClass name`);
    }
    storage = { quantity: String(size), bytes: sizeBytes, storageClassName, retain: s.storage?.retain === true };
    if (Number.isInteger(replicas) && replicas > 1) {
      problems.push(
        `spec.replicas is ${replicas} but spec.storage.size puts the cache on one ReadWriteOnce volume, which only one mirror pod can own; ` +
          'use replicas: 1, add storage.s3 so the replicas share one bucket, or drop storage.size so each replica caches on its own emptyDir',
      );
    }
  }

  const v1Enabled = s.v1?.enabled ?? false;
  const v1Source = text(s.v1?.source, 'spec.v1.source', problems)?.trim() || (registry ? defaultV1Source(registry) : undefined) || '';
  const tagsCacheTTL = text(s.v1?.tagsCacheTTL, 'spec.v1.tagsCacheTTL', problems) ?? '48h';
  if (v1Enabled && !v1Source) {
    problems.push(`spec.v1.source is required when spec.v1.enabled is true for ${show(registry)} (only docker.io has a default)`);
  } else if (v1Source) {
    const p = checkUrl('spec.v1.source', v1Source);
    if (p) problems.push(p);
  }
  if (!isDuration(tagsCacheTTL)) problems.push(`spec.v1.tagsCacheTTL ${show(tagsCacheTTL)} is not a duration`);

  const image = text(s.image, 'spec.image', problems)?.trim() || undefined;
  if (image && (image.length > MAX_IMAGE || !IMAGE_RE.test(image))) {
    problems.push(`spec.image ${show(image)} is not an image reference such as registry.example.com/registry-mirror:1.0`);
  }

  const logLevel = text(s.logLevel, 'spec.logLevel', problems) ?? 'info';
  if (!LOG_LEVELS.includes(logLevel)) problems.push(`spec.logLevel ${show(logLevel)} must be one of ${LOG_LEVELS.join(', ')}`);

  const resources = {
    requests: stringifyValues(s.resources?.requests ?? DEFAULT_RESOURCES.requests, 'spec.resources.requests', problems),
    limits: stringifyValues(s.resources?.limits ?? DEFAULT_RESOURCES.limits, 'spec.resources.limits', problems),
  };
  for (const [where, map] of Object.entries(resources)) {
    for (const [k, v] of Object.entries(map)) {
      if (!RESOURCE_NAME_RE.test(k) || k.length > 253) problems.push(`spec.resources.${where} has a key ${show(k)} that is not a resource name`);
      else if (parseQuantity(v) === undefined) problems.push(`spec.resources.${where}.${k} ${show(v)} is not a quantity`);
    }
  }

  // The mirror's own parser decides (the rendered config must pass it anyway): images of this
  // mirror's registry only, os/arch[/variant] platforms, bounds, and pins that cannot fit at all.
  let prefetch: ResolvedSpec['prefetch'] = [];
  if (s.prefetch !== undefined && s.prefetch !== null && registry) {
    try {
      const maxBytes = s3 ? s3.maxBytes : storage ? Math.floor(storage.bytes * STORAGE_FILL_RATIO) : 0;
      prefetch = parsePrefetch(s.prefetch, { [registry]: { name: registry, url: url || 'https://invalid' } }, maxBytes).map((p) => ({
        image: p.image,
        platforms: p.platforms,
        pin: p.pin,
      }));
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      const detail = err.message.slice(`config: ${err.key}: `.length);
      problems.push(`spec.${err.key} ${detail}`);
    }
  }

  const tls = resolveTls(s.tls, problems);

  if (problems.length > 0) return finish(problems);
  return {
    ok: true,
    spec: {
      registry,
      url,
      credentialsSecret: secret,
      ...(up.allow?.length ? { allow: [...up.allow] } : {}),
      ...(up.deny?.length ? { deny: [...up.deny] } : {}),
      ...(auth ? { auth } : {}),
      ttl,
      tagTTL,
      storage,
      ...(s3 ? { s3 } : {}),
      replicas,
      nodeConfig: s.nodeConfig?.enabled !== false,
      v1: { enabled: v1Enabled === true, source: v1Source || 'https://index.docker.io', tagsCacheTTL },
      image,
      logLevel,
      resources,
      prefetch,
      tls: tls!,
    },
  };
}

/**
 * spec.tls: generated when absent (secure by default: the operator can always issue a
 * certificate, and plain http must be asked for). secretName belongs to mode secret alone.
 */
function resolveTls(raw: unknown, problems: string[]): ResolvedTls | undefined {
  if (raw === undefined || raw === null) return { mode: 'generated' };
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    problems.push('spec.tls must be an object');
    return undefined;
  }
  const o = raw as { mode?: unknown; secretName?: unknown };
  const mode = (text(o.mode, 'spec.tls.mode', problems) ?? 'generated') as TlsMode;
  if (!TLS_MODES.includes(mode)) {
    problems.push(`spec.tls.mode ${show(mode)} must be one of ${TLS_MODES.join(', ')}`);
    return undefined;
  }
  const given = o.secretName !== undefined && o.secretName !== null && o.secretName !== '';
  if (mode !== 'secret') {
    if (given) problems.push(`spec.tls.secretName applies only to spec.tls.mode secret (mode is ${mode}); remove it or set mode: secret`);
    return { mode };
  }
  if (!given) {
    problems.push('spec.tls.secretName is required with spec.tls.mode secret: a Secret in this namespace with tls.crt and tls.key');
    return undefined;
  }
  const name = o.secretName;
  if (typeof name !== 'string' || name.length > 253 || !DNS_SUBDOMAIN_RE.test(name)) {
    problems.push(`spec.tls.secretName ${show(name)} is not a valid Secret name (a DNS subdomain: lower-case letters, digits, "-" and ".")`);
    return undefined;
  }
  return { mode, secretName: name };
}

/**
 * spec.storage.s3 beyond what the schema says: the same patterns again (an older or hand-made
 * CRD may not have them), and what a schema cannot: the endpoint as a URL, duration and part
 * size bounds, and the credentials given one way only. Secret values never appear here: the
 * spec names a Secret, and inline keys are refused without being quoted.
 */
function resolveS3(raw: unknown, problems: string[], maxBytes: number): ResolvedS3 | undefined {
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    problems.push('spec.storage.s3 must be an object');
    return undefined;
  }
  const o = raw as Record<string, unknown>;
  const before = problems.length;
  for (const k of ['accessKeyId', 'secretAccessKey', 'sessionToken']) {
    if (o[k] !== undefined) {
      problems.push(`spec.storage.s3.${k} is not supported: put the keys in a Secret named by spec.storage.s3.credentialsSecret`);
    }
  }

  const bucket = text(o.bucket, 'spec.storage.s3.bucket', problems)?.trim() ?? '';
  if (!bucket) problems.push('spec.storage.s3.bucket is required');
  else if (!S3_BUCKET_RE.test(bucket) || bucket.includes('..') || /^\d+\.\d+\.\d+\.\d+$/.test(bucket)) {
    problems.push(
      `spec.storage.s3.bucket ${show(bucket)} is not a bucket name (3-63 lower-case letters, digits, "." and "-", starting and ending with a letter or digit, not an IP address)`,
    );
  }

  let endpoint = text(o.endpoint, 'spec.storage.s3.endpoint', problems)?.trim() || undefined;
  if (endpoint) {
    const p = checkUrl('spec.storage.s3.endpoint', endpoint, 'spec.storage.s3.credentialsSecret');
    if (p) problems.push(p);
    endpoint = endpoint.replace(/\/+$/, '');
  }

  const region = text(o.region, 'spec.storage.s3.region', problems)?.trim() || undefined;
  if (region && (region.length > 64 || !S3_REGION_RE.test(region))) {
    problems.push(`spec.storage.s3.region ${show(region)} is not a region name (e.g. us-east-1)`);
  }

  const prefix = text(o.prefix, 'spec.storage.s3.prefix', problems) || undefined;
  if (prefix !== undefined) {
    if (prefix.length > 256 || !S3_PREFIX_RE.test(prefix) || prefix.split('/').some((seg) => seg === '.' || seg === '..')) {
      problems.push(
        `spec.storage.s3.prefix ${show(prefix)} must be "/"-separated segments of letters, digits, ".", "_" and "-" (no leading or trailing "/", no "." or ".." segment, at most 256 characters)`,
      );
    }
  }

  const flag = (k: 'forcePathStyle' | 'redirect'): boolean | undefined => {
    if (o[k] === undefined || o[k] === null) return undefined;
    if (typeof o[k] !== 'boolean') {
      problems.push(`spec.storage.s3.${k} must be true or false`);
      return undefined;
    }
    return o[k] as boolean;
  };
  const forcePathStyle = flag('forcePathStyle');
  const redirect = flag('redirect');

  const presignTTL = text(o.presignTTL, 'spec.storage.s3.presignTTL', problems) || undefined;
  if (presignTTL !== undefined) {
    const ms = parseDuration(presignTTL);
    if (ms === undefined) problems.push(`spec.storage.s3.presignTTL ${show(presignTTL)} is not a duration (e.g. 20m)`);
    else if (ms < S3_MIN_PRESIGN_TTL_MS || ms > S3_MAX_PRESIGN_TTL_MS) {
      problems.push(`spec.storage.s3.presignTTL ${show(presignTTL)} must be from 1s to 168h (a presigned URL is valid for at most 7 days)`);
    }
  }

  let partSize: number | undefined;
  if (o.partSize !== undefined && o.partSize !== null && o.partSize !== '') {
    const bytes = typeof o.partSize === 'string' || typeof o.partSize === 'number' ? parseQuantity(o.partSize) : undefined;
    if (bytes === undefined) problems.push(`spec.storage.s3.partSize ${show(o.partSize)} is not a quantity (e.g. 16Mi)`);
    else if (bytes < S3_MIN_PART_SIZE || bytes > S3_MAX_PART_SIZE) {
      problems.push(`spec.storage.s3.partSize ${show(o.partSize)} must be from 5Mi to 5Gi (the S3 multipart upload limits)`);
    } else partSize = bytes;
  }

  const credentialsSecret = secretName(o.credentialsSecret, 'spec.storage.s3.credentialsSecret', problems);
  const serviceAccountName = text(o.serviceAccountName, 'spec.storage.s3.serviceAccountName', problems) || undefined;
  if (serviceAccountName !== undefined && (serviceAccountName.length > 253 || !DNS_SUBDOMAIN_RE.test(serviceAccountName))) {
    problems.push(`spec.storage.s3.serviceAccountName ${show(serviceAccountName)} is not a valid ServiceAccount name`);
  }
  if (o.credentialsSecret !== undefined && o.credentialsSecret !== null && serviceAccountName !== undefined) {
    problems.push(
      'spec.storage.s3.credentialsSecret and spec.storage.s3.serviceAccountName are mutually exclusive: ' +
        'give keys in a Secret, or let the pods take the identity of a ServiceAccount (IRSA, EKS Pod Identity), not both',
    );
  }

  if (problems.length > before) return undefined;
  return {
    bucket,
    ...(endpoint ? { endpoint } : {}),
    ...(region ? { region } : {}),
    ...(prefix ? { prefix } : {}),
    ...(forcePathStyle !== undefined ? { forcePathStyle } : {}),
    ...(redirect !== undefined ? { redirect } : {}),
    ...(presignTTL ? { presignTTL } : {}),
    ...(partSize !== undefined ? { partSize } : {}),
    ...(credentialsSecret ? { credentialsSecret } : {}),
    ...(serviceAccountName ? { serviceAccountName } : {}),
    maxBytes,
  };
}

function secretName(ref: unknown, field: string, problems: string[]): string | undefined {
  if (ref === undefined || ref === null) return undefined;
  const name = (ref as { name?: unknown }).name;
  if (typeof name !== 'string' || !name || name.length > 253 || !DNS_SUBDOMAIN_RE.test(name)) {
    problems.push(`${field}.name ${show(name ?? '')} is not a valid Secret name (a DNS subdomain: lower-case letters, digits, "-" and ".")`);
    return undefined;
  }
  return name;
}

function finish(problems: string[]): SpecResult {
  if (problems.length <= MAX_PROBLEMS) return { ok: false, problems };
  return { ok: false, problems: [...problems.slice(0, MAX_PROBLEMS), `and ${problems.length - MAX_PROBLEMS} more problems`] };
}

function stringifyValues(m: unknown, field: string, problems: string[]): Record<string, string> {
  if (m === null || typeof m !== 'object' || Array.isArray(m)) {
    problems.push(`${field} must be a map of resource names to quantities`);
    return {};
  }
  return Object.fromEntries(Object.entries(m as Record<string, unknown>).map(([k, v]) => [k, String(v)]));
}
