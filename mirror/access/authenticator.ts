// Checks a client's Authorization header against the htpasswd users (Basic, bcrypt) and the
// bearer tokens. bcrypt is slow on purpose (tens of milliseconds in bcryptjs, on the event
// loop's thread), and a registry client sends the same credentials on every request of a
// pull, so a successful check is remembered for a minute under a keyed hash of the
// credentials (never the password itself). A failed check is remembered for a few seconds too,
// so hammering with one wrong password costs one bcrypt, not one per request; and only a few
// bcrypt checks run at a time: beyond that the client is told to come back later.

import { createHmac, randomBytes } from 'node:crypto';
import bcrypt from 'bcryptjs';
import { LRUCache } from 'lru-cache';
import { tokenHash } from './credential-files.js';

export interface Principal {
  kind: 'user' | 'token' | 'certificate';
  /** The htpasswd user, "token:<first 8 hex of the token's sha256>", or "cert:<subject CN>" (client-certificate.ts). */
  name: string;
}

export type AuthResult =
  | { ok: true; principal: Principal }
  | { ok: false; reason: 'missing' | 'malformed' | 'bad-credentials' | 'busy' };

export interface AuthenticatorOptions {
  /** How long a successful Basic check is trusted (default 60 s). */
  cacheTtlMs?: number;
  /** How long a failed Basic check is remembered (default 5 s). */
  failureTtlMs?: number;
  /** bcrypt checks running or waiting at once before clients get 429 (default 16). */
  maxPendingChecks?: number;
}

/** Authorization headers longer than this are refused unread. */
const maxHeaderLength = 8192;

export class Authenticator {
  private readonly key = randomBytes(32);
  private readonly good: LRUCache<string, Principal>;
  private readonly bad: LRUCache<string, true>;
  private pending = 0;
  private readonly maxPending: number;
  /** A bcrypt hash of a random password, at the users' cost: unknown users take as long. */
  private readonly dummy: string | undefined;

  constructor(
    private readonly users: ReadonlyMap<string, string>,
    private readonly tokens: ReadonlySet<string>,
    o: AuthenticatorOptions = {},
  ) {
    this.good = new LRUCache({ max: 1000, ttl: o.cacheTtlMs ?? 60_000 });
    this.bad = new LRUCache({ max: 1000, ttl: o.failureTtlMs ?? 5_000 });
    this.maxPending = o.maxPendingChecks ?? 16;
    // Made once at start (it is a bcrypt hash: slow), not in the first unlucky request.
    const first = users.values().next().value;
    if (first) this.dummy = bcrypt.hashSync(randomBytes(12).toString('hex'), bcrypt.getRounds(first));
  }

  get hasUsers(): boolean {
    return this.users.size > 0;
  }

  async authenticate(header: string | undefined): Promise<AuthResult> {
    if (header === undefined || header === '') return { ok: false, reason: 'missing' };
    if (header.length > maxHeaderLength) return { ok: false, reason: 'malformed' };
    const m = /^(\S+) +(\S+)\s*$/.exec(header);
    if (!m) return { ok: false, reason: 'malformed' };
    const scheme = m[1]!.toLowerCase();
    if (scheme === 'bearer') {
      const h = tokenHash(m[2]!);
      // A set lookup of the token's hash: timing tells nothing about any stored token.
      return this.tokens.has(h) ? { ok: true, principal: { kind: 'token', name: `token:${h.slice(0, 8)}` } } : { ok: false, reason: 'bad-credentials' };
    }
    if (scheme !== 'basic') return { ok: false, reason: 'malformed' };
    const decoded = Buffer.from(m[2]!, 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    if (i <= 0) return { ok: false, reason: 'malformed' };
    return this.basic(decoded.slice(0, i), decoded.slice(i + 1));
  }

  private async basic(user: string, password: string): Promise<AuthResult> {
    if (!this.dummy) return { ok: false, reason: 'bad-credentials' };
    const hash = this.users.get(user);
    // The stored hash is part of the key: a changed htpasswd entry is checked afresh.
    const key = createHmac('sha256', this.key).update(`${user}\0${password}\0${hash ?? ''}`).digest('base64');
    const known = this.good.get(key);
    if (known) return { ok: true, principal: known };
    if (this.bad.has(key)) return { ok: false, reason: 'bad-credentials' };
    if (this.pending >= this.maxPending) return { ok: false, reason: 'busy' };
    this.pending++;
    let ok: boolean;
    try {
      ok = await bcrypt.compare(password, hash ?? this.dummy);
    } finally {
      this.pending--;
    }
    if (!ok || hash === undefined) {
      this.bad.set(key, true);
      return { ok: false, reason: 'bad-credentials' };
    }
    const principal: Principal = { kind: 'user', name: user };
    this.good.set(key, principal);
    return { ok: true, principal };
  }
}
