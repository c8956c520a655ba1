// The store survives kill -9 at any moment, and `registry-mirror verify` proves it:
// - ten rounds of concurrent pulls of several images (slow upstream blobs so downloads are in
//   flight, a size bound so eviction runs too), kill -9 at a random moment, restart; verify on
//   the killed store and again at the end finds it consistent, and a final pull of everything
//   is correct;
// - verify refuses to run under a live server; a byte flipped on disk is reported (exit 1),
//   quarantined with --repair, and the mirror then fetches that blob again, correct;
// - a crash after a client got its last byte but before the blob was fsynced and renamed into
//   the store (a commit held open by the test hook) leaves no visible blob.

import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { mirrorBin, startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { run, sleep } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { blobPath, fetchHashed, isCached, pullImage, pushRandomImage, tempFiles, type RandomImage } from './helpers.js';

const rounds = 10;

describe('kill -9 during pulls, and registry-mirror verify', { timeout: 300_000 }, () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  const images: RandomImage[] = [];
  const verify = (...args: string[]) => run(process.execPath, [mirrorBin(), 'verify', '--config', mirror.configFile, ...args], { allowFail: true, timeoutMs: 60_000 });

  before(async () => {
    registry = await startRegistry();
    for (let i = 0; i < 8; i++) {
      images.push(await pushRandomImage(registry.url, `crash/app${i}`, 'v1', [1_500_000 + i * 1000, 400_000 + i, 20_000 + i], `crash-${i}`));
    }
    proxy = await startFaultProxy(registry.url);
    // Each big layer takes ~0.5-1 s: kills land in the middle of downloads.
    for (const img of images) proxy.slowBlob(img.layers[0]!.digest, 2 << 20);
    mirror = await startMirror({
      // Below the ~15 MB the images take: evictions happen between and during the rounds.
      storage: { maxBytes: 10_000_000 },
      cache: { tagTTL: '1s' },
      upstreams: { 'docker.io': { url: proxy.url } },
      logLevel: 'warn',
    });
  });

  after(async () => {
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it(`${rounds} rounds of kill -9 during concurrent pulls: the store stays consistent and every image pulls correctly after`, async () => {
    let interrupted = 0;
    let completed = 0;
    let crashedSummary = '';
    for (let round = 0; round < rounds; round++) {
      // Two clients per image, each image at its own moment.
      // (Settled at once: a pull the kill breaks must not be an unhandled rejection.)
      const pulls = images.flatMap((img) =>
        [0, 1].map(() =>
          pullImage(mirror.url, '', img.repository, img.tag).then(
            () => true,
            () => false,
          ),
        ),
      );
      await sleep(150 + Math.floor(Math.random() * 1200));
      await mirror.kill9();
      for (const ok of await Promise.all(pulls)) {
        if (ok) completed++;
        else interrupted++;
      }
      if (round === rounds - 1) {
        // The store exactly as kill -9 left it, before a restart sweeps anything.
        const crashed = await verify();
        assert.equal(crashed.code, 0, `verify on the killed store:\n${crashed.stdout}${crashed.stderr}`);
        assert.match(crashed.stdout, /store consistent/);
        crashedSummary = /store consistent.*/.exec(crashed.stdout)![0];
      }
      await mirror.restart();
    }
    assert.ok(interrupted > 0, 'kills landed during pulls');
    for (const img of images) {
      const pulled = await pullImage(mirror.url, '', img.repository, img.tag);
      assert.equal(pulled.manifestDigest, img.digest);
    }
    await mirror.stop();
    const final = await verify();
    assert.equal(final.code, 0, final.stdout + final.stderr);
    assert.match(final.stdout, /verify: store consistent/);
    const checked = /(\d+) blobs and (\d+) manifests rehashed/.exec(final.stdout);
    assert.ok(checked && Number(checked[1]) > 0 && Number(checked[2]) > 0, final.stdout);
    process.stdout.write(`# kill -9 loop: ${rounds} kills, ${interrupted} pulls interrupted, ${completed} completed between kills; verify after the last kill: ${crashedSummary}; at the end: ${checked![0]}\n`);
    await mirror.restart();
  });

  it('verify refuses a live store; a flipped byte is reported, quarantined with --repair, then fetched again correctly', async () => {
    const img = images[7]!;
    const layer = img.layers[1]!;
    assert.equal((await fetchHashed(`${mirror.url}/v2/${img.repository}/blobs/${layer.digest}`)).digest, layer.digest);

    const refused = await verify();
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /a server is using .* \(pid \d+/);

    await mirror.stop();
    const path = blobPath(mirror.dataDir, layer.digest);
    const bytes = readFileSync(path);
    bytes[bytes.length >> 1] ^= 0x20;
    writeFileSync(path, bytes);

    const found = await verify();
    assert.equal(found.code, 1, found.stdout);
    const rel = `blobs/sha256/${layer.digest.slice(7, 9)}/${layer.digest.slice(7)}`;
    assert.match(found.stdout, new RegExp(`corrupt\\s+${rel}: content hashes to sha256:`));
    assert.match(found.stdout, /CORRUPTION: 1 corrupt file\(s\); run with --repair/);
    assert.ok(existsSync(path), 'a plain verify changes nothing');

    const repaired = await verify('--repair');
    assert.equal(repaired.code, 1, 'it did find corruption');
    assert.match(repaired.stdout, /quarantined to quarantine\//);
    assert.ok(!existsSync(path));
    const qdir = join(mirror.dataDir, 'quarantine');
    const [stamp] = readdirSync(qdir);
    assert.deepEqual(readFileSync(join(qdir, stamp!, rel)), bytes, 'the corrupt file is kept, not deleted');

    const clean = await verify();
    assert.equal(clean.code, 0, clean.stdout);

    await mirror.restart();
    const gets = proxy.countRequests('GET', `/blobs/${layer.digest}`);
    const again = await fetchHashed(`${mirror.url}/v2/${img.repository}/blobs/${layer.digest}`);
    assert.equal(again.digest, layer.digest);
    assert.equal(proxy.countRequests('GET', `/blobs/${layer.digest}`), gets + 1, 'fetched again from the upstream');
    assert.equal((await pullImage(mirror.url, '', img.repository, img.tag)).manifestDigest, img.digest);
  });

  it('kill -9 between the last byte a client got and the rename into the store leaves no visible blob', async () => {
    const img = images[6]!;
    const layer = img.layers[0]!;
    const held = await startMirror(
      { upstreams: { 'docker.io': { url: proxy.url } }, logLevel: 'warn' },
      // The commit (fsync, rename) waits a minute after verification: the kill lands there.
      { env: { REGISTRY_MIRROR_TEST_HOLD_BEFORE_COMMIT_MS: '60000' } },
    );
    try {
      const url = `${held.url}/v2/${img.repository}/blobs/${layer.digest}`;
      const gets = proxy.countRequests('GET', `/blobs/${layer.digest}`);
      const first = await fetchHashed(url);
      assert.equal(first.digest, layer.digest, 'the client got every byte, verified');
      assert.ok(!isCached(held.dataDir, layer.digest), 'not visible before the rename');
      assert.equal(tempFiles(held.dataDir).length, 1);
      // A request in that window joins the verified download instead of going upstream again.
      assert.equal((await fetchHashed(url)).digest, layer.digest);
      assert.equal(proxy.countRequests('GET', `/blobs/${layer.digest}`), gets + 1, 'one upstream GET');
      await held.kill9();
      assert.ok(!isCached(held.dataDir, layer.digest), 'nothing visible after the crash');
      const checked = await run(process.execPath, [mirrorBin(), 'verify', '--config', held.configFile], { allowFail: true, timeoutMs: 60_000 });
      assert.equal(checked.code, 0, checked.stdout + checked.stderr);
      assert.match(checked.stdout, /store consistent/);
      await held.restart();
      assert.deepEqual(tempFiles(held.dataDir), [], 'the temp file is swept at start');
      assert.ok(!isCached(held.dataDir, layer.digest));
    } finally {
      await held.stop();
    }
  });

  it('SIGTERM right after a client got its last byte still commits the blob before exiting', async () => {
    const img = images[5]!;
    const layer = img.layers[0]!;
    const m = await startMirror(
      { upstreams: { 'docker.io': { url: proxy.url } }, logLevel: 'warn' },
      { env: { REGISTRY_MIRROR_TEST_HOLD_BEFORE_COMMIT_MS: '1000' } },
    );
    try {
      assert.equal((await fetchHashed(`${m.url}/v2/${img.repository}/blobs/${layer.digest}`)).digest, layer.digest);
      assert.ok(!isCached(m.dataDir, layer.digest), 'the commit is still held');
      assert.equal(await m.stop(), 0);
      assert.ok(isCached(m.dataDir, layer.digest), 'shutdown waited for the commit');
      assert.deepEqual(tempFiles(m.dataDir), []);
    } finally {
      await m.stop();
    }
  });
});
