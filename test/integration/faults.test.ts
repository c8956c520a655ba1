// An upstream that misbehaves, behind the fault proxy, with short timeouts and fast retries:
// - a stalled blob (headers, then nothing) is aborted within upstreamTimeouts.idle while other
//   pulls keep flowing; an upstream that sends no headers is given up after
//   upstreamTimeouts.headers per attempt and the cached manifest served stale;
// - 500/502/503 and 429 are retried with backoff (Retry-After honoured up to maxDelay), then
//   answered; when retries run out the stale manifest is served;
// - a body cut mid-transfer is never retried (bytes already went to the client): aborted;
// - a manifest over 4 MiB and bodies longer than their Content-Length never reach a client
//   or the store as if they were good.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { MEDIA } from '../../tools/oci/oci-client.js';
import { sleep, waitFor } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import {
  blobPath,
  fetchHashed,
  getManifestVia,
  getMetrics,
  getStats,
  isCached,
  cachedSoon,
  manifestPath,
  metricValue,
  pullImage,
  pushRandomImage,
  storeFiles,
  tempFiles,
  type RandomImage,
} from './helpers.js';

const idleMs = 1000;
const headersMs = 1000;
const attempts = 3;
const tagTTLMs = 500;

describe('upstream faults: timeouts, retries, refusals', { timeout: 180_000 }, () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  const images: Record<string, RandomImage> = {};
  const retries = async () => metricValue(await getMetrics(mirror.url), 'registry_mirror_upstream_retries_total', { upstream: 'docker.io' }) ?? 0;
  const staleServed = async () => (await getStats(mirror.url)).staleServed;

  before(async () => {
    registry = await startRegistry();
    for (const [i, name] of ['stall', 'flow', 'retry', 'rate', 'cut', 'long', 'short', 'manifest'].entries()) {
      images[name] = await pushRandomImage(registry.url, `faults/${name}`, 'v1', [300_000 + i * 1000, 40_000], `faults-${name}`);
    }
    proxy = await startFaultProxy(registry.url);
    mirror = await startMirror({
      cache: { tagTTL: `${tagTTLMs}ms` },
      upstreams: { 'docker.io': { url: proxy.url } },
      upstreamTimeouts: { connect: '1s', headers: `${headersMs}ms`, idle: `${idleMs}ms` },
      upstreamRetries: { attempts, backoff: '50ms', maxDelay: '2s' },
    });
  });

  after(async () => {
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it('a stalled blob is aborted within the idle timeout while other pulls keep flowing', async () => {
    const stalled = images.stall!;
    const layer = stalled.layers[0]!;
    proxy.stallBlob(layer.digest);
    const t0 = Date.now();
    const victim = fetchHashed(`${mirror.url}/v2/${stalled.repository}/blobs/${layer.digest}`).then((r) => ({ ...r, ms: Date.now() - t0 }));
    // While that transfer hangs, whole pulls of another image go through, quickly.
    const flow = images.flow!;
    let pulls = 0;
    while (Date.now() - t0 < idleMs) {
      const p0 = Date.now();
      assert.equal((await pullImage(mirror.url, '', flow.repository, flow.tag)).manifestDigest, flow.digest);
      assert.ok(Date.now() - p0 < idleMs, 'a pull during the stall is not held up by it');
      pulls++;
    }
    const r = await victim;
    // Not one body byte came, so the response had not started: a clean 503 the client can
    // retry elsewhere (containerd tries its next host). Had bytes gone out, the body would
    // have been aborted instead (the truncation test below).
    assert.equal(r.status, 503);
    assert.ok(r.ms >= idleMs - 100 && r.ms < idleMs + 3000, `aborted after ${r.ms} ms (idle timeout ${idleMs} ms)`);
    assert.ok(pulls >= 2, `${pulls} pulls completed during the stall`);
    assert.ok(!isCached(mirror.dataDir, layer.digest));
    await waitFor(() => tempFiles(mirror.dataDir).length === 0, 5000, 'temp file removed');
    assert.equal(proxy.countRequests('GET', `/blobs/${layer.digest}`), 1, 'a transfer that started is not retried');
    proxy.clear();
    const again = await fetchHashed(`${mirror.url}/v2/${stalled.repository}/blobs/${layer.digest}`);
    assert.equal(again.digest, layer.digest);
    assert.ok(await cachedSoon(mirror.dataDir, layer.digest));
  });

  it('an upstream that sends no headers: each attempt times out, then the cached manifest is served stale', async () => {
    const flow = images.flow!;
    const path = `/v2/${flow.repository}/manifests/${flow.tag}`;
    await sleep(tagTTLMs + 100);
    proxy.delay(path, 10_000);
    const heads0 = proxy.countRequests('HEAD', path);
    const stale0 = await staleServed();
    const t0 = Date.now();
    const r = await getManifestVia(mirror.url, path);
    const ms = Date.now() - t0;
    proxy.clear();
    assert.equal(r.status, 200);
    assert.equal(r.digest, flow.digest);
    assert.equal((await staleServed()) - stale0, 1);
    assert.ok(ms >= attempts * headersMs - 200 && ms < attempts * headersMs + 3000, `stale answer after ${ms} ms`);
    assert.equal(proxy.countRequests('HEAD', path) - heads0, attempts, 'every attempt reached the upstream');
  });

  it('500 then 502 then the real answer: retried, the client never sees the failures', async () => {
    const img = images.retry!;
    const mpath = `/v2/${img.repository}/manifests/${img.tag}`;
    const bpath = `/v2/${img.repository}/blobs/${img.layers[0]!.digest}`;
    const r0 = await retries();
    proxy.failNext(mpath, 500, 1);
    proxy.failNext(mpath, 502, 1);
    proxy.failNext(bpath, 503, 2);
    assert.equal((await pullImage(mirror.url, '', img.repository, img.tag)).manifestDigest, img.digest);
    assert.equal(proxy.countRequests('GET', mpath), 3);
    assert.equal(proxy.countRequests('GET', bpath), 3);
    assert.equal((await retries()) - r0, 4, 'each retry counted in registry_mirror_upstream_retries_total');
    const faulted = proxy.requests().filter((e) => e.fault === 'fail').map((e) => e.status);
    assert.deepEqual(faulted.slice(-4).sort(), [500, 502, 503, 503]);
  });

  it('429 with Retry-After within maxDelay is waited for; a longer one is answered at once', async () => {
    const img = images.rate!;
    const mpath = `/v2/${img.repository}/manifests/${img.tag}`;
    proxy.failNext(mpath, 429, 1, { 'retry-after': '1' });
    let t0 = Date.now();
    assert.equal((await getManifestVia(mirror.url, mpath)).digest, img.digest);
    assert.ok(Date.now() - t0 >= 950, 'waited as Retry-After asked');

    // Cold blob, upstream asks for an hour: TOOMANYREQUESTS now, not in an hour.
    const bpath = `/v2/${img.repository}/blobs/${img.layers[1]!.digest}`;
    proxy.failNext(bpath, 429, 1, { 'retry-after': '3600' });
    t0 = Date.now();
    const res = await fetch(`${mirror.url}${bpath}`);
    assert.equal(res.status, 429);
    assert.equal(((await res.json()) as { errors: Array<{ code: string }> }).errors[0]!.code, 'TOOMANYREQUESTS');
    assert.ok(Date.now() - t0 < 1000);
    assert.equal(proxy.countRequests('GET', bpath), 1);

    // A cached tag past its TTL with the upstream rate limiting: stale, at once.
    await sleep(tagTTLMs + 100);
    proxy.failNext(mpath, 429, 1, { 'retry-after': '3600' });
    const stale0 = await staleServed();
    t0 = Date.now();
    assert.equal((await getManifestVia(mirror.url, mpath)).digest, img.digest);
    assert.ok(Date.now() - t0 < 1000);
    assert.equal((await staleServed()) - stale0, 1);
  });

  it('retries exhausted (503 on every attempt): the stale manifest is served; cold content gets UNAVAILABLE', async () => {
    const img = images.rate!;
    const mpath = `/v2/${img.repository}/manifests/${img.tag}`;
    await sleep(tagTTLMs + 100);
    const heads0 = proxy.countRequests('HEAD', mpath);
    proxy.failNext(mpath, 503, 100);
    const stale0 = await staleServed();
    assert.equal((await getManifestVia(mirror.url, mpath)).digest, img.digest);
    assert.equal((await staleServed()) - stale0, 1);
    assert.equal(proxy.countRequests('HEAD', mpath) - heads0, attempts, 'bounded attempts');
    const cold = `/v2/${img.repository}/blobs/${images.long!.layers[0]!.digest}`;
    proxy.failNext(cold, 503, 100);
    const res = await fetch(`${mirror.url}${cold}`);
    assert.equal(res.status, 503);
    assert.equal(((await res.json()) as { errors: Array<{ code: string }> }).errors[0]!.code, 'UNAVAILABLE');
    assert.equal(proxy.countRequests('GET', cold), attempts);
    proxy.clear();
  });

  it('a body cut off mid-transfer (upstream connection reset) is aborted, not retried, not cached', async () => {
    const img = images.cut!;
    const layer = img.layers[0]!;
    proxy.truncateBlob(layer.digest, 100_000);
    const r = await fetchHashed(`${mirror.url}/v2/${img.repository}/blobs/${layer.digest}`);
    assert.equal(r.status, 200);
    assert.ok(r.error !== undefined, 'aborted, never a clean short body');
    assert.ok(r.bytes <= 100_000);
    assert.equal(proxy.countRequests('GET', `/blobs/${layer.digest}`), 1);
    assert.ok(!isCached(mirror.dataDir, layer.digest));
    proxy.clear();
    assert.equal((await fetchHashed(`${mirror.url}/v2/${img.repository}/blobs/${layer.digest}`)).digest, layer.digest);
  });

  it('a manifest over 4 MiB is refused with MANIFEST_INVALID and nothing is cached', async () => {
    const huge = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA.ociManifest,
        config: { mediaType: MEDIA.ociConfig, digest: images.manifest!.config.digest, size: images.manifest!.config.size },
        layers: [],
        annotations: { padding: 'x'.repeat((4 << 20) + 10) },
      }),
    );
    const digest = `sha256:${createHash('sha256').update(huge).digest('hex')}`;
    const before = storeFiles(mirror.dataDir);
    for (const [ref, withLength] of [
      ['huge', true],
      [digest, true],
      ['huge-chunked', false],
    ] as const) {
      const path = `/v2/faults/manifest/manifests/${ref}`;
      // With Content-Length the mirror refuses before reading; without one, while reading.
      proxy.respondWith(path, { status: 200, headers: { 'content-type': MEDIA.ociManifest, 'docker-content-digest': digest, ...(withLength ? {} : { 'transfer-encoding': 'chunked' }) }, body: huge });
      const r = await getManifestVia(mirror.url, path);
      assert.equal(r.status, 502, ref);
      const err = JSON.parse(r.body.toString('utf8')).errors[0];
      assert.equal(err.code, 'MANIFEST_INVALID');
      assert.match(err.message, /larger than 4194304 bytes/);
    }
    proxy.clear();
    assert.deepEqual(storeFiles(mirror.dataDir), before, 'nothing cached');
    assert.equal((await fetch(`${mirror.url}/v2/faults/manifest/manifests/huge`)).status, 404, 'no tag recorded either');
  });

  it('garbage after a true Content-Length is dropped: the client and the store get exactly the blob', async () => {
    const img = images.long!;
    const layer = img.layers[0]!;
    proxy.extendBody(`/blobs/${layer.digest}`, 5000, 'real');
    const r = await fetchHashed(`${mirror.url}/v2/${img.repository}/blobs/${layer.digest}`);
    assert.equal(r.error, undefined);
    assert.equal(r.bytes, layer.size);
    assert.equal(r.digest, layer.digest);
    assert.equal(proxy.requests().at(-1)!.fault, 'extend');
    assert.ok(await cachedSoon(mirror.dataDir, layer.digest));
    const stored = readFileSync(blobPath(mirror.dataDir, layer.digest));
    assert.equal(stored.length, layer.size);
    assert.equal(`sha256:${createHash('sha256').update(stored).digest('hex')}`, layer.digest);
    proxy.clear();
    // The connection that carried the garbage is not reused for the next answer.
    assert.equal((await pullImage(mirror.url, '', img.repository, img.tag)).manifestDigest, img.digest);
  });

  it('a body longer than its Content-Length says (declared short): refused, nothing cached', async () => {
    const img = images.short!;
    const layer = img.layers[0]!;
    proxy.extendBody(`/blobs/${layer.digest}`, 1000, 'short');
    const r = await fetchHashed(`${mirror.url}/v2/${img.repository}/blobs/${layer.digest}`);
    // Aborted mid-body, or, when the mismatch showed before the first byte went out, a 502.
    assert.ok(r.error !== undefined || r.status === 502, `refused (status ${r.status}, ${r.error ?? 'clean end'})`);
    assert.notEqual(r.digest, layer.digest);
    assert.ok(!isCached(mirror.dataDir, layer.digest));
    // The same for a manifest: the declared prefix does not match the digest.
    const mpath = `/v2/${img.repository}/manifests/${img.tag}`;
    proxy.extendBody(mpath, 10, 'short');
    const m = await getManifestVia(mirror.url, mpath);
    assert.equal(m.status, 502);
    assert.equal(JSON.parse(m.body.toString('utf8')).errors[0].code, 'MANIFEST_INVALID');
    assert.ok(!storeFiles(mirror.dataDir).includes(manifestPath(mirror.dataDir, img.digest).slice(mirror.dataDir.length + 1)));
    proxy.clear();
    await waitFor(() => tempFiles(mirror.dataDir).length === 0, 5000, 'temp files removed');
    assert.equal((await pullImage(mirror.url, '', img.repository, img.tag)).manifestDigest, img.digest);
  });

  it('the mirror stayed healthy and logged no internal error', async () => {
    assert.equal((await fetch(`${mirror.url}/healthz`)).status, 200);
    // 502/503 were the upstream's doing (mapped to MANIFEST_INVALID, UNAVAILABLE); a 500 is ours.
    const bad = mirror.logText().split('\n').filter((l) => /internal error|"status":500/.test(l));
    assert.deepEqual(bad, [], 'no internal error');
  });
});
