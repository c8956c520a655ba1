// Optional client authentication (config `auth` and/or tls.clientCAFile, off by default), as one fastify onRequest
// hook: it runs after routing and before any handler, so nothing reaches the store or an
// upstream without passing it. Open: /healthz and /readyz always (probes carry no
// credentials), /v1/_ping (v1 clients' discovery), and /metrics, /stats and the status page unless
// `auth.protectMetrics`. Everything else, unknown routes included, needs htpasswd Basic
// credentials or a bearer token; a token grants pulls only (GET/HEAD). With tls.clientCAFile
// a verified client certificate (client-certificate.ts) does too; without `auth` it is required.
//
// The client's Authorization header is only read here; the upstream client builds its own
// (upstream/client.ts) and never forwards the client's.

import { readFileSync } from 'node:fs';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { Counter, type Registry } from 'prom-client';
import { ConfigError, type MirrorConfig } from '../config.js';
import { RegistryError } from '../errors.js';
import { decodePath } from '../v2/path.js';
import { Authenticator, type AuthenticatorOptions, type Principal } from './authenticator.js';
import { checkClientCertificate } from './client-certificate.js';
import { parseHtpasswd, parseTokens } from './credential-files.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Who authenticated this request (only with `auth` or tls.clientCAFile configured). */
    principal?: Principal;
  }
}

export type AuthConfig = NonNullable<MirrorConfig['auth']>;

export const REALM = 'registry-mirror';
const readMethods = new Set(['GET', 'HEAD']);
const alwaysOpen = new Set(['/healthz', '/readyz']);
// The status page (GET /) shows what /stats does: protected alike.
const metricsRoutes = new Set(['/metrics', '/stats', '/']);

/** Reads and checks the htpasswd and tokens files; a problem is a ConfigError naming the key. */
export function loadAuthenticator(auth: AuthConfig, o: AuthenticatorOptions = {}): Authenticator {
  let users = new Map<string, string>();
  let tokens = new Set<string>();
  if (auth.htpasswdFile) {
    const parsed = parseHtpasswd(readFile(auth.htpasswdFile, 'auth.htpasswdFile'));
    if (parsed.problems.length) throw new ConfigError('auth.htpasswdFile', parsed.problems.join('; '));
    users = parsed.entries;
  }
  if (auth.tokensFile) {
    const parsed = parseTokens(readFile(auth.tokensFile, 'auth.tokensFile'));
    if (parsed.problems.length) throw new ConfigError('auth.tokensFile', parsed.problems.join('; '));
    tokens = parsed.entries;
  }
  if (users.size === 0 && tokens.size === 0) {
    throw new ConfigError('auth', 'the htpasswd and tokens files hold no credentials: nobody could pull');
  }
  return new Authenticator(users, tokens, o);
}

function readFile(path: string, key: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(key, `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/** Which requests need no credentials. Routing has happened: routeOptions.url is the route. */
export function isOpen(req: FastifyRequest, protectMetrics: boolean): boolean {
  const route = req.routeOptions.url;
  if (route !== undefined && alwaysOpen.has(route)) return true;
  if (route !== undefined && metricsRoutes.has(route)) return !protectMetrics;
  if (route === '/v1/*') {
    const path = decodePath(req.url);
    return path === '/v1/_ping' || path === '/v1/_ping/';
  }
  return false;
}

export interface ClientAuthOptions {
  /** tls.clientCAFile is set: a verified client certificate authenticates a request. */
  clientCertificates?: boolean;
}

/**
 * The onRequest hook. With `auth`, a request needs a verified client certificate (when
 * clientCertificates) or valid Basic/bearer credentials. With client certificates but no
 * `auth`, a verified certificate is the only way in. A presented certificate that does not
 * verify is counted ("bad-certificate") and the request falls back to its credentials.
 */
export function registerClientAuth(
  app: FastifyInstance,
  auth: AuthConfig | undefined,
  authenticator: Authenticator | undefined,
  registry: Registry,
  log: Logger,
  o: ClientAuthOptions = {},
): void {
  const attempts = new Counter({
    name: 'registry_mirror_client_auth_total',
    help: 'Client authentication checks by result (ok, missing, malformed, bad-credentials, busy, bad-certificate)',
    labelNames: ['result'],
    registers: [registry],
  });
  const challenge = authenticator?.hasUsers ? `Basic realm="${REALM}"` : `Bearer realm="${REALM}"`;
  // Without `auth` there is nothing to protect /metrics with but the certificate: they stay open.
  const protectMetrics = auth?.protectMetrics ?? false;

  app.addHook('onRequest', async (req, reply) => {
    if (isOpen(req, protectMetrics)) return;
    if (o.clientCertificates) {
      const cert = checkClientCertificate(req.raw.socket);
      if (cert.presented && cert.ok) {
        attempts.inc({ result: 'ok' });
        req.principal = cert.principal;
        return;
      }
      if (cert.presented) {
        attempts.inc({ result: 'bad-certificate' });
        log.debug({ reqId: req.id, reason: cert.reason }, 'client certificate does not verify against tls.clientCAFile');
      }
      if (!authenticator) {
        if (!cert.presented) attempts.inc({ result: 'missing' });
        const message = cert.presented ? 'the client certificate does not verify against this mirror\'s client CA' : 'a client certificate is required';
        return refuse(req, reply, new RegistryError('UNAUTHORIZED', message));
      }
    }
    if (!authenticator) return;
    const header = req.headers.authorization;
    const result = await authenticator.authenticate(typeof header === 'string' ? header : undefined);
    attempts.inc({ result: result.ok ? 'ok' : result.reason });
    if (!result.ok) {
      log.debug({ reqId: req.id, reason: result.reason }, 'client authentication failed');
      if (result.reason === 'busy') {
        reply.header('Retry-After', '1');
        return refuse(req, reply, new RegistryError('TOOMANYREQUESTS', 'too many authentication checks in progress; retry shortly'));
      }
      reply.header('WWW-Authenticate', challenge);
      const message = result.reason === 'missing' ? 'authentication required' : 'authentication failed: unknown user, wrong password or invalid token';
      return refuse(req, reply, new RegistryError('UNAUTHORIZED', message));
    }
    req.principal = result.principal;
    if (result.principal.kind === 'token' && !readMethods.has(req.method)) {
      return refuse(req, reply, new RegistryError('DENIED', 'a bearer token grants read-only (pull) access'));
    }
  });
}

/** The error in the shape the API the client speaks expects: v1 {"error"}, else OCI JSON. */
function refuse(req: FastifyRequest, reply: FastifyReply, e: RegistryError): FastifyReply {
  const v1 = req.url === '/v1' || req.url.startsWith('/v1/') || req.url.startsWith('/v1?');
  if (req.url === '/v2' || req.url.startsWith('/v2/') || req.url.startsWith('/v2?')) {
    reply.header('Docker-Distribution-API-Version', 'registry/2.0');
  }
  return reply
    .code(e.status)
    .header('Content-Type', 'application/json')
    .send(v1 ? { error: e.message } : e.body());
}
