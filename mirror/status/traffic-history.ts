// The last hour of traffic, one sample per minute, for the status page's chart. Kept in
// memory in a ring of `minutes` buckets (60): a minute without traffic has no bucket, and a
// bucket older than the window is dropped, so the ring never holds more than the window.
// Samples are the counts of that minute alone (not running totals). The clock is injected.

export interface TrafficCounts {
  hits: number;
  misses: number;
  bytesServed: number;
  bytesFromUpstream: number;
}

export interface MinuteSample extends TrafficCounts {
  /** Start of the minute, ms since the epoch. */
  minute: number;
}

export const historyMinutes = 60;
const minuteMs = 60_000;

export class TrafficHistory {
  private readonly ring: MinuteSample[] = [];

  constructor(
    private readonly now: () => number = Date.now,
    readonly minutes = historyMinutes,
  ) {}

  add(delta: Partial<TrafficCounts>): void {
    const minute = Math.floor(this.now() / minuteMs) * minuteMs;
    let last = this.ring.at(-1);
    if (!last || last.minute !== minute) {
      last = { minute, hits: 0, misses: 0, bytesServed: 0, bytesFromUpstream: 0 };
      this.ring.push(last);
      if (this.ring.length > this.minutes) this.ring.shift();
    }
    last.hits += delta.hits ?? 0;
    last.misses += delta.misses ?? 0;
    last.bytesServed += delta.bytesServed ?? 0;
    last.bytesFromUpstream += delta.bytesFromUpstream ?? 0;
  }

  /** The samples of the window ending now, oldest first (copies). */
  samples(): MinuteSample[] {
    const from = Math.floor(this.now() / minuteMs) * minuteMs - (this.minutes - 1) * minuteMs;
    return this.ring.filter((s) => s.minute >= from).map((s) => ({ ...s }));
  }
}
