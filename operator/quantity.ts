// Kubernetes resource quantities ("50Gi", "500M", "1.5e9") as byte counts, and byte counts
// back into a short human form for the printer column. Pure.

const BINARY: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL: Record<string, number> = { n: 1e-9, u: 1e-6, m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

/** The same grammar the CRD schema enforces (pattern on spec.storage.size). */
export const QUANTITY_PATTERN = '^[+]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$';
const QUANTITY_RE = new RegExp(QUANTITY_PATTERN);

/** Bytes for a quantity, rounded down; undefined when it is not a valid quantity. */
export function parseQuantity(q: string | number): number | undefined {
  if (typeof q === 'number') return Number.isFinite(q) && q >= 0 ? Math.floor(q) : undefined;
  const s = q.trim();
  const m = QUANTITY_RE.exec(s);
  if (!m) return undefined;
  const num = Number(m[1]);
  const suffix = m[3] ?? '';
  let factor: number;
  if (suffix in BINARY) factor = BINARY[suffix]!;
  else if (suffix in DECIMAL) factor = DECIMAL[suffix]!;
  else factor = 10 ** Number(suffix.slice(1));
  const v = num * factor;
  return Number.isFinite(v) ? Math.floor(v) : undefined;
}

/** 1536 -> "1.5Ki", 0 -> "0". Binary units, one decimal at most. */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 1024) return String(Math.max(0, Math.floor(n || 0)));
  const units = ['Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];
  let v = n;
  let i = -1;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  const r = Math.round(v * 10) / 10;
  return `${Number.isInteger(r) ? r.toFixed(0) : r.toFixed(1)}${units[i]}`;
}
