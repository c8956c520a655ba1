// S3Driver.putIf against a small S3 of this file's own that behaves as AWS documents
// conditional writes (If-Match matches the quoted ETag only; If-Match on an absent key is 404
// NoSuchKey; 409 ConditionalRequestConflict for a concurrent conditional write), with faults
// on demand: an error answered before the write (nothing written) or after it (written, and
// the answer lost), and answers without an ETag. What real RGW 16 does is proven in
// test/integration/lease-rgw.test.ts; this proves each branch of the resolution, every time:
// a bare-first driver learns the quoted form here, and an ambiguous answer is settled by
// reading the key back.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, beforeEach, describe, it } from 'node:test';
import { isStoreUnavailable } from '../../mirror/store/driver.js';
import { S3Driver, bareEtag } from '../../mirror/store/drivers/s3-driver.js';
import { Lease } from '../../mirror/store/lease.js';
import { tempDir } from '../../tools/launch/proc.js';

interface Fault {
  /** 'before': answered without writing; 'after': written, then this answer instead of 200. */
  when: 'before' | 'after';
  status: number;
  code: string;
}

/** The fake service: objects by path, the conditional PUTs it saw, faults for the next ones. */
const objects = new Map<string, Buffer>();
const seen: Array<{ ifMatch?: string; ifNoneMatch?: string; status: number }> = [];
const faults: Fault[] = [];
let sendEtag = true;
let server: Server;
let endpoint: string;

const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

function answer(res: ServerResponse, status: number, code?: string, headers: Record<string, string> = {}): void {
  const body = code ? `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${code}</Message></Error>` : '';
  res.writeHead(status, { 'content-type': 'application/xml', 'content-length': String(Buffer.byteLength(body)), ...headers });
  res.end(body);
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const path = decodeURIComponent(new URL(req.url!, 'http://x').pathname);
  const cur = objects.get(path);
  if (req.method === 'GET' || req.method === 'HEAD') {
    if (!cur) return answer(res, 404, req.method === 'GET' ? 'NoSuchKey' : undefined);
    res.writeHead(200, { etag: `"${md5(cur)}"`, 'content-length': String(cur.length) });
    res.end(req.method === 'GET' ? cur : undefined);
    return;
  }
  if (req.method === 'DELETE') {
    objects.delete(path);
    return answer(res, 204);
  }
  if (req.method !== 'PUT') return answer(res, 405, 'MethodNotAllowed');
  const ifMatch = req.headers['if-match'] as string | undefined;
  const ifNoneMatch = req.headers['if-none-match'] as string | undefined;
  const conditional = ifMatch !== undefined || ifNoneMatch !== undefined;
  const fault = conditional ? faults.shift() : undefined;
  const record = (status: number) => conditional && seen.push({ ifMatch, ifNoneMatch, status });
  if (fault?.when === 'before') {
    record(fault.status);
    return answer(res, fault.status, fault.code);
  }
  // As AWS documents: 404 on an absent key, and the ETag exactly as it answers it (quoted).
  if (ifMatch !== undefined && !cur) {
    record(404);
    return answer(res, 404, 'NoSuchKey');
  }
  if ((ifMatch !== undefined && ifMatch !== `"${md5(cur!)}"`) || (ifNoneMatch === '*' && cur)) {
    record(412);
    return answer(res, 412, 'PreconditionFailed');
  }
  const body = Buffer.concat(chunks);
  objects.set(path, body);
  if (fault) {
    record(fault.status);
    return answer(res, fault.status, fault.code);
  }
  record(200);
  answer(res, 200, undefined, sendEtag ? { etag: `"${md5(body)}"` } : {});
}

let n = 0;
function driver(over: { ifMatchForm?: 'bare' | 'quoted' } = {}): S3Driver {
  return new S3Driver({
    bucket: 'fake',
    endpoint,
    region: 'us-east-1',
    prefix: `p${++n}`,
    forcePathStyle: true,
    credentials: { accessKeyId: 'AKIDFAKE', secretAccessKey: 'fake' },
    presignTTLMs: 60_000,
    partSize: 5 * 1024 * 1024,
    uploadExpiryMs: 3600_000,
    requestTimeoutMs: 5000,
    scratchDir: tempDir('s3-conditional'),
    ...over,
  });
}

const statuses = () => seen.splice(0).map((s) => s.status);

describe('S3Driver.putIf on a service that behaves as AWS documents', () => {
  const drivers: S3Driver[] = [];
  const d = (over?: { ifMatchForm?: 'bare' | 'quoted' }) => {
    const x = driver(over);
    drivers.push(x);
    return x;
  };
  before(async () => {
    server = createServer((req, res) => void handle(req, res).catch(() => res.destroy()));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  beforeEach(() => {
    seen.splice(0);
    faults.splice(0);
  });
  after(async () => {
    for (const x of drivers) await x.close();
    await new Promise<void>((r) => server.close(() => r()));
  });

  it('a bare-first driver learns the quoted form on the first If-Match, and keeps it', async () => {
    const s = d();
    assert.equal(s.ifMatchForm, 'bare');
    const v1 = await s.putIf('k', 'v1', { ifNoneMatch: '*' });
    assert.ok(v1 !== 'conflict');
    assert.equal(v1.etag, md5(Buffer.from('v1')), 'answered bare');
    statuses();
    const v2 = await s.putIf('k', 'v2', { ifMatch: v1.etag });
    assert.ok(v2 !== 'conflict');
    assert.deepEqual(seen.map((x) => x.ifMatch), [v1.etag, `"${v1.etag}"`]);
    assert.deepEqual(statuses(), [412, 200]);
    assert.equal(s.ifMatchForm, 'quoted');
    const v3 = await s.putIf('k', 'v3', { ifMatch: v2.etag });
    assert.ok(v3 !== 'conflict');
    assert.deepEqual(statuses(), [200], 'one request from now on');
    assert.equal(await s.putIf('k', 'stale', { ifMatch: v2.etag }), 'conflict');
    assert.equal((await s.get('k'))?.toString(), 'v3');
  });

  it('If-Match on an absent key (404 NoSuchKey) and If-None-Match on an existing one (412) are conflicts', async () => {
    const s = d({ ifMatchForm: 'quoted' });
    assert.equal(await s.putIf('absent', 'x', { ifMatch: 'abc' }), 'conflict');
    assert.deepEqual(statuses(), [404]);
    await s.put('k', 'there');
    assert.equal(await s.putIf('k', 'x', { ifNoneMatch: '*' }), 'conflict');
    assert.equal((await s.get('k'))?.toString(), 'there');
  });

  it('a write that landed but was answered 500 (each attempt) is ours: read back, won', async () => {
    const s = d({ ifMatchForm: 'quoted' });
    faults.push({ when: 'after', status: 500, code: 'InternalError' }, { when: 'after', status: 500, code: 'InternalError' });
    const v1 = await s.putIf('k', 'created', { ifNoneMatch: '*' });
    assert.ok(v1 !== 'conflict', 'If-None-Match: the SDK retry met 412 or 500, the read-back found our bytes');
    assert.equal(v1.etag, md5(Buffer.from('created')));
    faults.splice(0);
    faults.push({ when: 'after', status: 500, code: 'InternalError' }, { when: 'after', status: 500, code: 'InternalError' });
    const v2 = await s.putIf('k', 'replaced', { ifMatch: v1.etag });
    assert.ok(v2 !== 'conflict');
    assert.equal(v2.etag, md5(Buffer.from('replaced')));
    faults.splice(0);
  });

  it('a write refused and answered 500 is a conflict when another write is there', async () => {
    const s = d({ ifMatchForm: 'quoted' });
    const v1 = await s.putIf('k', 'v1', { ifNoneMatch: '*' });
    assert.ok(v1 !== 'conflict');
    await s.put('k', 'someone else');
    faults.push({ when: 'before', status: 500, code: 'InternalError' }, { when: 'before', status: 500, code: 'InternalError' });
    assert.equal(await s.putIf('k', 'mine', { ifMatch: v1.etag }), 'conflict');
    assert.equal((await s.get('k'))?.toString(), 'someone else');
    faults.splice(0);
  });

  it('409 ConditionalRequestConflict or 503 without effect: tried once more; twice failing: StoreUnavailableError', async () => {
    const s = d({ ifMatchForm: 'quoted' });
    faults.push({ when: 'before', status: 409, code: 'ConditionalRequestConflict' });
    const v1 = await s.putIf('k', 'v1', { ifNoneMatch: '*' });
    assert.ok(v1 !== 'conflict');
    assert.deepEqual(statuses(), [409, 200]);
    // Four refusals: two sends (the SDK's two attempts each) without effect, the key unchanged.
    for (let i = 0; i < 4; i++) faults.push({ when: 'before', status: 503, code: 'SlowDown' });
    await assert.rejects(s.putIf('k', 'v2', { ifMatch: v1.etag }), (err: Error) => isStoreUnavailable(err) && /SlowDown/.test(err.message));
    assert.equal((await s.get('k'))?.toString(), 'v1');
    assert.equal(faults.length, 0);
    statuses();
  });

  it('a refusal of the request itself (403) is StoreUnavailableError at once, nothing read back', async () => {
    const s = d();
    faults.push({ when: 'before', status: 403, code: 'AccessDenied' });
    await assert.rejects(s.putIf('k', 'x', { ifNoneMatch: '*' }), (err: Error) => isStoreUnavailable(err) && /AccessDenied/.test(err.message));
    assert.deepEqual(statuses(), [403]);
  });

  it('an answer without an ETag: the tag comes from reading our write back', async () => {
    const s = d({ ifMatchForm: 'quoted' });
    sendEtag = false;
    try {
      const v1 = await s.putIf('k', 'v1', { ifNoneMatch: '*' });
      assert.ok(v1 !== 'conflict');
      assert.equal(v1.etag, md5(Buffer.from('v1')));
      const v2 = await s.putIf('k', 'v2', { ifMatch: v1.etag });
      assert.ok(v2 !== 'conflict');
      assert.equal(bareEtag(v2.etag), md5(Buffer.from('v2')));
    } finally {
      sendEtag = true;
    }
  });

  it('a service that matches no form of its own tag is StoreUnavailableError, not a conflict', async () => {
    const s = d();
    const v1 = await s.putIf('k', 'v1', { ifNoneMatch: '*' });
    assert.ok(v1 !== 'conflict');
    statuses();
    faults.push({ when: 'before', status: 412, code: 'PreconditionFailed' }, { when: 'before', status: 412, code: 'PreconditionFailed' });
    await assert.rejects(s.putIf('k', 'v2', { ifMatch: v1.etag }), (err: Error) => isStoreUnavailable(err) && /does not honour If-Match/.test(err.message));
    assert.deepEqual(statuses(), [412, 412]);
  });

  it('the lease on it: acquire, renew through a lost answer, release', async () => {
    const s = d();
    const lease = new Lease(s, { name: 'evictor', holder: 'h', ttlMs: 60_000, renewEveryMs: 15_000, marginMs: 10_000 });
    assert.equal(await lease.acquire(), true);
    faults.push({ when: 'after', status: 500, code: 'InternalError' }, { when: 'after', status: 500, code: 'InternalError' });
    assert.equal(await lease.renew(), true);
    assert.equal(await lease.renew(), true);
    await lease.release();
    assert.equal(await s.get('state/lease/evictor'), undefined);
    faults.splice(0);
  });
});
