// Reads /stats from each ready mirror pod. The URL is built from the pod's IP and the stats
// port (5000, the mirror's port; --stats-port only exists so tests can point a Pod object
// whose IP is 127.0.0.1 at a mirror process on another port).
import { parseMirrorStats, type MirrorStats } from './cache-stats.js';

export interface PodLike {
  metadata?: { name?: string; namespace?: string; labels?: Record<string, string>; deletionTimestamp?: string };
  status?: { podIP?: string; phase?: string; conditions?: Array<{ type?: string; status?: string }> };
}

export function isPodReady(p: PodLike): boolean {
  if (p.metadata?.deletionTimestamp || !p.status?.podIP) return false;
  return p.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
}

export function statsUrl(podIP: string, port: number): string {
  const host = podIP.includes(':') ? `[${podIP}]` : podIP;
  return `http://${host}:${port}/stats`;
}

export type FetchStats = (url: string) => Promise<MirrorStats>;

export function httpStatsFetcher(timeoutMs: number): FetchStats {
  return async (url) => {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), headers: { accept: 'application/json' } });
    if (res.status !== 200) {
      await res.body?.cancel();
      throw new Error(`${url} answered ${res.status}`);
    }
    const stats = parseMirrorStats(await res.json());
    if (!stats) throw new Error(`${url} answered something that is not mirror stats`);
    return stats;
  };
}
