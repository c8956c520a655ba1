// Tag listing as the OCI distribution spec has it, whatever the upstream does (issue 13):
// the mirror reads the upstream's whole list (every page it offers), sorts it lexically and
// applies `n` and `last` itself, and its `Link: rel="next"` points at the mirror's own URL.
// docker-registry 2.8 neither sorts nor honours n/last; Docker Hub and others paginate with
// a Link relative to *their* /v2/, which a client of the mirror must never follow (with a
// path prefix or ?ns= it leads to the wrong upstream).
//
// Bounds: the upstream's pages together may hold at most documentLimits.tagList bytes and
// tagListLimits.pages pages; past either, or when its Link leaves the upstream's own origin or
// names another path than this repository's tag list, the list is refused as UNAVAILABLE
// (the route then serves the cached tags, as for an unreachable upstream).

import type { Target } from '../cache/target.js';
import { RegistryError } from '../errors.js';
import { isValidTag } from '../reference.js';
import { upstreamError } from '../upstream/client.js';
import { nextPageQuery } from '../upstream/next-page.js';
import { documentLimits, readBody } from '../upstream/read-body.js';

export const tagListLimits = {
  /** Upstream pages followed for one list. */
  pages: 100,
  /** All pages together. */
  bytes: documentLimits.tagList,
} as const;

/** Byte order, as distribution's sort.Strings (tags are ASCII). */
export function lexical(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Every tag the upstream lists for the target's repository, deduplicated and sorted. */
export async function fetchUpstreamTags(t: Target): Promise<string[]> {
  const client = t.upstream;
  const listUrl = new URL(`${client.config.url}/v2/${t.name}/tags/list`);
  const tags = new Set<string>();
  let query: string | undefined;
  let bytes = 0;
  for (let page = 1; ; page++) {
    const res = await client.send({ method: 'GET', path: `${t.name}/tags/list`, repository: t.name, query });
    if (res.status !== 200) {
      await res.body.dump().catch(() => undefined);
      throw upstreamError(res.status, client.name, new RegistryError('NAME_UNKNOWN', undefined, { name: t.name }));
    }
    // A body that stalls, breaks off or passes the limit is upstream trouble (UNAVAILABLE).
    const text = await readBody(res, tagListLimits.bytes - bytes, 'tag list');
    bytes += text.length;
    for (const tag of parseTags(text, client.name)) tags.add(tag);
    const next = nextPageQuery(res.headers.link, listUrl, page, { upstream: client.name, origin: client.origin, what: 'tag list', maxPages: tagListLimits.pages });
    if (next === false) break;
    query = next;
  }
  return [...tags].sort(lexical);
}

/** The tags of one upstream page; invalid tags (they could never be pulled) are left out. */
function parseTags(text: Buffer, upstream: string): string[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text.toString('utf8'));
  } catch {
    throw new RegistryError('UNAVAILABLE', `upstream ${upstream} sent a tag list that is not JSON`);
  }
  const list = doc && typeof doc === 'object' ? (doc as { tags?: unknown }).tags : undefined;
  // distribution answers "tags": null for a repository without tags.
  if (list === null || list === undefined) return [];
  if (!Array.isArray(list)) throw new RegistryError('UNAVAILABLE', `upstream ${upstream} sent a tag list without a tags array`);
  return list.filter((x): x is string => typeof x === 'string' && isValidTag(x));
}

export interface TagPage {
  tags: string[];
  /** Set when more tags follow: the last tag of this page (the next request's `last`). */
  nextLast?: string;
}

/** Applies the spec's `last` (tags lexically after it) and `n` (at most n of them) to a sorted list. */
export function pageOf(sorted: string[], n: number | undefined, last: string | undefined): TagPage {
  const from = last === undefined ? sorted : sorted.filter((x) => lexical(x, last) > 0);
  if (n === undefined || from.length <= n) return { tags: from };
  const tags = from.slice(0, n);
  return n > 0 ? { tags, nextLast: tags[n - 1] } : { tags };
}

/**
 * The Link to the next page, at the mirror's own URL for the repository as the client named
 * it: a path prefix that chose the upstream stays in the path, an ns that chose it stays in
 * the query.
 */
export function nextPageLink(clientName: string, n: number, last: string, ns: string | undefined): string {
  const q = new URLSearchParams({ n: String(n), last });
  if (ns !== undefined) q.set('ns', ns);
  return `</v2/${clientName}/tags/list?${q.toString()}>; rel="next"`;
}
