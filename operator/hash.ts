// Stable content hashes: the same value always hashes the same, whatever its key order.
import { createHash } from 'node:crypto';

export function stableStringify(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v) ?? 'null';
  if (Array.isArray(v)) return `[${v.map(stableStringify).join(',')}]`;
  const entries = Object.entries(v as Record<string, unknown>)
    .filter(([, x]) => x !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${stableStringify(x)}`).join(',')}}`;
}

/** 16 hex characters of sha256 over a stable serialisation (or the raw bytes of a string). */
export function hashOf(v: unknown): string {
  const text = typeof v === 'string' ? v : stableStringify(v);
  return createHash('sha256').update(text).digest('hex').slice(0, 16);
}
