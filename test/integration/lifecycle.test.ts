// Start-up and shutdown as an operator of the mirror meets them: the embedded default
// starts with no config file, a bad config fails with one line naming the key and exit 2,
// SIGTERM lets an in-flight download finish before the process exits.

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildFixtures, pushFixtures, type FixtureName } from '../fixtures/images.js';
import type { PushedImage } from '../../tools/oci/oci-client.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { mirrorBin, repoRoot, startMirror } from '../../tools/launch/mirror.js';
import { freePort, run, startProcess, tempDir, waitForHttp } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { fetchHashed } from './helpers.js';

describe('mirror lifecycle', { timeout: 180_000 }, () => {
  let upstream: RegistryHandle;
  let proxy: FaultProxyHandle;
  let pushed: Record<FixtureName, PushedImage>;

  before(async () => {
    upstream = await startRegistry();
    pushed = await pushFixtures(await buildFixtures(), upstream.host, { only: ['big'] });
    proxy = await startFaultProxy(upstream.url);
  });
  after(async () => {
    await proxy?.stop();
    await upstream?.stop();
  });

  it('`serve` with no config runs the embedded default (docker.io upstream, ./data store)', async () => {
    const cwd = tempDir('embedded');
    const port = await freePort();
    const p = startProcess({
      cmd: process.execPath,
      args: [mirrorBin(), 'serve'],
      cwd,
      env: { MIRROR_LISTEN: `127.0.0.1:${port}` },
      logFile: join(cwd, 'log'),
    });
    try {
      await waitForHttp(`http://127.0.0.1:${port}/readyz`, { expectStatus: 200, process: p });
      const v2 = await fetch(`http://127.0.0.1:${port}/v2/`);
      assert.equal(v2.status, 200);
      assert.equal(v2.headers.get('docker-distribution-api-version'), 'registry/2.0');
      assert.match(p.logText(), /"upstreams":\["docker\.io"\]/);
      assert.match(p.logText(), /"storage":"\.\/data"/);
    } finally {
      assert.equal(await p.stop(), 0, 'SIGTERM exits cleanly');
    }
  });

  it('a bad config stops start-up with one line naming the key, exit code 2', async () => {
    const m = await startMirror({ cache: { ttl: '7 days' } }, { noWait: true });
    assert.equal(await m.exited(), 2);
    const lines = m.logText().trim().split('\n');
    assert.equal(lines.length, 1, m.logText());
    assert.match(lines[0]!, /cache\.ttl/);
    const unknownFlag = await run(process.execPath, [mirrorBin(), 'serve', '--bogus'], { allowFail: true, cwd: repoRoot() });
    assert.equal(unknownFlag.code, 2);
    assert.match(unknownFlag.stderr, /unknown argument "--bogus"/);
  });

  it('shutdownDelay: after SIGTERM /readyz says 503 while new connections are still served, then it exits', async () => {
    const m = await startMirror({ upstreams: { 'docker.io': { url: proxy.url } }, shutdownDelay: '3s' });
    const t0 = Date.now();
    const exit = m.stop(30_000);
    // A fresh connection each time (no keep-alive), as kube-proxy would route a new client.
    const ask = (path: string) => fetch(`${m.url}${path}`, { headers: { connection: 'close' } });
    await waitForReady503(() => ask('/readyz'));
    const v2 = await ask('/v2/');
    assert.equal(v2.status, 200, 'a new connection during the delay is served');
    await v2.arrayBuffer();
    assert.equal(await exit, 0);
    assert.ok(Date.now() - t0 >= 2900, `exited after the delay (${Date.now() - t0} ms)`);
    assert.match(m.logText(), /still serving until the shutdown delay ends/);
  });

  it('SIGTERM lets an in-flight download finish, then exits', async () => {
    const m = await startMirror({ upstreams: { 'docker.io': { url: proxy.url } } });
    const layer = pushed.big.bigLayer!;
    proxy.slowBlob(layer.digest, 40 << 20);
    const transfer = fetchHashed(`${m.url}/v2/${pushed.big.repository}/blobs/${layer.digest}`);
    await new Promise((r) => setTimeout(r, 500));
    const exit = m.stop(30_000);
    const got = await transfer;
    assert.equal(got.error, undefined);
    assert.equal(got.digest, layer.digest);
    assert.equal(await exit, 0);
    assert.doesNotMatch(m.logText(), /grace period over/, 'drained, not cut off by the grace timer');
    proxy.clear();
  });
});

/** Polls until /readyz answers 503 (the drain has begun); the SIGTERM is asynchronous. */
async function waitForReady503(ask: () => Promise<Response>): Promise<void> {
  const deadline = Date.now() + 2000;
  for (;;) {
    const r = await ask();
    await r.arrayBuffer();
    if (r.status === 503) return;
    if (Date.now() > deadline) throw new Error(`/readyz still ${r.status} 2 s after SIGTERM`);
    await new Promise((res) => setTimeout(res, 50));
  }
}
