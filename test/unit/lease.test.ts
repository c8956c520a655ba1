// The store lease (mirror/store/lease.ts) on the directory driver, with a clock of the test's
// own: acquire, renew, takeover after expiry (never before expiresAt + marginMs), a holder that
// lost the lease stops at once, release (deleted, so another takes it at once; left to expire
// when too close to its end), a write of ours that failed but landed is adopted, an
// unavailable store is no loss until the margin, and the timer loop hands over on stop().
// The same races on a real Ceph RGW: test/integration/lease-rgw.test.ts.

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { StoreUnavailableError, type PutCondition } from '../../mirror/store/driver.js';
import { FsDriver } from '../../mirror/store/drivers/fs-driver.js';
import { Lease, leaseTimings, parseRecord, type LeaseOptions } from '../../mirror/store/lease.js';
import { sleep, tempDir } from '../../tools/launch/proc.js';

const KEY = 'state/lease/evictor';
const timings = { ttlMs: 60_000, renewEveryMs: 15_000, marginMs: 10_000 };

/** A store directory, a clock at t, and leases over it (each with its own FsDriver, as two processes would). */
async function setup() {
  const root = join(tempDir('lease'), 'store');
  const driver = new FsDriver(root);
  await driver.open();
  const clock = { t: 1_000_000 };
  const logs: Array<{ level: string; msg: string; obj: object }> = [];
  const log = {
    info: (obj: object, msg: string) => logs.push({ level: 'info', msg, obj }),
    warn: (obj: object, msg: string) => logs.push({ level: 'warn', msg, obj }),
  };
  const lease = (holder: string, over: Partial<LeaseOptions> = {}, d: ConstructorParameters<typeof Lease>[0] = new FsDriver(root)) =>
    new Lease(d, { name: 'evictor', holder, ...timings, now: () => clock.t, log, ...over });
  const record = async () => {
    const got = await driver.get(KEY);
    return got && parseRecord(got);
  };
  return { root, driver, clock, lease, record, logs };
}

describe('lease: acquire, renew, expiry', () => {
  it('the first acquirer holds it; another waits while it is live', async () => {
    const { lease, record, clock } = await setup();
    const a = lease('a');
    const b = lease('b');
    assert.equal(a.isLeader(), false);
    assert.equal(await a.acquire(), true);
    assert.equal(a.isLeader(), true);
    const rec = await record();
    assert.equal(rec?.holder, 'a');
    assert.equal(rec?.expiresAt, clock.t + timings.ttlMs);
    assert.equal(await b.acquire(), false);
    assert.equal(b.isLeader(), false);
    assert.equal(a.key, KEY);
  });

  it('isLeader() turns false marginMs before expiresAt without a renewal; a renewal extends it', async () => {
    const { lease, record, clock } = await setup();
    const a = lease('a');
    await a.acquire();
    const t0 = clock.t;
    clock.t = t0 + timings.ttlMs - timings.marginMs - 1;
    assert.equal(a.isLeader(), true);
    clock.t = t0 + timings.ttlMs - timings.marginMs;
    assert.equal(a.isLeader(), false, 'within the margin of expiry');
    // The renewal (If-Match on our last write) still succeeds: no one could take it yet.
    assert.equal(await a.renew(), true);
    assert.equal((await record())?.expiresAt, clock.t + timings.ttlMs);
    assert.equal(a.leadsUntil(), clock.t + timings.ttlMs - timings.marginMs);
    assert.equal(a.isLeader(), true);
  });

  it('an expired lease is taken over only after expiresAt + marginMs; the token changes, renewals keep it', async () => {
    const { lease, record, clock, logs } = await setup();
    const a = lease('a');
    const b = lease('b');
    await a.acquire();
    const first = await record();
    await a.renew();
    assert.equal((await record())?.token, first?.token, 'a renewal keeps the token');
    const expiresAt = (await record())!.expiresAt;
    clock.t = expiresAt + timings.marginMs;
    assert.equal(await b.acquire(), false, 'not at expiresAt + marginMs');
    clock.t = expiresAt + timings.marginMs + 1;
    assert.equal(await b.acquire(), true);
    const taken = await record();
    assert.equal(taken?.holder, 'b');
    assert.notEqual(taken?.token, first?.token);
    assert.ok(logs.some((l) => l.msg === 'took over an expired lease' && (l.obj as { takenFrom?: string }).takenFrom === 'a'));
  });

  it('a holder whose renewal is refused has lost it: isLeader() false at once, onChange(false), no write', async () => {
    const { lease, record, clock, logs } = await setup();
    const changes: boolean[] = [];
    const a = lease('a', { onChange: (h) => changes.push(h) });
    const b = lease('b');
    await a.acquire();
    assert.deepEqual(changes, [true]);
    // a is stalled past its expiry (a long GC pause, a partition); b takes over.
    clock.t += timings.ttlMs + timings.marginMs + 1;
    assert.equal(await b.acquire(), true);
    const bRec = await record();
    assert.equal(await a.renew(), false);
    assert.equal(a.isLeader(), false);
    assert.deepEqual(changes, [true, false]);
    assert.deepEqual(await record(), bRec, "b's record is untouched");
    assert.ok(logs.some((l) => l.level === 'warn' && /lost the lease/.test(l.msg)));
    // And a takes it back only as anyone would: when b's expires.
    assert.equal(await a.tick(), false);
    assert.equal(b.isLeader(), true);
  });

  it('release deletes the record at once: another process takes it without waiting for expiry', async () => {
    const { lease, record, driver } = await setup();
    const changes: boolean[] = [];
    const a = lease('a', { onChange: (h) => changes.push(h) });
    const b = lease('b');
    await a.acquire();
    await a.release();
    assert.equal(a.isLeader(), false);
    assert.deepEqual(changes, [true, false]);
    assert.equal(await driver.get(KEY), undefined, 'no lease object left');
    assert.equal(await b.acquire(), true);
    assert.equal((await record())?.holder, 'b');
    await a.release(); // not held: nothing
    assert.equal((await record())?.holder, 'b');
  });

  it('a release within marginMs of expiry leaves the record to expire (it could be taken over meanwhile)', async () => {
    const { lease, record, clock } = await setup();
    const a = lease('a');
    await a.acquire();
    clock.t += timings.ttlMs - timings.marginMs;
    await a.release();
    assert.equal((await record())?.holder, 'a');
    assert.equal(a.isLeader(), false);
  });

  it('of five processes acquiring at once exactly one wins', async () => {
    const { lease, record } = await setup();
    const leases = ['a', 'b', 'c', 'd', 'e'].map((h) => lease(h));
    const won = await Promise.all(leases.map((l) => l.acquire()));
    assert.equal(won.filter(Boolean).length, 1, JSON.stringify(won));
    assert.equal((await record())?.holder, leases[won.indexOf(true)]!.holder);
    assert.equal(leases.filter((l) => l.isLeader()).length, 1);
  });

  it('of five takeovers of one expired lease exactly one wins', async () => {
    const { lease, record, clock } = await setup();
    await lease('old').acquire();
    clock.t += timings.ttlMs + timings.marginMs + 1;
    const leases = ['a', 'b', 'c', 'd', 'e'].map((h) => lease(h));
    const won = await Promise.all(leases.map((l) => l.acquire()));
    assert.equal(won.filter(Boolean).length, 1, JSON.stringify(won));
    assert.equal((await record())?.holder, leases[won.indexOf(true)]!.holder);
  });

  it('bytes that are not a lease record are taken over as expired', async () => {
    const { lease, record, driver } = await setup();
    await driver.put(KEY, 'not json');
    assert.equal(await lease('a').acquire(), true);
    assert.equal((await record())?.holder, 'a');
    assert.equal(parseRecord(Buffer.from('{"holder":"x","token":"t"}')), undefined);
    assert.equal(parseRecord(Buffer.from('{"holder":"x","token":"t","expiresAt":"1"}')), undefined);
  });
});

/** A driver over the store whose conditional writes can be made to fail, before or after writing. */
function faulty(root: string) {
  const inner = new FsDriver(root);
  const f = {
    mode: 'ok' as 'ok' | 'fail-before' | 'fail-after',
    getWithEtag: (key: string) => inner.getWithEtag(key),
    delete: (key: string) => inner.delete(key),
    async putIf(key: string, bytes: Buffer | string, cond: PutCondition) {
      if (f.mode === 'fail-before') throw new StoreUnavailableError('S3 PutObject: no answer within 10000 ms');
      const r = await inner.putIf(key, bytes, cond);
      if (f.mode === 'fail-after') throw new StoreUnavailableError('S3 PutObject: socket hang up');
      return r;
    },
  };
  return f;
}

describe('lease: an unreliable store', () => {
  it('an unavailable store is no loss: it leads until its margin, warns once, and renews when the store is back', async () => {
    const { lease, clock, logs, root } = await setup();
    const d = faulty(root);
    const a = lease('a', {}, d);
    await a.acquire();
    const t0 = clock.t;
    d.mode = 'fail-before';
    clock.t = t0 + timings.renewEveryMs;
    assert.equal(await a.tick(), true, 'still leads');
    clock.t = t0 + 2 * timings.renewEveryMs;
    assert.equal(await a.tick(), true);
    assert.equal(logs.filter((l) => /could not renew/.test(l.msg)).length, 1, 'warned once');
    clock.t = t0 + timings.ttlMs - timings.marginMs;
    assert.equal(await a.tick(), false, 'not within the margin');
    d.mode = 'ok';
    assert.equal(await a.tick(), true, 'renewed: no one had taken it');
  });

  it('a renewal that failed but landed is adopted (our token), not taken as a loss', async () => {
    const { lease, record, root } = await setup();
    const d = faulty(root);
    const changes: boolean[] = [];
    const a = lease('a', { onChange: (h) => changes.push(h) }, d);
    await a.acquire();
    const token = (await record())?.token;
    d.mode = 'fail-after';
    assert.equal(await a.renew(), true, 'the write landed, the answer did not');
    d.mode = 'ok';
    // Our last known tag is stale now: refused, read back, our token, adopted, renewed.
    assert.equal(await a.renew(), true);
    assert.equal((await record())?.token, token);
    assert.deepEqual(changes, [true]);
  });

  it('acquire() rejects when the store cannot be read; tick() does not', async () => {
    const { lease } = await setup();
    const broken = {
      getWithEtag: async () => {
        throw new StoreUnavailableError('S3 GetObject: ECONNREFUSED');
      },
      putIf: async () => 'conflict' as const,
      delete: async () => undefined,
    };
    const a = lease('a', {}, broken);
    await assert.rejects(a.acquire(), StoreUnavailableError);
    assert.equal(await a.tick(), false);
  });
});

describe('lease: the timer', () => {
  it('start(): one of two leads; stop() releases, and the other leads within a renewal interval', async () => {
    const { root } = await setup();
    const opts = { name: 'evictor', ttlMs: 2000, renewEveryMs: 100, marginMs: 300 };
    // The server's logger is what it logs with.
    const a = new Lease(new FsDriver(root), { ...opts, holder: 'a', log: pino({ level: 'silent' }) });
    const b = new Lease(new FsDriver(root), { ...opts, holder: 'b' });
    const [la, lb] = await Promise.all([a.start(), b.start()]);
    assert.equal(Number(la) + Number(lb), 1);
    const [leader, other] = la ? [a, b] : [b, a];
    // Renewals keep it well past one ttl.
    await sleep(2500);
    assert.equal(leader.isLeader(), true);
    assert.equal(other.isLeader(), false);
    await leader.stop();
    assert.equal(leader.isLeader(), false);
    const t0 = Date.now();
    while (!other.isLeader() && Date.now() - t0 < 2000) await sleep(20);
    assert.equal(other.isLeader(), true);
    assert.ok(Date.now() - t0 < 500, `took ${Date.now() - t0} ms`);
    await other.stop();
    assert.equal(await new FsDriver(root).get(KEY), undefined, 'no lease object left');
  });

  it('options are checked; leaseTimings follows the request bound', () => {
    const d = new FsDriver(tempDir('lease-opts'));
    const base = { name: 'x', holder: 'h', ...timings };
    assert.throws(() => new Lease(d, { ...base, name: 'a/b' }));
    assert.throws(() => new Lease(d, { ...base, holder: '' }));
    assert.throws(() => new Lease(d, { ...base, ttlMs: timings.renewEveryMs + timings.marginMs }));
    assert.throws(() => new Lease(d, { ...base, marginMs: 0 }));
    assert.deepEqual(leaseTimings(30_000), { ttlMs: 160_000, renewEveryMs: 40_000, marginMs: 40_000 });
    assert.doesNotThrow(() => new Lease(d, { ...base, ...leaseTimings(1000, 0) }));
  });
});
