// The blob path under stress: one upstream GET for many concurrent cold requests, aborted
// transfers on corruption, kill -9 in the middle of a download, and the HTTP details
// (Range, HEAD, ETag, errors) real clients rely on.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { buildFixtures, pushFixtures, type FixtureName } from '../fixtures/images.js';
import type { PushedImage } from '../../tools/oci/oci-client.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { sleep, waitFor } from '../../tools/launch/proc.js';
import { fetchHashed, isCached, cachedSoon, ociError, rawRequest, tempFiles } from './helpers.js';

describe('blobs through the mirror', { timeout: 600_000 }, () => {
  let upstream: RegistryHandle;
  let proxy: FaultProxyHandle;
  let pushed: Record<FixtureName, PushedImage>;
  const mirrors: MirrorHandle[] = [];
  const fresh = async () => {
    const m = await startMirror({ upstreams: { 'docker.io': { url: proxy.url } } });
    mirrors.push(m);
    return m;
  };

  before(async () => {
    upstream = await startRegistry();
    pushed = await pushFixtures(await buildFixtures(), upstream.host, { only: ['small', 'big'] });
    proxy = await startFaultProxy(upstream.url);
  });

  after(async () => {
    for (const m of mirrors) await m.stop();
    await proxy?.stop();
    await upstream?.stop();
  });

  it('20 concurrent GETs of one cold 100 MB blob: all correct, one upstream GET', async () => {
    const m = await fresh();
    const big = pushed.big.bigLayer!;
    const url = `${m.url}/v2/${pushed.big.repository}/blobs/${big.digest}`;
    const results = await Promise.all(Array.from({ length: 20 }, () => fetchHashed(url)));
    for (const r of results) {
      assert.equal(r.status, 200);
      assert.equal(r.error, undefined);
      assert.equal(r.bytes, big.size);
      assert.equal(r.digest, big.digest);
    }
    const gets = await upstream.countRequests('GET', `/blobs/${big.digest}`);
    assert.equal(gets, 1, 'exactly one upstream GET for the blob');
    assert.ok(await cachedSoon(m.dataDir, big.digest));
  });

  it('a corrupted blob aborts the transfer and caches nothing; the next pull succeeds', async () => {
    const m = await fresh();
    const layer = pushed.big.bigLayer!;
    const url = `${m.url}/v2/${pushed.big.repository}/blobs/${layer.digest}`;
    proxy.corruptBlob(layer.digest);
    const bad = await fetchHashed(url);
    assert.equal(bad.status, 200, 'headers were sent before the corruption showed');
    assert.ok(bad.error !== undefined, 'the body must end abnormally, never cleanly');
    assert.ok(bad.bytes < layer.size, 'the last byte is held back until verification');
    assert.ok(!isCached(m.dataDir, layer.digest));
    await waitFor(() => tempFiles(m.dataDir).length === 0, 5000, 'temp file removed');
    const stats = (await (await fetch(`${m.url}/stats`)).json()) as { upstreamErrors: number };
    assert.ok(stats.upstreamErrors >= 1);
    proxy.clear();
    const good = await fetchHashed(url);
    assert.equal(good.digest, layer.digest);
    assert.ok(await cachedSoon(m.dataDir, layer.digest));
  });

  it('kill -9 in the middle of a cold 100 MB download: restart, pull again, correct bytes, no temp leftovers', async () => {
    const m = await fresh();
    const layer = pushed.big.bigLayer!;
    proxy.slowBlob(layer.digest, 20 << 20);
    const url = `${m.url}/v2/${pushed.big.repository}/blobs/${layer.digest}`;
    const res = await fetch(url);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let got = 0;
    while (got < 10 << 20) {
      const { value, done } = await reader.read();
      if (done) break;
      got += value.length;
    }
    assert.ok(tempFiles(m.dataDir).length > 0, 'the download is in progress');
    await m.kill9();
    await reader.read().then(
      () => undefined,
      () => undefined,
    );
    proxy.clear();
    await m.restart();
    assert.deepEqual(tempFiles(m.dataDir), [], 'temp files swept at start');
    assert.ok(!isCached(m.dataDir, layer.digest), 'nothing half-written is visible');
    const again = await fetchHashed(url);
    assert.equal(again.digest, layer.digest);
    assert.ok(await cachedSoon(m.dataDir, layer.digest));
    await waitFor(() => tempFiles(m.dataDir).length === 0, 5000, 'the temp file renamed into the store');
  });

  it('Range, HEAD, ETag and errors', async () => {
    const m = await fresh();
    const repo = pushed.small.repository;
    const blob = pushed.small.blobs[0]!;
    const url = `${m.url}/v2/${repo}/blobs/${blob.digest}`;

    const head = await fetch(url, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), String(blob.size));
    assert.equal(head.headers.get('docker-content-digest'), blob.digest);
    assert.equal((await head.arrayBuffer()).byteLength, 0);

    const cold = await fetch(url, { headers: { range: 'bytes=1-4' } });
    assert.equal(cold.status, 206, 'a range of a cold blob is served once verified');
    assert.equal((await cold.arrayBuffer()).byteLength, 4);
    const whole = Buffer.from(await (await fetch(url)).arrayBuffer());
    const part = await fetch(url, { headers: { range: 'bytes=2-9' } });
    assert.equal(part.status, 206);
    assert.equal(part.headers.get('content-range'), `bytes 2-9/${blob.size}`);
    assert.deepEqual(Buffer.from(await part.arrayBuffer()), whole.subarray(2, 10));
    const suffix = await fetch(url, { headers: { range: 'bytes=-3' } });
    assert.deepEqual(Buffer.from(await suffix.arrayBuffer()), whole.subarray(whole.length - 3));
    const beyond = await fetch(url, { headers: { range: `bytes=${blob.size + 10}-` } });
    assert.equal(beyond.status, 416);
    await beyond.arrayBuffer();
    const etag = await fetch(url, { headers: { 'if-none-match': `"${blob.digest}"` } });
    assert.equal(etag.status, 304);

    const before = await upstream.countRequests('GET', `/blobs/${blob.digest}`);
    const warm = await fetchHashed(url);
    assert.equal(warm.digest, blob.digest);
    assert.equal(await upstream.countRequests('GET', `/blobs/${blob.digest}`), before, 'warm GET never touches upstream');

    const unknown = await fetch(`${m.url}/v2/${repo}/blobs/sha256:${'0'.repeat(64)}`);
    assert.equal(unknown.status, 404);
    assert.equal(await ociError(unknown), 'BLOB_UNKNOWN');

    for (const [path, code] of [
      [`/v2/${repo}/blobs/sha256:xyz`, 'DIGEST_INVALID'],
      [`/v2/${repo}/blobs/md5:${'a'.repeat(32)}`, 'DIGEST_INVALID'],
      [`/v2/Bad_Name/manifests/latest`, 'NAME_INVALID'],
      [`/v2/a/%2e%2e/%2e%2e/etc/manifests/latest`, 'NAME_INVALID'],
    ] as const) {
      const r = await rawRequest(m.url, path);
      assert.equal(r.status, 400, path);
      assert.equal((JSON.parse(r.body) as { errors: Array<{ code: string }> }).errors[0]!.code, code, path);
    }
    // A reference that is neither a tag nor a digest names no manifest (issue 13): 404, as distribution answers.
    const notATag = await rawRequest(m.url, `/v2/${repo}/manifests/-notatag`);
    assert.equal(notATag.status, 404);
    assert.equal((JSON.parse(notATag.body) as { errors: Array<{ code: string }> }).errors[0]!.code, 'MANIFEST_UNKNOWN');
    for (const [method, path] of [
      ['POST', `/v2/${repo}/blobs/uploads/`],
      ['PUT', `/v2/${repo}/manifests/v9`],
      ['DELETE', `/v2/${repo}/blobs/${blob.digest}`],
      ['PATCH', `/v2/${repo}/blobs/uploads/abc`],
    ] as const) {
      const r = await fetch(m.url + path, { method, body: method === 'DELETE' ? undefined : 'x' });
      assert.equal(r.status, 405, `${method} ${path}`);
      assert.equal(await ociError(r), 'UNSUPPORTED');
    }
    const nsUnknown = await fetch(`${m.url}/v2/${repo}/manifests/v1?ns=evil.example.com`);
    assert.equal(nsUnknown.status, 404);
    assert.equal(await ociError(nsUnknown), 'NAME_UNKNOWN');
    assert.equal(proxy.countRequests('GET', 'evil'), 0);
  });

  it('manifests: exact bytes and headers, HEAD without body, OCI-Namespace, catalog and tags', async () => {
    const m = await fresh();
    const p = pushed.small;
    const direct = await fetch(`${upstream.url}/v2/${p.repository}/manifests/${p.tag}`, { headers: { accept: p.mediaType } });
    const directBytes = Buffer.from(await direct.arrayBuffer());
    const viaNs = await fetch(`${m.url}/v2/${p.repository}/manifests/${p.tag}?ns=docker.io`, { headers: { accept: p.mediaType } });
    assert.equal(viaNs.status, 200);
    assert.equal(viaNs.headers.get('oci-namespace'), 'docker.io');
    assert.equal(viaNs.headers.get('content-type'), p.mediaType);
    assert.equal(viaNs.headers.get('docker-content-digest'), p.digest);
    assert.deepEqual(Buffer.from(await viaNs.arrayBuffer()), directBytes);
    const head = await fetch(`${m.url}/v2/${p.repository}/manifests/${p.digest}`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), String(directBytes.length));
    assert.equal((await head.arrayBuffer()).byteLength, 0);
    const single = await fetch(`${m.url}/v2/small/manifests/${p.tag}`);
    assert.equal(single.headers.get('docker-content-digest'), p.digest, 'docker.io names get library/');
    await single.arrayBuffer();
    const cat = (await (await fetch(`${m.url}/v2/_catalog`)).json()) as { repositories: string[] };
    assert.deepEqual(cat.repositories, [p.repository]);
    const tags = (await (await fetch(`${m.url}/v2/${p.repository}/tags/list?n=10`)).json()) as { tags: string[] };
    assert.ok(tags.tags.includes(p.tag));
    const missing = await fetch(`${m.url}/v2/${p.repository}/manifests/nope`);
    assert.equal(missing.status, 404);
    assert.equal(await ociError(missing), 'MANIFEST_UNKNOWN');
    await sleep(0);
  });
});
