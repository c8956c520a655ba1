// Upstream listings that come in pages (tag lists, referrers): the next page is the
// `rel="next"` link of the Link header (RFC 8288), followed only on the upstream's own origin
// and the same path, so a hostile upstream cannot send the mirror (and its token) elsewhere,
// and only for a bounded number of pages.

import { RegistryError } from '../errors.js';
import { clip } from '../reference.js';

/** The URL of the first `rel="next"` link of a Link header, as written. */
export function nextLink(header: string | string[] | undefined): string | undefined {
  const values = Array.isArray(header) ? header : header === undefined ? [] : [header];
  for (const value of values) {
    for (const m of value.matchAll(/<([^>]*)>((?:\s*;\s*[^;,<]*)*)/g)) {
      const params = m[2]!.split(';').map((p) => p.trim());
      for (const p of params) {
        const kv = /^rel\s*=\s*(?:"([^"]*)"|([^\s"]+))$/i.exec(p);
        if (kv && (kv[1] ?? kv[2] ?? '').toLowerCase().split(/\s+/).includes('next')) return m[1]!;
      }
    }
  }
  return undefined;
}

export interface Paging {
  /** The upstream's name, for messages. */
  upstream: string;
  /** The upstream's origin: the only one followed. */
  origin: string;
  /** What is being listed, for messages ("tag list", "referrers list"). */
  what: string;
  /** Pages at most. */
  maxPages: number;
}

/**
 * The query of the page after `page` (1-based) of `current`, `undefined` for a next page
 * without a query, or `false` when there is none. Throws UNAVAILABLE (upstream trouble, so
 * cached answers may be served) for a link that is not a URL, leaves the origin or path, or
 * passes maxPages.
 */
export function nextPageQuery(linkHeader: string | string[] | undefined, current: URL, page: number, p: Paging): string | undefined | false {
  const link = nextLink(linkHeader);
  if (link === undefined) return false;
  let next: URL;
  try {
    next = new URL(link, current);
  } catch {
    throw new RegistryError('UNAVAILABLE', `upstream ${p.upstream} sent a ${p.what} Link that is not a URL`, { link: clip(link) });
  }
  if (next.origin !== p.origin || next.pathname !== current.pathname) {
    throw new RegistryError(
      'UNAVAILABLE',
      `upstream ${p.upstream}'s ${p.what} continues outside its own URL; the mirror follows only ${current.origin}${current.pathname}`,
      { link: clip(link) },
    );
  }
  if (page >= p.maxPages) throw new RegistryError('UNAVAILABLE', `upstream ${p.upstream}'s ${p.what} has more than ${p.maxPages} pages`);
  return next.search.length > 1 ? next.search.slice(1) : undefined;
}
