// A token server for distribution's `auth.token` (the Docker Registry v2 token flow), small
// enough to read in one sitting: GET /token?service=S&scope=repository:NAME:ACTIONS with
// HTTP Basic credentials (or none: anonymous) answers {token, access_token, expires_in,
// issued_at}, the token being an ES256 JWT the registry trusts because its key's certificate
// is in `rootcertbundle`.
//
// What distribution 2.8 checks (registry/auth/token/token.go), and so what this signs:
//  - header: `alg` and either `kid` (looked up among the keys of the rootcertbundle
//    certificates by their libtrust key id, see libtrustKeyId) or `x5c` (a certificate chain
//    verified against the rootcertbundle; here the self-signed certificate itself);
//  - claims: `iss` in the registry's `issuer`, `aud` equal to its `service`, `exp`/`nbf`
//    checked with a fixed 60 s leeway, `access` [{type, name, actions}] covering the request.
// Because of that leeway a token stays usable for 60 s after its `exp`; `backdateExp` moves
// `exp` back by the leeway so the registry really refuses a token when `lifetimeSeconds` are
// over (how tests make a token expire mid-session without waiting a minute).
//
// The key and certificate are made by the openssl CLI (Node can sign but not issue X.509).
import { createHash, createPrivateKey, createPublicKey, X509Certificate, randomUUID, type KeyObject } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { freePort, run, tempDir } from '../../tools/launch/proc.js';

/** distribution's clock-skew allowance on exp and nbf (token.Leeway). */
export const REGISTRY_LEEWAY_SECONDS = 60;

export interface TokenServerOptions {
  /** user -> password; wrong credentials get 401. */
  users: Record<string, string>;
  /**
   * Repositories anyone may pull. Requests without credentials get a token (as Docker Hub
   * gives anonymous clients) whose access covers only these; the registry refuses the rest.
   */
  anonymousPull?: string[];
  service?: string;
  issuer?: string;
  /** expires_in as reported to clients (default 300). */
  expiresIn?: number;
  /** How long the registry accepts the token (default: expiresIn). */
  lifetimeSeconds?: number;
  /** Move exp back by the registry's leeway so lifetimeSeconds is what the registry enforces. */
  backdateExp?: boolean;
  /** How the JWT names its signing key (default kid). */
  keyHeader?: 'kid' | 'x5c';
}

export interface TokenRequestLog {
  /** The user whose credentials checked out; undefined when refused or anonymous. */
  user?: string;
  status: number;
  scopes: string[];
  service?: string;
}

export interface TokenServerHandle {
  url: string;
  /** The realm to configure in the registry. */
  realm: string;
  service: string;
  issuer: string;
  /** PEM file with the signing certificate: the registry's rootcertbundle. */
  rootCertBundle: string;
  /** libtrust key id of the signing key (what `kid` carries). */
  keyId: string;
  /** Options may be changed between requests (e.g. expiresIn, keyHeader). */
  options: TokenServerOptions;
  requests(): TokenRequestLog[];
  /** Successful token grants whose scopes include this substring. */
  countTokens(scopeSubstring?: string): number;
  /** Every token handed out so far (for tests that look for leaks). */
  issuedTokens(): string[];
  stop(): Promise<void>;
}

/**
 * docker/libtrust's key id: SHA-256 of the DER (PKIX) public key, first 240 bits, base32
 * without padding (48 characters), in 12 groups of 4 joined by ':'.
 */
export function libtrustKeyId(publicKey: KeyObject): string {
  const der = publicKey.export({ type: 'spki', format: 'der' });
  const b32 = base32(createHash('sha256').update(der).digest().subarray(0, 30));
  return b32.match(/.{4}/g)!.join(':');
}

function base32(bytes: Buffer): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let out = '';
  let bits = 0;
  let value = 0;
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += alphabet[(value << (5 - bits)) & 31];
  return out;
}

/** A P-256 key and a self-signed certificate for it, made with the openssl CLI. */
export async function makeSigningCert(dir: string, cn = 'registry-mirror test token signer'): Promise<{ keyFile: string; certFile: string }> {
  const keyFile = join(dir, 'token-key.pem');
  const certFile = join(dir, 'token-cert.pem');
  await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', `/CN=${cn}`,
  ]);
  return { keyFile, certFile };
}

function parseScopes(u: URL): Array<{ type: string; name: string; actions: string[] }> {
  const out: Array<{ type: string; name: string; actions: string[] }> = [];
  for (const s of u.searchParams.getAll('scope')) {
    for (const one of s.split(' ')) {
      // repository:NAME:ACTIONS, NAME may itself hold a ':' (host:port/...) so split at the ends.
      const first = one.indexOf(':');
      const last = one.lastIndexOf(':');
      if (first < 0 || last <= first) continue;
      out.push({ type: one.slice(0, first), name: one.slice(first + 1, last), actions: one.slice(last + 1).split(',').filter(Boolean) });
    }
  }
  return out;
}

function basicUser(req: IncomingMessage, users: Record<string, string>): string | undefined {
  const h = req.headers.authorization;
  if (typeof h !== 'string' || !/^basic /i.test(h)) return undefined;
  const decoded = Buffer.from(h.slice(6).trim(), 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i < 0) return undefined;
  const user = decoded.slice(0, i);
  return Object.hasOwn(users, user) && users[user] === decoded.slice(i + 1) ? user : undefined;
}

export async function startTokenServer(options: TokenServerOptions): Promise<TokenServerHandle> {
  const dir = tempDir('token-server');
  const { keyFile, certFile } = await makeSigningCert(dir);
  const privateKey = createPrivateKey(readFileSync(keyFile));
  const certPem = readFileSync(certFile);
  const keyId = libtrustKeyId(createPublicKey(certPem));
  const certDerB64 = new X509Certificate(certPem).raw.toString('base64');
  const service = options.service ?? 'registry-mirror-test';
  const issuer = options.issuer ?? 'registry-mirror-test-issuer';
  const log: TokenRequestLog[] = [];
  const issued: string[] = [];

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const u = new URL(req.url ?? '/', 'http://token');
    const scopes = parseScopes(u);
    const entry: TokenRequestLog = { status: 0, scopes: u.searchParams.getAll('scope'), service: u.searchParams.get('service') ?? undefined };
    log.push(entry);
    const send = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      entry.status = status;
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify(body));
    };
    if (u.pathname !== '/token') return send(404, { errors: [{ code: 'NOT_FOUND' }] });
    const user = basicUser(req, options.users);
    const anonymous = req.headers.authorization === undefined;
    if (!user && !anonymous) return send(401, { errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] }, { 'www-authenticate': 'Basic realm="token"' });
    entry.user = user;
    // Users get what they ask for; anonymous clients pull from anonymousPull repositories
    // and get a token with no actions for anything else (the registry then answers 401).
    const actions = (name: string, asked: string[]) =>
      user ? asked : (options.anonymousPull ?? []).includes(name) ? asked.filter((a) => a === 'pull') : [];
    const access = scopes.filter((s) => s.type === 'repository').map((s) => ({ type: s.type, name: s.name, actions: actions(s.name, s.actions) }));

    const now = Math.floor(Date.now() / 1000);
    const expiresIn = options.expiresIn ?? 300;
    const lifetime = options.lifetimeSeconds ?? expiresIn;
    const exp = now + lifetime - (options.backdateExp ? REGISTRY_LEEWAY_SECONDS : 0);
    const header = options.keyHeader === 'x5c' ? { alg: 'ES256', typ: 'JWT', x5c: [certDerB64] } : { alg: 'ES256', typ: 'JWT', kid: keyId };
    const token = await new SignJWT({ access })
      .setProtectedHeader(header)
      .setIssuer(issuer)
      .setSubject(user ?? '')
      .setAudience(service)
      .setIssuedAt(now)
      .setNotBefore(now - 1)
      .setExpirationTime(exp)
      .setJti(randomUUID())
      .sign(privateKey);
    issued.push(token);
    send(200, { token, access_token: token, expires_in: expiresIn, issued_at: new Date(now * 1000).toISOString() });
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err) => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(String(err));
    });
  });
  const port = await freePort();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    realm: `${url}/token`,
    service,
    issuer,
    rootCertBundle: certFile,
    keyId,
    options,
    requests: () => log.map((e) => ({ ...e, scopes: [...e.scopes] })),
    issuedTokens: () => [...issued],
    countTokens: (sub) => log.filter((e) => e.status === 200 && (sub === undefined || e.scopes.some((s) => s.includes(sub)))).length,
    async stop() {
      const closed = new Promise<void>((r) => server.close(() => r()));
      server.closeAllConnections();
      await closed;
    },
  };
}
