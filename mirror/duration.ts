// Go durations ("168h", "5m", "1h30m", "250ms", "1.5s") and byte sizes as plain integers or
// Kubernetes quantities ("50Gi", "500M").
//
// One duration grammar for the mirror's config, the operator's and node agent's flags, the
// operator's spec checks and the CRD's `pattern` on every duration field (crds/ and the
// chart's copy; test/unit/duration.test.ts proves the CRD and this module agree): Go's
// time.ParseDuration without a sign. A number (`1`, `1.5`, `1.`, `.5`) and a unit (ns, us,
// µs (U+00B5), μs (U+03BC), ms, s, m, h), repeated; or `0` alone. At most 64 characters (the
// CRD's maxLength). A sign is refused: nothing here can be negative, and `+` is never needed.
//
// Durations are used in whole milliseconds. The value is the exact sum of the parts, rounded
// UP to the next whole millisecond when a fraction of one is left ("1ns" and "0.4ms" are 1 ms,
// "1.0001s" is 1001 ms), so a duration that is not zero never becomes 0, which turns
// cache.notFoundTTL off and is refused for timeouts. The exact sum is taken with BigInt, so
// any length the grammar admits parses (Go itself stops at about 292 years, and drops what is
// left below a nanosecond, where this rounds it up with the rest).

/** Longest duration text accepted; the CRD's maxLength on duration fields. */
export const DURATION_MAX_LENGTH = 64;

/** The grammar as the CRD's `pattern` spells it (ECMAScript and RE2 read it the same way). */
export const DURATION_PATTERN = '^(0|(([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$';

const DURATION_RE = new RegExp(DURATION_PATTERN);
const PART_RE = /([0-9]*)(?:\.([0-9]*))?(ns|us|µs|μs|ms|s|m|h)/g;
const UNIT_NS: Record<string, bigint> = {
  ns: 1n,
  us: 1_000n,
  'µs': 1_000n,
  'μs': 1_000n,
  ms: 1_000_000n,
  s: 1_000_000_000n,
  m: 60_000_000_000n,
  h: 3_600_000_000_000n,
};
const NS_PER_MS = 1_000_000n;

/** True when text is a duration in the grammar above (what the CRD admits). */
export function isDuration(text: string): boolean {
  return text.length <= DURATION_MAX_LENGTH && DURATION_RE.test(text);
}

/** Whole milliseconds for a duration (a fraction of one rounds up); undefined when it is not one. */
export function parseDuration(text: string): number | undefined {
  if (!isDuration(text)) return undefined;
  if (text === '0') return 0;
  const parts = [...text.matchAll(PART_RE)].map((m) => ({ int: m[1]!, frac: m[2] ?? '', unit: m[3]! }));
  // Every part as an integer count of 10^-digits ns, digits being the longest fraction.
  const digits = Math.max(...parts.map((p) => p.frac.length));
  let scaled = 0n;
  for (const p of parts) scaled += BigInt((p.int || '0') + p.frac.padEnd(digits, '0')) * UNIT_NS[p.unit]!;
  const per = NS_PER_MS * 10n ** BigInt(digits);
  return Number((scaled + per - 1n) / per);
}

export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

const byteSuffixes: Record<string, number> = {
  '': 1,
  k: 1e3, M: 1e6, G: 1e9, T: 1e12,
  Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40,
};

/** Bytes for an integer or a Kubernetes quantity; undefined when it does not parse. */
export function parseBytes(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  if (typeof value !== 'string') return undefined;
  const m = /^(\d+(?:\.\d+)?)(|k|M|G|T|Ki|Mi|Gi|Ti)$/.exec(value.trim());
  if (!m) return undefined;
  const n = Math.floor(Number(m[1]) * byteSuffixes[m[2]!]!);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** Node's timers hold a signed 32-bit millisecond count: a longer delay (about 24.8 days) fires
 * after 1 ms instead, which turns a long user-set TTL into a hot loop. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** `ms` clamped to what setTimeout/setInterval honour; firing early is the safe side. */
export function timerDelay(ms: number): number {
  return Math.min(Math.max(0, ms), MAX_TIMER_MS);
}
