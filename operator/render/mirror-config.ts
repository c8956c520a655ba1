// The mirror server's config (DESIGN.md §3 "Mirror config") for one RegistryMirror. Pure.
import { ConfigError, parseConfigText } from '../../mirror/config.js';
import type { ResolvedSpec } from '../spec.js';
import type { AuthForm, CredentialsForm } from '../types.js';
import { MIRROR_PORT } from '../types.js';
import { MOUNT } from './names.js';

/** Share of the volume the mirror may fill; the rest is headroom for temp files and the fs. */
export const STORAGE_FILL_RATIO = 0.9;

export interface MirrorConfig {
  listen: string;
  logLevel: string;
  storage: { path: string; maxBytes: number };
  cache: { ttl: string; tagTTL: string };
  defaultUpstream: string;
  upstreams: Record<
    string,
    { url: string; credentialsFile?: string; usernameFile?: string; passwordFile?: string; allow?: string[]; deny?: string[] }
  >;
  v1: { enabled: boolean; source: string; tagsCacheTTL: string };
  auth?: { htpasswdFile?: string; tokensFile?: string; protectMetrics: boolean };
  prefetch?: Array<{ image: string; platforms?: string[]; pin: boolean }>;
}

export function maxBytesFor(spec: ResolvedSpec): number {
  return spec.storage ? Math.floor(spec.storage.bytes * STORAGE_FILL_RATIO) : 0;
}

export function renderMirrorConfig(spec: ResolvedSpec, credentials?: CredentialsForm, auth?: AuthForm): MirrorConfig {
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
    storage: { path: MOUNT.data, maxBytes: maxBytesFor(spec) },
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
  };
}

/**
 * The last check before anything is applied: the rendered config.yaml must be one the mirror
 * itself accepts (its own parser, no environment), or the pods would only crash-loop on it.
 * Returns the mirror's one-line complaint, or undefined.
 */
export function mirrorConfigProblem(configYaml: string): string | undefined {
  try {
    parseConfigText(configYaml, {});
    return undefined;
  } catch (err) {
    if (err instanceof ConfigError) return err.message;
    throw err;
  }
}
