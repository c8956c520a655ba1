// The store lease (mirror/store/lease.ts) and the S3 driver's conditional writes (putIf) on a
// real Ceph RGW 16 (test/rig/ceph.ts), one cluster for this file.
//
// First what RGW itself does with the headers (raw SDK requests, one attempt each), as the
// driver's comments state it: If-None-Match: * races give one 200 and 412s; If-Match matches
// only the bare ETag (the quoted form AWS documents is refused with 412, as is an absent key),
// a lost If-Match race answers 412 or 500; DeleteObject ignores If-Match; CompleteMultipartUpload
// answers an empty ETag. Then that the driver and the lease are right on it: of two and of five
// processes acquiring at once exactly one wins, a renewal on a stale tag is refused, of racing
// takeovers of an expired lease exactly one wins, putIf is right whichever ETag form it tries
// first (and learns the bare one), the timer hands the lease over with never two leaders, and
// no lease object is left after release.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  CompleteMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { S3Driver, bareEtag, type S3DriverOptions } from '../../mirror/store/drivers/s3-driver.js';
import { Lease, parseRecord, type LeaseOptions } from '../../mirror/store/lease.js';
import { rgwClient, startCeph, type CephHandle } from '../../tools/launch/ceph.js';
import { sleep, tempDir } from '../../tools/launch/proc.js';

const BUCKET = 'lease';
const KEY = 'state/lease/evictor';

let ceph: CephHandle;
/** One attempt per request: every status RGW answers is seen as it is. */
let raw: S3Client;
let seq = 0;
const drivers: S3Driver[] = [];

function driver(prefix: string, over: Partial<S3DriverOptions> = {}): S3Driver {
  const d = new S3Driver({
    bucket: BUCKET,
    endpoint: ceph.endpoint,
    region: ceph.region,
    prefix,
    forcePathStyle: true,
    credentials: { accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey },
    presignTTLMs: 60_000,
    partSize: 5 * 1024 * 1024,
    uploadExpiryMs: 24 * 3600_000,
    requestTimeoutMs: 10_000,
    scratchDir: tempDir('lease-s3-scratch'),
    ...over,
  });
  drivers.push(d);
  return d;
}

const newPrefix = () => `p${++seq}`;

/** The status of one raw request: 200, 412, 500, ... */
async function status(p: Promise<{ $metadata: { httpStatusCode?: number } }>): Promise<number> {
  try {
    return (await p).$metadata.httpStatusCode ?? 0;
  } catch (err) {
    return (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode ?? -1;
  }
}

const put = (Key: string, Body: string, cond: { IfNoneMatch?: string; IfMatch?: string } = {}) =>
  raw.send(new PutObjectCommand({ Bucket: BUCKET, Key, Body, ...cond }));
const bodyOf = async (Key: string) => (await raw.send(new GetObjectCommand({ Bucket: BUCKET, Key }))).Body!.transformToString();
const tally = (xs: number[]) => xs.reduce<Record<number, number>>((m, x) => ((m[x] = (m[x] ?? 0) + 1), m), {});

/**
 * RGW's access lines since `mark` about `key` (RGW logs a request shortly after answering it):
 * once at least `min` are there and no more came for 300 ms.
 */
async function requestsOf(mark: number, key: string, min: number): Promise<string[]> {
  const path = `/${BUCKET}/${key}`;
  const get = () => ceph.rgwRequests().slice(mark).filter((r) => r.path === path || r.path.startsWith(`${path}?`)).map((r) => `${r.method} ${r.status}`);
  const deadline = Date.now() + 5000;
  let last = get();
  let stableSince = Date.now();
  while (Date.now() < deadline) {
    await sleep(50);
    const now = get();
    if (now.length !== last.length) {
      last = now;
      stableSince = Date.now();
    } else if (now.length >= min && Date.now() - stableSince >= 300) {
      break;
    }
  }
  return last;
}

async function leaseObjects(prefix: string): Promise<string[]> {
  const out = await raw.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: `${prefix}/state/lease/` }));
  return (out.Contents ?? []).map((o) => o.Key!);
}

describe('the lease on a real Ceph RGW 16', { timeout: 300_000 }, () => {
  before(async () => {
    ceph = await startCeph({ mgr: false });
    raw = rgwClient(ceph, { maxAttempts: 1 });
    await raw.send(new CreateBucketCommand({ Bucket: BUCKET }));
  });
  after(async () => {
    for (const d of drivers) await d.close();
    raw?.destroy();
    await ceph?.stop();
  });

  describe('what RGW 16 does with the conditional headers', () => {
    it('If-None-Match: * creates once and answers 412 on an existing key; of racing creates one gets 200, the rest 412', async (t) => {
      const k = `${newPrefix()}/inm`;
      assert.equal(await status(put(k, 'one', { IfNoneMatch: '*' })), 200);
      assert.equal(await status(put(k, 'two', { IfNoneMatch: '*' })), 412);
      assert.equal(await bodyOf(k), 'one');
      for (const n of [2, 5, 10]) {
        for (let round = 0; round < 3; round++) {
          const key = `${k}-race-${n}-${round}`;
          const st = await Promise.all(Array.from({ length: n }, (_, i) => status(put(key, `w${i}`, { IfNoneMatch: '*' }))));
          assert.deepEqual(tally(st), { 200: 1, 412: n - 1 }, `n=${n}: ${st}`);
          assert.equal(await bodyOf(key), `w${st.indexOf(200)}`);
        }
      }
      t.diagnostic('If-None-Match: * races of 2, 5 and 10 writers (3 rounds each): exactly one 200, the rest 412');
    });

    it('If-Match matches only the bare ETag: the quoted one (as AWS documents) and an absent key get 412', async () => {
      const k = `${newPrefix()}/im`;
      const first = await put(k, 'v1');
      const quoted = (await raw.send(new HeadObjectCommand({ Bucket: BUCKET, Key: k }))).ETag!;
      assert.match(quoted, /^"[0-9a-f]{32}"$/, 'HeadObject answers the quoted form');
      assert.equal(first.ETag, quoted, 'as PutObject does');
      assert.equal(await status(put(k, 'quoted', { IfMatch: quoted })), 412, 'the current ETag, quoted: refused');
      assert.equal(await bodyOf(k), 'v1');
      assert.equal(await status(put(k, 'weak', { IfMatch: `W/${quoted}` })), 412);
      assert.equal(await status(put(k, 'v2', { IfMatch: bareEtag(quoted) })), 200, 'the current ETag, bare: written');
      assert.equal(await bodyOf(k), 'v2');
      assert.equal(await status(put(k, 'stale', { IfMatch: bareEtag(quoted) })), 412, 'a stale one: refused');
      assert.equal(await status(put(`${k}-absent`, 'x', { IfMatch: bareEtag(quoted) })), 412, 'an absent key: 412 (AWS documents 404)');
    });

    it('of racing If-Match writers on one ETag one gets 200, the others 412 or 500', async (t) => {
      const k = `${newPrefix()}/im-race`;
      const seen: Record<number, number> = {};
      for (const n of [2, 5, 10]) {
        for (let round = 0; round < 4; round++) {
          const key = `${k}-${n}-${round}`;
          const etag = bareEtag((await put(key, 'base')).ETag!);
          const st = await Promise.all(Array.from({ length: n }, (_, i) => status(put(key, `w${i}`, { IfMatch: etag }))));
          const t = tally(st);
          assert.equal(t[200], 1, `n=${n}: ${st}`);
          assert.ok(st.every((s) => s === 200 || s === 412 || s === 500), `n=${n}: ${st}`);
          assert.equal(await bodyOf(key), `w${st.indexOf(200)}`, "the winner's bytes are there");
          for (const s of st) seen[s] = (seen[s] ?? 0) + 1;
        }
      }
      t.diagnostic(`If-Match races of 2, 5 and 10 writers (4 rounds each), statuses over all: ${JSON.stringify(seen)}`);
    });

    it('DeleteObject ignores If-Match (a stale ETag still deletes); CompleteMultipartUpload answers an empty ETag', async () => {
      const k = `${newPrefix()}/del`;
      const stale = bareEtag((await put(k, 'v1')).ETag!);
      await put(k, 'v2');
      assert.equal(await status(raw.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: k, IfMatch: stale }))), 204);
      assert.equal(await status(raw.send(new HeadObjectCommand({ Bucket: BUCKET, Key: k }))), 404, 'deleted all the same');

      const mp = `${k}-mp`;
      const { UploadId } = await raw.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: mp }));
      const part = await raw.send(new UploadPartCommand({ Bucket: BUCKET, Key: mp, UploadId, PartNumber: 1, Body: Buffer.alloc(100, 1) }));
      const done = await raw.send(
        new CompleteMultipartUploadCommand({ Bucket: BUCKET, Key: mp, UploadId, MultipartUpload: { Parts: [{ PartNumber: 1, ETag: part.ETag }] } }),
      );
      assert.ok(!done.ETag || done.ETag === '""', `CompleteMultipartUpload ETag ${JSON.stringify(done.ETag)}`);
      assert.match((await raw.send(new HeadObjectCommand({ Bucket: BUCKET, Key: mp }))).ETag!, /^"[0-9a-f]{32}-1"$/);
    });
  });

  describe('putIf on RGW', () => {
    it('is right whichever ETag form it tries first: starting quoted it falls back to bare once, and keeps it', async () => {
      const p = newPrefix();
      const mark = ceph.rgwRequests().length;
      const d = driver(p, { ifMatchForm: 'quoted' });
      assert.equal(d.ifMatchForm, 'quoted');
      const v1 = await d.putIf('k', 'v1', { ifNoneMatch: '*' });
      assert.ok(v1 !== 'conflict');
      const v2 = await d.putIf('k', 'v2', { ifMatch: v1.etag });
      assert.ok(v2 !== 'conflict');
      assert.equal(d.ifMatchForm, 'bare', 'learned what RGW matches');
      assert.equal((await d.getWithEtag('k'))?.bytes.toString(), 'v2');
      // From now on one request; a stale tag is still a conflict, in either form given.
      const v3 = await d.putIf('k', 'v3', { ifMatch: `"${v2.etag}"` });
      assert.ok(v3 !== 'conflict');
      assert.equal(await d.putIf('k', 'stale', { ifMatch: v2.etag }), 'conflict');
      assert.equal(await driver(p, { ifMatchForm: 'quoted' }).putIf('k', 'stale', { ifMatch: v2.etag }), 'conflict', 'a fresh quoted-first driver too');
      assert.equal((await d.getWithEtag('k'))?.bytes.toString(), 'v3');
      assert.deepEqual(await requestsOf(mark, `${p}/k`, 11), [
        'PUT 200', // create
        'PUT 412', // v2, quoted: refused
        'GET 200', // read back: the tag unchanged, so a refusal of the form
        'PUT 200', // v2, bare: written
        'GET 200',
        'PUT 200', // v3: bare at once
        'PUT 412', // stale
        'GET 200', // read back: another tag, a conflict
        'PUT 412', // stale, from a fresh quoted-first driver
        'GET 200', // read back: another tag than the one it matched, a conflict (no second form needed)
        'GET 200',
      ]);
    });

    it('races of putIf If-Match on one tag (412s and 500s from RGW, bare-first and quoted-first drivers): exactly one wins', async (t) => {
      const p = newPrefix();
      const first = driver(p);
      let rounds500 = 0;
      for (const n of [2, 5, 10]) {
        for (let round = 0; round < 4; round++) {
          const key = `k-${n}-${round}`;
          const base = await first.putIf(key, 'base', { ifNoneMatch: '*' });
          assert.ok(base !== 'conflict');
          const racers = Array.from({ length: n }, (_, i) => driver(p, { ifMatchForm: i % 2 === 0 ? 'bare' : 'quoted' }));
          const before = ceph.rgwRequests().length;
          const rs = await Promise.all(racers.map((d, i) => d.putIf(key, `racer ${i}`, { ifMatch: base.etag })));
          const winners = rs.flatMap((r, i) => (r === 'conflict' ? [] : [i]));
          assert.equal(winners.length, 1, `n=${n}: ${JSON.stringify(rs)}`);
          const now = await first.getWithEtag(key);
          assert.equal(now?.bytes.toString(), `racer ${winners[0]}`);
          assert.equal(now?.etag, (rs[winners[0]!] as { etag: string }).etag);
          if (ceph.rgwRequests().slice(before).some((r) => r.method === 'PUT' && r.status === 500)) rounds500++;
        }
      }
      t.diagnostic(`rounds in which RGW answered a lost race with 500: ${rounds500} of 12`);
    });
  });

  describe('the lease', () => {
    const timings = { ttlMs: 60_000, renewEveryMs: 15_000, marginMs: 10_000 };
    const clock = { t: Date.now() };
    const lease = (prefix: string, holder: string, over: Partial<LeaseOptions> = {}) =>
      new Lease(driver(prefix), { name: 'evictor', holder, ...timings, now: () => clock.t, ...over });
    const record = async (prefix: string) => {
      const got = await driver(prefix).getWithEtag(KEY);
      return got && parseRecord(got.bytes);
    };

    it('of two and of five processes acquiring at once exactly one wins (If-None-Match race), and releases leave no object', async () => {
      for (const n of [2, 5]) {
        for (let round = 0; round < 3; round++) {
          const p = newPrefix();
          const leases = Array.from({ length: n }, (_, i) => lease(p, `host-${i}`));
          const won = await Promise.all(leases.map((l) => l.acquire()));
          assert.equal(won.filter(Boolean).length, 1, `n=${n}: ${won}`);
          const winner = leases[won.indexOf(true)]!;
          assert.equal((await record(p))?.holder, winner.holder);
          assert.equal(leases.filter((l) => l.isLeader()).length, 1);
          for (const l of leases) await l.release();
          assert.deepEqual(await leaseObjects(p), [], 'no lease object left after release');
        }
      }
    });

    it('a renewal on a stale ETag is refused: the old holder stops at once', async () => {
      const p = newPrefix();
      const a = lease(p, 'a');
      const b = lease(p, 'b');
      assert.equal(await a.acquire(), true);
      const aTag = (await driver(p).getWithEtag(KEY))!.etag;
      assert.equal(await a.renew(), true);
      // Directly: the tag before the renewal is stale now.
      assert.equal(await driver(p).putIf(KEY, 'x', { ifMatch: aTag }), 'conflict');
      // a stalls past its expiry; b takes over; a's renewal is refused.
      clock.t += timings.ttlMs + timings.marginMs + 1;
      assert.equal(await b.acquire(), true);
      assert.equal(await a.renew(), false);
      assert.equal(a.isLeader(), false);
      assert.equal(b.isLeader(), true);
      assert.equal((await record(p))?.holder, 'b');
      await a.release();
      assert.equal((await record(p))?.holder, 'b', "a's release after the loss deletes nothing");
      await b.release();
      assert.deepEqual(await leaseObjects(p), []);
    });

    it('of two and of five takeovers of one expired lease exactly one wins (If-Match race)', async () => {
      for (const n of [2, 5]) {
        for (let round = 0; round < 3; round++) {
          const p = newPrefix();
          assert.equal(await lease(p, 'crashed').acquire(), true);
          const crashed = await record(p);
          clock.t += timings.ttlMs + timings.marginMs + 1;
          const leases = Array.from({ length: n }, (_, i) => lease(p, `host-${i}`));
          const won = await Promise.all(leases.map((l) => l.acquire()));
          assert.equal(won.filter(Boolean).length, 1, `n=${n}: ${won}`);
          const now = await record(p);
          assert.equal(now?.holder, leases[won.indexOf(true)]!.holder);
          assert.notEqual(now?.token, crashed?.token);
          for (const l of leases) await l.release();
          assert.deepEqual(await leaseObjects(p), []);
        }
      }
    });

    it('the timer: three processes, never two leaders; stop() hands over at once; nothing left at the end', async (t) => {
      const p = newPrefix();
      const opts = { ttlMs: 4000, renewEveryMs: 200, marginMs: 1000, now: Date.now };
      const leases = ['a', 'b', 'c'].map((h) => lease(p, h, opts));
      await Promise.all(leases.map((l) => l.start()));
      const handovers: number[] = [];
      for (let i = 0; i < 2; i++) {
        const end = Date.now() + 2500;
        while (Date.now() < end) {
          assert.ok(leases.filter((l) => l.isLeader()).length <= 1, 'two leaders at once');
          await sleep(5);
        }
        const leader = leases.find((l) => l.isLeader());
        assert.ok(leader, 'one of them leads');
        await leader.stop();
        const t0 = Date.now();
        while (!leases.some((l) => l.isLeader()) && Date.now() - t0 < 5000) await sleep(5);
        handovers.push(Date.now() - t0);
        assert.ok(leases.some((l) => l.isLeader()), 'another leads');
        assert.ok(handovers.at(-1)! < 1500, `handover took ${handovers.at(-1)} ms`);
      }
      t.diagnostic(`handover after stop(): ${handovers.join(', ')} ms`);
      for (const l of leases) await l.stop();
      assert.deepEqual(await leaseObjects(p), []);
    });
  });
});
