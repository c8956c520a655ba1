// The cache on S3, proven on a real Ceph RADOS Gateway (tools/launch/ceph.ts, started once for the
// file): containerd and skopeo pull through a mirror whose store is a bucket; a second mirror
// process on the same bucket serves the images warm with its upstream gone; every cold blob is
// written to the bucket exactly once, straight to its final key; a corrupt upstream body and a
// kill -9 mid-upload leave nothing at the final key; RGW stopped mid-run costs cold pulls their
// caching only and warm ones a fast 503; redirect mode is pulled by containerd; expiry and
// maxBytes delete objects; bad credentials and a missing bucket stop start-up (exit 2, one line
// naming storage.s3); `registry-mirror verify` checks and repairs the bucket.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, DeleteObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { buildFixtures, pushFixtures, FIXTURE_NAMES, type FixtureName } from '../fixtures/images.js';
import type { PushedImage } from '../../tools/oci/oci-client.js';
import { rgwClient, startCeph, type CephHandle } from '../../tools/launch/ceph.js';
import { startContainerd, writeHostsToml, type ContainerdHandle } from '../rig/containerd.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { mirrorBin, startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { run, sleep, tempDir } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { skopeoCopyToDir } from '../../tools/launch/skopeo.js';
import { fetchHashed, getMetrics, metricValue, pushRandomImage, type RandomImage } from './helpers.js';

const MiB = 1 << 20;

describe('the cache on S3 (a real Ceph RGW)', { timeout: 900_000 }, () => {
  let ceph: CephHandle;
  let s3: S3Client;
  let upstream: RegistryHandle;
  let pushed: Record<FixtureName, PushedImage>;
  let containerd: ContainerdHandle;
  let keysDir: string;
  const mirrors: MirrorHandle[] = [];
  let bucketSeq = 0;

  /** A fresh bucket, so each test sees only its own objects. */
  async function newBucket(): Promise<string> {
    const bucket = `mirror-${++bucketSeq}`;
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
    return bucket;
  }

  function s3Config(bucket: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      bucket,
      endpoint: ceph.endpoint,
      region: ceph.region,
      forcePathStyle: true,
      prefix: 'cache',
      // The key files, as the operator mounts them from a Secret.
      accessKeyIdFile: join(keysDir, 'accessKeyId'),
      secretAccessKeyFile: join(keysDir, 'secretAccessKey'),
      partSize: '5Mi',
      ...extra,
    };
  }

  async function mirrorOn(bucket: string, config: Record<string, unknown> = {}, s3Extra: Record<string, unknown> = {}): Promise<MirrorHandle> {
    const { storage, ...rest } = config as { storage?: Record<string, unknown> };
    const m = await startMirror({
      upstreams: { 'docker.io': { url: upstream.url } },
      ...rest,
      storage: { ...storage, s3: s3Config(bucket, s3Extra) },
    });
    mirrors.push(m);
    return m;
  }

  async function keys(bucket: string, prefix = 'cache/'): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    let token: string | undefined;
    do {
      const page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
      for (const o of page.Contents ?? []) out.set(o.Key!, o.Size ?? 0);
      token = page.NextContinuationToken;
    } while (token);
    return out;
  }

  async function openUploads(bucket: string): Promise<string[]> {
    const r = await s3.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
    return (r.Uploads ?? []).map((u) => u.Key!);
  }

  const blobKey = (digest: string) => `cache/blobs/sha256/${digest.slice(7, 9)}/${digest.slice(7)}`;

  before(async () => {
    ceph = await startCeph({ mgr: false });
    s3 = rgwClient(ceph);
    keysDir = tempDir('s3-keys');
    writeFileSync(join(keysDir, 'accessKeyId'), `${ceph.accessKeyId}\n`);
    writeFileSync(join(keysDir, 'secretAccessKey'), `${ceph.secretAccessKey}\n`);
    upstream = await startRegistry();
    pushed = await pushFixtures(await buildFixtures(), upstream.host);
    containerd = await startContainerd();
  });

  after(async () => {
    for (const m of mirrors) await m.stop().catch(() => undefined);
    await containerd?.stop();
    await upstream?.stop();
    s3?.destroy();
    await ceph?.stop();
  });

  it('containerd and skopeo pull through it; each cold blob is written once, straight to its final key; a second mirror on the bucket serves it all warm with the upstream gone', async () => {
    const bucket = await newBucket();
    const a = await mirrorOn(bucket);
    const hostsDir = tempDir('hosts');
    writeHostsToml(hostsDir, 'docker.io', a.url, { server: 'http://127.0.0.1:9' });
    const before = ceph.rgwRequests().length;
    for (const name of FIXTURE_NAMES) await containerd.pull(`docker.io/${pushed[name].repository}:${pushed[name].tag}`, { hostsDir });
    const out = mkdtempSync(join(tmpdir(), 'skopeo-s3-'));
    for (const name of FIXTURE_NAMES) {
      const p = pushed[name];
      const got = await skopeoCopyToDir(`${a.host}/${p.repository}:${p.tag}`, join(out, name), { all: p.manifests.length > 1 });
      assert.equal(got.manifestDigest, p.digest, name);
    }
    await a.stop(); // shutdown waits for the commits (uploads) of verified blobs

    const stored = await keys(bucket);
    const big = pushed.big.bigLayer!;
    assert.equal(stored.get(blobKey(big.digest)), big.size, 'the 100 MB layer is in the bucket, whole');
    assert.ok([...stored.keys()].some((k) => k.startsWith('cache/manifests/')), 'manifests are objects');
    assert.ok([...stored.keys()].some((k) => k.includes('/_tags/')), 'tag records are objects');
    assert.ok([...stored.keys()].some((k) => k.startsWith('cache/state/access/')), 'access times: one object per process');
    // Written once: per blob key one PutObject, or one multipart upload (parts, then one
    // completion), never an upload elsewhere and a copy.
    const writes = ceph.rgwRequests().slice(before).filter((r) => r.method === 'PUT' || r.method === 'POST');
    assert.ok(!writes.some((r) => /x-amz-copy-source|\/_uploads\//.test(r.path)), 'no copies, no staging keys');
    const bigPath = `/${bucket}/${blobKey(big.digest)}`;
    const bigWrites = writes.filter((r) => r.path.split('?')[0] === bigPath);
    const parts = bigWrites.filter((r) => r.method === 'PUT' && /partNumber=/.test(r.path));
    assert.equal(parts.length, Math.ceil(big.size / (5 * MiB)), 'the 100 MB layer went up as one multipart upload of 5 MiB parts');
    assert.equal(bigWrites.filter((r) => r.method === 'PUT' && !/partNumber=/.test(r.path)).length, 0, 'and never as a whole PutObject too');
    assert.equal(bigWrites.filter((r) => r.method === 'POST' && /uploadId=/.test(r.path)).length, 1, 'one completion');
    assert.deepEqual(await openUploads(bucket), [], 'no upload left open');

    // A second process on the same bucket, its upstream refusing connections: warm from S3.
    const b = await mirrorOn(bucket, { upstreams: { 'docker.io': { url: 'http://127.0.0.1:9' } } });
    const hostsB = tempDir('hosts');
    writeHostsToml(hostsB, 'docker.io', b.url, { server: 'http://127.0.0.1:9' });
    await containerd.removeAllContent();
    for (const name of FIXTURE_NAMES) await containerd.pull(`docker.io/${pushed[name].repository}:${pushed[name].tag}`, { hostsDir: hostsB });
    const out2 = mkdtempSync(join(tmpdir(), 'skopeo-s3-warm-'));
    for (const name of FIXTURE_NAMES) {
      const p = pushed[name];
      const got = await skopeoCopyToDir(`${b.host}/${p.repository}:${p.tag}`, join(out2, name), { all: p.manifests.length > 1 });
      assert.equal(got.manifestDigest, p.digest, name);
    }
    const ranged = await fetch(`${b.url}/v2/${pushed.big.repository}/blobs/${big.digest}`, { headers: { range: 'bytes=1000-1999' } });
    assert.equal(ranged.status, 206);
    assert.equal((await ranged.arrayBuffer()).byteLength, 1000, 'Range passes through to the bucket');
    await b.stop();
  });

  it('a corrupt upstream body leaves nothing at the final key and no open upload', async () => {
    const bucket = await newBucket();
    const img = await pushRandomImage(upstream.url, 's3/corrupt', 'v1', [12 * MiB], 's3-corrupt');
    const proxy: FaultProxyHandle = await startFaultProxy(upstream.url);
    try {
      proxy.corruptBlob(img.layers[0]!.digest);
      const m = await mirrorOn(bucket, { upstreams: { 'docker.io': { url: proxy.url } } });
      const res = await fetchHashed(`${m.url}/v2/s3/corrupt/blobs/${img.layers[0]!.digest}`);
      assert.notEqual(res.digest, img.layers[0]!.digest, 'the client never gets a body that passes as the blob');
      assert.ok(res.error, 'the body was aborted');
      await m.stop();
      assert.equal((await keys(bucket)).has(blobKey(img.layers[0]!.digest)), false, 'nothing at the final key');
      assert.deepEqual(await openUploads(bucket), [], 'no multipart upload left open');
    } finally {
      await proxy.stop();
    }
  });

  it('kill -9 mid-upload leaves nothing at the final key; the restarted mirror aborts the abandoned upload and caches the blob', async () => {
    const bucket = await newBucket();
    const img = await pushRandomImage(upstream.url, 's3/killed', 'v1', [24 * MiB], 's3-killed');
    const layer = img.layers[0]!;
    // Each uploaded part is held 1 s (a test-only knob), so the kill lands between parts.
    const m = await startMirror(
      { upstreams: { 'docker.io': { url: upstream.url } }, storage: { s3: s3Config(bucket, { uploadExpiry: '1s' }) } },
      { env: { REGISTRY_MIRROR_TEST_HOLD_AFTER_PART_MS: '1000' } },
    );
    mirrors.push(m);
    const path = `/${bucket}/${blobKey(layer.digest)}`;
    const seen = ceph.rgwRequests().length;
    const got = await fetchHashed(`${m.url}/v2/s3/killed/blobs/${layer.digest}`);
    assert.equal(got.digest, layer.digest);
    // The client has its bytes; the upload runs behind it. Kill the mirror once a part is up.
    for (let i = 0; i < 400 && !ceph.rgwRequests().slice(seen).some((r) => r.path.startsWith(`${path}?`) && /partNumber=/.test(r.path)); i++) await sleep(25);
    await m.kill9();
    assert.equal((await keys(bucket)).has(blobKey(layer.digest)), false, 'nothing at the final key');
    assert.deepEqual(await openUploads(bucket), [blobKey(layer.digest)], 'the abandoned upload is open');
    await sleep(1500);
    const again = await mirrorOn(bucket, {}, { uploadExpiry: '1s' });
    assert.deepEqual(await openUploads(bucket), [], 'start-up aborted the upload older than uploadExpiry');
    assert.match(again.logText(), /aborted abandoned multipart uploads/);
    const refetched = await fetchHashed(`${again.url}/v2/s3/killed/blobs/${layer.digest}`);
    assert.equal(refetched.digest, layer.digest);
    await again.stop();
    assert.equal((await keys(bucket)).get(blobKey(layer.digest)), layer.size, 'cached whole after the restart');
  });

  it('RGW stopped mid-run: a cold pull passes through uncached (counted), a warm blob gets a fast 503, manifests come from the upstream', async () => {
    const bucket = await newBucket();
    const warm = await pushRandomImage(upstream.url, 's3/outage-warm', 'v1', [2 * MiB], 's3-outage-warm');
    const cold = await pushRandomImage(upstream.url, 's3/outage-cold', 'v1', [7 * MiB], 's3-outage-cold');
    const m = await mirrorOn(bucket, { upstreamTimeouts: { connect: '2s', headers: '5s' } });
    assert.equal((await fetchHashed(`${m.url}/v2/s3/outage-warm/blobs/${warm.layers[0]!.digest}`)).digest, warm.layers[0]!.digest);
    await sleep(500);
    await ceph.stopRgw();
    try {
      const t0 = Date.now();
      const res = await fetch(`${m.url}/v2/s3/outage-warm/blobs/${warm.layers[0]!.digest}`);
      const ms = Date.now() - t0;
      assert.equal(res.status, 503);
      assert.match(await res.text(), /UNAVAILABLE/);
      assert.ok(ms < 8000, `a warm blob with the store down answered in ${ms} ms`);
      const manifest = await fetch(`${m.url}/v2/s3/outage-cold/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
      assert.equal(manifest.status, 200, 'a manifest the upstream alone would serve is served');
      await manifest.arrayBuffer();
      const c = await fetchHashed(`${m.url}/v2/s3/outage-cold/blobs/${cold.layers[0]!.digest}`);
      assert.equal(c.digest, cold.layers[0]!.digest, 'a cold blob passes through whole');
      let writesFailed = 0;
      for (let i = 0; i < 100 && !(writesFailed > 0); i++) {
        writesFailed = metricValue(await getMetrics(m.url), 'registry_mirror_store_errors_total', { op: 'write' }) ?? 0;
        if (!writesFailed) await sleep(200);
      }
      assert.ok(writesFailed > 0, 'the failed caching is counted');
      assert.ok((metricValue(await getMetrics(m.url), 'registry_mirror_store_errors_total', { op: 'read' }) ?? 0) > 0);
    } finally {
      await ceph.startRgw();
    }
    const back = await fetchHashed(`${m.url}/v2/s3/outage-warm/blobs/${warm.layers[0]!.digest}`);
    assert.equal(back.digest, warm.layers[0]!.digest, 'served warm again once RGW is back');
    await m.stop();
  });

  it('redirect mode: warm blob GETs answer 307 to a presigned URL, and containerd follows it', async () => {
    const bucket = await newBucket();
    const m = await mirrorOn(bucket, {}, { redirect: true, presignTTL: '5m' });
    const hostsDir = tempDir('hosts');
    writeHostsToml(hostsDir, 'docker.io', m.url, { server: 'http://127.0.0.1:9' });
    const ref = `docker.io/${pushed['docker-v2'].repository}:${pushed['docker-v2'].tag}`;
    await containerd.removeAllContent();
    await containerd.pull(ref, { hostsDir }); // cold: streamed by the mirror
    await m.stop();
    await m.restart();
    await containerd.removeAllContent();
    const seen = ceph.rgwRequests().length;
    await containerd.pull(ref, { hostsDir }); // warm: from RGW itself
    const layer = pushed['docker-v2'].blobs.reduce((a, b) => (b.size > a.size ? b : a));
    const direct = await fetch(`${m.url}/v2/${pushed['docker-v2'].repository}/blobs/${layer.digest}`, { redirect: 'manual' });
    assert.equal(direct.status, 307);
    const location = direct.headers.get('location')!;
    assert.ok(location.startsWith(ceph.endpoint) && /X-Amz-Signature=/.test(location), location);
    const fetched = await fetchHashed(location);
    assert.equal(fetched.digest, layer.digest, 'the presigned URL serves the blob');
    // RGW writes its access line after the answer, through its log thread: under load the
    // last one showed up to a few seconds later (seen: 1 line at once, 2 after 3 s).
    const presigned = () => ceph.rgwRequests().slice(seen).filter((r) => r.method === 'GET' && r.path.includes(blobKey(layer.digest)) && r.path.includes('X-Amz-Signature'));
    for (let i = 0; i < 100 && presigned().length < 2; i++) await sleep(100);
    assert.ok(presigned().length >= 2, 'containerd fetched the layer from RGW by the presigned URL');
    await m.stop();
  });

  it('storage.maxBytes evicts the least recently used blob from the bucket; cache.ttl expiry deletes objects; both after the shared-bucket grace', async () => {
    // On a shared bucket nothing used within the grace (access flush 5 s + lease margin, here
    // upstreamTimeouts.headers 2 s + 10 s) is removed: another replica may be using it.
    const graceMs = 5_000 + 12_000;
    const timeouts = { upstreamTimeouts: { headers: '2s' } };
    const ttlBucket = await newBucket();
    const t = await mirrorOn(ttlBucket, { ...timeouts, cache: { ttl: '2s' } });
    const d = await pushRandomImage(upstream.url, 's3/expire', 'v1', [2 * MiB], 's3-expire');
    assert.equal((await fetchHashed(`${t.url}/v2/${d.repository}/blobs/${d.layers[0]!.digest}`)).digest, d.layers[0]!.digest);
    const expiredBy = Date.now() + graceMs;

    const bucket = await newBucket();
    const m = await mirrorOn(bucket, { ...timeouts, storage: { maxBytes: 30 * MiB } });
    const imgs = [];
    for (const name of ['a', 'b', 'c']) imgs.push(await pushRandomImage(upstream.url, `s3/evict-${name}`, 'v1', [12 * MiB], `s3-evict-${name}`));
    const [a, b, c] = imgs as [RandomImage, RandomImage, RandomImage];
    for (const img of [a, b]) {
      assert.equal((await fetchHashed(`${m.url}/v2/${img.repository}/blobs/${img.layers[0]!.digest}`)).digest, img.layers[0]!.digest);
      for (let i = 0; i < 100 && !(await keys(bucket)).has(blobKey(img.layers[0]!.digest)); i++) await sleep(100);
    }
    await sleep(graceMs + 1000);
    assert.equal((await fetchHashed(`${m.url}/v2/${c.repository}/blobs/${c.layers[0]!.digest}`)).digest, c.layers[0]!.digest);
    for (let i = 0; i < 100 && !(await keys(bucket)).has(blobKey(c.layers[0]!.digest)); i++) await sleep(100);
    const stored = await keys(bucket);
    assert.equal(stored.has(blobKey(a.layers[0]!.digest)), false, `the least recently used blob left the bucket for room; log:\n${m.logText().split('\n').filter((l) => /evict|room|store/i.test(l)).join('\n')}`);
    assert.ok(stored.has(blobKey(b.layers[0]!.digest)) && stored.has(blobKey(c.layers[0]!.digest)));
    assert.ok((metricValue(await getMetrics(m.url), 'registry_mirror_evictions_total', { reason: 'size' }) ?? 0) > 0, 'by the size bound');
    await m.stop();

    let left = await keys(ttlBucket);
    assert.ok(Date.now() > expiredBy);
    for (let i = 0; i < 100 && [...left.keys()].some((k) => k.startsWith('cache/blobs/')); i++) {
      await sleep(200);
      left = await keys(ttlBucket);
    }
    assert.deepEqual([...left.keys()].filter((k) => k.startsWith('cache/blobs/')), [], 'expired blobs are deleted');
    await t.stop();
    assert.equal((await keys(ttlBucket)).has('cache/state/lease/evictor'), false, 'the lease is released at shutdown');
  });

  it('registry-mirror verify checks the bucket; a corrupt object is reported and quarantined with --repair', async () => {
    const bucket = await newBucket();
    const img = await pushRandomImage(upstream.url, 's3/verify', 'v1', [3 * MiB], 's3-verify');
    const m = await mirrorOn(bucket);
    assert.equal((await fetchHashed(`${m.url}/v2/s3/verify/blobs/${img.layers[0]!.digest}`)).digest, img.layers[0]!.digest);
    await m.stop();
    const clean = await run(process.execPath, [mirrorBin(), 'verify', '--config', m.configFile], { allowFail: true });
    assert.equal(clean.code, 0, clean.stdout + clean.stderr);
    assert.match(clean.stdout, /store consistent/);
    const key = blobKey(img.layers[0]!.digest);
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: Buffer.alloc(3 * MiB, 7) }));
    const bad = await run(process.execPath, [mirrorBin(), 'verify', '--config', m.configFile], { allowFail: true });
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    assert.match(bad.stdout, new RegExp(`corrupt\\s+${key.slice('cache/'.length)}: content hashes to`));
    const fixed = await run(process.execPath, [mirrorBin(), 'verify', '--repair', '--config', m.configFile], { allowFail: true });
    assert.equal(fixed.code, 1, 'the run that found corruption still says so');
    const after = await keys(bucket);
    assert.equal(after.has(key), false);
    assert.ok([...after.keys()].some((k) => k.startsWith('cache/quarantine/') && k.endsWith(key.slice('cache/'.length))), 'moved to quarantine/');
    const again = await run(process.execPath, [mirrorBin(), 'verify', '--config', m.configFile], { allowFail: true });
    assert.equal(again.code, 0, again.stdout);
    await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: 'unused' })).catch(() => undefined);
    assert.equal((await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key })).catch(() => undefined)), undefined);
  });

  it('wrong credentials, a missing bucket or a dead endpoint stop start-up: exit 2, one line naming storage.s3 and the S3 error', async () => {
    const bucket = await newBucket();
    const cases: Array<{ s3: Record<string, unknown>; expect: RegExp }> = [
      { s3: { accessKeyIdFile: undefined, secretAccessKeyFile: undefined, accessKeyId: ceph.accessKeyId, secretAccessKey: 'wrong-secret-value' }, expect: /storage\.s3: .*(SignatureDoesNotMatch|InvalidAccessKeyId)/ },
      { s3: { bucket: 'no-such-bucket' }, expect: /storage\.s3: .*NoSuchBucket/ },
      { s3: { endpoint: 'http://127.0.0.1:9' }, expect: /storage\.s3: .*ECONNREFUSED/ },
    ];
    for (const c of cases) {
      const t0 = Date.now();
      const m = await startMirror({ upstreams: { 'docker.io': { url: upstream.url } }, storage: { s3: { ...s3Config(bucket), ...c.s3 } } }, { noWait: true });
      const code = await m.exited();
      const log = m.logText();
      assert.equal(code, 2, log);
      assert.match(log, c.expect);
      const lines = log.split('\n').filter((l) => l.includes('storage.s3'));
      assert.equal(lines.length, 1, log);
      assert.ok(!log.includes('wrong-secret-value') && !log.includes(ceph.secretAccessKey), 'no secret in the output');
      assert.ok(Date.now() - t0 < 30_000, `${c.expect}: exited after ${Date.now() - t0} ms`);
    }
  });

  it("every line a mirror on S3 logged is JSON (no SDK notice on stderr between them)", () => {
    const served = mirrors.filter((m) => m.logText().length > 0);
    assert.ok(served.length > 3, 'the tests above ran mirrors');
    for (const m of served) {
      for (const line of m.logText().split('\n').filter((l) => l.trim())) {
        assert.doesNotThrow(() => JSON.parse(line), `not a JSON log line: ${line.slice(0, 200)}`);
      }
    }
  });
});
