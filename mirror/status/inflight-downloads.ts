// The cold path's downloads running now (store/download.ts), for the status page: what is
// being fetched, how far it is, how fast. An entry lives exactly as long as its download
// (added when the transfer starts, removed when it settles), so the set is bounded by the
// downloads the mirror runs at once, itself bounded by limits.maxConnections.

/** What a Download exposes that progress is made of. */
export interface DownloadLike {
  readonly received: number;
  readonly size: number | undefined;
  readonly readerCount: number;
}

export interface DownloadInfo {
  upstream: string;
  /** "repository@digest" (v2) or "v1 image <id>". */
  object: string;
}

export interface DownloadProgress extends DownloadInfo {
  received: number;
  size?: number;
  /** Clients following it now. */
  clients: number;
  startedAt: number;
  /** Average since it started, bytes per second. */
  bytesPerSecond: number;
}

export class InflightDownloads {
  private readonly running = new Set<{ info: DownloadInfo; dl: DownloadLike; startedAt: number }>();

  constructor(private readonly now: () => number = Date.now) {}

  /** Tracks a download until the returned function is called. */
  track(info: DownloadInfo, dl: DownloadLike): () => void {
    const entry = { info, dl, startedAt: this.now() };
    this.running.add(entry);
    return () => void this.running.delete(entry);
  }

  get size(): number {
    return this.running.size;
  }

  /** The oldest `max` downloads first. */
  list(max: number): DownloadProgress[] {
    const now = this.now();
    const out: DownloadProgress[] = [];
    for (const { info, dl, startedAt } of this.running) {
      if (out.length >= max) break;
      const seconds = Math.max(0.001, (now - startedAt) / 1000);
      out.push({
        ...info,
        received: dl.received,
        ...(dl.size !== undefined ? { size: dl.size } : {}),
        clients: dl.readerCount,
        startedAt,
        bytesPerSecond: dl.received / seconds,
      });
    }
    return out;
  }
}
