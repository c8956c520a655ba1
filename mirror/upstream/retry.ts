// Retries of idempotent upstream requests (GET and HEAD: manifests, blob opens, tags, token
// fetches, v1 documents and layers), kept small and in one place.
//
// What is retried: a request that failed to connect or got no response headers in time
// (connection refused or reset, connect/headers timeout), and the answers that say "try
// again": 429, 500, 502, 503, 504. What is never retried: anything once the response headers
// have been handed to the caller. A caller streams the body to clients from then on, and a
// body that breaks half way cannot be resumed without sending a client bytes twice; the
// download aborts instead (store/download.ts).
//
// The wait before retry n (n = 1, 2, ...) is "full jitter" (AWS architecture blog, 2015):
// random(0, min(maxDelay, backoff * 2^(n-1))), so a crowd of mirrors that saw the same outage
// does not come back in lockstep. An upstream's Retry-After (seconds or an HTTP date) is
// honoured instead when it is at most maxDelay; when it asks for longer, the mirror does not
// hold its client that long: the last answer goes back at once (a 429 becomes TOOMANYREQUESTS,
// or the cached manifest is served stale).
//
// A caller can stop the retries early (hooks.mayRetry): the upstream's circuit breaker
// (circuit-breaker.ts) says no while it is open, so a request in flight when it opens makes
// no more tries, and its half-open probe gets one try until the upstream has answered.

import type { Dispatcher } from 'undici';

export interface RetryPolicy {
  /** Tries in all, the first included (1 = no retries). */
  attempts: number;
  /** Base of the exponential backoff. */
  backoffMs: number;
  /** Cap on one wait, Retry-After included. */
  maxDelayMs: number;
}

export const defaultRetryPolicy: RetryPolicy = { attempts: 3, backoffMs: 200, maxDelayMs: 5000 };

export const retryableStatuses: ReadonlySet<number> = new Set([429, 500, 502, 503, 504]);

/** Errors of a request that never got its response headers, worth another try. */
const retryableCodes = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
]);

export function isRetryableError(err: unknown): boolean {
  const e = err as { code?: unknown; cause?: { code?: unknown } } | undefined;
  const code = e?.code ?? e?.cause?.code;
  return typeof code === 'string' && retryableCodes.has(code);
}

/** The full-jitter wait before retry `n` (1-based). */
export function backoffDelay(n: number, policy: RetryPolicy, random: () => number = Math.random): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.backoffMs * 2 ** Math.max(0, n - 1));
  return Math.floor(random() * ceiling);
}

/** Milliseconds a Retry-After header asks for (delta-seconds or an HTTP date), if valid. */
export function retryAfterMs(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const v = (Array.isArray(value) ? value[0] : value)?.trim();
  if (!v) return undefined;
  if (/^\d{1,10}$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isFinite(at) ? Math.max(0, at - now) : undefined;
}

export interface RetryHooks {
  /** Every attempt's outcome (a status or 'error'), for the upstream request metrics. */
  onAttempt?: (status: number | 'error') => void;
  /** Called before each wait: what failed and how long the wait is. */
  onRetry?: (info: { attempt: number; reason: string; delayMs: number }) => void;
  /**
   * Asked before each retry (and again after the wait, for a failed connection): false ends
   * the retries, the last error is thrown or the last answer returned as when tries run out.
   */
  mayRetry?: () => boolean;
  sleep?: (ms: number) => Promise<void>;
  random?: () => number;
}

/**
 * Runs `send` up to policy.attempts times. Returns the first response that is not worth
 * retrying, or the last one; throws the last error when no attempt got a response.
 */
export async function withRetries(policy: RetryPolicy, send: () => Promise<Dispatcher.ResponseData>, hooks: RetryHooks = {}): Promise<Dispatcher.ResponseData> {
  const sleep = hooks.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const mayRetry = hooks.mayRetry ?? (() => true);
  for (let attempt = 1; ; attempt++) {
    let res: Dispatcher.ResponseData;
    try {
      res = await send();
    } catch (err) {
      hooks.onAttempt?.('error');
      if (attempt >= policy.attempts || !isRetryableError(err) || !mayRetry()) throw err;
      const delayMs = backoffDelay(attempt, policy, hooks.random);
      hooks.onRetry?.({ attempt, reason: describeError(err), delayMs });
      await sleep(delayMs);
      if (!mayRetry()) throw err;
      continue;
    }
    hooks.onAttempt?.(res.statusCode);
    if (!retryableStatuses.has(res.statusCode) || attempt >= policy.attempts || !mayRetry()) return res;
    const asked = retryAfterMs(res.headers['retry-after']);
    if (asked !== undefined && asked > policy.maxDelayMs) return res;
    await res.body.dump().catch(() => undefined);
    const delayMs = asked ?? backoffDelay(attempt, policy, hooks.random);
    hooks.onRetry?.({ attempt, reason: `status ${res.statusCode}`, delayMs });
    await sleep(delayMs);
  }
}

export function describeError(err: unknown): string {
  const e = err as { code?: string; message?: string; cause?: { code?: string } };
  return e.code ?? e.cause?.code ?? e.message ?? 'error';
}
