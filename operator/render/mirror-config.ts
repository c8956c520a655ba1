// The mirror server's config (DESIGN.md §3 "Mirror config") for one RegistryMirror. Pure.
import type { ResolvedSpec } from '../spec.js';
import type { CredentialsForm } from '../types.js';
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
  upstreams: Record<string, { url: string; credentialsFile?: string; usernameFile?: string; passwordFile?: string }>;
  v1: { enabled: boolean; source: string; tagsCacheTTL: string };
}

export function maxBytesFor(spec: ResolvedSpec): number {
  return spec.storage ? Math.floor(spec.storage.bytes * STORAGE_FILL_RATIO) : 0;
}

export function renderMirrorConfig(spec: ResolvedSpec, credentials?: CredentialsForm): MirrorConfig {
  const upstream: MirrorConfig['upstreams'][string] = { url: spec.url };
  if (credentials?.form === 'dockerconfigjson') {
    upstream.credentialsFile = `${MOUNT.credentials}/.dockerconfigjson`;
  } else if (credentials?.form === 'basic') {
    upstream.usernameFile = `${MOUNT.credentials}/username`;
    upstream.passwordFile = `${MOUNT.credentials}/password`;
  }
  return {
    listen: `0.0.0.0:${MIRROR_PORT}`,
    logLevel: spec.logLevel,
    storage: { path: MOUNT.data, maxBytes: maxBytesFor(spec) },
    cache: { ttl: spec.ttl, tagTTL: spec.tagTTL },
    defaultUpstream: spec.registry,
    upstreams: { [spec.registry]: upstream },
    v1: { ...spec.v1 },
  };
}
