// S3Driver against a real Ceph RGW 16 (tools/launch/ceph.ts): the StoreDriver conformance suite,
// then what only S3 does: open() naming why a store cannot be used (the S3 error code, or the
// network error, quickly), multipart commits that send each byte once with bounded parallelism
// and leave no upload open when they fail, the sweep of expired uploads, presigned GETs, a
// body cut mid-way, deadlines against a server that never answers, and an RGW outage (last:
// RGW is stopped, and started again to prove the same driver recovers).
//
// A TCP proxy of this file's own sits between some drivers and RGW: it counts the bytes sent
// to RGW, the part uploads in flight, and kills connections on demand (a part upload, or a
// response body after N bytes). It is transparent to SigV4 (the Host header it gets is signed).

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { createServer, type Server, type Socket, connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  AbortMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  ListMultipartUploadsCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { isStoreUnavailable } from '../../mirror/store/driver.js';
import { PARTS_IN_FLIGHT, PARTS_PER_COMMIT, S3Driver, type S3DriverOptions } from '../../mirror/store/drivers/s3-driver.js';
import { rgwClient, startCeph, type CephHandle } from '../../tools/launch/ceph.js';
import { freePort, sleep, tempDir } from '../../tools/launch/proc.js';
import { readAll, storeDriverSuite, writeTemp } from '../unit/store-driver-suite.js';

const MiB = 1024 * 1024;
const BUCKET = 'mirror';

let ceph: CephHandle;
let admin: S3Client;
let seq = 0;

function options(over: Partial<S3DriverOptions> = {}): S3DriverOptions {
  return {
    bucket: BUCKET,
    endpoint: ceph.endpoint,
    region: ceph.region,
    prefix: `p${++seq}/store`,
    forcePathStyle: true,
    credentials: { accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey },
    presignTTLMs: 60_000,
    partSize: 5 * MiB,
    uploadExpiryMs: 24 * 3600_000,
    requestTimeoutMs: 10_000,
    scratchDir: tempDir('s3-scratch'),
    ...over,
  };
}

async function openUploads(prefix: string): Promise<Array<{ key: string; uploadId: string }>> {
  const out = await admin.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: prefix }));
  return (out.Uploads ?? []).map((u) => ({ key: u.Key!, uploadId: u.UploadId! }));
}

/** Rejects, and answers how long that took; the error must satisfy check. */
async function rejectsIn(p: Promise<unknown>, check: (err: Error) => boolean): Promise<number> {
  return (await rejection(p, check)).ms;
}

async function rejection(p: Promise<unknown>, check: (err: Error) => boolean): Promise<{ ms: number; err: Error }> {
  const t0 = Date.now();
  try {
    await p;
  } catch (err) {
    const ms = Date.now() - t0;
    assert.ok(check(err as Error), `unexpected error: ${(err as Error).stack}`);
    return { ms, err: err as Error };
  }
  assert.fail('resolved, expected a rejection');
}

// ---- a counting, faulting TCP proxy -------------------------------------------------------

interface Proxy {
  endpoint: string;
  /** Bytes clients sent towards RGW (request lines, headers and bodies). */
  bytesUp: number;
  /** Most part uploads in flight at once, overall and for any one key. */
  maxParts: number;
  maxPartsPerKey: number;
  /** Connections killed because a request matched failRequest. */
  failed: number;
  /** Kill the connection of any request whose request line matches. */
  failRequest: RegExp | undefined;
  /** Kill a connection once it has sent clients this many bytes. */
  cutAfterBytesDown: number | undefined;
  /** Hold back the answer to the next request whose request line matches; resolves once one is held. */
  holdAnswer(re: RegExp): Promise<void>;
  /** Lets held answers go on. */
  release(): void;
  reset(): void;
  close(): Promise<void>;
}

async function startProxy(targetPort: number): Promise<Proxy> {
  const sockets = new Set<Socket>();
  const partsByKey = new Map<string, number>();
  let partsNow = 0;
  let hold: { re: RegExp; started: () => void } | undefined;
  const held = new Set<() => void>();
  const proxy: Proxy = {
    endpoint: '',
    bytesUp: 0,
    maxParts: 0,
    maxPartsPerKey: 0,
    failed: 0,
    failRequest: undefined,
    cutAfterBytesDown: undefined,
    holdAnswer(re) {
      return new Promise<void>((started) => (hold = { re, started }));
    },
    release() {
      hold = undefined;
      for (const go of [...held]) go();
      held.clear();
    },
    reset() {
      this.release();
      this.bytesUp = 0;
      this.maxParts = 0;
      this.maxPartsPerKey = 0;
      this.failed = 0;
      this.failRequest = undefined;
      this.cutAfterBytesDown = undefined;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const server: Server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    // Requests on this connection that have no final answer yet: their part key, or ''.
    const pending: string[] = [];
    let upTail = '';
    let downTail = '';
    let down = 0;
    let heldChunks: Buffer[] | undefined;
    const kill = (): void => {
      client.destroy();
      upstream.destroy();
    };
    const settle = (): void => {
      for (const key of pending.splice(0)) {
        if (!key) continue;
        partsNow--;
        partsByKey.set(key, partsByKey.get(key)! - 1);
      }
    };
    // A request line or status line is handled once: in the chunk where it ends (the tail
    // of the previous chunk is kept so that one split across two chunks is still seen).
    client.on('data', (chunk: Buffer) => {
      const text = upTail + chunk.toString('latin1');
      const seen = upTail.length;
      upTail = text.slice(-300);
      for (const m of text.matchAll(/(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP\/1\.1\r\n/g)) {
        if (m.index! + m[0].length <= seen) continue;
        if (proxy.failRequest?.test(`${m[1]} ${m[2]}`)) {
          proxy.failed++;
          kill();
          return;
        }
        if (hold?.re.test(`${m[1]} ${m[2]}`)) {
          hold.started();
          hold = undefined;
          heldChunks = [];
          held.add(() => {
            for (const c of heldChunks ?? []) client.write(c);
            heldChunks = undefined;
          });
        }
        const part = m[1] === 'PUT' && /[?&]partNumber=/.test(m[2]!) ? m[2]!.split('?')[0]! : '';
        pending.push(part);
        if (part) {
          partsNow++;
          partsByKey.set(part, (partsByKey.get(part) ?? 0) + 1);
          proxy.maxParts = Math.max(proxy.maxParts, partsNow);
          proxy.maxPartsPerKey = Math.max(proxy.maxPartsPerKey, partsByKey.get(part)!);
        }
      }
      proxy.bytesUp += chunk.length;
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (heldChunks) {
        heldChunks.push(chunk);
        return;
      }
      down += chunk.length;
      if (proxy.cutAfterBytesDown !== undefined && down > proxy.cutAfterBytesDown) {
        kill();
        return;
      }
      const text = downTail + chunk.toString('latin1');
      const seen = downTail.length;
      downTail = text.slice(-20);
      // Final answers only (a 100 Continue is not one).
      for (const m of text.matchAll(/HTTP\/1\.1 [2-5]\d\d /g)) {
        if (m.index! + m[0].length <= seen) continue;
        const key = pending.shift();
        if (key) {
          partsNow--;
          partsByKey.set(key, partsByKey.get(key)! - 1);
        }
      }
      client.write(chunk);
    });
    const closed = (): void => {
      settle();
      kill();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('close', closed).on('error', () => undefined);
    upstream.on('close', closed).on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  proxy.endpoint = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  return proxy;
}

/** A TCP server that accepts connections and never answers. */
async function startBlackHole(): Promise<{ endpoint: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined).on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  return {
    endpoint: `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

// ---- the tests ------------------------------------------------------------------------------

describe('S3Driver on a real Ceph RGW 16', { timeout: 300_000 }, () => {
  let proxy: Proxy;
  const drivers: S3Driver[] = [];
  /** A driver closed in after(). */
  const track = (d: S3Driver): S3Driver => {
    drivers.push(d);
    return d;
  };

  before(async () => {
    ceph = await startCeph({ mgr: false });
    admin = rgwClient(ceph);
    await admin.send(new CreateBucketCommand({ Bucket: BUCKET }));
    proxy = await startProxy(ceph.port);
  });
  after(async () => {
    for (const d of drivers) await d.close();
    admin?.destroy();
    await proxy?.close();
    await ceph?.stop();
  });

  it('brings up Ceph (mon, memstore OSD, RGW) from Debian packages', (t) => {
    t.diagnostic(`Ceph: RGW answers ${ceph.timings.rgwAnswerMs} ms after start, S3 user ready at ${ceph.timings.readyMs} ms`);
    assert.ok(ceph.pids().rgw);
  });

  storeDriverSuite(
    's3 (Ceph RGW 16)',
    async () => {
      const o = options();
      const driver = new S3Driver(o);
      const extra: S3Driver[] = [];
      return {
        driver,
        reopen: () => {
          const d = new S3Driver(o);
          extra.push(d);
          return d;
        },
        cleanup: async () => {
          await driver.close();
          for (const d of extra) await d.close();
        },
      };
    },
    { multipartBytes: 12 * MiB, partBoundary: 5 * MiB },
  );

  it('states its location with bucket, prefix and endpoint, and no credentials', () => {
    const o = options({ prefix: 'a/b' });
    const d = new S3Driver(o);
    assert.equal(d.location, `s3://${BUCKET}/a/b (${ceph.endpoint})`);
    assert.equal(d.kind, 's3');
    assert.equal(d.shared, true);
    assert.equal(d.syncBeforeCommit, false);
    assert.equal(d.scratchDir, o.scratchDir);
    assert.ok(!d.location.includes(ceph.accessKeyId) && !d.location.includes(ceph.secretAccessKey));
    assert.throws(() => new S3Driver(options({ partSize: 5 * MiB - 1 })), /5 MiB/);
    assert.throws(() => new S3Driver(options({ prefix: '/a' })));
    assert.throws(() => new S3Driver(options({ prefix: 'a/' })));
    assert.throws(() => new S3Driver(options({ prefix: 'a/../b' })));
  });

  it('open() rejects naming the cause: S3 error codes, a refused connection, no answer', async (t) => {
    const other = await ceph.createUser('other');
    const noSecret = (err: Error): boolean => !err.message.includes(ceph.secretAccessKey) && !err.message.includes('wrong-secret');
    const cases: Array<[string, Partial<S3DriverOptions>, RegExp]> = [
      ['wrong secret', { credentials: { accessKeyId: ceph.accessKeyId, secretAccessKey: 'wrong-secret' } }, /SignatureDoesNotMatch/],
      ['unknown access key', { credentials: { accessKeyId: 'NOSUCHKEY0000', secretAccessKey: 'wrong-secret' } }, /InvalidAccessKeyId/],
      ['missing bucket', { bucket: 'no-such-bucket' }, /NoSuchBucket/],
      ["another user's bucket", { credentials: other }, /AccessDenied/],
      ['closed port', { endpoint: `http://127.0.0.1:${await freePort()}` }, /ECONNREFUSED/],
    ];
    for (const [what, over, want] of cases) {
      const d = track(new S3Driver(options(over)));
      const { ms, err } = await rejection(d.open(), (e) => want.test(e.message) && /ListObjectsV2/.test(e.message) && noSecret(e));
      t.diagnostic(`open(), ${what}: rejected in ${ms} ms: ${err.message}`);
      assert.ok(ms < 3000, `${what}: ${ms} ms`);
    }
    const hole = await startBlackHole();
    try {
      const d = track(new S3Driver(options({ endpoint: hole.endpoint, requestTimeoutMs: 1500 })));
      const { ms, err } = await rejection(d.open(), (e) => /ETIMEDOUT: no answer within 1500 ms/.test(e.message));
      t.diagnostic(`open(), a server that never answers, requestTimeoutMs 1500: rejected in ${ms} ms: ${err.message}`);
      assert.ok(ms >= 1400 && ms < 1500 + 1500, `${ms} ms`);
    } finally {
      await hole.close();
    }
  });

  it('maps failures: a refused request is a StoreUnavailableError naming operation, key and code', async () => {
    const d = track(new S3Driver(options({ credentials: { accessKeyId: ceph.accessKeyId, secretAccessKey: 'wrong-secret' } })));
    for (const [op, call, want] of [
      ['GetObject', () => d.get('k/x'), /^SignatureDoesNotMatch: .*HTTP 403/],
      // A HEAD answer has no body: only its status names the cause.
      ['HeadObject', () => d.stat('k/x'), /^HTTP 403 Forbidden$/],
      ['GetObject', () => d.openRead('k/x', 0, 0), /^SignatureDoesNotMatch: /],
      ['PutObject', () => d.put('k/x', 'x'), /^SignatureDoesNotMatch: /],
      ['DeleteObject', () => d.delete('k/x'), /^SignatureDoesNotMatch: /],
    ] as const) {
      const head = `S3 ${op} k/x: `;
      await rejectsIn(call(), (err) => isStoreUnavailable(err) && err.message.startsWith(head) && want.test(err.message.slice(head.length)));
    }
    await rejectsIn(
      (async () => {
        for await (const _ of d.list('k/')) void _;
      })(),
      (err) => isStoreUnavailable(err) && /^S3 ListObjectsV2 k\/: SignatureDoesNotMatch/.test(err.message),
    );
    await rejectsIn(d.children('k/'), (err) => isStoreUnavailable(err) && /SignatureDoesNotMatch/.test(err.message));
  });

  it('commits multi-part files sending each byte once, at most 4 parts of a blob and 8 in all at once', async (t) => {
    const o = options({ endpoint: proxy.endpoint });
    const d = track(new S3Driver(o));
    await d.open();
    const size = 40 * MiB + 12345; // 9 parts of 5 MiB
    const bytes = randomBytes(size);
    const tmp = await writeTemp(d, bytes);
    proxy.reset();
    const before = ceph.rgwRequests().length;
    const t0 = Date.now();
    await d.commitFile(tmp, 'blobs/one', size);
    const ms = Date.now() - t0;
    const ratio = proxy.bytesUp / size;
    t.diagnostic(`${(size / MiB).toFixed(1)} MiB in 9 parts: ${ms} ms; ${proxy.bytesUp} bytes sent to RGW = ${ratio.toFixed(5)} x the size; at most ${proxy.maxParts} parts at once`);
    assert.ok(ratio >= 1 && ratio < 1.001, `bytes sent / size = ${ratio}`);
    assert.ok(proxy.maxPartsPerKey <= PARTS_PER_COMMIT, `${proxy.maxPartsPerKey} parts of one blob at once`);
    assert.ok(proxy.maxParts >= 2, 'parts go in parallel');
    const reqs = ceph.rgwRequests().slice(before).filter((r) => r.path.startsWith(`/${BUCKET}/${o.prefix}/blobs/one`));
    assert.equal(reqs.filter((r) => r.method === 'PUT' && r.path.includes('partNumber=')).length, 9, JSON.stringify(reqs));
    assert.equal(reqs.filter((r) => r.method === 'POST').length, 2, 'create and complete');
    assert.ok(reqs.every((r) => r.status < 300), JSON.stringify(reqs));
    assert.deepEqual((await d.stat('blobs/one'))?.size, size);
    const got = await readAll((await d.openRead('blobs/one', 5 * MiB - 3, 10 * MiB + 2))!);
    assert.ok(got.equals(bytes.subarray(5 * MiB - 3, 10 * MiB + 3)));

    // Two drivers, three commits at once: never more than PARTS_IN_FLIGHT parts in the process.
    const d2 = track(new S3Driver(options({ endpoint: proxy.endpoint })));
    await d2.open();
    const tmps = [await writeTemp(d, bytes), await writeTemp(d, bytes), await writeTemp(d2, bytes)];
    proxy.reset();
    await Promise.all([d.commitFile(tmps[0]!, 'blobs/a', size), d.commitFile(tmps[1]!, 'blobs/b', size), d2.commitFile(tmps[2]!, 'blobs/c', size)]);
    t.diagnostic(`three 9-part commits at once: at most ${proxy.maxParts} parts in flight, ${proxy.maxPartsPerKey} of one blob`);
    assert.ok(proxy.maxParts <= PARTS_IN_FLIGHT, `${proxy.maxParts} parts at once`);
    assert.ok(proxy.maxParts > PARTS_PER_COMMIT, 'the process-wide bound, not the per-blob one, limited them');
    assert.ok(proxy.maxPartsPerKey <= PARTS_PER_COMMIT);
    for (const k of ['blobs/a', 'blobs/b']) assert.equal((await d.stat(k))?.size, size);
    assert.equal((await d2.stat('blobs/c'))?.size, size);
  });

  it('a commit that fails mid-way leaves nothing at the key and no open upload', async () => {
    const o = options({ endpoint: proxy.endpoint });
    const d = track(new S3Driver(o));
    await d.open();
    const size = 17 * MiB; // 4 parts
    const tmp = await writeTemp(d, randomBytes(size));
    proxy.reset();
    proxy.failRequest = /^PUT \S*\/blobs\/failed\?\S*partNumber=2(&|$)/;
    const before = ceph.rgwRequests().length;
    await rejectsIn(d.commitFile(tmp, 'blobs/failed', size), (err) => isStoreUnavailable(err) && /UploadPart 2\/4/.test(err.message));
    proxy.failRequest = undefined;
    assert.equal(proxy.failed, 2, 'part 2 was tried twice (a reset connection is retried once)');
    assert.equal(await d.stat('blobs/failed'), undefined);
    assert.deepEqual(await openUploads(`${o.prefix}/`), []);
    const reqs = ceph.rgwRequests().slice(before);
    assert.ok(reqs.some((r) => r.method === 'DELETE' && r.path.includes('/blobs/failed?uploadId=') && r.status === 204), 'aborted');
    await fs.access(tmp); // left for the caller

    // A temp file that is not the size the caller says: refused before anything is uploaded.
    const n = ceph.rgwRequests().length;
    await rejectsIn(d.commitFile(tmp, 'blobs/short', size + 1), (err) => isStoreUnavailable(err) && /17825792 bytes, not 17825793/.test(err.message));
    await rejectsIn(d.commitFile(join(d.scratchDir, 'missing'), 'blobs/short', 5), isStoreUnavailable);
    assert.deepEqual(ceph.rgwRequests().slice(n).filter((r) => r.path.includes('blobs/short')), []);
    assert.deepEqual(await openUploads(`${o.prefix}/`), []);
  });

  it('a temp file truncated during a commit fails it (no short part is sent); one removed still uploads whole', async () => {
    const o = options({ endpoint: proxy.endpoint });
    const d = track(new S3Driver(o));
    await d.open();
    const size = 17 * MiB;
    const bytes = randomBytes(size);
    // The answer to CreateMultipartUpload is held until the file has changed: every part
    // is read after that.
    const truncated = await writeTemp(d, bytes);
    proxy.reset();
    const created = proxy.holdAnswer(/^POST \S*\/blobs\/truncated\?uploads/);
    const commit = d.commitFile(truncated, 'blobs/truncated', size);
    await created;
    await fs.truncate(truncated, 7 * MiB);
    proxy.release();
    await rejectsIn(commit, (err) => isStoreUnavailable(err) && /UploadPart \d\/4 blobs\/truncated: .*ends at byte (7340032|10485760|15728640), before byte/.test(err.message));
    assert.equal(await d.stat('blobs/truncated'), undefined);
    assert.deepEqual(await openUploads(`${o.prefix}/`), []);

    const removed = await writeTemp(d, bytes);
    const created2 = proxy.holdAnswer(/^POST \S*\/blobs\/removed\?uploads/);
    const commit2 = d.commitFile(removed, 'blobs/removed', size);
    await created2;
    await fs.rm(removed);
    proxy.release();
    await commit2;
    assert.ok((await d.get('blobs/removed'))?.equals(bytes));
    assert.deepEqual(await openUploads(`${o.prefix}/`), []);
  });

  it('open() aborts multipart uploads older than uploadExpiryMs under its prefix, not young ones or others', async () => {
    const o = options({ uploadExpiryMs: 2000 });
    const start = async (key: string): Promise<string> => {
      const { UploadId } = await admin.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: key }));
      await admin.send(new UploadPartCommand({ Bucket: BUCKET, Key: key, UploadId, PartNumber: 1, Body: randomBytes(1024) }));
      return UploadId!;
    };
    const oldId = await start(`${o.prefix}/blobs/old`);
    const outsideId = await start(`elsewhere/${o.prefix}/blobs/old`);
    await sleep(3000);
    const youngId = await start(`${o.prefix}/blobs/young`);
    const d = track(new S3Driver(o));
    assert.deepEqual(await d.open(), { sweptTemp: 0, sweptUploads: 1 });
    assert.deepEqual(await openUploads(`${o.prefix}/`), [{ key: `${o.prefix}/blobs/young`, uploadId: youngId }]);
    assert.deepEqual(await openUploads('elsewhere/'), [{ key: `elsewhere/${o.prefix}/blobs/old`, uploadId: outsideId }]);
    assert.notEqual(oldId, youngId);
    for (const [key, id] of [[`${o.prefix}/blobs/young`, youngId], [`elsewhere/${o.prefix}/blobs/old`, outsideId]] as const) {
      await admin.send(new AbortMultipartUploadCommand({ Bucket: BUCKET, Key: key, UploadId: id }));
    }
  });

  it('presignGet: a plain fetch gets the bytes, a Range works, and the URL expires', async () => {
    const d = track(new S3Driver(options({ presignTTLMs: 2000 })));
    await d.open();
    const bytes = randomBytes(300_000);
    await d.put('blobs/signed', bytes);
    const url = await d.presignGet('blobs/signed');
    assert.ok(!url.includes(ceph.secretAccessKey));
    assert.match(url, /X-Amz-Expires=2(&|$)/);
    const res = await fetch(url);
    assert.equal(res.status, 200);
    assert.ok(Buffer.from(await res.arrayBuffer()).equals(bytes));
    const part = await fetch(url, { headers: { range: 'bytes=1000-1999' } });
    assert.equal(part.status, 206);
    assert.equal(part.headers.get('content-range'), `bytes 1000-1999/${bytes.length}`);
    assert.ok(Buffer.from(await part.arrayBuffer()).equals(bytes.subarray(1000, 2000)));
    await sleep(3500);
    const late = await fetch(url);
    await late.arrayBuffer();
    assert.equal(late.status, 403, 'expired');
  });

  it('a body cut mid-way ends the stream with an error, never a clean short end', async () => {
    const d = track(new S3Driver(options({ endpoint: proxy.endpoint })));
    await d.open();
    const size = 8 * MiB;
    await d.commitFile(await writeTemp(d, randomBytes(size)), 'blobs/cut', size);
    proxy.reset();
    proxy.cutAfterBytesDown = 2 * MiB;
    try {
      const body = await d.openRead('blobs/cut', 0, size - 1);
      assert.ok(body);
      let got = 0;
      let ended = false;
      body.on('end', () => (ended = true));
      await assert.rejects(async () => {
        for await (const c of body) got += (c as Buffer).length;
      });
      assert.equal(ended, false);
      assert.ok(got < size, `${got} bytes`);
      await rejectsIn(d.get('blobs/cut'), (err) => isStoreUnavailable(err) && /^S3 GetObject blobs\/cut: /.test(err.message));
    } finally {
      proxy.cutAfterBytesDown = undefined;
    }
  });

  it('a server that never answers: every operation fails within requestTimeoutMs', async (t) => {
    const hole = await startBlackHole();
    try {
      const d = track(new S3Driver(options({ endpoint: hole.endpoint, requestTimeoutMs: 1000 })));
      for (const [what, call] of [
        ['get', () => d.get('k')],
        ['stat', () => d.stat('k')],
        ['openRead', () => d.openRead('k', 0, 9)],
        ['put', () => d.put('k', 'x')],
        ['children', () => d.children('k/')],
      ] as const) {
        const ms = await rejectsIn(call(), (err) => isStoreUnavailable(err) && /no answer within 1000 ms/.test(err.message));
        t.diagnostic(`${what}: StoreUnavailableError after ${ms} ms`);
        assert.ok(ms >= 900 && ms < 1000 + 1000, `${what}: ${ms} ms`);
      }
      // An upload has no total deadline (it takes as long as its bytes), but a connection that
      // moves nothing for requestTimeoutMs fails it.
      const tmp = await writeTemp(d, randomBytes(1000));
      const ms = await rejectsIn(d.commitFile(tmp, 'k', 1000), (err) => isStoreUnavailable(err) && /^S3 PutObject k: /.test(err.message));
      t.diagnostic(`commitFile: StoreUnavailableError after ${ms} ms`);
      assert.ok(ms < 1000 * 2 + 1000, `${ms} ms`);
    } finally {
      await hole.close();
    }
  });

  it('commit speed of a 64 MiB blob (diagnostic)', async (t) => {
    const d = track(new S3Driver(options()));
    await d.open();
    const size = 64 * MiB;
    const bytes = randomBytes(size);
    for (const partSize of [5 * MiB, 16 * MiB]) {
      const dd = track(new S3Driver(options({ partSize })));
      await dd.open();
      const tmp = await writeTemp(dd, bytes);
      const t0 = Date.now();
      await dd.commitFile(tmp, 'blobs/big', size);
      const ms = Date.now() - t0;
      t.diagnostic(`64 MiB commit, ${partSize / MiB} MiB parts: ${ms} ms (${((size / MiB / ms) * 1000).toFixed(0)} MiB/s)`);
      const t1 = Date.now();
      const got = await readAll((await dd.openRead('blobs/big', 0, size - 1))!);
      t.diagnostic(`64 MiB openRead: ${Date.now() - t1} ms`);
      assert.ok(got.equals(bytes));
    }
  });

  // Last: RGW goes away (and comes back).
  it('with RGW stopped: reads and writes fail fast with StoreUnavailableError; the same driver recovers', async (t) => {
    const d = track(new S3Driver(options({ requestTimeoutMs: 3000 })));
    await d.open();
    await d.put('k/kept', 'kept');
    assert.equal((await d.get('k/kept'))?.toString(), 'kept'); // a keep-alive socket to the RGW about to go
    await ceph.stopRgw();
    const tmp = await writeTemp(d, Buffer.from('x'));
    const ops: Array<[string, () => Promise<unknown>]> = [
      ['get', () => d.get('k/kept')],
      ['stat', () => d.stat('k/kept')],
      ['openRead', () => d.openRead('k/kept', 0, 3)],
      ['put', () => d.put('k/new', 'x')],
      ['delete', () => d.delete('k/kept')],
      ['children', () => d.children('k/')],
      ['commitFile', () => d.commitFile(tmp, 'k/c', 1)],
    ];
    for (const [what, op] of ops) {
      const ms = await rejectsIn(op(), (err) => isStoreUnavailable(err) && /ECONNREFUSED/.test(err.message));
      t.diagnostic(`${what} with RGW stopped: rejected in ${ms} ms`);
      assert.ok(ms < 3000 + 1000, `${what}: ${ms} ms`);
    }
    await rejectsIn(d.open(), (err) => /ECONNREFUSED/.test(err.message));
    await ceph.startRgw();
    assert.equal((await d.get('k/kept'))?.toString(), 'kept');
    await d.commitFile(tmp, 'k/c', 1);
    assert.equal((await d.get('k/c'))?.toString(), 'x');
  });
});
