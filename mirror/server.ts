// Assembles the mirror: store, upstream clients, caches and routes in one fastify instance.
// Fastify's logger is pino; the per-request line is written in onResponse so it carries the
// cache result and byte count, and no request header is ever logged.

import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Server as TlsServer } from 'node:tls';
import type { Logger } from 'pino';
import { loadAuthenticator, registerClientAuth } from './access/client-auth.js';
import { isDockerHub, RepositoryPolicy } from './access/patterns.js';
import { V1Access } from './access/v1-access.js';
import { BlobCache } from './cache/blob-cache.js';
import { isRememberedNotFound, ManifestCache } from './cache/manifest-cache.js';
import { ReferrersCache } from './cache/referrers-cache.js';
import { clientServerOptions, limitClientConnections } from './client-connections.js';
import { ConfigError, upstreamBreakerFor, type MirrorConfig } from './config.js';
import { RegistryError } from './errors.js';
import { MirrorMetrics, type Api, type CacheResult, type Kind } from './metrics.js';
import { UpstreamRouter } from './routing.js';
import { ContentStore, instanceName } from './store/content-store.js';
import { Lease, leaseTimings } from './store/lease.js';
import { createDriver } from './store/drivers/create.js';
import { Cluster } from './cluster/forward.js';
import { Peers } from './cluster/peers.js';
import { httpsPeers, plainPeers } from './tls/peer-client.js';
import { httpsServerOptions, loadTlsMaterial, TlsReloader } from './tls/serving.js';
import { Evictor } from './store/evictor.js';
import { Prefetcher } from './prefetch.js';
import { RepoIndex } from './store/repo-index.js';
import type { BreakerEvent } from './upstream/circuit-breaker.js';
import { UpstreamClient } from './upstream/client.js';
import { loadCredentials } from './upstream/credentials.js';
import { registerStatusPage } from './status/route.js';
import { registerV1 } from './v1/routes.js';
import { registerV2 } from './v2/routes.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** repository: as the upstream knows it (v2 manifests and blobs), for the status page's top lists. */
    mirror?: { api: Api; kind: Kind; upstream?: string; repository?: string; result?: CacheResult; source?: 'cache' | 'upstream' | 'peer' };
  }
}

export interface Mirror {
  app: FastifyInstance;
  store: ContentStore;
  repos: RepoIndex;
  metrics: MirrorMetrics;
  evictor: Evictor;
  /** SIGTERM's first step: /readyz answers 503 while requests are still served. */
  beginDrain(): void;
  /** Stops background work and flushes state; the HTTP server is closed by app.close(). */
  shutdown(): Promise<void>;
}

export const loggerOptions = (level: string) => ({
  level,
  // Belt and braces: nothing logs headers, but if a future line does, secrets stay out.
  redact: {
    paths: ['req.headers.authorization', 'headers.authorization', '*.password', 'password', '*.token', 'token'],
    censor: '[redacted]',
  },
});

const accessFlushMs = 30_000;
/** On a shared bucket access times are the leader's only view of other replicas' use: sooner. */
const sharedAccessFlushMs = 5_000;
/** How long shutdown waits for verified blobs to be committed (downloads still running are cut). */
const commitGraceMs = 10_000;

export async function createMirror(config: MirrorConfig, logger: Logger): Promise<Mirror> {
  // Unreadable or invalid htpasswd/tokens files stop start-up (ConfigError) before the store opens.
  const authenticator = config.auth ? loadAuthenticator(config.auth) : undefined;
  // Likewise unusable certificate, key or CA files.
  const tlsMaterial = config.tls ? loadTlsMaterial(config.tls) : undefined;
  const driver = createDriver(config);
  const store = new ContentStore(driver, { accessMaxAgeMs: config.cache.ttlMs });
  let swept: { sweptTemp: number; sweptUploads: number };
  try {
    swept = await store.open();
  } catch (err) {
    await driver.close().catch(() => undefined);
    // A bucket that cannot be used is a setting to fix, named as one (exit 2 in main.ts).
    if (config.storage.s3) throw new ConfigError('storage.s3', `${driver.location}: ${(err as Error).message}`);
    throw err;
  }
  if (swept.sweptTemp > 0) logger.info({ sweptTemp: swept.sweptTemp }, 'removed unfinished downloads of a previous run');
  if (swept.sweptUploads > 0) logger.info({ sweptUploads: swept.sweptUploads }, 'aborted abandoned multipart uploads');
  const repos = new RepoIndex(driver);
  const metrics = new MirrorMetrics(() => store.totals());

  const dispatcher = UpstreamClient.agent(config.upstreamTimeouts);
  const retry = config.upstreamRetries;
  const onRetry = (upstream: string, reason: string, delayMs: number) => {
    metrics.upstreamRetry(upstream);
    logger.debug({ upstream, reason, delayMs }, 'retrying upstream request');
  };
  const onBreaker = (upstream: string, e: BreakerEvent) => {
    if (e.kind === 'fast-fail') return metrics.breakerFastFailed(upstream);
    if (e.kind === 'open') {
      metrics.breakerOpened(upstream);
      logger.warn({ upstream, reason: e.reason, failures: e.failures, openForMs: e.openForMs }, e.reopened ? 'upstream probe failed: circuit breaker open again' : 'upstream unreachable: circuit breaker open, requests fail at once');
    } else if (e.kind === 'close') {
      logger.info({ upstream }, 'upstream answered the probe: circuit breaker closed');
    } else {
      logger.debug({ upstream }, 'circuit breaker half-open: one probe request goes through');
    }
  };
  const clients = new Map<string, UpstreamClient>();
  for (const u of Object.values(config.upstreams)) {
    clients.set(
      u.name,
      new UpstreamClient(u, loadCredentials(u), dispatcher, (up, status) => metrics.upstreamRequest(up, status), {
        retry,
        onRetry,
        breaker: upstreamBreakerFor(config, u),
        onBreaker,
      }),
    );
  }
  metrics.watchRateLimits(() => [...clients.values()].map((c) => ({ upstream: c.name, rateLimit: c.rateLimit() })));
  metrics.watchTokenCaches(() => [...clients.values()].map((c) => ({ upstream: c.name, ...c.tokenCacheSize() })));
  const policies = new Map<string, RepositoryPolicy>();
  for (const u of Object.values(config.upstreams)) {
    const policy = RepositoryPolicy.from(u.name, u.allow, u.deny, isDockerHub(u.name, u.url));
    if (policy) policies.set(u.name, policy);
  }
  const router = new UpstreamRouter(clients, config.defaultUpstream, policies);
  // A shared bucket is swept by one replica at a time: the holder of the eviction lease.
  const leaseTiming = leaseTimings(config.upstreamTimeouts.headersMs);
  const lease = driver.shared ? new Lease(driver, { name: 'evictor', holder: instanceName(), ...leaseTiming, log: logger }) : undefined;
  const s3 = config.storage.s3;
  const flushEveryMs = driver.shared ? sharedAccessFlushMs : accessFlushMs;
  // What another replica uses must not go under it: a presigned URL it handed out (redirect
  // mode) lives presignTTL; content it is serving or downloading is touched again at each
  // flush (ContentStore.flushAccess); its access times reach the bucket flushEveryMs late, and
  // clocks may differ by the lease margin.
  const graceMs = s3 ? (s3.redirect ? s3.presignTTLMs : 0) + flushEveryMs + leaseTiming.marginMs : 0;
  const evictor = new Evictor(store, metrics, logger, { ttlMs: config.cache.ttlMs, maxBytes: config.storage.maxBytes, ...(lease ? { gate: lease, graceMs } : {}) }, repos);
  const blobs = new BlobCache(store, repos, metrics, logger, {
    maxBytes: config.storage.maxBytes,
    makeRoom: (bytes) => evictor.makeRoom(bytes),
    redirect: config.storage.s3?.redirect ?? false,
  });
  const manifests = new ManifestCache(store, repos, metrics, logger, config.cache.tagTTLMs, (bytes) => evictor.makeRoom(bytes), {
    notFoundTTLMs: config.cache.notFoundTTLMs,
  });
  metrics.watchNotFoundCache(() => manifests.notFoundEntries());
  metrics.watchStorageBound(config.storage.maxBytes);
  const prefetcher = new Prefetcher(config.prefetch, router, manifests, blobs, store, repos, metrics, logger, {
    tagTTLMs: config.cache.tagTTLMs,
    maxBytes: config.storage.maxBytes,
  });
  if (config.prefetch.length > 0) metrics.watchPrefetch(() => prefetcher.status());

  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    return503OnClosing: true,
    // Registry clients send long repository paths; the reference grammar caps them anyway.
    routerOptions: { maxParamLength: 1024 },
    // Keep-alive, header and request deadlines follow clientTimeouts.idle (client-connections.ts).
    ...clientServerOptions(config.clientTimeouts),
    // A handshake must finish within the idle timeout too.
    ...(tlsMaterial ? { https: httpsServerOptions(tlsMaterial, config.clientTimeouts.idleMs) } : {}),
  }) as unknown as FastifyInstance;
  // An https server is a tls.Server: setSecureContext swaps certificate, key and client CA for new handshakes.
  const tlsReloader =
    config.tls && tlsMaterial
      ? new TlsReloader(config.tls, tlsMaterial, (options) => (app.server as unknown as TlsServer).setSecureContext(options), metrics.registry, logger)
      : undefined;
  app.removeAllContentTypeParsers();
  // The mirror accepts no request bodies; pushes are refused before their body is read.
  app.addContentTypeParser('*', (_req, _payload, done) => done(null));
  // Idle and write timeouts and limits.maxConnections. Its onRequest hook (the 503 past the
  // limit) comes first, so a refused request costs no auth, store or upstream work.
  limitClientConnections(app, { timeouts: config.clientTimeouts, maxConnections: config.limits.maxConnections }, metrics.registry, logger);
  // Before every route and the not-found handler, so it guards all of them.
  const clientCertificates = tlsMaterial?.clientCa !== undefined;
  if (authenticator || clientCertificates) registerClientAuth(app, config.auth, authenticator, metrics.registry, logger, { clientCertificates });

  app.addHook('onResponse', async (req, reply) => {
    const m = req.mirror;
    const bytes = Number(reply.getHeader('content-length')) || 0;
    const complete = reply.raw.writableFinished && req.method === 'GET' && reply.statusCode < 300;
    if (m) {
      // A remembered upstream 404 is a 404 answered by the cache: counted as result "negative".
      metrics.request(m.api, m.kind, m.result === 'negative' ? 'negative' : reply.statusCode >= 400 ? 'error' : (m.result ?? 'pass'));
      metrics.duration.observe({ api: m.api, kind: m.kind }, reply.elapsedTime / 1000);
      const served = complete && (m.kind === 'blob' || m.kind === 'manifest' || m.kind === 'image') ? bytes : 0;
      if (served > 0) metrics.served(m.source ?? 'cache', served);
      // Only answers that succeeded: a name counts once the upstream has had it (repository-traffic.ts).
      if (m.repository && m.upstream && reply.statusCode < 400 && (served > 0 || m.result === 'miss')) {
        metrics.repositories.record(`${m.upstream}/${m.repository}`, { bytesServed: served, misses: m.result === 'miss' ? 1 : 0 });
      }
    }
    req.log.info(
      {
        method: req.method,
        url: req.url,
        status: reply.statusCode,
        cache: m?.result,
        upstream: m?.upstream,
        principal: req.principal?.name,
        bytes: complete ? bytes : undefined,
        aborted: !reply.raw.writableFinished || undefined,
        ms: Math.round(reply.elapsedTime),
      },
      'request',
    );
  });

  app.setErrorHandler((err, req, reply) => {
    const e = toRegistryError(err);
    if (req.mirror && isRememberedNotFound(err)) req.mirror.result = 'negative';
    if (e.status >= 500 && !(err instanceof RegistryError)) req.log.error({ err }, 'internal error');
    if (reply.sent || reply.raw.headersSent) {
      reply.raw.destroy();
      return;
    }
    if (req.url.startsWith('/v2')) reply.header('Docker-Distribution-API-Version', 'registry/2.0');
    return reply.code(e.status).header('Content-Type', 'application/json').send(e.body());
  });
  // Every unknown route (any method, any path) is a 404 with OCI error JSON.
  app.setNotFoundHandler((req, reply) => {
    if (req.url.startsWith('/v2')) reply.header('Docker-Distribution-API-Version', 'registry/2.0');
    reply.code(404).header('Content-Type', 'application/json').send(new RegistryError('NAME_UNKNOWN', 'no such route').body());
  });

  // Replicas on one bucket: peers from DNS (or a list), misses routed to their owner.
  const cluster = config.cluster
    ? new Cluster(
        new Peers(
          config.cluster,
          undefined,
          (members) => logger.info({ members }, 'cluster members changed'),
          tlsReloader ? httpsPeers(() => tlsReloader.current, Math.min(config.upstreamTimeouts.connectMs, 2000)) : plainPeers,
        ),
        metrics,
        logger,
        { connectMs: Math.min(config.upstreamTimeouts.connectMs, 2000), headersMs: config.upstreamTimeouts.headersMs + 5000, idleMs: config.upstreamTimeouts.idleMs },
      )
    : undefined;
  if (cluster) metrics.watchClusterPeers(() => cluster.peers.members().length);

  let ready = false;
  let closing = false;
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => (ready && !closing && (cluster?.peers.ready ?? true) ? { status: 'ready' } : reply.code(503).send({ status: 'not ready' })));
  app.get('/metrics', async (_req, reply) => reply.header('Content-Type', metrics.registry.contentType).send(await metrics.registry.metrics()));
  app.get('/stats', async () => ({ ...metrics.stats(), ...(cluster ? { cluster: cluster.peers.snapshot() } : {}) }));
  registerStatusPage(app, metrics, config);
  registerV2(app, { router, blobs, manifests, repos, metrics, referrers: new ReferrersCache(manifests, metrics, logger, config.cache.tagTTLMs), ...(cluster ? { cluster } : {}) });
  let v1: ReturnType<typeof registerV1> | undefined;
  if (config.v1.enabled) {
    v1 = registerV1(app, {
      config: config.v1,
      store,
      metrics,
      log: logger,
      maxBytes: config.storage.maxBytes,
      makeRoom: (bytes) => evictor.makeRoom(bytes),
      access: v1Access(config),
      source: { timeouts: config.upstreamTimeouts, retry, onRetry, breaker: config.upstreamBreaker, onBreaker },
    });
  }
  const v1Cache = v1;
  metrics.watchBreakers(() => [
    ...[...clients.values()].map((c) => ({ upstream: c.name, ...c.breakerState() })),
    ...(v1Cache ? [{ upstream: v1Cache.sourceName, ...v1Cache.sourceBreaker() }] : []),
  ]);

  const flushTimer = setInterval(() => {
    store.flushAccess().catch((err) => logger.warn({ err: (err as Error).message }, 'could not save access times'));
  }, flushEveryMs);
  flushTimer.unref();
  app.addHook('onReady', async () => {
    // What a previous run pinned is pinned again before the expiry pass can remove it.
    await prefetcher.pinFromStore();
    await lease?.start();
    await evictor.expire();
    evictor.start();
    tlsReloader?.start();
    // Ready means: store open and (in a fleet) the peers learnt once.
    await cluster?.peers.start();
    ready = true;
    // Not awaited: readiness does not wait on the upstream (prefetch.ts says why).
    prefetcher.start();
  });
  app.addHook('preClose', async () => {
    closing = true;
  });

  return {
    app,
    store,
    repos,
    metrics,
    evictor,
    beginDrain() {
      closing = true;
    },
    async shutdown() {
      clearInterval(flushTimer);
      tlsReloader?.stop();
      evictor.stop();
      // Released: another replica takes the sweeping over at once.
      await lease?.stop();
      prefetcher.stop();
      // A blob's client has its last byte before the blob is fsynced and renamed into the
      // store: let those commits finish (bounded), or the next start fetches them again.
      const settling = Promise.all([blobs.idle(), v1Cache?.idle()]);
      await Promise.race([settling, new Promise((r) => setTimeout(r, commitGraceMs).unref())]);
      await store.flushAccess().catch((err) => logger.warn({ err: (err as Error).message }, 'could not save access times'));
      await cluster?.close();
      await driver.close().catch(() => undefined);
      await dispatcher.close().catch(() => undefined);
    },
  };
}

function toRegistryError(err: unknown): RegistryError {
  if (err instanceof RegistryError) return err;
  const e = err as { statusCode?: number; code?: string; message?: string };
  if (e.statusCode === 404) return new RegistryError('NAME_UNKNOWN', 'no such route');
  if (e.statusCode === 405) return new RegistryError('UNSUPPORTED');
  if (e.statusCode === 431 || e.statusCode === 414) return new RegistryError('NAME_INVALID', 'request too large', undefined, e.statusCode);
  if (e.statusCode && e.statusCode >= 400 && e.statusCode < 500) return new RegistryError('NAME_INVALID', 'bad request', undefined, e.statusCode);
  return new RegistryError('UNKNOWN', 'internal error');
}

/** v1 names are Docker Hub's (a single name is library/<name>), so its patterns are completed alike. */
function v1Access(config: MirrorConfig): V1Access | undefined {
  const policy = RepositoryPolicy.from('v1', config.v1.allow, config.v1.deny, true);
  return policy ? new V1Access(policy) : undefined;
}
