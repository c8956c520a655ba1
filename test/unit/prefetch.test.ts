// Prefetch and pin, pure parts: the config's `prefetch` list, and pins against the evictor
// (a pinned image's content survives expiry and size eviction; the rest goes).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { BlobCache } from '../../mirror/cache/blob-cache.js';
import { ManifestCache } from '../../mirror/cache/manifest-cache.js';
import { ConfigError, parseConfig, pinMinBytesPerImage, type PrefetchConfig } from '../../mirror/config.js';
import { MirrorMetrics } from '../../mirror/metrics.js';
import { Prefetcher } from '../../mirror/prefetch.js';
import { parseDigest } from '../../mirror/reference.js';
import { UpstreamRouter } from '../../mirror/routing.js';
import { ContentStore } from '../../mirror/store/content-store.js';
import { Evictor } from '../../mirror/store/evictor.js';
import { RepoIndex } from '../../mirror/store/repo-index.js';
import { UpstreamClient } from '../../mirror/upstream/client.js';
import { tempDir } from '../../tools/launch/proc.js';
import { FsDriver } from '../../mirror/store/drivers/fs-driver.js';

const upstreams = { 'docker.io': { url: 'https://registry-1.docker.io' }, 'ghcr.io': { url: 'https://ghcr.io' } };

function refusal(doc: unknown): string {
  try {
    parseConfig(doc);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.key;
  }
  assert.fail('accepted');
}

describe('config: prefetch', () => {
  it('parses images, platforms and pin (default false)', () => {
    const c = parseConfig({
      upstreams,
      prefetch: [
        { image: 'docker.io/library/nginx:1.27', platforms: ['linux/amd64', 'linux/arm64/v8'], pin: true },
        { image: `ghcr.io/org/app@sha256:${'a'.repeat(64)}` },
        { image: 'docker.io/nginx:1.27' },
      ],
    });
    assert.deepEqual(c.prefetch, [
      { image: 'docker.io/library/nginx:1.27', upstream: 'docker.io', repository: 'library/nginx', reference: '1.27', platforms: ['linux/amd64', 'linux/arm64/v8'], pin: true },
      { image: `ghcr.io/org/app@sha256:${'a'.repeat(64)}`, upstream: 'ghcr.io', repository: 'org/app', reference: `sha256:${'a'.repeat(64)}`, platforms: [], pin: false },
      { image: 'docker.io/nginx:1.27', upstream: 'docker.io', repository: 'nginx', reference: '1.27', platforms: [], pin: false },
    ] satisfies PrefetchConfig[]);
    assert.deepEqual(parseConfig({}).prefetch, [], 'none by default');
  });

  it('refuses bad entries, naming the key', () => {
    const cases: Array<[unknown, string]> = [
      [{ image: 'docker.io/x:1' }, 'prefetch'],
      [[{ image: 'quay.io/org/app:1' }], 'prefetch[0].image'],
      [[{ image: 'library/nginx:1.27' }], 'prefetch[0].image'],
      [[{ image: 'docker.io/library/nginx' }], 'prefetch[0].image'],
      [[{ image: 'docker.io/Library/nginx:1' }], 'prefetch[0].image'],
      [[{ image: 'docker.io/library/nginx:bad tag' }], 'prefetch[0].image'],
      [[{ image: 'docker.io/library/nginx@sha256:abc' }], 'prefetch[0].image'],
      [[{ image: 'docker.io/a:1' }, { image: 'docker.io/a:1' }], 'prefetch[1].image'],
      [[{ image: 'docker.io/a:1', platforms: 'linux/amd64' }], 'prefetch[0].platforms'],
      [[{ image: 'docker.io/a:1', platforms: ['linux'] }], 'prefetch[0].platforms[0]'],
      [[{ image: 'docker.io/a:1', platforms: ['Linux/AMD64'] }], 'prefetch[0].platforms[0]'],
      [[{ image: 'docker.io/a:1', pin: 'yes' }], 'prefetch[0].pin'],
      [[{ image: 'docker.io/a:1', tag: 'x' }], 'prefetch[0].tag'],
      [[{}], 'prefetch[0].image'],
      [Array.from({ length: 101 }, (_, i) => ({ image: `docker.io/a:${i}` })), 'prefetch'],
      [[{ image: `docker.io/${'a'.repeat(600)}:1` }], 'prefetch[0].image'],
    ];
    for (const [prefetch, key] of cases) assert.equal(refusal({ upstreams, prefetch }), key, JSON.stringify(prefetch).slice(0, 80));
  });

  it('refuses pins that cannot fit storage.maxBytes at all, naming the field', () => {
    const prefetch = [{ image: 'docker.io/a:1' }, { image: 'docker.io/b:1', pin: true }, { image: 'docker.io/c:1', pin: true }];
    assert.equal(refusal({ upstreams, storage: { maxBytes: 2 * pinMinBytesPerImage - 1 }, prefetch }), 'prefetch[1].pin');
    assert.equal(parseConfig({ upstreams, storage: { maxBytes: 2 * pinMinBytesPerImage }, prefetch }).prefetch.length, 3);
    assert.equal(parseConfig({ upstreams, storage: { maxBytes: 0 }, prefetch }).prefetch.length, 3, 'unbounded');
    assert.equal(parseConfig({ upstreams, storage: { maxBytes: 10 }, prefetch: [{ image: 'docker.io/a:1' }] }).prefetch.length, 1, 'no pin, no minimum');
  });
});

const silent = pino({ level: 'silent' });
const sha = (b: Buffer | string) => parseDigest(`sha256:${createHash('sha256').update(b).digest('hex')}`);
const ociManifest = 'application/vnd.oci.image.manifest.v1+json';

/** Stores an image (config, layer, manifest) linked and tagged v1 in docker.io/<repo>. */
async function addImage(store: ContentStore, repos: RepoIndex, repo: string, layerBytes: number) {
  const blobs = [Buffer.from(`config ${repo}`), Buffer.alloc(layerBytes, repo)];
  for (const b of blobs) {
    const tmp = store.tempPath();
    writeFileSync(tmp, b);
    await store.commitBlob(tmp, sha(b), b.length);
    await repos.link('docker.io', repo, sha(b));
  }
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: ociManifest, config: { digest: sha(blobs[0]!).value, size: blobs[0]!.length }, layers: [{ digest: sha(blobs[1]!).value, size: layerBytes }] }));
  const md = sha(bytes);
  await store.putManifest(md, ociManifest, bytes);
  await repos.link('docker.io', repo, md);
  await repos.setTag('docker.io', repo, 'v1', { digest: md.value, mediaType: ociManifest, checkedAt: 1 }, 'index');
  return [md.value, ...blobs.map((b) => sha(b).value)];
}

async function setup(maxBytes: number, prefetch: unknown[]) {
  const config = parseConfig({ upstreams: { 'docker.io': { url: 'http://127.0.0.1:9' } }, storage: { maxBytes }, prefetch });
  const root = join(tempDir('prefetch'), 'store');
  const store = new ContentStore(new FsDriver(root));
  await store.open();
  const repos = new RepoIndex(new FsDriver(root));
  const metrics = new MirrorMetrics(() => store.totals());
  const u = config.upstreams['docker.io']!;
  const client = new UpstreamClient(u, undefined, UpstreamClient.agent(), () => undefined);
  const router = new UpstreamRouter(new Map([['docker.io', client]]), 'docker.io');
  const evictor = new Evictor(store, metrics, silent, { ttlMs: 1000, maxBytes }, repos);
  const blobs = new BlobCache(store, repos, metrics, silent, { maxBytes });
  const manifests = new ManifestCache(store, repos, metrics, silent, 60_000);
  const prefetcher = new Prefetcher(config.prefetch, router, manifests, blobs, store, repos, metrics, silent, { tagTTLMs: 60_000, maxBytes });
  return { store, repos, evictor, prefetcher, metrics };
}

describe('pin and evict', () => {
  it('pinned content survives expiry and size eviction and counts toward storedBytes; unpinned content goes', async () => {
    const { store, repos, evictor, prefetcher } = await setup(10 << 20, [{ image: 'docker.io/team/pinned:v1', pin: true }, { image: 'docker.io/team/warm:v1' }]);
    const pinned = await addImage(store, repos, 'team/pinned', 4000);
    const warm = await addImage(store, repos, 'team/warm', 3000);
    const other = await addImage(store, repos, 'team/other', 2000);
    // What a restart does before its first expiry pass: pins from the store, no upstream.
    await prefetcher.pinFromStore();
    for (const d of pinned) assert.ok(store.isPinned(d) && !store.isInUse(d), `${d} kept ('keep'), not in use`);
    for (const d of [...warm, ...other]) assert.ok(!store.isPinned(d), `${d} not pinned (no pin: true)`);
    const st = prefetcher.status();
    assert.equal(st[0]!.pinned, true);
    assert.equal(st[0]!.digest, pinned[0]);
    assert.equal(st[1]!.pinned, false);

    // Size pressure: room for the whole bound, so everything unpinned must go; the pinned
    // bytes still fill part of it, so the incoming bytes cannot be cached (ENOSPC).
    const before = store.totals().storedBytes;
    await assert.rejects(evictor.makeRoom(10 << 20), { code: 'ENOSPC' });
    for (const d of pinned) assert.ok(store.has(d === pinned[0] ? 'manifest' : 'blob', d), `pinned ${d} kept`);
    for (const d of [...warm.slice(1), ...other.slice(1)]) assert.ok(!store.has('blob', d), `unpinned ${d} evicted`);
    const kept = store.totals().storedBytes;
    assert.ok(kept > 4000 && kept < before, 'pinned bytes still count in storedBytes');

    // Expiry far in the future: still kept.
    await evictor.expire(Date.now() + 3_600_000);
    for (const d of pinned) assert.ok(store.has(d === pinned[0] ? 'manifest' : 'blob', d), `pinned ${d} survives expiry`);
    prefetcher.stop();
  });
});
