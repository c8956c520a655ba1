// Exponential backoff with jitter: spreads retries of many clients (or many keys) so a
// recovering apiserver is not hit by all of them at the same instant.

export interface BackoffPolicy {
  baseMs: number;
  maxMs: number;
}

/** Delay before retry number `attempt` (1-based): base * 2^(attempt-1), capped, then scaled
 * by a random factor in [0.5, 1). */
export function backoffDelay(attempt: number, p: BackoffPolicy, random: () => number = Math.random): number {
  const exp = Math.min(p.maxMs, p.baseMs * 2 ** Math.max(0, Math.min(attempt - 1, 30)));
  return Math.round(exp * (0.5 + random() * 0.5));
}

/** `ms` scaled by a random factor in [1, 1 + spread): for periodic timers (relist, resync). */
export function jitter(ms: number, spread = 0.2, random: () => number = Math.random): number {
  return Math.round(ms * (1 + random() * spread));
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
