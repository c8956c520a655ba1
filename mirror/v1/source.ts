// The HTTP client for the v1 source (`v1.source`, and `v1.sourceIndex` for the index route).
// Anonymous: the mirror forwards no client header (the seed forwarded them all, tokens
// included); it caches public content and serves it to everyone, so it must only ever fetch
// what anyone may fetch. Redirects (layers on blob storage) are followed by undici's
// interceptor; there is no Authorization to leak across origins. Requests are GETs, retried
// as upstream/retry.ts says (before any body byte reaches a client, never after). The source
// has a circuit breaker as every upstream does (upstream/circuit-breaker.ts): while it is
// open a request fails at once with the 503 of an unreachable source, so cached documents
// are served stale without waiting on retries or connect timeouts.

import { Agent, interceptors, request, type Dispatcher } from 'undici';
import type { UpstreamTimeouts } from '../config.js';
import { fastFailReason, reportingBreaker, type BreakerEvent, type BreakerPolicy, type BreakerSnapshot, type CircuitBreaker } from '../upstream/circuit-breaker.js';
import { defaultRetryPolicy, describeError, isRetryableError, withRetries, type RetryPolicy } from '../upstream/retry.js';
import { V1Error } from './errors.js';

export interface V1SourceOptions {
  timeouts?: UpstreamTimeouts;
  retry?: RetryPolicy;
  onRetry?: (source: string, reason: string, delayMs: number) => void;
  /** The circuit breaker's thresholds; absent (or failures 0) = no breaker. */
  breaker?: BreakerPolicy;
  onBreaker?: (source: string, event: BreakerEvent) => void;
}

export interface SourceResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
}

export class V1Source {
  /** The source's host, the `upstream` label of metrics and logs. */
  readonly name: string;
  private readonly agent: Agent;
  private readonly dispatcher: Dispatcher;
  private readonly breaker: CircuitBreaker;

  constructor(
    private readonly source: string,
    private readonly index: string,
    private readonly onRequest: (source: string, status: number | 'error') => void = () => undefined,
    private readonly options: V1SourceOptions = {},
  ) {
    this.name = new URL(source).host;
    const t = options.timeouts ?? { connectMs: 10_000, headersMs: 30_000, idleMs: 60_000 };
    this.agent = new Agent({
      connections: 32,
      keepAliveTimeout: 30_000,
      headersTimeout: t.headersMs,
      // Idle time between body chunks: a stalled source aborts the transfer.
      bodyTimeout: t.idleMs,
      connect: { timeout: t.connectMs },
    });
    this.dispatcher = this.agent.compose(interceptors.redirect({ maxRedirections: 5 }));
    this.breaker = reportingBreaker(options.breaker, (e) => options.onBreaker?.(this.name, e));
  }

  /** The breaker's state (for /metrics and /stats). */
  breakerState(): BreakerSnapshot {
    return this.breaker.snapshot();
  }

  /**
   * GETs a /v1/ path from the source (the index for `index: true`). The caller owns the body.
   * Throws a 503 V1Error when the source cannot be reached.
   */
  async get(path: string, opts: { index?: boolean } = {}): Promise<SourceResponse> {
    const url = (opts.index ? this.index : this.source) + path;
    const permit = this.breaker.acquire();
    if (!permit) {
      this.options.onBreaker?.(this.name, { kind: 'fast-fail' });
      throw new V1Error(503, `the v1 source is unreachable: ${fastFailReason(this.breaker)}`);
    }
    let res: Dispatcher.ResponseData;
    try {
      const send = () =>
        request(url, {
          method: 'GET',
          headers: { 'user-agent': 'registry-mirror', accept: 'application/json, */*' },
          dispatcher: this.dispatcher,
        });
      res = await withRetries(this.options.retry ?? defaultRetryPolicy, send, {
        onAttempt: (status) => {
          this.onRequest(this.name, status);
          if (status !== 'error') this.breaker.succeeded(permit);
        },
        onRetry: ({ reason, delayMs }) => this.options.onRetry?.(this.name, reason, delayMs),
        mayRetry: () => this.breaker.mayRetry(permit),
      });
    } catch (err) {
      if (isRetryableError(err)) this.breaker.failed(permit, describeError(err));
      throw new V1Error(503, `the v1 source is unreachable: ${describeError(err)}`);
    } finally {
      this.breaker.release(permit);
    }
    return { status: res.statusCode, headers: res.headers, body: res.body };
  }

  /**
   * Called once no client is left (fastify's onClose): a layer still downloading only for the
   * cache is aborted (its temp file goes) rather than holding up the shutdown.
   */
  async close(): Promise<void> {
    await this.agent.destroy().catch(() => undefined);
  }
}

/** Source trouble worth serving stale content for: unreachable, 5xx, 429. */
export function isSourceTrouble(err: unknown): boolean {
  return err instanceof V1Error && (err.status >= 500 || err.status === 429);
}

export function header(headers: SourceResponse['headers'], name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}
