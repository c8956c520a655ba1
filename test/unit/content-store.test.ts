// The content store's index is keyed by (kind, digest): OCI lets a client fetch a manifest
// as a blob, so one digest can be stored once as each, and neither may hide the other, in
// the index, in the totals or in state/access.json (version 2; version 1 is still read).

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseDigest, type Digest } from '../../mirror/reference.js';
import { ContentStore } from '../../mirror/store/content-store.js';
import { tempDir } from '../../tools/launch/proc.js';
import { FsDriver } from '../../mirror/store/drivers/fs-driver.js';

const ociManifest = 'application/vnd.oci.image.manifest.v1+json';
const sha = (b: Buffer) => parseDigest(`sha256:${createHash('sha256').update(b).digest('hex')}`);

async function openStore(root = join(tempDir('content-store'), 'store')) {
  const store = new ContentStore(new FsDriver(root));
  await store.open();
  return { root, store };
}

async function putBlob(store: ContentStore, bytes: Buffer): Promise<Digest> {
  const d = sha(bytes);
  const tmp = store.tempPath();
  writeFileSync(tmp, bytes);
  await store.commitBlob(tmp, d, bytes.length);
  return d;
}

/** A manifest, stored as a manifest and then (fetched under /blobs/) as a blob too. */
async function storeBoth(store: ContentStore) {
  const layer = await putBlob(store, Buffer.from('a layer'));
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: ociManifest, config: { digest: layer.value }, layers: [{ digest: layer.value }] }));
  const d = sha(bytes);
  await store.putManifest(d, ociManifest, bytes);
  assert.deepEqual(await putBlob(store, bytes), d);
  return { d, bytes, layer };
}

describe('content store: a blob and a manifest with one digest', () => {
  it('are two index entries, both counted in the totals', async () => {
    const { store } = await openStore();
    const { d, bytes } = await storeBoth(store);
    assert.equal(store.get('manifest', d.value)?.kind, 'manifest');
    assert.equal(store.get('manifest', d.value)?.mediaType, ociManifest);
    assert.equal(store.get('blob', d.value)?.kind, 'blob');
    assert.ok(store.has('blob', d.value) && store.has('manifest', d.value));
    assert.deepEqual((await store.getManifest(d))?.bytes, bytes, 'the blob commit did not replace the manifest');
    const totals = store.totals();
    assert.equal(totals.manifests, 1);
    assert.equal(totals.blobs, 2);
    // The store's byte count is what is on disk: the digest's bytes are there twice.
    const onDisk = statSync(pathOf(store, 'blob', d)).size + statSync(pathOf(store, 'manifest', d)).size + 'a layer'.length;
    assert.equal(totals.storedBytes, onDisk);
    assert.equal(totals.storedBytes, 2 * bytes.length + 'a layer'.length);
    assert.equal([...store.all()].length, 3);
  });

  it('removing one kind leaves the other, on disk and in the index', async () => {
    const { store } = await openStore();
    const { d, bytes } = await storeBoth(store);
    assert.equal(await store.remove('blob', d.value), true);
    assert.ok(!existsSync(pathOf(store, 'blob', d)));
    assert.ok(existsSync(pathOf(store, 'manifest', d)));
    assert.ok(store.has('manifest', d.value) && !store.has('blob', d.value));
    assert.deepEqual((await store.getManifest(d))?.bytes, bytes);
    assert.deepEqual(store.totals(), { storedBytes: bytes.length + 'a layer'.length, blobs: 1, manifests: 1 });
    assert.equal(await store.remove('blob', d.value), false, 'nothing left of that kind');

    await putBlob(store, bytes);
    assert.equal(await store.remove('manifest', d.value), true);
    assert.ok(existsSync(pathOf(store, 'blob', d)));
    assert.ok(!existsSync(pathOf(store, 'manifest', d)) && !existsSync(`${pathOf(store, 'manifest', d)}.type`));
    assert.equal(await store.getManifest(d), undefined);
    assert.deepEqual(store.totals(), { storedBytes: bytes.length + 'a layer'.length, blobs: 2, manifests: 0 });
  });

  it('touch and pins: access times are per kind, a pin holds the digest in both kinds', async () => {
    const { store } = await openStore();
    const { d } = await storeBoth(store);
    store.touch('blob', d.value, 1000);
    store.touch('manifest', d.value, 2000);
    assert.equal(store.get('blob', d.value)?.lastAccess, 1000);
    assert.equal(store.get('manifest', d.value)?.lastAccess, 2000);
    const release = store.pin(d.value);
    assert.equal(await store.remove('blob', d.value), false);
    assert.equal(await store.remove('manifest', d.value), false);
    release();
    assert.equal(await store.remove('blob', d.value), true);
  });

  it('a restart indexes both again, with the access time of each (state/access.json version 2)', async () => {
    const { root, store } = await openStore();
    const { d, bytes, layer } = await storeBoth(store);
    store.touch('blob', d.value, 1111);
    store.touch('manifest', d.value, 2222);
    store.touch('blob', layer.value, 3333);
    await store.flushAccess();
    const state = JSON.parse(readFileSync(join(root, 'state', 'access.json'), 'utf8')) as { version: number; access: Record<string, Record<string, number>> };
    assert.equal(state.version, 2);
    assert.deepEqual(state.access, { blob: { [d.value]: 1111, [layer.value]: 3333 }, manifest: { [d.value]: 2222 } });

    const { store: again } = await openStore(root);
    assert.equal(again.get('blob', d.value)?.lastAccess, 1111);
    assert.equal(again.get('manifest', d.value)?.lastAccess, 2222);
    assert.equal(again.get('blob', layer.value)?.lastAccess, 3333);
    assert.deepEqual(again.totals(), { storedBytes: 2 * bytes.length + 'a layer'.length, blobs: 2, manifests: 1 });
  });

  it('a version-1 state/access.json (times by bare digest) still gives an upgraded store its times', async () => {
    const { root, store } = await openStore();
    const { d, layer } = await storeBoth(store);
    const other = await putBlob(store, Buffer.from('never saved'));
    mkdirSync(join(root, 'state'), { recursive: true });
    writeFileSync(join(root, 'state', 'access.json'), JSON.stringify({ version: 1, access: { [d.value]: 5555, [layer.value]: 6666 } }));

    const { store: upgraded } = await openStore(root);
    assert.equal(upgraded.get('manifest', d.value)?.lastAccess, 5555);
    assert.equal(upgraded.get('blob', d.value)?.lastAccess, 5555, 'a version-1 time applies to every kind of its digest');
    assert.equal(upgraded.get('blob', layer.value)?.lastAccess, 6666);
    const mtime = statSync(pathOf(upgraded, 'blob', other)).mtimeMs;
    assert.equal(upgraded.get('blob', other.value)?.lastAccess, mtime, 'no saved time: the file mtime');

    // The next flush writes version 2.
    upgraded.touch('blob', layer.value, 7777);
    await upgraded.flushAccess();
    const state = JSON.parse(readFileSync(join(root, 'state', 'access.json'), 'utf8')) as { version: number; access: Record<string, Record<string, number>> };
    assert.equal(state.version, 2);
    assert.equal(state.access.blob![layer.value], 7777);
    assert.equal(state.access.manifest![d.value], 5555);
  });

  it('a malformed state/access.json is no saved times, not a failed start', async () => {
    const { root, store } = await openStore();
    const { d } = await storeBoth(store);
    for (const text of ['{"version": 2, "access": {"blob": 3}}', '{"version": 2}', '[1, 2]', 'not json']) {
      mkdirSync(join(root, 'state'), { recursive: true });
      writeFileSync(join(root, 'state', 'access.json'), text);
      const { store: again } = await openStore(root);
      assert.equal(again.get('blob', d.value)?.lastAccess, statSync(pathOf(again, 'blob', d)).mtimeMs, text);
    }
  });
});

describe('content store: manifests are proven on every read', () => {
  it('a manifest file whose bytes no longer prove its digest is not served, and stays on disk for verify', async () => {
    const { store } = await openStore();
    const bytes = Buffer.from('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}');
    const d = sha(bytes);
    await store.putManifest(d, ociManifest, bytes);
    assert.ok((await store.getManifest(d))?.bytes.equals(bytes));
    // What a mirror before issue 11 could have stored: forged bytes under a victim's digest.
    const path = pathOf(store, 'manifest', d);
    writeFileSync(path, '{"schemaVersion":2,"forged":true}');
    assert.equal(await store.getManifest(d), undefined);
    assert.equal(store.has('manifest', d.value), false);
    assert.ok(existsSync(path), 'left for registry-mirror verify to quarantine');
    // A fetch stores the proven bytes again.
    await store.putManifest(d, ociManifest, bytes);
    assert.ok((await store.getManifest(d))?.bytes.equals(bytes));
  });
});

describe('content store: pins and referrers', () => {
  it("'use' and 'keep' pins both hold a digest; only 'use' is in use; each counts its own holders", async () => {
    const { store } = await openStore();
    const { d, layer } = await storeBoth(store);
    const use1 = store.pin(layer.value);
    const use2 = store.pin(layer.value);
    const keep = store.pin(layer.value, 'keep');
    assert.ok(store.isPinned(layer.value) && store.isInUse(layer.value));
    use1();
    use1(); // idempotent: the other holder's pin stays
    assert.ok(store.isInUse(layer.value));
    use2();
    assert.ok(!store.isInUse(layer.value) && store.isPinned(layer.value), 'kept, no longer in use');
    assert.equal(await store.remove('blob', layer.value), false);
    keep();
    assert.ok(!store.isPinned(layer.value));
    // A digest not in the store can be pinned (a download not yet committed).
    const release = store.pin(`sha256:${'0'.repeat(64)}`);
    assert.ok(store.isInUse(`sha256:${'0'.repeat(64)}`));
    release();
    assert.ok(store.has('manifest', d.value));
  });

  it('referrers: the stored manifests naming a digest, kept current through put, remove and a restart', async () => {
    const { root, store } = await openStore();
    const { d, layer } = await storeBoth(store);
    const names = (s: ContentStore, digest: string) => [...s.referrers(digest)].map((e) => `${e.kind}:${e.digest}`);
    assert.deepEqual(names(store, layer.value), [`manifest:${d.value}`], 'named twice (config and layer), listed once');
    assert.deepEqual(names(store, d.value), [], 'a blob names nothing, even with a manifest digest');
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [{ digest: d.value }] }));
    const id = sha(index);
    await store.putManifest(id, 'application/vnd.oci.image.index.v1+json', index);
    assert.deepEqual(names(store, d.value), [`manifest:${id.value}`]);
    await store.putManifest(id, 'application/vnd.oci.image.index.v1+json', index);
    assert.deepEqual(names(store, d.value), [`manifest:${id.value}`], 'stored again: still once');

    await store.flushAccess();
    const again = new ContentStore(new FsDriver(root));
    await again.open();
    assert.deepEqual(names(again, layer.value), [`manifest:${d.value}`]);
    assert.deepEqual(names(again, d.value), [`manifest:${id.value}`]);

    assert.ok(await store.remove('manifest', d.value));
    assert.deepEqual(names(store, layer.value), [], 'a removed manifest names nothing');
    assert.ok(await store.remove('manifest', id.value));
    assert.deepEqual(names(store, d.value), []);
  });
});

function pathOf(s: ContentStore, kind: 'blob' | 'manifest', d: Digest): string {
  return (s.driver as FsDriver).pathOf(s.keyOf(kind, d));
}

/** The directory driver playing a store several processes share (as S3 is). */
class SharedDirectory extends FsDriver {
  override readonly shared = true;
}

describe('content store: access times on a shared store', () => {
  it('each process writes its own state/access/<instance>.json; start takes the latest per digest; files older than cache.ttl are deleted', async () => {
    const root = join(tempDir('content-store-shared'), 'store');
    const first = new ContentStore(new SharedDirectory(root), { accessMaxAgeMs: 3_600_000 });
    await first.open();
    const d = await putBlob(first, Buffer.from('shared layer'));
    first.touch('blob', d.value, 1_000);
    await first.flushAccess();
    const dir = join(root, 'state', 'access');
    const own = (await import('node:fs')).readdirSync(dir);
    assert.equal(own.length, 1, 'one file for this process');
    assert.ok(!existsSync(join(root, 'state', 'access.json')), 'no file shared by every process');
    // Another process saw it later; a third, long gone, earlier still and not since cache.ttl.
    writeFileSync(join(dir, 'other-7.json'), JSON.stringify({ version: 2, access: { blob: { [d.value]: 5_000 }, manifest: {} } }));
    const gone = join(dir, 'gone-9.json');
    writeFileSync(gone, JSON.stringify({ version: 2, access: { blob: { [d.value]: 9_000 }, manifest: {} } }));
    const old = new Date(Date.now() - 2 * 3_600_000);
    (await import('node:fs')).utimesSync(gone, old, old);
    const again = new ContentStore(new SharedDirectory(root), { accessMaxAgeMs: 3_600_000 });
    await again.open();
    assert.equal(again.get('blob', d.value)?.lastAccess, 5_000, 'the latest time of the files kept');
    assert.ok(!existsSync(gone), 'an access file not written for cache.ttl is deleted');
    assert.ok(existsSync(join(dir, 'other-7.json')));
  });
});

describe('content store: a shared store synced with the bucket', () => {
  it('sync() adds what other processes stored, forgets what the leader removed, and takes the latest access time', async () => {
    const root = join(tempDir('content-store-sync'), 'store');
    const leader = new ContentStore(new SharedDirectory(root));
    await leader.open();
    const other = new ContentStore(new SharedDirectory(root));
    await other.open();
    const d = await putBlob(other, Buffer.from('stored by another replica'));
    assert.equal(leader.has('blob', d.value), false, 'not seen before a sync');
    await leader.sync();
    assert.equal(leader.get('blob', d.value)?.size, 'stored by another replica'.length);
    assert.equal(leader.totals().blobs, 1);
    mkdirSync(join(root, 'state', 'access'), { recursive: true });
    writeFileSync(join(root, 'state', 'access', 'replica-2.json'), JSON.stringify({ version: 2, access: { blob: { [d.value]: Date.now() + 60_000 }, manifest: {} } }));
    await leader.sync();
    assert.ok(leader.get('blob', d.value)!.lastAccess > Date.now(), 'the latest access any process saved');
    await new Promise((r) => setTimeout(r, 5));
    await leader.remove('blob', d.value);
    // The other replica forgets it at its next sync; pinned content would stay.
    await other.sync();
    assert.equal(other.has('blob', d.value), false);
  });
});

describe('content store: in use on a shared store', () => {
  it('each flush marks content in use here, and the manifests naming it, as used now: the leader cannot see our pins', async () => {
    const root = join(tempDir('content-store-inuse'), 'store');
    const store = new ContentStore(new SharedDirectory(root));
    await store.open();
    const { d, layer } = await storeBoth(store);
    store.touch('manifest', d.value, 1_000);
    store.touch('blob', layer.value, 1_000);
    const release = store.pin(layer.value);
    const before = Date.now();
    await store.flushAccess();
    assert.ok(store.get('manifest', d.value)!.lastAccess >= before, 'the manifest naming a blob in use');
    assert.ok(store.get('blob', layer.value)!.lastAccess >= before, 'the blob in use');
    release();
    store.touch('manifest', d.value, 1_000);
    await store.flushAccess();
    assert.equal(store.get('manifest', d.value)!.lastAccess, 1_000, 'nothing in use: times stay');
  });
});
