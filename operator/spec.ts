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
import { isDuration } from '../mirror/duration.js';
import { parseQuantity } from './quantity.js';
import type { RegistryMirror } from './types.js';
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
  /** PVC size in bytes and its original quantity, or undefined for an emptyDir. */
  storage?: { quantity: string; bytes: number; storageClassName?: string; retain: boolean };
  replicas: number;
  nodeConfig: boolean;
  v1: { enabled: boolean; source: string; tagsCacheTTL: string };
  image?: string;
  logLevel: string;
  resources: { requests: Record<string, string>; limits: Record<string, string> };
  /** spec.prefetch as the mirror config takes it (empty = none). */
  prefetch: Array<{ image: string; platforms: string[]; pin: boolean }>;
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

/** Checks an upstream URL; returns a problem message or undefined. */
export function checkUrl(field: string, raw: string): string | undefined {
  if (CONTROL_RE.test(raw) || /\s/.test(raw)) return `${field} ${show(raw)} is not a valid URL: it contains spaces or control characters`;
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return `${field} ${show(raw)} is not a valid URL (expected e.g. https://registry.example.com)`;
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') return `${field} ${show(raw)} must use http or https`;
  if (u.username || u.password || /^[a-z]+:\/\/[^/?#]*@/i.test(raw)) {
    return `${field} must not contain credentials; put them in a Secret named by spec.upstream.credentialsSecret`;
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
  const size = s.storage?.size;
  if (size !== undefined && size !== null && size !== '') {
    const bytes = typeof size === 'string' || typeof size === 'number' ? parseQuantity(size) : undefined;
    if (bytes === undefined || bytes <= 0) {
      problems.push(`spec.storage.size ${show(size)} is not a positive quantity (e.g. 50Gi)`);
    } else if (bytes > MAX_STORAGE_BYTES) {
      problems.push(`spec.storage.size ${show(size)} is larger than 8Pi`);
    } else {
      const storageClassName = text(s.storage?.storageClassName, 'spec.storage.storageClassName', problems) || undefined;
      if (storageClassName && (!DNS_SUBDOMAIN_RE.test(storageClassName) || storageClassName.length > 253)) {
        problems.push(`spec.storage.storageClassName ${show(storageClassName)} is not a valid StorageClass name`);
      }
      storage = { quantity: String(size), bytes, storageClassName, retain: s.storage?.retain === true };
      if (Number.isInteger(replicas) && replicas > 1) {
        problems.push(
          `spec.replicas is ${replicas} but spec.storage.size puts the cache on one ReadWriteOnce volume, which only one mirror pod can own; ` +
            'use replicas: 1, or drop storage.size so each replica caches on its own emptyDir',
        );
      }
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
      const maxBytes = storage ? Math.floor(storage.bytes * STORAGE_FILL_RATIO) : 0;
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
      replicas,
      nodeConfig: s.nodeConfig?.enabled !== false,
      v1: { enabled: v1Enabled === true, source: v1Source || 'https://index.docker.io', tagsCacheTTL },
      image,
      logLevel,
      resources,
      prefetch,
    },
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
