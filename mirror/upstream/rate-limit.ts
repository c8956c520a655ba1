// Docker Hub's pull rate limit as its answers state it (issue 18): `ratelimit-limit:
// 100;w=21600` and `ratelimit-remaining: 76;w=21600` on manifest GETs and HEADs (token answers
// carry none). The header comes from the upstream, so it is read liberally and bounded: the
// first element that parses wins (an older IETF draft lists several, "100, 100;w=21600"), a
// value too long, not a whole number or absurdly large is ignored, and nothing but numbers is
// kept. Pure.

export interface RateLimit {
  /** Requests allowed in the window. */
  limit?: number;
  /** Requests left in the window. */
  remaining?: number;
  /** The window, when the upstream names it (w=). */
  windowSeconds?: number;
}

/** One upstream's last statement of its rate limit. */
export interface RateLimitObservation extends RateLimit {
  /** When it was read (ms since the epoch). */
  observedAt: number;
}

/** A header longer than this is not read at all. */
const maxHeaderLength = 256;
/** Counts and windows above this are not believed (a window of ten years, 10^12 requests). */
const maxCount = 1e12;
const maxWindowSeconds = 10 * 365 * 86_400;

type HeaderValue = string | string[] | undefined;

/** The rate limit an answer's headers state; undefined when they state none that parses. */
export function parseRateLimit(headers: Record<string, HeaderValue>): RateLimit | undefined {
  const limit = parseElement(headers['ratelimit-limit']);
  const remaining = parseElement(headers['ratelimit-remaining']);
  if (!limit && !remaining) return undefined;
  const out: RateLimit = {};
  if (limit) out.limit = limit.value;
  if (remaining) out.remaining = remaining.value;
  const w = limit?.windowSeconds ?? remaining?.windowSeconds;
  if (w !== undefined) out.windowSeconds = w;
  // Remaining above the limit is a contradiction: believe neither half of it.
  if (out.limit !== undefined && out.remaining !== undefined && out.remaining > out.limit) return undefined;
  return out;
}

/** `100;w=21600` (or `100`, or a list of such): the first element whose count parses. */
export function parseElement(header: HeaderValue): { value: number; windowSeconds?: number } | undefined {
  const text = Array.isArray(header) ? header[0] : header;
  if (typeof text !== 'string' || text.length > maxHeaderLength) return undefined;
  for (const element of text.split(',')) {
    const [count = '', ...params] = element.split(';').map((s) => s.trim());
    const value = wholeNumber(count, maxCount);
    if (value === undefined) continue;
    let windowSeconds: number | undefined;
    for (const p of params) {
      const m = /^w\s*=\s*(\S+)$/i.exec(p);
      if (m) windowSeconds = wholeNumber(m[1]!, maxWindowSeconds);
    }
    return windowSeconds === undefined ? { value } : { value, windowSeconds };
  }
  return undefined;
}

function wholeNumber(s: string, max: number): number | undefined {
  if (!/^\d{1,13}$/.test(s)) return undefined;
  const n = Number(s);
  return n <= max ? n : undefined;
}
