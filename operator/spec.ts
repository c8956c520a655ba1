// Validation of a RegistryMirror's spec and the defaults the operator fills in. The CRD schema
// rejects most bad input at admission; this catches what a schema cannot express (cross-field
// rules, URLs that only look right, registries we cannot default) and turns it into messages
// that tell the user which field to fix. Pure.

import { isDuration } from './duration.js';
import { parseQuantity } from './quantity.js';
import type { RegistryMirror } from './types.js';
import { defaultUpstreamUrl, defaultV1Source } from './well-known-registries.js';

/** A spec with every default applied: what render/ works from. */
export interface ResolvedSpec {
  registry: string;
  url: string;
  credentialsSecret?: string;
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
}

export type SpecResult = { ok: true; spec: ResolvedSpec } | { ok: false; problems: string[] };

export const REGISTRY_PATTERN =
  '^(([a-z0-9]([-a-z0-9]*[a-z0-9])?)(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*|\\[[0-9a-fA-F:]+\\])(:[0-9]{1,5})?$';
const REGISTRY_RE = new RegExp(REGISTRY_PATTERN);
const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'];
const DNS_SUBDOMAIN_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export const DEFAULT_RESOURCES = {
  requests: { cpu: '100m', memory: '128Mi' },
  limits: { memory: '512Mi' },
};

/** Checks an upstream URL; returns a problem message or undefined. */
export function checkUrl(field: string, raw: string): string | undefined {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return `${field} "${raw}" is not a valid URL (expected e.g. https://registry.example.com)`;
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') return `${field} "${raw}" must use http or https`;
  if (u.username || u.password) {
    return `${field} must not contain credentials; put them in a Secret named by spec.upstream.credentialsSecret`;
  }
  if (u.search || u.hash) return `${field} "${raw}" must not have a query or fragment`;
  if (!u.hostname) return `${field} "${raw}" has no host`;
  return undefined;
}

export function resolveSpec(cr: RegistryMirror): SpecResult {
  const problems: string[] = [];
  const s = cr.spec ?? ({} as RegistryMirror['spec']);
  const up = s.upstream ?? ({} as RegistryMirror['spec']['upstream']);

  const registry = typeof up.registry === 'string' ? up.registry.trim() : '';
  if (!registry) problems.push('spec.upstream.registry is required (the registry host in image references, e.g. docker.io)');
  else if (!REGISTRY_RE.test(registry)) {
    problems.push(`spec.upstream.registry "${registry}" is not a registry host name (lower-case host, optional :port)`);
  }

  let url = up.url?.trim() || (registry ? defaultUpstreamUrl(registry) : undefined) || '';
  if (!url && registry) {
    problems.push(`spec.upstream.url is required: "${registry}" is not a well-known registry, so its API URL cannot be guessed`);
  } else if (url) {
    const p = checkUrl('spec.upstream.url', url);
    if (p) problems.push(p);
    url = url.replace(/\/+$/, '');
  }

  const secret = up.credentialsSecret?.name;
  if (up.credentialsSecret && (!secret || !DNS_SUBDOMAIN_RE.test(secret))) {
    problems.push(`spec.upstream.credentialsSecret.name "${secret ?? ''}" is not a valid Secret name`);
  }

  const ttl = s.cache?.ttl ?? '168h';
  const tagTTL = s.cache?.tagTTL ?? '5m';
  if (!isDuration(ttl)) problems.push(`spec.cache.ttl "${ttl}" is not a duration (e.g. 168h, 30m)`);
  if (!isDuration(tagTTL)) problems.push(`spec.cache.tagTTL "${tagTTL}" is not a duration (e.g. 5m, 30s)`);

  const replicas = s.replicas ?? 1;
  if (!Number.isInteger(replicas) || replicas < 1) problems.push(`spec.replicas must be an integer >= 1 (got ${replicas})`);

  let storage: ResolvedSpec['storage'];
  if (s.storage?.size !== undefined && s.storage.size !== '') {
    const bytes = parseQuantity(s.storage.size);
    if (bytes === undefined || bytes <= 0) {
      problems.push(`spec.storage.size "${s.storage.size}" is not a positive quantity (e.g. 50Gi)`);
    } else {
      storage = {
        quantity: String(s.storage.size),
        bytes,
        storageClassName: s.storage.storageClassName || undefined,
        retain: s.storage.retain ?? false,
      };
      if (replicas > 1) {
        problems.push(
          `spec.replicas is ${replicas} but spec.storage.size puts the cache on one ReadWriteOnce volume, which only one mirror pod can own; ` +
            'use replicas: 1, or drop storage.size so each replica caches on its own emptyDir',
        );
      }
    }
  }

  const v1Enabled = s.v1?.enabled ?? false;
  const v1Source = s.v1?.source?.trim() || (registry ? defaultV1Source(registry) : undefined) || '';
  const tagsCacheTTL = s.v1?.tagsCacheTTL ?? '48h';
  if (v1Enabled && !v1Source) {
    problems.push(`spec.v1.source is required when spec.v1.enabled is true for "${registry}" (only docker.io has a default)`);
  } else if (v1Source) {
    const p = checkUrl('spec.v1.source', v1Source);
    if (p) problems.push(p);
  }
  if (!isDuration(tagsCacheTTL)) problems.push(`spec.v1.tagsCacheTTL "${tagsCacheTTL}" is not a duration`);

  const logLevel = s.logLevel ?? 'info';
  if (!LOG_LEVELS.includes(logLevel)) problems.push(`spec.logLevel "${logLevel}" must be one of ${LOG_LEVELS.join(', ')}`);

  const resources = {
    requests: stringifyValues(s.resources?.requests ?? DEFAULT_RESOURCES.requests),
    limits: stringifyValues(s.resources?.limits ?? DEFAULT_RESOURCES.limits),
  };
  for (const [where, map] of Object.entries(resources)) {
    for (const [k, v] of Object.entries(map)) {
      if (parseQuantity(v) === undefined) problems.push(`spec.resources.${where}.${k} "${v}" is not a quantity`);
    }
  }

  if (problems.length > 0) return { ok: false, problems };
  return {
    ok: true,
    spec: {
      registry,
      url,
      credentialsSecret: secret,
      ttl,
      tagTTL,
      storage,
      replicas,
      nodeConfig: s.nodeConfig?.enabled ?? true,
      v1: { enabled: v1Enabled, source: v1Source || 'https://index.docker.io', tagsCacheTTL },
      image: s.image?.trim() || undefined,
      logLevel,
      resources,
    },
  };
}

function stringifyValues(m: Record<string, string | number>): Record<string, string> {
  return Object.fromEntries(Object.entries(m).map(([k, v]) => [k, String(v)]));
}
