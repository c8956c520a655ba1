// A circuit breaker per upstream (issue 14, item 7): an upstream that is down costs the
// clients one probe per breaker window, not every request its retries and timeouts.
//
// closed: every request goes to the upstream. A request that ends without any response
// headers from the upstream (every try refused, reset, or timed out connecting or waiting
// for headers: the connection-level errors retry.ts retries) is one failure, whatever the
// number of tries it made; a request that got an answer (any status: 404, 401, 500 and 503
// too) is a success and starts the count again. `failures` failed requests in a row open it.
//
// open: for `openForMs` every request fails at once, without touching the network, with the
// error a down upstream gives (UNAVAILABLE), so a cached manifest is served stale at once.
// Requests already in flight make no more tries.
//
// half-open: the first request after the window is the probe, and the only one: the others
// keep failing at once while it is out. It gets one try (no retries until it has an
// answer): an answer closes the breaker, a connection-level failure opens it for another
// window. A probe that ends without reaching the upstream (its token service failed, say)
// gives the probe to the next request.
//
// Statuses are not failures, 5xx included: an upstream that answers is reachable, its
// answer may differ for the next repository (one broken manifest must not cut off every
// other image), 503 and 429 come with Retry-After that retry.ts honours, and an answer costs
// the client a backoff, never a connect timeout.
//
// Outcomes are matched to the window a request was admitted in (`generation`): a slow
// request admitted before the breaker opened cannot close it or count against the probe.
//
// Pure: no timers, no I/O, the clock is injected.

export type BreakerState = 'closed' | 'open' | 'half-open';

export interface BreakerPolicy {
  /** Failed requests in a row that open the breaker; 0 turns the breaker off. */
  failures: number;
  /** How long it stays open before one probe request is let through. */
  openForMs: number;
}

export const defaultBreakerPolicy: BreakerPolicy = { failures: 3, openForMs: 10_000 };

/** What a request admitted by acquire() carries until it ends. */
export interface BreakerPermit {
  readonly generation: number;
  readonly probe: boolean;
}

export interface BreakerSnapshot {
  state: BreakerState;
  /** Failed requests in a row (the probe's included); back to 0 on an answer. */
  consecutiveFailures: number;
  /** When it last opened (ms since the epoch), while open or half-open. */
  openedAt?: number;
  /** When the next probe may go (ms since the epoch), while open. */
  probeAt?: number;
  /** What the last of those failed requests ran into (e.g. ECONNREFUSED). */
  lastFailure?: string;
}

export interface BreakerEvents {
  /** closed -> open (reopened false), or half-open -> open after a failed probe. */
  onOpen?: (info: { reason: string; failures: number; reopened: boolean }) => void;
  /** The probe got an answer. */
  onClose?: () => void;
  /** The window is over and a probe is let through. */
  onProbe?: () => void;
}

export class CircuitBreaker {
  private st: BreakerState = 'closed';
  private consecutive = 0;
  private generation = 0;
  private openedAt = 0;
  private probing = false;
  private lastFailure: string | undefined;

  constructor(
    readonly policy: BreakerPolicy,
    private readonly now: () => number = Date.now,
    private readonly events: BreakerEvents = {},
  ) {}

  get enabled(): boolean {
    return this.policy.failures > 0;
  }

  /**
   * Admits a request, or answers undefined: fail it at once. Once the window is over, the
   * first caller gets the probe (the breaker goes half-open) and the rest undefined until
   * the probe has its answer.
   */
  acquire(): BreakerPermit | undefined {
    if (!this.enabled || this.st === 'closed') return { generation: this.generation, probe: false };
    if (this.st === 'open') {
      if (this.now() < this.openedAt + this.policy.openForMs) return undefined;
      this.st = 'half-open';
      this.events.onProbe?.();
    }
    if (this.probing) return undefined;
    this.probing = true;
    return { generation: this.generation, probe: true };
  }

  /** The request got an answer (any status) from the upstream. */
  succeeded(p: BreakerPermit): void {
    if (!this.enabled || p.generation !== this.generation) return;
    if (this.st === 'closed') {
      this.consecutive = 0;
      this.lastFailure = undefined;
    } else if (this.st === 'half-open' && p.probe) {
      this.st = 'closed';
      this.consecutive = 0;
      this.lastFailure = undefined;
      this.probing = false;
      this.events.onClose?.();
    }
  }

  /** The request ended without an answer: every try it was allowed failed at connection level. */
  failed(p: BreakerPermit, reason: string): void {
    if (!this.enabled || p.generation !== this.generation) return;
    if (this.st === 'closed') {
      this.consecutive++;
      this.lastFailure = reason;
      if (this.consecutive >= this.policy.failures) this.open(false);
    } else if (this.st === 'half-open' && p.probe) {
      this.consecutive++;
      this.lastFailure = reason;
      this.open(true);
    }
  }

  /**
   * The request is over. A probe that neither succeeded nor failed (it never reached the
   * upstream) hands the probe on to the next request.
   */
  release(p: BreakerPermit): void {
    if (this.enabled && p.probe && p.generation === this.generation && this.st === 'half-open') this.probing = false;
  }

  /**
   * May this request try again after a failed try? Only while closed and in the window it
   * was admitted in: never while open, and not the probe before its answer.
   */
  mayRetry(p: BreakerPermit): boolean {
    return !this.enabled || (p.generation === this.generation && this.st === 'closed');
  }

  /** May this request start another exchange (a redirect hop, a token fetch)? */
  allows(p: BreakerPermit): boolean {
    return !this.enabled || (p.generation === this.generation && (this.st === 'closed' || (this.st === 'half-open' && p.probe)));
  }

  /** Milliseconds until the next probe may go (0 unless open). */
  retryInMs(): number {
    return this.enabled && this.st === 'open' ? Math.max(0, this.openedAt + this.policy.openForMs - this.now()) : 0;
  }

  snapshot(): BreakerSnapshot {
    const s: BreakerSnapshot = { state: this.st, consecutiveFailures: this.consecutive };
    if (this.st !== 'closed') s.openedAt = this.openedAt;
    if (this.st === 'open') s.probeAt = this.openedAt + this.policy.openForMs;
    if (this.lastFailure !== undefined) s.lastFailure = this.lastFailure;
    return s;
  }

  private open(reopened: boolean): void {
    this.st = 'open';
    this.generation++;
    this.openedAt = this.now();
    this.probing = false;
    this.events.onOpen?.({ reason: this.lastFailure ?? 'error', failures: this.consecutive, reopened });
  }
}

/** What a client reports about its breaker, for metrics and logs. */
export type BreakerEvent =
  | { kind: 'open'; reason: string; failures: number; reopened: boolean; openForMs: number }
  | { kind: 'close' }
  | { kind: 'probe' }
  | { kind: 'fast-fail' };

/** A breaker whose transitions are reported as BreakerEvents (off when policy is undefined). */
export function reportingBreaker(policy: BreakerPolicy | undefined, report: (e: BreakerEvent) => void, now: () => number = Date.now): CircuitBreaker {
  const p = policy ?? { failures: 0, openForMs: defaultBreakerPolicy.openForMs };
  return new CircuitBreaker(p, now, {
    onOpen: (i) => report({ kind: 'open', ...i, openForMs: p.openForMs }),
    onClose: () => report({ kind: 'close' }),
    onProbe: () => report({ kind: 'probe' }),
  });
}

/** The fast failure's wording: why the upstream is not asked, and until when. */
export function fastFailReason(b: CircuitBreaker): string {
  const s = b.snapshot();
  const why = `${s.lastFailure ?? 'no answer'} on ${s.consecutiveFailures} request${s.consecutiveFailures === 1 ? '' : 's'} in a row`;
  return s.state === 'open'
    ? `${why}; circuit breaker open, next try in ${Math.ceil(b.retryInMs() / 1000)}s`
    : `${why}; circuit breaker half-open, a probe request is out`;
}
