// Proves tools/launch/ceph.ts: a real Ceph cluster (mon, mgr, memstore OSD, RGW on beast) comes
// up from Debian's packages in a temp dir, answers the S3 API with real SigV4-signed requests
// (curl --aws-sigv4, an implementation independent of the mirror's), and leaves no process,
// listener or file behind. It also states the rig's bring-up time and memory (diagnostics).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startCeph, type CephHandle } from '../../tools/launch/ceph.js';
import { run, tempDir } from '../../tools/launch/proc.js';

interface S3Response {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

let scratch = '';
let seq = 0;

/** One SigV4-signed S3 request by curl. `?uploads` must be written `?uploads=` (see ceph.ts). */
async function s3(
  c: CephHandle,
  method: string,
  path: string,
  o: { file?: string; data?: string; headers?: string[]; creds?: { accessKeyId: string; secretAccessKey: string } } = {},
): Promise<S3Response> {
  const creds = o.creds ?? c;
  const n = ++seq;
  const bodyFile = join(scratch, `body-${n}`);
  const headFile = join(scratch, `head-${n}`);
  const args = [
    '-sS', '--max-time', '60',
    '--aws-sigv4', `aws:amz:${c.region}:s3`,
    '--user', `${creds.accessKeyId}:${creds.secretAccessKey}`,
    '-H', 'x-amz-content-sha256: UNSIGNED-PAYLOAD',
    '-o', bodyFile, '-D', headFile, '-w', '%{http_code}',
  ];
  for (const h of o.headers ?? []) args.push('-H', h);
  if (method === 'HEAD') args.push('--head');
  else args.push('-X', method);
  if (o.file) args.push('--upload-file', o.file);
  if (o.data !== undefined) args.push('--data-binary', o.data, '-H', 'Content-Type: application/xml');
  args.push(`${c.endpoint}${path}`);
  const r = await run('curl', args, { timeoutMs: 70000 });
  const headers: Record<string, string> = {};
  // With 100-continue there are two header blocks; the last one is the answer's.
  const blocks = readFileSync(headFile, 'utf8').split(/\r?\n\r?\n/).filter((b) => b.trim());
  for (const line of (blocks.at(-1) ?? '').split(/\r?\n/).slice(1)) {
    const i = line.indexOf(':');
    if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  return { status: Number(r.stdout.trim()), headers, body: existsSync(bodyFile) ? readFileSync(bodyFile) : Buffer.alloc(0) };
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const xmlValue = (xml: string, tag: string): string | undefined => new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(xml)?.[1];
const mb = (bytes: number | undefined): string => (bytes === undefined ? '-' : `${(bytes / 1e6).toFixed(0)} MB`);
const rssLine = (r: Partial<Record<string, number>>): string =>
  Object.entries(r).map(([k, v]) => `${k} ${mb(v)}`).join(', ');

/** True while a process with this pid exists (zombies included). */
function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

async function duBytes(dir: string): Promise<number> {
  // Blocks really used: the BlueStore file is sparse.
  const r = await run('du', ['-s', '--block-size=1', dir]);
  return Number(r.stdout.split(/\s/)[0]);
}

/** TCP/UDP listeners of these pids: [local address, pid]. */
async function listenersOf(pids: number[]): Promise<Array<[string, number]>> {
  const r = await run('ss', ['-Hltunp']);
  const out: Array<[string, number]> = [];
  for (const line of r.stdout.split('\n')) {
    const fields = line.trim().split(/\s+/);
    for (const m of line.matchAll(/pid=(\d+)/g)) {
      if (pids.includes(Number(m[1]))) out.push([fields[4]!, Number(m[1])]);
    }
  }
  return out;
}

/** Create a bucket, PUT, GET, and check the bytes: the least a working cluster does. */
async function roundTrip(c: CephHandle, bucket: string, bytes: Buffer): Promise<void> {
  const file = join(scratch, `rt-${bucket}`);
  writeFileSync(file, bytes);
  assert.equal((await s3(c, 'PUT', `/${bucket}`)).status, 200);
  assert.equal((await s3(c, 'PUT', `/${bucket}/k`, { file })).status, 200);
  const got = await s3(c, 'GET', `/${bucket}/k`);
  assert.equal(got.status, 200);
  assert.equal(sha256(got.body), sha256(bytes));
}

/** Four 50 MB PUTs of random bytes into a new bucket; returns the milliseconds they took. */
async function write200MB(c: CephHandle, bucket: string): Promise<number> {
  const file = join(scratch, 'chunk-50MB');
  if (!existsSync(file)) writeFileSync(file, randomBytes(50 * 1000 * 1000));
  assert.equal((await s3(c, 'PUT', `/${bucket}`)).status, 200);
  const t0 = Date.now();
  for (let i = 0; i < 4; i++) assert.equal((await s3(c, 'PUT', `/${bucket}/o${i}`, { file })).status, 200);
  return Date.now() - t0;
}

describe('ceph rig (real mon, mgr, OSD and RGW from Debian)', { timeout: 600000 }, () => {
  let ceph: CephHandle;

  before(async () => {
    scratch = tempDir('ceph-test');
    ceph = await startCeph();
  });
  after(async () => {
    await ceph?.stop();
  });

  it('runs mon, mgr, osd and rgw from the temp dir, listening on loopback only', async (t) => {
    t.diagnostic(
      `bring-up (memstore, with mgr): setup ${ceph.timings.setupMs} ms, RGW answers at ${ceph.timings.rgwAnswerMs} ms, ` +
        `S3 user at ${ceph.timings.readyMs} ms`,
    );
    const pids = ceph.pids();
    assert.deepEqual(Object.keys(pids).sort(), ['mgr', 'mon', 'osd', 'rgw']);
    // Every admin socket is in the temp dir, none in /var/run/ceph.
    assert.deepEqual(readdirSync(join(ceph.dataDir, 'run')).filter((f) => f.endsWith('.asok')).sort(), [
      'ceph-client.rgw.asok', 'ceph-mgr.x.asok', 'ceph-mon.a.asok', 'ceph-osd.0.asok',
    ]);
    // The mon's cluster and audit logs too (they default to /var/log/ceph).
    for (const f of ['ceph.log', 'ceph.audit.log', 'ceph-mon.a.log', 'ceph-osd.0.log', 'ceph-client.rgw.log']) {
      assert.ok(existsSync(join(ceph.dataDir, 'log', f)), f);
    }
    const listeners = await listenersOf(Object.values(pids));
    assert.ok(listeners.some(([addr]) => addr === ceph.host), `RGW listens on ${ceph.host}: ${JSON.stringify(listeners)}`);
    for (const [addr, pid] of listeners) assert.match(addr, /^127\.0\.0\.1:\d+$/, `pid ${pid} listens on ${addr}`);
    const status = JSON.parse((await ceph.ceph(['status', '--format', 'json'])).stdout);
    assert.deepEqual(status.quorum_names, ['a']);
    assert.equal(status.fsid, ceph.fsid);
    assert.equal(status.osdmap.num_up_osds, 1);
  });

  it('answers anonymous GET / with an empty bucket list', async () => {
    const res = await fetch(`${ceph.endpoint}/`);
    assert.equal(res.status, 200);
    assert.match(await res.text(), /<ListAllMyBucketsResult/);
  });

  it('creates a bucket, stores and serves an object (GET, HEAD, Range, list)', async () => {
    const data = randomBytes(300000);
    await roundTrip(ceph, 'rig-bucket', data);
    const head = await s3(ceph, 'HEAD', '/rig-bucket/k');
    assert.equal(head.status, 200);
    assert.equal(head.headers['content-length'], String(data.length));
    const range = await s3(ceph, 'GET', '/rig-bucket/k', { headers: ['Range: bytes=1000-1999'] });
    assert.equal(range.status, 206);
    assert.equal(range.headers['content-range'], `bytes 1000-1999/${data.length}`);
    assert.deepEqual(range.body, data.subarray(1000, 2000));
    const list = await s3(ceph, 'GET', '/rig-bucket?list-type=2');
    assert.equal(list.status, 200);
    assert.equal(xmlValue(list.body.toString(), 'Key'), 'k');
    assert.equal((await s3(ceph, 'GET', '/rig-bucket/missing')).status, 404);
    const reqs = ceph.rgwRequests();
    assert.ok(reqs.some((r) => r.method === 'PUT' && r.path === '/rig-bucket/k' && r.status === 200 && r.user === ceph.userId), 'RGW access log');
  });

  it('completes a multipart upload and aborts another, leaving no open upload', async () => {
    const part1 = randomBytes(5 * 1024 * 1024);
    const part2 = randomBytes(1234);
    writeFileSync(join(scratch, 'p1'), part1);
    writeFileSync(join(scratch, 'p2'), part2);
    assert.equal((await s3(ceph, 'PUT', '/mp-bucket')).status, 200);
    const init = await s3(ceph, 'POST', '/mp-bucket/blob?uploads=');
    assert.equal(init.status, 200);
    const uploadId = xmlValue(init.body.toString(), 'UploadId');
    assert.ok(uploadId);
    const q = `uploadId=${encodeURIComponent(uploadId)}`;
    const etags: string[] = [];
    for (const [i, name] of ['p1', 'p2'].entries()) {
      const r = await s3(ceph, 'PUT', `/mp-bucket/blob?partNumber=${i + 1}&${q}`, { file: join(scratch, name) });
      assert.equal(r.status, 200);
      etags.push(r.headers.etag!);
    }
    // Nothing at the key before completion.
    assert.equal((await s3(ceph, 'HEAD', '/mp-bucket/blob')).status, 404);
    const listed = await s3(ceph, 'GET', '/mp-bucket?uploads=');
    assert.equal(xmlValue(listed.body.toString(), 'UploadId'), uploadId);
    const xml =
      '<CompleteMultipartUpload>' +
      etags.map((e, i) => `<Part><PartNumber>${i + 1}</PartNumber><ETag>${e}</ETag></Part>`).join('') +
      '</CompleteMultipartUpload>';
    const done = await s3(ceph, 'POST', `/mp-bucket/blob?${q}`, { data: xml });
    assert.equal(done.status, 200, done.body.toString());
    const got = await s3(ceph, 'GET', '/mp-bucket/blob');
    assert.equal(sha256(got.body), sha256(Buffer.concat([part1, part2])));
    assert.match(got.headers.etag ?? '', /-2"$/, 'a multipart ETag');

    const init2 = await s3(ceph, 'POST', '/mp-bucket/other?uploads=');
    const id2 = xmlValue(init2.body.toString(), 'UploadId')!;
    assert.equal((await s3(ceph, 'PUT', `/mp-bucket/other?partNumber=1&uploadId=${encodeURIComponent(id2)}`, { file: join(scratch, 'p2') })).status, 200);
    assert.equal((await s3(ceph, 'DELETE', `/mp-bucket/other?uploadId=${encodeURIComponent(id2)}`)).status, 204);
    const after = await s3(ceph, 'GET', '/mp-bucket?uploads=');
    assert.equal(after.status, 200);
    assert.equal(xmlValue(after.body.toString(), 'UploadId'), undefined, after.body.toString());
    assert.equal((await s3(ceph, 'HEAD', '/mp-bucket/other')).status, 404);
  });

  it('refuses wrong credentials and other users', async () => {
    const badSecret = await s3(ceph, 'GET', '/rig-bucket/k', { creds: { accessKeyId: ceph.accessKeyId, secretAccessKey: 'wrong' } });
    assert.equal(badSecret.status, 403);
    assert.equal(xmlValue(badSecret.body.toString(), 'Code'), 'SignatureDoesNotMatch');
    const badKey = await s3(ceph, 'GET', '/rig-bucket/k', { creds: { accessKeyId: 'NOSUCHKEY', secretAccessKey: 'x' } });
    assert.equal(badKey.status, 403);
    assert.equal(xmlValue(badKey.body.toString(), 'Code'), 'InvalidAccessKeyId');
    const other = await ceph.createUser('other');
    const denied = await s3(ceph, 'GET', '/rig-bucket/k', { creds: other });
    assert.equal(denied.status, 403);
    assert.equal(xmlValue(denied.body.toString(), 'Code'), 'AccessDenied');
    assert.equal((await s3(ceph, 'HEAD', '/rig-bucket/k')).status, 200);
  });

  it('states memory and disk, idle and after 200 MB written', async (t) => {
    const idle = ceph.rss();
    const diskIdle = await duBytes(ceph.dataDir);
    const putMs = await write200MB(ceph, 'load');
    const t1 = Date.now();
    const got = await s3(ceph, 'GET', '/load/o2');
    const getMs = Date.now() - t1;
    assert.equal(sha256(got.body), sha256(readFileSync(join(scratch, 'chunk-50MB'))));
    const loaded = ceph.rss();
    // RGW's own accounting is immediate; `ceph df` lags by the mgr's stats period (~5 s).
    const t2 = Date.now();
    const stats = JSON.parse((await ceph.radosgwAdmin(['bucket', 'stats', '--bucket', 'load'])).stdout);
    const statsMs = Date.now() - t2;
    t.diagnostic(`200 MB in 4 PUTs: ${putMs} ms; one 50 MB GET: ${getMs} ms; radosgw-admin bucket stats: ${statsMs} ms`);
    assert.equal(stats.usage['rgw.main'].size, 200e6);
    assert.equal(stats.usage['rgw.main'].num_objects, 4);
    t.diagnostic(`RSS idle: ${rssLine(idle)}`);
    t.diagnostic(`RSS after 200 MB written: ${rssLine(loaded)}`);
    t.diagnostic(`temp dir: ${mb(diskIdle)} idle, ${mb(await duBytes(ceph.dataDir))} after (memstore keeps objects in RAM)`);
  });

  it('stops and restarts RGW alone, on the same port, with the data kept', async (t) => {
    const old = ceph.pids().rgw!;
    await ceph.stopRgw();
    assert.equal(pidExists(old), false);
    assert.equal(ceph.pids().rgw, undefined);
    await assert.rejects(fetch(`${ceph.endpoint}/`), 'nothing listens while RGW is stopped');
    const t0 = Date.now();
    await ceph.startRgw();
    const ms = Date.now() - t0;
    assert.notEqual(ceph.pids().rgw, old);
    assert.equal((await s3(ceph, 'HEAD', '/rig-bucket/k')).status, 200);
    // After a kill -9 the dead RGW's watches on its control objects stay until the OSD times
    // them out (osd_client_watch_timeout, 30 s): object reads and writes go on at once, but a
    // metadata change that notifies the watchers (a bucket or user created) waits for that
    // (seen: CreateBucket 29.6 s). This test runs after every other one that creates buckets.
    await ceph.kill9Rgw();
    await ceph.startRgw();
    assert.equal((await s3(ceph, 'HEAD', '/mp-bucket/blob')).status, 200);
    writeFileSync(join(scratch, 'small'), 'after kill -9');
    assert.equal((await s3(ceph, 'PUT', '/rig-bucket/after-kill', { file: join(scratch, 'small') })).status, 200);
    assert.equal((await s3(ceph, 'GET', '/rig-bucket/after-kill')).body.toString(), 'after kill -9');
    t.diagnostic(`RGW restarted: answers ${ms} ms after spawn`);
  });

  it('runs a second cluster at the same time, and a BlueStore one after it', async (t) => {
    const second = await startCeph({ mgr: false });
    let secondPids: number[] = [];
    try {
      assert.notEqual(second.port, ceph.port);
      assert.notEqual(second.fsid, ceph.fsid);
      await roundTrip(second, 'second', randomBytes(100000));
      // The first cluster does not see the second one's bucket.
      assert.equal((await s3(ceph, 'HEAD', '/second/k')).status, 404);
      secondPids = Object.values(second.pids());
      assert.equal(secondPids.length, 3);
      t.diagnostic(`second cluster (memstore, no mgr): RGW answers at ${second.timings.rgwAnswerMs} ms, ready at ${second.timings.readyMs} ms`);
    } finally {
      await second.stop();
    }
    for (const pid of secondPids) assert.equal(pidExists(pid), false, `pid ${pid}`);
    assert.equal(existsSync(second.dataDir), false);

    const blue = await startCeph({ objectStore: 'bluestore', mgr: false });
    let bluePids: number[] = [];
    try {
      bluePids = Object.values(blue.pids());
      await roundTrip(blue, 'blue', randomBytes(8 * 1024 * 1024));
      t.diagnostic(
        `BlueStore on a file (no mgr): setup ${blue.timings.setupMs} ms, RGW answers at ${blue.timings.rgwAnswerMs} ms, ` +
          `ready at ${blue.timings.readyMs} ms; RSS ${rssLine(blue.rss())}; temp dir ${mb(await duBytes(blue.dataDir))}`,
      );
      const putMs = await write200MB(blue, 'load');
      t.diagnostic(`BlueStore, 200 MB in 4 PUTs: ${putMs} ms; RSS ${rssLine(blue.rss())}; temp dir ${mb(await duBytes(blue.dataDir))}`);
    } finally {
      const t0 = Date.now();
      await blue.stop();
      t.diagnostic(`BlueStore cluster stopped in ${Date.now() - t0} ms: ${JSON.stringify(blue.stopReport)}`);
    }
    for (const pid of bluePids) assert.equal(pidExists(pid), false, `pid ${pid}`);
    assert.equal(existsSync(blue.dataDir), false);
  });

  it('stop() ends every process by pid and removes the temp dir', async (t) => {
    const pids = Object.values(ceph.pids());
    assert.equal(pids.length, 4);
    const t0 = Date.now();
    await ceph.stop();
    t.diagnostic(`stopped in ${Date.now() - t0} ms: ${JSON.stringify(ceph.stopReport)}`);
    for (const pid of pids) assert.equal(pidExists(pid), false, `pid ${pid} still exists`);
    assert.deepEqual(ceph.pids(), {});
    assert.equal(existsSync(ceph.dataDir), false);
    await assert.rejects(fetch(`${ceph.endpoint}/`));
    await ceph.stop(); // a second stop is harmless (after() calls it too)
  });
});
