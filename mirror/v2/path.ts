// Splits a /v2/ request path into what it asks for. Repository names contain slashes, so
// the kind is found from the end: <name>/manifests/<ref>, <name>/blobs/<digest>,
// <name>/tags/list, <name>/referrers/<digest>, <name>/blobs/uploads/... (push). Validation
// happens in reference.ts.

export type V2Path =
  | { kind: 'base' }
  | { kind: 'catalog' }
  | { kind: 'tags'; name: string }
  | { kind: 'manifest'; name: string; reference: string }
  | { kind: 'blob'; name: string; digest: string }
  | { kind: 'referrers'; name: string; digest: string }
  | { kind: 'upload'; name: string }
  | { kind: 'unknown' };

export function parseV2Path(path: string): V2Path {
  if (path === '/v2/' || path === '/v2') return { kind: 'base' };
  if (!path.startsWith('/v2/')) return { kind: 'unknown' };
  const rest = path.slice(4);
  if (rest === '_catalog') return { kind: 'catalog' };
  let m = /^(.+)\/tags\/list$/.exec(rest);
  if (m) return { kind: 'tags', name: m[1]! };
  m = /^(.+)\/manifests\/([^/]+)$/.exec(rest);
  if (m) return { kind: 'manifest', name: m[1]!, reference: m[2]! };
  m = /^(.+)\/blobs\/uploads(?:\/.*)?$/.exec(rest);
  if (m) return { kind: 'upload', name: m[1]! };
  m = /^(.+)\/blobs\/([^/]+)$/.exec(rest);
  if (m) return { kind: 'blob', name: m[1]!, digest: m[2]! };
  m = /^(.+)\/referrers\/([^/]+)$/.exec(rest);
  if (m) return { kind: 'referrers', name: m[1]!, digest: m[2]! };
  return { kind: 'unknown' };
}

/** Decodes percent-escapes once; a malformed escape makes the whole path invalid. */
export function decodePath(rawUrl: string): string | undefined {
  const q = rawUrl.indexOf('?');
  const raw = q < 0 ? rawUrl : rawUrl.slice(0, q);
  try {
    const decoded = decodeURIComponent(raw);
    return decoded.includes('\0') ? undefined : decoded;
  } catch {
    return undefined;
  }
}
