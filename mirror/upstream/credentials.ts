// Upstream credentials from the config: inline, username/password files, or a docker
// config.json (the file a kubernetes.io/dockerconfigjson Secret mounts). Read once at start;
// the operator rolls the pods when the Secret changes.

import { readFileSync } from 'node:fs';
import { ConfigError, type UpstreamConfig } from '../config.js';

export interface Credentials {
  username: string;
  password: string;
}

const dockerHubAliases = ['docker.io', 'index.docker.io', 'registry-1.docker.io', 'https://index.docker.io/v1/'];

export function loadCredentials(u: UpstreamConfig): Credentials | undefined {
  if (u.username !== undefined && u.password !== undefined) return { username: u.username, password: u.password };
  if (u.usernameFile && u.passwordFile) {
    return {
      username: readSecretFile(u.usernameFile, `upstreams.${u.name}.usernameFile`),
      password: readSecretFile(u.passwordFile, `upstreams.${u.name}.passwordFile`),
    };
  }
  if (u.credentialsFile) {
    const key = `upstreams.${u.name}.credentialsFile`;
    let doc: unknown;
    try {
      doc = JSON.parse(readSecretFile(u.credentialsFile, key));
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      throw new ConfigError(key, 'is not a docker config.json (invalid JSON)');
    }
    const creds = fromDockerConfig(doc, candidateKeys(u));
    if (!creds) throw new ConfigError(key, `has no usable entry under "auths" for ${candidateKeys(u).slice(0, 2).join(' or ')}`);
    return creds;
  }
  return undefined;
}

function readSecretFile(path: string, key: string): string {
  try {
    return readFileSync(path, 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    throw new ConfigError(key, `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

function candidateKeys(u: UpstreamConfig): string[] {
  const host = new URL(u.url).host;
  const keys = [u.name, host, u.url, `https://${u.name}`, `http://${u.name}`, `https://${host}`, `http://${host}`];
  if (dockerHubAliases.includes(u.name) || dockerHubAliases.includes(host)) keys.push(...dockerHubAliases);
  return keys;
}

/** Picks credentials out of a docker config.json for the first matching registry key. */
export function fromDockerConfig(doc: unknown, keys: string[]): Credentials | undefined {
  const auths = (doc as { auths?: Record<string, { auth?: string; username?: string; password?: string }> })?.auths;
  if (!auths || typeof auths !== 'object') return undefined;
  const normalized = new Map(Object.entries(auths).map(([k, v]) => [k.replace(/\/+$/, ''), v]));
  for (const key of keys) {
    const entry = normalized.get(key.replace(/\/+$/, ''));
    if (!entry) continue;
    if (typeof entry.username === 'string' && typeof entry.password === 'string') {
      return { username: entry.username, password: entry.password };
    }
    if (typeof entry.auth === 'string') {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const i = decoded.indexOf(':');
      if (i > 0) return { username: decoded.slice(0, i), password: decoded.slice(i + 1) };
    }
  }
  return undefined;
}
