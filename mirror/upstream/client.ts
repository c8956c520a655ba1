// The HTTP client for one upstream registry: token and Basic auth handled here so callers
// only ask for paths. undici's Agent pools connections; redirects are followed by hand so
// that Authorization is only ever sent to the upstream's own origin (blob storage behind a
// redirect gets a pre-signed URL and must not see our token). Every request it sends is a
// GET or HEAD, so each one (each redirect hop and token fetch too) is retried as retry.ts says.
//
// Whom the credentials reach (issue 11): only the upstream's own origin may challenge us. A
// 401 from a redirect target is an answer, not a question: it is never answered with
// credentials and never replaces the upstream's challenge, so a hostile blob store cannot
// name a realm of its own and collect the Basic credentials sent to token services. The
// realm the upstream names gets them only over a channel no weaker than the upstream's own
// (an https upstream's credentials never go to an http realm).
//
// Each upstream has a circuit breaker (circuit-breaker.ts). send() asks it first: while it is
// open the request fails at once with UNAVAILABLE, no network touched. What it counts are
// the exchanges with the upstream's own origin (token fetches from a realm there included):
// an answer of any status is a success, an exchange whose tries all failed at connection
// level is one failure. Redirect targets (blob storage, a CDN) and a token service on another
// host are not the upstream: their trouble is neither counted nor taken as an answer.

import { LRUCache } from 'lru-cache';
import { Agent, request, type Dispatcher } from 'undici';
import type { UpstreamConfig, UpstreamTimeouts } from '../config.js';
import { RegistryError } from '../errors.js';
import { parseChallenge, type Challenge } from './challenge.js';
import type { Credentials } from './credentials.js';
import { documentLimits, readBody } from './read-body.js';
import { fastFailReason, reportingBreaker, type BreakerEvent, type BreakerPermit, type BreakerPolicy, type BreakerSnapshot, type CircuitBreaker } from './circuit-breaker.js';
import { parseRateLimit, type RateLimitObservation } from './rate-limit.js';
import { defaultRetryPolicy, describeError as describe, isRetryableError, withRetries, type RetryPolicy } from './retry.js';

export interface UpstreamClientOptions {
  retry?: RetryPolicy;
  /** Called before each retry, for the retry metric and a debug line. */
  onRetry?: (upstream: string, reason: string, delayMs: number) => void;
  /** The circuit breaker's thresholds; absent (or failures 0) = no breaker. */
  breaker?: BreakerPolicy;
  /** The breaker's transitions and fast failures, for metrics and logs. */
  onBreaker?: (upstream: string, event: BreakerEvent) => void;
}

export interface UpstreamResponse {
  status: number;
  /** The origin that answered: the upstream's own, or a redirect target's. */
  origin: string;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
}

export interface UpstreamRequest {
  method: 'GET' | 'HEAD';
  /** Path under the upstream's /v2/ (e.g. "library/x/manifests/latest"), or "" for /v2/. */
  path: string;
  /** The repository the request is for: the token scope. */
  repository?: string;
  accept?: string;
  query?: string;
}

interface CachedToken {
  value: string;
  expiresAt: number;
}

const maxRedirects = 5;
const tokenMarginMs = 10_000;

/**
 * Bearer tokens are cached per repository scope, so a client can make the mirror fetch one
 * per repository name it invents: entries and bytes are bounded, expired tokens are dropped
 * by a timer, and a token longer than `tokenBytes` is used once but not kept.
 */
export const tokenCacheLimits = { entries: 1000, bytes: 4 << 20, tokenBytes: 64 << 10 } as const;

export class UpstreamClient {
  readonly name: string;
  readonly origin: string;
  private readonly base: string;
  private challenge: Challenge | undefined;
  private readonly tokens = new LRUCache<string, string>({
    max: tokenCacheLimits.entries,
    maxSize: tokenCacheLimits.bytes,
    maxEntrySize: tokenCacheLimits.tokenBytes,
    sizeCalculation: (token) => Buffer.byteLength(token),
    ttlAutopurge: true,
  });
  private readonly tokenRequests = new Map<string, Promise<CachedToken>>();
  private readonly breaker: CircuitBreaker;
  private lastRateLimit: RateLimitObservation | undefined;

  constructor(
    readonly config: UpstreamConfig,
    private readonly credentials: Credentials | undefined,
    private readonly dispatcher: Dispatcher,
    private readonly onRequest: (upstream: string, status: number | 'error') => void = () => undefined,
    private readonly options: UpstreamClientOptions = {},
  ) {
    this.name = config.name;
    const u = new URL(config.url);
    this.origin = u.origin;
    this.base = `${config.url}/v2/`;
    this.breaker = reportingBreaker(options.breaker, (e) => options.onBreaker?.(this.name, e));
  }

  static agent(timeouts: UpstreamTimeouts = { connectMs: 10_000, headersMs: 30_000, idleMs: 60_000 }): Agent {
    return new Agent({
      connections: 64,
      keepAliveTimeout: 30_000,
      headersTimeout: timeouts.headersMs,
      // Idle time between body chunks: a stalled upstream aborts the transfer.
      bodyTimeout: timeouts.idleMs,
      connect: { timeout: timeouts.connectMs },
    });
  }

  /**
   * One exchange with retries (see retry.ts); every attempt is counted in the metrics, and
   * one with the upstream's own origin in the breaker (an answer or, once the tries are over,
   * a connection-level failure). No retry once the breaker has opened.
   */
  private async retrying(target: string | URL, permit: BreakerPermit, send: () => Promise<Dispatcher.ResponseData>): Promise<Dispatcher.ResponseData> {
    if (!this.breaker.allows(permit)) throw this.fastFail();
    const counted = new URL(target).origin === this.origin;
    try {
      return await withRetries(this.options.retry ?? defaultRetryPolicy, send, {
        onAttempt: (status) => {
          this.onRequest(this.name, status);
          if (counted && status !== 'error') this.breaker.succeeded(permit);
        },
        onRetry: ({ reason, delayMs }) => this.options.onRetry?.(this.name, reason, delayMs),
        mayRetry: () => this.breaker.mayRetry(permit),
      });
    } catch (err) {
      if (counted && isRetryableError(err)) this.breaker.failed(permit, describe(err));
      throw err;
    }
  }

  /** The error of a request the open breaker does not let through (counted as such). */
  private fastFail(): RegistryError {
    this.options.onBreaker?.(this.name, { kind: 'fast-fail' });
    return new RegistryError('UNAVAILABLE', `upstream ${this.name} unreachable: ${fastFailReason(this.breaker)}`);
  }

  /** The breaker's state (for /metrics and /stats). */
  breakerState(): BreakerSnapshot {
    return this.breaker.snapshot();
  }

  /**
   * The rate limit the upstream's own origin last stated (rate-limit.ts), on any answer:
   * manifest GETs and HEADs, a 429 too. Kept until the next answer that states one.
   */
  rateLimit(): RateLimitObservation | undefined {
    return this.lastRateLimit;
  }

  private noteRateLimit(headers: UpstreamResponse['headers']): void {
    const r = parseRateLimit(headers);
    if (r) this.lastRateLimit = { ...r, observedAt: Date.now() };
  }

  /** What the token cache holds now (for /metrics). */
  tokenCacheSize(): { entries: number; bytes: number } {
    return { entries: this.tokens.size, bytes: this.tokens.calculatedSize };
  }

  /** Sends one request with auth; the caller owns (and must consume or destroy) the body. */
  async send(req: UpstreamRequest): Promise<UpstreamResponse> {
    const permit = this.breaker.acquire();
    if (!permit) throw this.fastFail();
    try {
      return await this.sendAuthorized(req, permit);
    } finally {
      this.breaker.release(permit);
    }
  }

  private async sendAuthorized(req: UpstreamRequest, permit: BreakerPermit): Promise<UpstreamResponse> {
    const scope = req.repository ? `repository:${req.repository}:pull` : undefined;
    let res = await this.sendOnce(req, await this.authorization(scope, false, permit), permit);
    await this.refuseForeignChallenge(res);
    if (res.status === 401) {
      const challenge = parseChallenge(res.headers['www-authenticate']);
      await res.body.dump().catch(() => undefined);
      if (!challenge) return res401();
      this.challenge = challenge;
      const auth = await this.authorization(scope, true, permit);
      if (auth === undefined) return res401();
      res = await this.sendOnce(req, auth, permit);
      await this.refuseForeignChallenge(res);
      if (res.status === 401) {
        await res.body.dump().catch(() => undefined);
        if (this.challenge?.scheme === 'bearer') this.tokens.delete(scope ?? '');
        // Without credentials this is an anonymous token (Docker Hub style) that does not
        // cover the repository: say what to fix rather than blame credentials never sent.
        throw new RegistryError(
          'UNAUTHORIZED',
          this.credentials
            ? `upstream ${this.name} refused the credentials`
            : `upstream ${this.name} refused anonymous access; configure credentials for it`,
        );
      }
    }
    return res;

    function res401(): never {
      throw new RegistryError('UNAUTHORIZED', 'upstream requires authentication the mirror cannot provide');
    }
  }

  /** A 401 from a redirect target (blob storage, a CDN) is never answered: see the top. */
  private async refuseForeignChallenge(res: UpstreamResponse): Promise<void> {
    if (res.status !== 401 || res.origin === this.origin) return;
    await res.body.dump().catch(() => undefined);
    throw new RegistryError('UNAVAILABLE', `a redirect of upstream ${this.name} led to ${res.origin}, which asked for authentication; the mirror authenticates to ${this.origin} only`);
  }

  private async sendOnce(req: UpstreamRequest, authorization: string | undefined, permit: BreakerPermit): Promise<UpstreamResponse> {
    let url = this.base + req.path + (req.query ? `?${req.query}` : '');
    for (let hop = 0; ; hop++) {
      const sameOrigin = new URL(url).origin === this.origin;
      const headers: Record<string, string> = { 'user-agent': 'registry-mirror' };
      if (req.accept) headers.accept = req.accept;
      if (authorization && sameOrigin) headers.authorization = authorization;
      let res: Dispatcher.ResponseData;
      const target = url;
      try {
        res = await this.retrying(target, permit, async () => {
          const r = await request(target, { method: req.method, headers, dispatcher: this.dispatcher });
          // Only the upstream speaks for its own limit: not a redirect target (blob storage).
          if (sameOrigin) this.noteRateLimit(r.headers);
          return r;
        });
      } catch (err) {
        if (err instanceof RegistryError) throw err;
        throw new RegistryError('UNAVAILABLE', `upstream ${this.name} unreachable: ${describe(err)}`);
      }
      const location = res.headers.location;
      if (res.statusCode >= 300 && res.statusCode < 400 && typeof location === 'string') {
        await res.body.dump().catch(() => undefined);
        if (hop >= maxRedirects) throw new RegistryError('UNAVAILABLE', `upstream ${this.name} redirected too often`);
        url = new URL(location, url).toString();
        continue;
      }
      return { status: res.statusCode, origin: new URL(url).origin, headers: res.headers, body: res.body };
    }
  }

  /** The Authorization header for a scope, once the upstream has told us its scheme. */
  private async authorization(scope: string | undefined, refresh: boolean, permit: BreakerPermit): Promise<string | undefined> {
    const c = this.challenge;
    if (!c) return undefined;
    if (c.scheme === 'basic') {
      if (!this.credentials) return undefined;
      return `Basic ${Buffer.from(`${this.credentials.username}:${this.credentials.password}`).toString('base64')}`;
    }
    const key = scope ?? '';
    const cached = refresh ? undefined : this.tokens.get(key);
    if (cached) return `Bearer ${cached}`;
    let pending = this.tokenRequests.get(key);
    if (!pending) {
      pending = this.fetchToken(c, scope, permit)
        .then((token) => {
          const ttl = token.expiresAt - Date.now();
          if (ttl > 0) this.tokens.set(key, token.value, { ttl });
          return token;
        })
        .finally(() => this.tokenRequests.delete(key));
      this.tokenRequests.set(key, pending);
    }
    return `Bearer ${(await pending).value}`;
  }

  private async fetchToken(c: Challenge, scope: string | undefined, permit: BreakerPermit): Promise<CachedToken> {
    const realm = c.params.realm;
    if (!realm) throw new RegistryError('UNAUTHORIZED', `upstream ${this.name} sent a Bearer challenge without realm`);
    let u: URL;
    try {
      u = new URL(realm);
    } catch {
      throw new RegistryError('UNAVAILABLE', `upstream ${this.name} named a token realm that is not a URL`);
    }
    if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new RegistryError('UNAVAILABLE', `upstream ${this.name} named a token realm that is not http(s)`);
    if (c.params.service) u.searchParams.set('service', c.params.service);
    if (scope) u.searchParams.set('scope', scope);
    const headers: Record<string, string> = { 'user-agent': 'registry-mirror' };
    if (this.credentials) {
      if (u.protocol === 'http:' && new URL(this.origin).protocol === 'https:') {
        throw new RegistryError('UNAUTHORIZED', `upstream ${this.name} named an http token realm; its credentials are only sent over https`);
      }
      headers.authorization = `Basic ${Buffer.from(`${this.credentials.username}:${this.credentials.password}`).toString('base64')}`;
    }
    let res: Dispatcher.ResponseData;
    try {
      res = await this.retrying(u, permit, () => request(u, { method: 'GET', headers, dispatcher: this.dispatcher }));
    } catch (err) {
      if (err instanceof RegistryError) throw err;
      throw new RegistryError('UNAVAILABLE', `token service of ${this.name} unreachable: ${describe(err)}`);
    }
    if (res.statusCode === 401 || res.statusCode === 403) {
      await res.body.dump().catch(() => undefined);
      throw new RegistryError('UNAUTHORIZED', `token service of ${this.name} refused the credentials`);
    }
    if (res.statusCode !== 200) {
      await res.body.dump().catch(() => undefined);
      throw new RegistryError('UNAVAILABLE', `token service of ${this.name} answered ${res.statusCode}`);
    }
    const text = (await readBody(res, documentLimits.token, 'token response')).toString('utf8');
    let doc: { token?: unknown; access_token?: unknown; expires_in?: unknown; issued_at?: unknown };
    try {
      doc = (JSON.parse(text) ?? {}) as typeof doc;
    } catch {
      doc = {};
    }
    const value = typeof doc.token === 'string' && doc.token ? doc.token : doc.access_token;
    if (typeof value !== 'string' || !value) throw new RegistryError('UNAUTHORIZED', `token service of ${this.name} sent no token`);
    // The spec's default lifetime is 60 s when expires_in is missing.
    const lifetimeMs = (typeof doc.expires_in === 'number' && doc.expires_in > 0 ? doc.expires_in : 60) * 1000;
    const issued = typeof doc.issued_at === 'string' ? Date.parse(doc.issued_at) : NaN;
    const start = Number.isFinite(issued) && issued <= Date.now() ? issued : Date.now();
    return { value, expiresAt: start + Math.max(lifetimeMs - tokenMarginMs, lifetimeMs / 2) };
  }
}

/** Maps an upstream status that is not a success to the error the client should see. */
export function upstreamError(status: number, upstream: string, notFound: RegistryError): RegistryError {
  if (status === 404) return notFound;
  if (status === 401) return new RegistryError('UNAUTHORIZED', `upstream ${upstream} requires authentication`);
  if (status === 403) return new RegistryError('DENIED', `upstream ${upstream} denied access`);
  if (status === 429) return new RegistryError('TOOMANYREQUESTS', `upstream ${upstream} is rate limiting`);
  // Any other 4xx (400 for a reference it does not accept, 406 for an Accept it cannot meet):
  // the upstream refuses this request. That is no outage, so no 503 and no stale serving: it
  // will not give us this content, as a 404 says, and containerd then tries its next host
  // (the upstream itself) and gets the upstream's exact error.
  if (status >= 400 && status < 500) {
    return new RegistryError(notFound.code, `upstream ${upstream} refused the request (${status})`, notFound.detail, 404);
  }
  return new RegistryError('UNAVAILABLE', `upstream ${upstream} answered ${status}`);
}
