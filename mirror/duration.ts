// Go-style durations ("168h", "5m", "1h30m", "250ms") as the config contract uses them, and
// byte sizes as plain integers or Kubernetes quantities ("50Gi", "500M").

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Milliseconds for a Go-style duration; undefined when it does not parse. */
export function parseDuration(text: string): number | undefined {
  if (text === '0') return 0;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    total += Number(m[1]) * durationUnits[m[2]!]!;
    matched = re.lastIndex;
  }
  if (matched === 0 || matched !== text.length) return undefined;
  return Math.round(total);
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
