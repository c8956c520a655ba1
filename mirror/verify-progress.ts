// `registry-mirror verify`'s progress on stderr (stdout keeps the report alone): objects and
// bytes rehashed of the total listed at the start, the rate, and the time left. On a terminal
// one line rewritten in place (\r), at most `ttyPerSecond` times a second; otherwise (a log,
// a pipe, a CI job) plain lines, one each `plainEveryMs` or each 10% of the bytes, whichever
// comes first. The reporter decides and formats only (no I/O, the clock passed in), so it is
// tested without a terminal.

import { formatBytes, formatPercent, formatSeconds } from './format.js';

export interface VerifyProgress {
  /** Blobs and manifests rehashed so far, and listed in all. */
  objects: number;
  totalObjects: number;
  bytes: number;
  totalBytes: number;
  /** Since verify started. */
  elapsedMs: number;
  /** The content is all rehashed (the last update). */
  done?: boolean;
}

export const progressPacing = { ttyPerSecond: 4, plainEveryMs: 10_000, plainStepPercent: 10 } as const;

/** One progress line (no line ending). */
export function formatProgress(p: VerifyProgress): string {
  const seconds = p.elapsedMs / 1000;
  const rate = seconds > 0 ? p.bytes / seconds : 0;
  const eta = rate > 0 ? (p.totalBytes - p.bytes) / rate : p.bytes >= p.totalBytes ? 0 : undefined;
  return (
    `verify: ${p.objects}/${p.totalObjects} objects, ${formatBytes(p.bytes)} of ${formatBytes(p.totalBytes)} (${formatPercent(p.bytes, p.totalBytes)}), ` +
    `${formatBytes(rate)}/s, ETA ${formatSeconds(eta)}`
  );
}

export class ProgressReporter {
  private lastAt = -Infinity;
  private lastStep = -1;

  constructor(private readonly tty: boolean) {}

  /** What to write for this update (undefined: nothing yet); `now` in ms. */
  update(p: VerifyProgress, now: number): string | undefined {
    if (this.tty) {
      if (now - this.lastAt < 1000 / progressPacing.ttyPerSecond) return undefined;
      this.lastAt = now;
      // Back to the line's start, the line, then clear what a longer line left behind.
      return `\r${formatProgress(p)}\x1b[K`;
    }
    const step = p.totalBytes > 0 ? Math.floor((p.bytes / p.totalBytes) * (100 / progressPacing.plainStepPercent)) : 0;
    if (now - this.lastAt < progressPacing.plainEveryMs && step === this.lastStep) return undefined;
    this.lastAt = now;
    this.lastStep = step;
    return `${formatProgress(p)}\n`;
  }

  /** The last state, always shown, ending the line. */
  finish(p: VerifyProgress): string {
    return this.tty ? `\r${formatProgress(p)}\x1b[K\n` : `${formatProgress(p)}\n`;
  }
}
