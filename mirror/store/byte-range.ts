// The one reading of a Range header against a stored object (v2 blobs and v1 layers alike).

import parseRange from 'range-parser';

export interface ByteRange {
  start: number;
  /** Inclusive. */
  end: number;
  /** True when a single satisfiable range was asked for: answer 206. */
  partial: boolean;
}

/**
 * The bytes to send for `header` on an object of `size` bytes, or 'unsatisfiable' (416).
 * A malformed header, or several ranges, are answered with the whole object, as HTTP allows.
 */
export function byteRange(size: number, header: string | undefined): ByteRange | 'unsatisfiable' {
  const whole: ByteRange = { start: 0, end: size - 1, partial: false };
  if (!header) return whole;
  const ranges = parseRange(size, header, { combine: true });
  if (ranges === -1) return 'unsatisfiable';
  if (ranges === -2 || ranges.type !== 'bytes' || ranges.length !== 1) return whole;
  return { start: ranges[0]!.start, end: ranges[0]!.end, partial: true };
}
