// The legacy Docker Registry v1 API: what a request path asks for, and the v1 naming rules.
// Pure functions; everything that reaches the store or the source passes through here, so a
// value that validates is safe as a path segment (no "/", no leading ".", no "%", no NUL).
//
// Names follow the docker 1.x client's v1 rules: "<namespace>/<repository>", a single
// component meaning "library/<repository>"; namespace [a-z0-9-_]{2,255} without a leading or
// trailing hyphen or "--"; repository [a-z0-9-_.]+ (here also: not starting with a dot, so
// "." and ".." can never become directories, and at most 255 characters). The seed's python
// registry did not validate at all; it split on the first slash, as we do.

import { isValidTag } from '../reference.js';
import { V1Error } from './errors.js';

export interface V1Repository {
  namespace: string;
  repository: string;
}

export type V1Path =
  | { kind: 'ping' }
  | { kind: 'images'; repo: V1Repository }
  | { kind: 'tags'; repo: V1Repository }
  | { kind: 'tag'; repo: V1Repository; tag: string }
  | { kind: 'repo-json'; repo: V1Repository }
  | { kind: 'image-json'; id: string }
  | { kind: 'ancestry'; id: string }
  | { kind: 'layer'; id: string }
  | { kind: 'unknown' };

const imageIdPattern = /^[a-f0-9]{64}$/;
const namespacePattern = /^[a-z0-9_-]{2,255}$/;
const repositoryPattern = /^[a-z0-9_-][a-z0-9_.-]{0,254}$/;

export function isValidImageId(id: string): boolean {
  return imageIdPattern.test(id);
}

export function isValidNamespace(ns: string): boolean {
  return namespacePattern.test(ns) && !ns.startsWith('-') && !ns.endsWith('-') && !ns.includes('--');
}

export function isValidRepository(repo: string): boolean {
  return repositoryPattern.test(repo);
}

/** "ns/repo" or "repo" (-> library/repo); throws a 400 V1Error naming the rule broken. */
export function parseRepositoryName(name: string): V1Repository {
  const slash = name.indexOf('/');
  const namespace = slash < 0 ? 'library' : name.slice(0, slash);
  const repository = slash < 0 ? name : name.slice(slash + 1);
  if (slash < 0 && isValidImageId(repository)) {
    throw new V1Error(400, 'Invalid repository name: cannot be a 64-character hexadecimal string');
  }
  if (!isValidNamespace(namespace)) {
    throw new V1Error(400, 'Invalid namespace name: 2 to 255 of [a-z0-9-_], no leading, trailing or double hyphen');
  }
  if (!isValidRepository(repository)) {
    throw new V1Error(400, 'Invalid repository name: only [a-z0-9-_.] are allowed, not starting with "."');
  }
  return { namespace, repository };
}

export function repoName(r: V1Repository): string {
  return `${r.namespace}/${r.repository}`;
}

/**
 * Splits /v1/... into what it asks for; names, tags and ids are validated (V1Error 400).
 * A repository path may have one component or two; "ns/repo/<suffix>" is tried first, as
 * docker 1.x clients always send the namespace, so "a/tags/tags" is the tag list of a/tags.
 */
export function parseV1Path(path: string): V1Path {
  if (path === '/v1/_ping' || path === '/v1/_ping/') return { kind: 'ping' };
  let m = /^\/v1\/images\/([^/]+)\/(json|ancestry|layer)\/?$/.exec(path);
  if (m) {
    const id = m[1]!;
    if (!isValidImageId(id)) throw new V1Error(400, 'Invalid image id: 64 lowercase hexadecimal characters expected');
    return { kind: m[2] === 'json' ? 'image-json' : m[2] === 'ancestry' ? 'ancestry' : 'layer', id };
  }
  if (!path.startsWith('/v1/repositories/')) return { kind: 'unknown' };
  const parts = path.slice('/v1/repositories/'.length).replace(/\/$/, '').split('/');
  for (const n of [2, 1]) {
    if (parts.length <= n) continue;
    const suffix = suffixKind(parts.slice(n));
    if (!suffix) continue;
    const repo = parseRepositoryName(parts.slice(0, n).join('/'));
    if (suffix.kind === 'tag') {
      if (!isValidTag(suffix.tag)) throw new V1Error(400, 'Invalid tag name: must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}');
      return { kind: 'tag', repo, tag: suffix.tag };
    }
    return { kind: suffix.kind, repo };
  }
  return { kind: 'unknown' };
}

function suffixKind(rest: string[]): { kind: 'images' | 'tags' | 'repo-json' } | { kind: 'tag'; tag: string } | undefined {
  if (rest.length === 1 && rest[0] === 'images') return { kind: 'images' };
  if (rest.length === 1 && rest[0] === 'tags') return { kind: 'tags' };
  if (rest.length === 1 && rest[0] === 'json') return { kind: 'repo-json' };
  if (rest.length === 2 && rest[0] === 'tags' && rest[1] !== '') return { kind: 'tag', tag: rest[1]! };
  return undefined;
}

/**
 * The "sha256:<hex>" payload checksums in a source's X-Docker-Checksum-Payload (or the seed's
 * X-Docker-Payload-Checksum, which it filled with a printed list) or an images-list entry.
 * tarsum values are left out: verifying them would mean unpacking the layer.
 */
export function payloadChecksums(value: unknown): string[] {
  const text = Array.isArray(value) ? value.join(' ') : typeof value === 'string' ? value : '';
  const out = new Set<string>();
  for (const m of text.matchAll(/(^|[^+a-z0-9])(sha256:[a-f0-9]{64})(?![a-f0-9])/g)) out.add(m[2]!);
  return [...out];
}

/** Image id -> payload checksum from an images list ([{"id": ..., "checksum": ...}]). */
export function checksumsFromImagesList(bytes: Buffer): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    return out;
  }
  if (!Array.isArray(doc)) return out;
  for (const e of doc) {
    const id = (e as { id?: unknown })?.id;
    const sums = payloadChecksums((e as { checksum?: unknown })?.checksum);
    if (typeof id === 'string' && isValidImageId(id) && sums.length > 0) out.set(id, sums);
  }
  return out;
}
