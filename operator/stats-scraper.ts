// Reads /stats from each ready mirror pod. The URL is built from the pod's IP and the stats
// port (5000, the mirror's port; --stats-port only exists so tests can point a Pod object
// whose IP is 127.0.0.1 at a mirror process on another port).
//
// A mirror pod is not trusted (a tenant chooses its image): the scrape follows no redirect
// (a 3xx is an error), reads at most STATS_MAX_BYTES (a larger Content-Length is refused
// before reading, a body that grows past it is cut), gives up after the timeout (connect,
// headers and body together), and accepts only a JSON object whose figures are non-negative
// integers (parseMirrorStats). Pods are scraped STATS_PARALLELISM at a time.
import { request } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { parseMirrorStats, type MirrorStats } from './cache-stats.js';

/**
 * Largest /stats body read; the mirror's is about 300 bytes, plus at most about 1 KiB per
 * prefetched image (100 at most: config prefetch).
 */
export const STATS_MAX_BYTES = 256 * 1024;
/** Pods scraped at once, over all RegistryMirrors. */
export const STATS_PARALLELISM = 8;
/** Time for one scrape: connect, headers and body. */
export const STATS_TIMEOUT_MS = 3000;

export interface PodLike {
  metadata?: { name?: string; namespace?: string; labels?: Record<string, string>; deletionTimestamp?: string };
  status?: { podIP?: string; phase?: string; conditions?: Array<{ type?: string; status?: string }> };
}

export function isPodReady(p: PodLike): boolean {
  if (p.metadata?.deletionTimestamp || !p.status?.podIP) return false;
  return p.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
}

export function statsUrl(podIP: string, port: number, tls = false): string {
  const host = podIP.includes(':') ? `[${podIP}]` : podIP;
  return `${tls ? 'https' : 'http'}://${host}:${port}/stats`;
}

/**
 * https /stats (spec.tls): the pod is reached by its IP, which its certificate does not name,
 * so the chain is checked against ca (the mirror's published CA; the system's roots when
 * absent) and the host name is not.
 */
export type FetchStats = (url: string, tls?: { ca?: string }) => Promise<MirrorStats>;

export interface StatsFetchLimits {
  timeoutMs?: number;
  maxBytes?: number;
  ca?: string;
}

/** GET url with node:http (which follows nothing), within the limits; the body as text. */
export function boundedGet(url: string, limits: StatsFetchLimits = {}): Promise<string> {
  const maxBytes = limits.maxBytes ?? STATS_MAX_BYTES;
  const timeoutMs = limits.timeoutMs ?? STATS_TIMEOUT_MS;
  return new Promise<string>((resolve, reject) => {
    let done = false;
    const fail = (err: Error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      req.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new Error(`${url} did not answer within ${timeoutMs} ms`)), timeoutMs);
    const options = { method: 'GET', headers: { accept: 'application/json' }, agent: false as const };
    const req = (url.startsWith('https:')
      ? (cb: Parameters<typeof request>[2]) =>
          httpsRequest(url, { ...options, ...(limits.ca ? { ca: limits.ca } : {}), minVersion: 'TLSv1.2', checkServerIdentity: () => undefined }, cb)
      : (cb: Parameters<typeof request>[2]) => request(url, options, cb))((res) => {
      const status = res.statusCode ?? 0;
      if (status !== 200) {
        res.resume();
        // 3xx included: a redirect is never followed.
        return fail(new Error(`${url} answered ${status}${status >= 300 && status < 400 ? ' (redirects are not followed)' : ''}`));
      }
      const declared = Number(res.headers['content-length']);
      if (Number.isFinite(declared) && declared > maxBytes) {
        return fail(new Error(`${url} announced ${declared} bytes, more than the ${maxBytes} read`));
      }
      const chunks: Buffer[] = [];
      let total = 0;
      res.on('data', (c: Buffer) => {
        total += c.length;
        if (total > maxBytes) return fail(new Error(`${url} sent more than ${maxBytes} bytes`));
        chunks.push(c);
      });
      res.on('error', (err) => fail(err));
      res.on('aborted', () => fail(new Error(`${url} ended the body early`)));
      res.on('end', () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        resolve(Buffer.concat(chunks).toString('utf8'));
      });
    });
    req.on('error', (err) => fail(err));
    req.end();
  });
}

export function httpStatsFetcher(timeoutMs: number = STATS_TIMEOUT_MS, maxBytes: number = STATS_MAX_BYTES): FetchStats {
  return async (url, tls) => {
    const text = await boundedGet(url, { timeoutMs, maxBytes, ca: tls?.ca });
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      throw new Error(`${url} answered something that is not JSON`);
    }
    const stats = parseMirrorStats(body);
    if (!stats) throw new Error(`${url} answered something that is not mirror stats`);
    return stats;
  };
}

/** fn over items, at most `limit` at once; results in input order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return out;
}
