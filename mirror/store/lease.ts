// A lease in the store: which one of the processes sharing a store (a fleet on one bucket) runs
// a singleton job, here expiry and size eviction (evictor.ts). The lease is one small object,
// state/lease/<name>, holding {holder, token, expiresAt, writtenAt, seq} as JSON, and is only
// ever written with the driver's conditional put (driver.ts putIf):
//
//  - acquire: nothing at the key -> put with If-None-Match: * (of racing processes one wins);
//    a record whose expiresAt + marginMs has passed (or that is not a record) -> put with
//    If-Match on the ETag just read (of racing takeovers one wins); a live record -> wait;
//  - renew (every renewEveryMs while held): put with If-Match on the ETag of our last write.
//    Refused ('conflict') means another process wrote the lease: we lost it and stop at once
//    (isLeader() is false from that moment), unless what is there is a write of our own that
//    an earlier, failed attempt left after all (our token): then it is adopted;
//  - release (at shutdown): we stop leading first, then delete the object, so another process
//    takes over at once instead of after the expiry. Only while our lease still has more than
//    marginMs to run: no one may take it over before expiresAt + marginMs, so the delete can
//    only remove our own record (DeleteObject's If-Match cannot be relied on: RGW 16 ignores
//    it). A later release leaves the object to expire.
//
// Every write carries a fresh token per acquisition and a counter, so no two bodies are alike
// and a driver can settle an ambiguous answer by reading its bytes back (driver.ts).
//
// Clocks: expiresAt is the writer's Date.now() taken before the write was sent, plus ttlMs.
// The holder leads only while its own clock is before expiresAt - marginMs, and a contender
// takes over only once its own clock is past expiresAt + marginMs. So two processes never lead
// at once as long as their clocks differ by less than marginMs and whatever the leader started
// while it led (one removal: up to two store requests, each bounded by the store's request
// timeout) ends within marginMs too. leaseTimings() derives the timings from that bound.
//
// A store unavailable during a renew is not a loss: the holder keeps leading until its margin
// and tries again at the next renew; after a restart a process is a new holder (a new token)
// and waits for its old record to expire like anyone else.

import { randomUUID } from 'node:crypto';
import type { StoreDriver } from './driver.js';

export interface LeaseRecord {
  /** Who holds it: the process's instance name (host-pid). */
  holder: string;
  /** One per acquisition: a process's renewals keep it, a takeover brings a new one. */
  token: string;
  /** Ms since epoch, by the holder's clock. */
  expiresAt: number;
}

interface LeaseLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface LeaseOptions {
  /** The object is state/lease/<name>. */
  name: string;
  /** This process among the others: content-store.ts instanceName() (`${hostname}-${pid}`). */
  holder: string;
  /** How long one write holds the lease. */
  ttlMs: number;
  /** How often the holder renews, and how often the others look whether it expired. */
  renewEveryMs: number;
  /** Clock skew plus the longest request a leader may have in flight when it stops. */
  marginMs: number;
  /** The clock (tests). */
  now?: () => number;
  log?: LeaseLog;
  /** Called when this process starts holding the lease (true) or stops (false: lost, released). */
  onChange?: (held: boolean) => void;
}

/** The store's request bound (S3: upstreamTimeouts.headers) plus this: the default margin. */
export const MAX_CLOCK_SKEW_MS = 10_000;

/**
 * Timings for a store whose requests are answered within requestTimeoutMs: marginMs covers
 * that and the clock skew, renewals come every marginMs (so a request in flight ends before
 * the next is due) and a write holds for 4 x marginMs: the holder leads for 3 x marginMs after
 * each write, through two renewals that fail. A crashed holder is taken over within
 * 5 x marginMs of its last renewal.
 */
export function leaseTimings(requestTimeoutMs: number, maxClockSkewMs = MAX_CLOCK_SKEW_MS): Pick<LeaseOptions, 'ttlMs' | 'renewEveryMs' | 'marginMs'> {
  const marginMs = requestTimeoutMs + maxClockSkewMs;
  return { ttlMs: 4 * marginMs, renewEveryMs: marginMs, marginMs };
}

interface Held {
  token: string;
  etag: string;
  expiresAt: number;
}

type LeaseDriver = Pick<StoreDriver, 'getWithEtag' | 'putIf' | 'delete'>;

export class Lease {
  readonly key: string;
  readonly holder: string;
  private readonly now: () => number;
  private held: Held | undefined;
  private seq = 0;
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<boolean> | undefined;
  private running = false;
  /** The last renewal failed (store unavailable): warned once per streak. */
  private renewFailing = false;

  constructor(
    private readonly driver: LeaseDriver,
    private readonly opts: LeaseOptions,
  ) {
    if (!/^[A-Za-z0-9._-]+$/.test(opts.name) || opts.name === '.' || opts.name === '..') throw new Error(`lease name ${JSON.stringify(opts.name)}: letters, digits, . _ - only`);
    if (!opts.holder) throw new Error('lease: no holder name');
    if (!(opts.marginMs > 0) || !(opts.renewEveryMs > 0) || !(opts.ttlMs > opts.renewEveryMs + opts.marginMs)) {
      throw new Error(`lease ${opts.name}: ttlMs (${opts.ttlMs}) must exceed renewEveryMs (${opts.renewEveryMs}) + marginMs (${opts.marginMs}), both positive`);
    }
    this.key = `state/lease/${opts.name}`;
    this.holder = opts.holder;
    this.now = opts.now ?? Date.now;
  }

  /** True only while this process holds the lease and its own clock is before expiresAt - marginMs. */
  isLeader(): boolean {
    return this.held !== undefined && this.now() < this.held.expiresAt - this.opts.marginMs;
  }

  /** Until when (ms since epoch) isLeader() stays true without another renewal; undefined when not held. */
  leadsUntil(): number | undefined {
    return this.held && this.held.expiresAt - this.opts.marginMs;
  }

  /** The record in the store now (undefined: none, or not a record). */
  async read(): Promise<LeaseRecord | undefined> {
    const cur = await this.driver.getWithEtag(this.key);
    return cur && parseRecord(cur.bytes);
  }

  /**
   * Takes the lease when no one holds it (nothing there, or a record past expiresAt +
   * marginMs); renews it when this process holds it. Answers whether this process leads now.
   * Rejects when the store cannot be read or written (StoreUnavailableError).
   */
  async acquire(): Promise<boolean> {
    if (this.held) return this.renew();
    const cur = await this.driver.getWithEtag(this.key);
    const rec = cur && parseRecord(cur.bytes);
    const seen = this.now();
    if (cur && rec && seen <= rec.expiresAt + this.opts.marginMs) return false;
    const token = randomUUID();
    const expiresAt = this.now() + this.opts.ttlMs;
    const r = await this.driver.putIf(this.key, this.body(token, expiresAt), cur ? { ifMatch: cur.etag } : { ifNoneMatch: '*' });
    if (r === 'conflict') return false;
    this.held = { token, etag: r.etag, expiresAt };
    this.renewFailing = false;
    this.opts.log?.info(
      cur
        ? { lease: this.key, holder: this.holder, takenFrom: rec?.holder ?? '(not a lease record)', expiredMsAgo: rec ? seen - rec.expiresAt : undefined }
        : { lease: this.key, holder: this.holder },
      cur ? 'took over an expired lease' : 'acquired the lease',
    );
    this.opts.onChange?.(true);
    return this.isLeader();
  }

  /**
   * Extends the lease this process holds (If-Match on our last write). Refused: another process
   * has written it, so this one stops leading at once and answers false. A store that cannot be
   * reached is no loss: the answer is whether the lease still runs without it.
   */
  async renew(): Promise<boolean> {
    return this.renewOnce(true);
  }

  private async renewOnce(mayAdopt: boolean): Promise<boolean> {
    const h = this.held;
    if (!h) return false;
    const expiresAt = this.now() + this.opts.ttlMs;
    let r: { etag: string } | 'conflict';
    try {
      r = await this.driver.putIf(this.key, this.body(h.token, expiresAt), { ifMatch: h.etag });
    } catch (err) {
      if (!this.renewFailing) {
        this.renewFailing = true;
        this.opts.log?.warn({ lease: this.key, err: (err as Error).message, leadsUntil: new Date(h.expiresAt - this.opts.marginMs).toISOString() }, 'could not renew the lease; trying again');
      }
      return this.isLeader();
    }
    if (this.held !== h) return this.isLeader(); // released meanwhile
    if (r !== 'conflict') {
      this.held = { token: h.token, etag: r.etag, expiresAt };
      this.renewFailing = false;
      return this.isLeader();
    }
    // Refused. Another holder, unless an earlier attempt of ours that failed did land.
    let rec: LeaseRecord | undefined;
    let etag: string | undefined;
    try {
      const cur = await this.driver.getWithEtag(this.key);
      rec = cur && parseRecord(cur.bytes);
      etag = cur?.etag;
    } catch {
      /* cannot tell: lost */
    }
    if (this.held !== h) return this.isLeader();
    if (mayAdopt && rec && etag && rec.token === h.token) {
      this.held = { token: h.token, etag, expiresAt: rec.expiresAt };
      return this.renewOnce(false);
    }
    this.held = undefined;
    this.opts.log?.warn({ lease: this.key, holder: this.holder, now: rec?.holder ?? '(unknown)' }, 'lost the lease: another process holds it now');
    this.opts.onChange?.(false);
    return false;
  }

  /**
   * Stops leading at once and, while the lease still runs for more than marginMs, deletes it so
   * another process may take it now. Never rejects.
   */
  async release(): Promise<void> {
    const h = this.held;
    if (!h) return;
    this.held = undefined;
    this.opts.onChange?.(false);
    let deleted = false;
    if (this.now() < h.expiresAt - this.opts.marginMs) {
      try {
        await this.driver.delete(this.key);
        deleted = true;
      } catch (err) {
        this.opts.log?.warn({ lease: this.key, err: (err as Error).message }, 'could not delete the released lease; it expires');
        return;
      }
    }
    this.opts.log?.info({ lease: this.key, holder: this.holder, deleted }, deleted ? 'released the lease' : 'released the lease (left to expire)');
  }

  /** One step: renew when held, else try to acquire. Never rejects; answers isLeader(). */
  tick(): Promise<boolean> {
    if (!this.ticking) {
      this.ticking = (this.held ? this.renew() : this.acquire())
        .catch(() => this.isLeader())
        .finally(() => {
          this.ticking = undefined;
        });
    }
    return this.ticking;
  }

  /** Tries once (awaited), then every renewEveryMs until stop(). Answers whether it leads. */
  async start(): Promise<boolean> {
    if (this.running) return this.isLeader();
    this.running = true;
    const leads = await this.tick();
    this.schedule();
    return leads;
  }

  private schedule(): void {
    if (!this.running) return;
    this.timer = setTimeout(() => {
      void this.tick().finally(() => this.schedule());
    }, this.opts.renewEveryMs);
    this.timer.unref();
  }

  /** Stops the timer, waits for a step in flight, and releases the lease. */
  async stop(): Promise<void> {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.ticking;
    await this.release();
  }

  private body(token: string, expiresAt: number): string {
    return JSON.stringify({ holder: this.holder, token, expiresAt, writtenAt: this.now(), seq: ++this.seq });
  }
}

/** A lease record, or undefined when the bytes are not one (taken over as expired). */
export function parseRecord(bytes: Buffer): LeaseRecord | undefined {
  let v: unknown;
  try {
    v = JSON.parse(bytes.toString('utf8'));
  } catch {
    return undefined;
  }
  const o = v as Partial<LeaseRecord> | null;
  if (!o || typeof o !== 'object' || typeof o.holder !== 'string' || typeof o.token !== 'string' || typeof o.expiresAt !== 'number' || !Number.isFinite(o.expiresAt)) {
    return undefined;
  }
  return { holder: o.holder, token: o.token, expiresAt: o.expiresAt };
}
