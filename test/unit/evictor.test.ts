import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { MirrorMetrics } from '../../mirror/metrics.js';
import { parseDigest } from '../../mirror/reference.js';
import { Evictor, evictionOrder } from '../../mirror/store/evictor.js';
import { ContentStore, type ContentEntry } from '../../mirror/store/content-store.js';
import { RepoIndex } from '../../mirror/store/repo-index.js';
import { tempDir } from '../rig/proc.js';

const blob = (digest: string, lastAccess: number): ContentEntry => ({ digest, kind: 'blob', size: 1, lastAccess });
const manifest = (digest: string, lastAccess: number, refs: string[]): ContentEntry => ({
  digest,
  kind: 'manifest',
  size: 1,
  lastAccess,
  mediaType: 'x',
  refs,
});

describe('eviction order', () => {
  it('oldest first', () => {
    const order = evictionOrder([blob('b', 30), blob('a', 10), blob('c', 20)], 0).map((r) => r.entry.digest);
    assert.deepEqual(order, ['a', 'c', 'b']);
  });

  it('a blob is as young as the newest manifest using it, and manifests go first on a tie', () => {
    const entries = [
      blob('layer-shared', 1),
      blob('layer-old', 1),
      manifest('m-old', 5, ['layer-old', 'layer-shared']),
      manifest('m-new', 50, ['layer-shared']),
    ];
    const order = evictionOrder(entries, 0).map((r) => r.entry.digest);
    assert.deepEqual(order, ['m-old', 'layer-old', 'm-new', 'layer-shared']);
  });

  it('propagates through an index to its platform manifests and their layers', () => {
    const entries = [
      blob('layer', 1),
      manifest('platform', 2, ['layer']),
      manifest('index', 100, ['platform']),
      blob('unrelated', 50),
    ];
    const order = evictionOrder(entries, 0).map((r) => `${r.entry.digest}@${r.effectiveAccess}`);
    assert.deepEqual(order, ['unrelated@50', 'index@100', 'platform@100', 'layer@100']);
  });

  it('a blob and a manifest with one digest are two entries with their own clocks', () => {
    const order = evictionOrder([blob('d', 10), manifest('d', 50, []), blob('e', 30)], 0).map((r) => `${r.entry.kind}:${r.entry.digest}@${r.effectiveAccess}`);
    assert.deepEqual(order, ['blob:d@10', 'blob:e@30', 'manifest:d@50']);
  });

  it('a ref gives its time to both kinds of its digest; a manifest fetched as a blob ranks as a blob', () => {
    const entries = [blob('layer', 3), blob('platform', 2), manifest('platform', 1, ['layer']), manifest('index', 100, ['platform'])];
    const order = evictionOrder(entries, 0).map((r) => `${r.entry.kind}:${r.entry.digest}@${r.effectiveAccess}`);
    assert.deepEqual(order, ['manifest:index@100', 'manifest:platform@100', 'blob:layer@100', 'blob:platform@100']);
  });

  it('a manifest referring to a digest present only as a blob is not ranked as an index', () => {
    const entries = [manifest('m', 5, ['x']), blob('x', 5), manifest('i', 5, ['m'])];
    const order = evictionOrder(entries, 0).map((r) => `${r.entry.kind}:${r.entry.digest}`);
    assert.deepEqual(order, ['manifest:i', 'manifest:m', 'blob:x']);
  });
});

const silent = pino({ level: 'silent' });
const sha = (b: Buffer | string) => parseDigest(`sha256:${createHash('sha256').update(b).digest('hex')}`);
const ociManifest = 'application/vnd.oci.image.manifest.v1+json';

/** A store with one image (config, layer, manifest) linked and tagged in docker.io/team/app. */
async function storeWithImage() {
  const root = join(tempDir('evictor'), 'store');
  const store = new ContentStore(root);
  await store.open();
  const repos = new RepoIndex(root, store.tmpDir);
  const blobs = [Buffer.from('config'), Buffer.from('layer '.repeat(100))];
  for (const b of blobs) {
    const tmp = store.tempPath();
    writeFileSync(tmp, b);
    await store.commitBlob(tmp, sha(b), b.length);
    await repos.link('docker.io', 'team/app', sha(b));
  }
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, config: { digest: sha(blobs[0]!).value }, layers: [{ digest: sha(blobs[1]!).value }] }));
  const md = sha(bytes);
  await store.putManifest(md, ociManifest, bytes);
  await repos.link('docker.io', 'team/app', md);
  await repos.setTag('docker.io', 'team/app', 'v1', { digest: md.value, mediaType: ociManifest, checkedAt: 1 });
  const digests = [md, ...blobs.map(sha)];
  return { root, store, repos, md, digests, metrics: new MirrorMetrics(() => store.totals()) };
}

/** The store's RepoIndex, counting its prune walks. */
function countingIndex(index: RepoIndex) {
  const walks: number[] = [];
  const prune = index.prune.bind(index);
  index.prune = async (removed, has) => {
    walks.push(removed.size);
    return prune(removed, has);
  };
  return { index, walks };
}

describe('evictor: removed content takes its records with it', () => {
  it('ttl expiry prunes links, tags and the emptied repository in one walk; remembered links are forgotten', async () => {
    const { root, store, repos, md, digests, metrics } = await storeWithImage();
    const { index, walks } = countingIndex(repos);
    const evictor = new Evictor(store, metrics, silent, { ttlMs: 1000, maxBytes: 0 }, index);
    assert.deepEqual(await repos.listRepositories('docker.io'), ['team/app']);
    assert.equal(await evictor.expire(Date.now() + 60_000), 3);
    assert.deepEqual(walks, [3], 'one walk for the whole pass');
    assert.deepEqual(await repos.listRepositories('docker.io'), []);
    assert.ok(!existsSync(join(root, 'repos', 'docker.io', 'team')), 'the empty parent went too');
    assert.ok(existsSync(join(root, 'repos', 'docker.io')));
    // The links `repos` remembered (it linked them) are forgotten too.
    for (const d of digests) assert.equal(await repos.isLinked('docker.io', 'team/app', d), false, d.value);
    assert.equal(await repos.getTag('docker.io', 'team/app', 'v1'), undefined);
    assert.equal(store.has('manifest', md.value), false);
  });

  it('a size eviction prunes in the background, in one walk', async () => {
    const { store, repos, md, metrics } = await storeWithImage();
    const { index, walks } = countingIndex(repos);
    const stored = store.totals().storedBytes;
    const evictor = new Evictor(store, metrics, silent, { ttlMs: 0, maxBytes: stored }, index);
    // Room for as much again: down to nothing (the low-water mark minus the incoming bytes).
    await evictor.makeRoom(stored);
    assert.equal(store.totals().storedBytes, 0, 'the whole image went');
    await evictor.pruned();
    assert.deepEqual(walks, [3]);
    assert.deepEqual(await repos.listRepositories('docker.io'), []);
    assert.equal(await index.isLinked('docker.io', 'team/app', md), false);
  });
});
