// Go-style durations ("168h", "5m", "1h30m", "500ms") as the mirror config uses them. Pure.

/** The same grammar the CRD schema enforces on duration fields. */
export const DURATION_PATTERN = '^(0|([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$';
const DURATION_RE = new RegExp(DURATION_PATTERN);
const UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

export function isDuration(s: string): boolean {
  return DURATION_RE.test(s);
}

/** Milliseconds for a Go duration; undefined when it is not one. */
export function parseDuration(s: string): number | undefined {
  if (!DURATION_RE.test(s)) return undefined;
  if (s === '0') return 0;
  let total = 0;
  for (const m of s.matchAll(/([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)/g)) total += Number(m[1]) * UNIT_MS[m[2]!]!;
  return total;
}
