import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { MirrorMetrics } from '../../mirror/metrics.js';
import { parseDigest } from '../../mirror/reference.js';
import { Evictor, evictionOrder, type EvictorOptions } from '../../mirror/store/evictor.js';
import { ContentStore, type ContentEntry } from '../../mirror/store/content-store.js';
import { RepoIndex } from '../../mirror/store/repo-index.js';
import { tempDir } from '../../tools/launch/proc.js';
import { FsDriver } from '../../mirror/store/drivers/fs-driver.js';

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
  const store = new ContentStore(new FsDriver(root));
  await store.open();
  const repos = new RepoIndex(new FsDriver(root));
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
    assert.ok(existsSync(join(root, 'repos')));
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

// Size eviction and expiry around content in use (issue 14, item 7): an image with a blob being
// written or served is kept whole, and the pass goes on past it to content that is not in use.

const ociIndex = 'application/vnd.oci.image.index.v1+json';

/** A bare store whose images are given explicit access times, so the order is known. */
async function bareStore(ttlMs = 0) {
  const root = join(tempDir('evictor-in-use'), 'store');
  const store = new ContentStore(new FsDriver(root));
  await store.open();
  const repos = new RepoIndex(new FsDriver(root));
  const metrics = new MirrorMetrics(() => store.totals());
  /** An evictor with this bound; by default the store's size now (room for as much again empties it). */
  const evictorFor = (maxBytes = store.totals().storedBytes, more: Partial<EvictorOptions> = {}) =>
    new Evictor(store, metrics, silent, { ttlMs, maxBytes, ...more }, repos);
  const putBlob = async (content: Buffer, at: number) => {
    const d = sha(content);
    if (!store.has('blob', d.value)) {
      const tmp = store.tempPath();
      writeFileSync(tmp, content);
      await store.commitBlob(tmp, d, content.length);
    }
    store.touch('blob', d.value, at);
    return d.value;
  };
  /** An image: a config and one layer per entry of `layers` (contents), all last used at `at`. */
  const image = async (name: string, layers: Array<string | Buffer>, at: number) => {
    const config = await putBlob(Buffer.from(`config of ${name}`), at);
    const ls: string[] = [];
    for (const l of layers) ls.push(await putBlob(typeof l === 'string' ? Buffer.alloc(1000, l) : l, at));
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: ociManifest, config: { digest: config }, layers: ls.map((digest) => ({ digest })) }));
    const md = sha(bytes);
    await store.putManifest(md, ociManifest, bytes);
    store.touch('manifest', md.value, at);
    return { manifest: md.value, config, layers: ls, all: [md.value, config, ...ls] };
  };
  const index = async (children: string[], at: number) => {
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: ociIndex, manifests: children.map((digest) => ({ digest })) }));
    const md = sha(bytes);
    await store.putManifest(md, ociIndex, bytes);
    store.touch('manifest', md.value, at);
    return md.value;
  };
  /** Whether each digest of `all` (manifest first) is still stored. */
  const kept = (img: { all: string[] }) => img.all.map((d, i) => store.has(i === 0 ? 'manifest' : 'blob', d));
  const noRoom = async () => (await metrics.registry.getSingleMetric('registry_mirror_store_no_room_total')!.get()).values[0]?.value ?? 0;
  return { store, evictorFor, image, index, kept, noRoom };
}

const allTrue = (n: number) => Array<boolean>(n).fill(true);
const allFalse = (n: number) => Array<boolean>(n).fill(false);

describe('evictor: content in use', () => {
  it('an image with a blob being served is kept whole; older and younger content not in use goes; ENOSPC when the rest cannot fit', async () => {
    const { store, evictorFor, image, kept, noRoom } = await bareStore();
    const old = await image('old', ['o'], 1000);
    const pulled = await image('pulled', ['p', 'q', 'r'], 2000);
    const young = await image('young', ['y'], 3000);
    // A client is reading the second layer: the manifest, the config, the layer it has and the
    // one it has yet to ask for are all older than the young image, and all stay.
    const release = store.pin(pulled.layers[1]!);
    const stored = store.totals().storedBytes;
    const evictor = evictorFor();
    await assert.rejects(evictor.makeRoom(stored), (err: NodeJS.ErrnoException) => err.code === 'ENOSPC' && /in use or pinned/.test(err.message));
    assert.deepEqual(kept(pulled), allTrue(5), 'the image being pulled is whole');
    assert.deepEqual(kept(old), allFalse(3), 'older content went');
    assert.deepEqual(kept(young), allFalse(3), 'younger content not in use went too: the pass skips, it does not stop');
    assert.equal(await noRoom(), 1);

    // Once the pull is over the image ages like any other.
    release();
    await evictor.makeRoom(stored);
    assert.deepEqual(kept(pulled), allFalse(5));
    assert.equal(store.totals().storedBytes, 0);
    assert.equal(await noRoom(), 1);
  });

  it('a blob being downloaded (pinned before it is stored) keeps the manifest naming it, the index above, and their blobs; not a sibling platform', async () => {
    const { store, evictorFor, image, index, kept } = await bareStore();
    const amd64 = await image('amd64', ['a', 'cold'], 1000);
    const arm64 = await image('arm64', ['b'], 1000);
    const idx = await index([amd64.manifest, arm64.manifest], 1000);
    const other = await image('other', ['x'], 5000);
    // The cold layer is not in the store: its download holds the pin.
    const cold = amd64.layers[1]!;
    assert.ok(await store.remove('blob', cold));
    const release = store.pin(cold);
    await assert.rejects(evictorFor().makeRoom(store.totals().storedBytes), { code: 'ENOSPC' });
    assert.ok(store.has('manifest', idx), 'the index the client came through');
    assert.deepEqual(kept(amd64), [true, true, true, false], "the platform manifest, its config and the layer it has");
    assert.deepEqual(kept(arm64), allFalse(3), 'the other platform is not in use');
    assert.deepEqual(kept(other), allFalse(3));
    release();
  });

  it('a digest in use keeps every image that has it (which one is pulled cannot be told), and the pass goes on past them', async () => {
    const { store, evictorFor, image, kept } = await bareStore();
    const base = Buffer.alloc(3000, 'base');
    const ancient = await image('ancient', [base, 'n'], 1000);
    const fresh = await image('fresh', [base, 'f'], 2000);
    const unrelated = await image('unrelated', ['u'], 3000);
    const release = store.pin(sha(base).value);
    await assert.rejects(evictorFor().makeRoom(store.totals().storedBytes), { code: 'ENOSPC' });
    assert.deepEqual(kept(ancient), allTrue(4));
    assert.deepEqual(kept(fresh), allTrue(4));
    assert.deepEqual(kept(unrelated), allFalse(3), 'an old image sharing the layer does not end the eviction');
    release();
  });

  it("a 'keep' pin (prefetch) keeps exactly its digest: other images that share it are evicted around it", async () => {
    const { store, evictorFor, image, kept } = await bareStore();
    const base = Buffer.alloc(3000, 'base');
    const prefetched = await image('prefetched', [base], 1000);
    const sharing = await image('sharing', [base, 's'], 2000);
    const releases = prefetched.all.map((d) => store.pin(d, 'keep'));
    await assert.rejects(evictorFor().makeRoom(store.totals().storedBytes), { code: 'ENOSPC' });
    assert.deepEqual(kept(prefetched), allTrue(3));
    assert.deepEqual(kept(sharing), [false, false, true, false], 'only the shared layer stays, because it is pinned');
    for (const r of releases) r();
  });

  it('content used after the pass took its order is kept (a pull that began meanwhile)', async () => {
    const { store, evictorFor, image, kept } = await bareStore();
    const first = await image('first', ['f'], 1000);
    const second = await image('second', ['s'], 2000);
    // The pull of `second` begins while the pass removes `first`: its manifest is touched.
    const remove = store.remove.bind(store);
    let touched = false;
    store.remove = async (kind, digest) => {
      if (!touched) {
        touched = true;
        store.touch('manifest', second.manifest);
      }
      return remove(kind, digest);
    };
    await assert.rejects(evictorFor().makeRoom(store.totals().storedBytes), { code: 'ENOSPC' });
    assert.ok(touched);
    assert.deepEqual(kept(first), allFalse(3));
    assert.deepEqual(kept(second), allTrue(3), 'the manifest and the blobs under it');
  });

  it('rejects only when the bound itself cannot be met, not the low-water mark', async () => {
    const { store, evictorFor, image, kept } = await bareStore();
    const loose = await image('loose', ['l'], 1000);
    const busy = await image('busy', ['b', 'c', 'd', 'e', 'g', 'h', 'i', 'j'], 2000);
    const release = store.pin(busy.layers[0]!);
    const stored = store.totals().storedBytes;
    const busyBytes = busy.all.reduce((n, d, i) => n + store.get(i === 0 ? 'manifest' : 'blob', d)!.size, 0);
    // Room for 100 bytes: the low-water mark (90% of the bound, less them) cannot be reached
    // with the busy image kept, the bound can.
    const maxBytes = busyBytes + 150;
    assert.ok(stored + 100 > maxBytes && Math.floor(maxBytes * 0.9) - 100 < busyBytes);
    const evictor = evictorFor(maxBytes);
    await evictor.makeRoom(100);
    assert.deepEqual(kept(loose), allFalse(3));
    assert.deepEqual(kept(busy), allTrue(10));
    assert.equal(store.totals().storedBytes, busyBytes);
    await assert.rejects(evictor.makeRoom(151), { code: 'ENOSPC' });
    release();
  });

  it('expiry skips an image in use and removes the rest; the image expires at the first pass after the pin goes', async () => {
    const { store, evictorFor, image, kept } = await bareStore(1000);
    const evictor = evictorFor(0);
    const idle = await image('idle', ['i'], 1000);
    const pulled = await image('pulled', ['p', 'q'], 1000);
    const release = store.pin(pulled.layers[0]!);
    assert.equal(await evictor.expire(Date.now() + 60_000), 3);
    assert.deepEqual(kept(idle), allFalse(3));
    assert.deepEqual(kept(pulled), allTrue(4));
    release();
    assert.equal(await evictor.expire(Date.now() + 60_000), 4);
    assert.deepEqual(kept(pulled), allFalse(4));
  });
});

// A store several processes share (issue 16): passes run only on the lease holder (the gate),
// and nothing used within graceMs is removed (another process's presigned URLs and downloads).

/** A gate whose answer the test sets; counts how often it was asked. */
function gate(leader: boolean) {
  const g = { leader, asked: 0, isLeader: () => (g.asked++, g.leader) };
  return g;
}

describe('evictor: the lease gate and the grace of a shared store', () => {
  it('not the leader: expiry removes nothing; the leader expires as before', async () => {
    const { evictorFor, image, kept } = await bareStore(1000);
    const g = gate(false);
    const evictor = evictorFor(0, { gate: g });
    const old = await image('old', ['o'], 1000);
    assert.equal(await evictor.expire(Date.now() + 60_000), 0);
    assert.deepEqual(kept(old), allTrue(3));
    assert.ok(g.asked > 0);
    g.leader = true;
    assert.equal(await evictor.expire(Date.now() + 60_000), 3);
    assert.deepEqual(kept(old), allFalse(3));
  });

  it('not the leader: makeRoom removes nothing and lets the commit go over the bound, unless it is larger than the bound', async () => {
    const { store, evictorFor, image, kept, noRoom } = await bareStore();
    const old = await image('old', ['o'], 1000);
    const stored = store.totals().storedBytes;
    const evictor = evictorFor(stored, { gate: gate(false) });
    await evictor.makeRoom(100);
    assert.deepEqual(kept(old), allTrue(3));
    await assert.rejects(evictor.makeRoom(stored + 1), (err: NodeJS.ErrnoException) => err.code === 'ENOSPC' && /more than the bound/.test(err.message));
    assert.deepEqual(kept(old), allTrue(3), 'nothing removed for it either');
    assert.equal(await noRoom(), 1);
    assert.equal(await evictor.trim(), 0, 'the periodic size pass does nothing either');
  });

  it('the leader trims an over-full store (commits of the others) down to the low-water mark', async () => {
    const { store, evictorFor, image, kept } = await bareStore();
    const a = await image('a', ['a'], 1000);
    const b = await image('b', ['b'], 2000);
    const c = await image('c', ['c'], 3000);
    const per = store.totals().storedBytes / 3;
    // A bound that two images fit under, not three: the store is over it.
    const g = gate(true);
    const evictor = evictorFor(Math.ceil(per * 2.5), { gate: g });
    assert.equal(await evictor.trim(), 3);
    assert.deepEqual(kept(a), allFalse(3));
    assert.deepEqual(kept(b), allTrue(3));
    assert.deepEqual(kept(c), allTrue(3));
    assert.equal(await evictor.trim(), 0, 'under the bound: nothing');
  });

  it('a leader that loses the lease mid-pass stops at the next entry', async () => {
    const { evictorFor, image, kept } = await bareStore(1000);
    const imgs = [await image('a', ['a'], 1000), await image('b', ['b'], 2000), await image('c', ['c'], 3000)];
    const g = { calls: 0, isLeader: () => ++g.calls <= 4 };
    const evictor = evictorFor(0, { gate: g });
    // One check before the pass, then one before each removal: 3 removals, then it stops.
    assert.equal(await evictor.expire(Date.now() + 60_000), 3);
    assert.deepEqual(kept(imgs[0]!), allFalse(3));
    assert.deepEqual(kept(imgs[1]!), allTrue(3));
    assert.deepEqual(kept(imgs[2]!), allTrue(3));
  });

  it('size eviction on a leader that loses the lease mid-pass removes no more and does not refuse the commit', async () => {
    const { store, evictorFor, image, kept, noRoom } = await bareStore();
    const imgs = [await image('a', ['a'], 1000), await image('b', ['b'], 2000)];
    const g = { calls: 0, isLeader: () => ++g.calls <= 3 };
    const evictor = evictorFor(store.totals().storedBytes, { gate: g });
    await evictor.makeRoom(store.totals().storedBytes);
    assert.deepEqual(kept(imgs[0]!), [false, false, true]);
    assert.deepEqual(kept(imgs[1]!), allTrue(3));
    assert.equal(await noRoom(), 0);
  });

  it('graceMs: content used within it is neither expired nor evicted for size; older content is', async () => {
    const { store, evictorFor, image, kept, noRoom } = await bareStore(1000);
    const now = Date.now();
    const hour = 3600_000;
    const ancient = await image('ancient', ['x'], now - 3 * hour);
    const recent = await image('recent', ['r'], now - hour / 2);
    // Used long ago itself, but its manifest was used recently: the image is within the grace.
    const layerShared = await image('shared-old', ['s'], now - 3 * hour);
    const reusing = await image('reusing', ['s'], now - 60_000);
    const evictor = evictorFor(0, { gate: gate(true), graceMs: hour });
    assert.equal(await evictor.expire(now), 5, 'what was not used within the hour (ttl is 1 s): one image, and the manifest and config of another');
    assert.deepEqual(kept(ancient), allFalse(3));
    assert.deepEqual(kept(recent), allTrue(3));
    assert.deepEqual(kept(layerShared), [false, false, true], 'its own manifest and config went; the shared layer is young through `reusing`');
    assert.deepEqual(kept(reusing), allTrue(3));

    const more = await image('more-ancient', ['m'], now - 5 * hour);
    const sized = evictorFor(store.totals().storedBytes, { gate: gate(true), graceMs: hour });
    await assert.rejects(sized.makeRoom(store.totals().storedBytes), (err: Error) => /within the last 3600 s/.test(err.message));
    assert.deepEqual(kept(more), allFalse(3), 'the old image went');
    assert.deepEqual(kept(recent), allTrue(3), 'the recent one stayed though the bound wanted the room');
    assert.equal(await noRoom(), 1);
  });
});
