// The StoreDriver conformance suite: what every driver (a directory, an S3 bucket) must do
// alike, as the content store, the indexes and eviction rely on it. fs-driver.test.ts runs it
// on temp dirs, test/integration/s3-driver.test.ts on a real Ceph RGW. Not a test file itself
// (no .test. in its name): it only registers cases when called.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import type { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import type { ObjectInfo, StoreDriver } from '../../mirror/store/driver.js';

export interface DriverFixture {
  /** A driver over a fresh, empty store; not opened yet (the suite calls open()). */
  driver: StoreDriver;
  /** Another driver over the same store and scratch dir, as after a restart; not opened. */
  reopen(): StoreDriver;
  /** Closes what the fixture made and removes what it can. */
  cleanup(): Promise<void>;
}

export interface SuiteOptions {
  /** Bytes that commitFile sends in several parts (S3: > 2 x partSize); any size on fs. */
  multipartBytes: number;
  /** A part boundary inside multipartBytes, for a range read across it. */
  partBoundary: number;
}

export async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export async function listAll(driver: StoreDriver, prefix: string): Promise<ObjectInfo[]> {
  const out: ObjectInfo[] = [];
  for await (const o of driver.list(prefix)) out.push(o);
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/** A finished temp file as a download leaves it: in scratchDir, fsynced where the driver wants it. */
export async function writeTemp(driver: StoreDriver, bytes: Buffer): Promise<string> {
  const path = driver.tempPath();
  const fh = await fs.open(path, 'wx');
  try {
    await fh.writeFile(bytes);
    if (driver.syncBeforeCommit) await fh.sync();
  } finally {
    await fh.close();
  }
  return path;
}

const keysOf = (list: ObjectInfo[]): string[] => list.map((o) => o.key);

export function storeDriverSuite(name: string, make: () => Promise<DriverFixture>, opts: SuiteOptions): void {
  describe(`StoreDriver conformance: ${name}`, { timeout: 120_000 }, () => {
    let fx: DriverFixture;
    let d: StoreDriver;
    let n = 0;
    /** A key prefix of a test's own, so tests never see each other's objects. */
    const ns = (): string => `t${++n}/`;

    before(async () => {
      fx = await make();
      d = fx.driver;
    });
    after(async () => {
      await fx?.cleanup();
    });

    it('opens a fresh store: nothing swept, a scratch dir, a location without secrets', async () => {
      assert.deepEqual(await d.open(), { sweptTemp: 0, sweptUploads: 0 });
      assert.ok((await fs.stat(d.scratchDir)).isDirectory());
      assert.deepEqual(await fs.readdir(d.scratchDir), []);
      assert.ok(d.location.length > 0);
      assert.equal(d.shared, d.kind === 's3');
      assert.equal(d.syncBeforeCommit, d.kind === 'filesystem');
    });

    it('put, get and stat round-trip bytes, strings and an empty object', async () => {
      const p = ns();
      const bin = randomBytes(70_000);
      const t0 = Date.now();
      await d.put(`${p}bin`, bin);
      await d.put(`${p}text`, 'héllo\n');
      await d.put(`${p}empty`, '');
      assert.deepEqual(await d.get(`${p}bin`), bin);
      assert.equal((await d.get(`${p}text`))?.toString('utf8'), 'héllo\n');
      assert.equal((await d.get(`${p}empty`))?.length, 0);
      const st = await d.stat(`${p}bin`);
      assert.equal(st?.key, `${p}bin`);
      assert.equal(st?.size, bin.length);
      // Store clocks may differ a little from ours (S3 has 1 s resolution).
      assert.ok(Math.abs(st!.modifiedMs - t0) < 60_000, `modifiedMs ${st!.modifiedMs} vs now ${t0}`);
      assert.equal((await d.stat(`${p}text`))?.size, Buffer.byteLength('héllo\n'));
      assert.equal((await d.stat(`${p}empty`))?.size, 0);
    });

    it('keys as the store writes them: digests, tags, dots, colons, dashes', async () => {
      const p = ns();
      const keys = [
        `${p}blobs/sha256/ab/ab${'0123456789abcdef'.repeat(3)}`,
        `${p}repos/docker.io/library/alpine/_tags/3.19`,
        `${p}repos/ghcr.io/a-b/c_d/_manifests/sha256:abc`,
        `${p}v1/x~y/..z/.hidden`,
      ];
      for (const [i, k] of keys.entries()) await d.put(k, `v${i}`);
      for (const [i, k] of keys.entries()) assert.equal((await d.get(k))?.toString(), `v${i}`, k);
      assert.deepEqual(keysOf(await listAll(d, p)), [...keys].sort());
    });

    it('answers undefined for absent keys, and delete of one is fine', async () => {
      const p = ns();
      assert.equal(await d.get(`${p}nothing`), undefined);
      assert.equal(await d.stat(`${p}nothing`), undefined);
      assert.equal(await d.openRead(`${p}nothing`, 0, 9), undefined);
      await d.delete(`${p}nothing`);
      // Below an object, and an object's "directory": absent too.
      await d.put(`${p}file`, 'x');
      assert.equal(await d.get(`${p}file/below`), undefined);
      assert.equal(await d.stat(`${p}file/below`), undefined);
      await d.put(`${p}dir/obj`, 'y');
      assert.equal(await d.get(`${p}dir`), undefined);
      assert.equal(await d.stat(`${p}dir`), undefined);
      assert.equal(await d.openRead(`${p}dir`, 0, 0), undefined);
    });

    it('put replaces atomically: concurrent readers see the old or the new bytes whole', async () => {
      const p = ns();
      const key = `${p}obj`;
      const a = Buffer.alloc(64 * 1024, 'a');
      const b = Buffer.alloc(48 * 1024, 'b');
      await d.put(key, a);
      let writing = true;
      const seen = { a: 0, b: 0 };
      const reader = async (): Promise<void> => {
        while (writing) {
          const got = await d.get(key);
          assert.ok(got, 'never absent while being replaced');
          if (got.equals(a)) seen.a++;
          else if (got.equals(b)) seen.b++;
          else assert.fail(`a torn read: ${got.length} bytes`);
        }
      };
      const readers = [reader(), reader(), reader()];
      for (let i = 0; i < 12; i++) await d.put(key, i % 2 ? a : b);
      writing = false;
      await Promise.all(readers);
      assert.ok(seen.a + seen.b > 0);
      assert.deepEqual(await d.get(key), a);
      assert.equal((await d.stat(key))?.size, a.length);
    });

    it('delete removes an object, its listing and an emptied "directory"', async () => {
      const p = ns();
      await d.put(`${p}keep`, 'k');
      await d.put(`${p}d/sub/x`, 'x');
      assert.deepEqual(await d.children(p), ['d', 'keep']);
      await d.delete(`${p}d/sub/x`);
      assert.equal(await d.get(`${p}d/sub/x`), undefined);
      assert.equal(await d.stat(`${p}d/sub/x`), undefined);
      assert.deepEqual(keysOf(await listAll(d, p)), [`${p}keep`]);
      assert.deepEqual(await d.children(p), ['keep']);
      await d.delete(`${p}d/sub/x`);
    });

    it('lists every object under a prefix, any depth, with sizes, and nothing beside it', async () => {
      const p = ns();
      const objs: Record<string, number> = { 'a/1': 1, 'a/2/3': 23, 'a/2/4/5': 245, 'ab/6': 6, b: 7, 'c/a/8': 8 };
      for (const [k, size] of Object.entries(objs)) await d.put(`${p}${k}`, Buffer.alloc(size, 1));
      const underA = await listAll(d, `${p}a/`);
      assert.deepEqual(keysOf(underA), [`${p}a/1`, `${p}a/2/3`, `${p}a/2/4/5`], "'a/' does not list 'ab/'");
      assert.deepEqual(
        underA.map((o) => o.size),
        [1, 23, 245],
      );
      for (const o of underA) assert.ok(o.modifiedMs > 0);
      assert.deepEqual(keysOf(await listAll(d, `${p}a/2/`)), [`${p}a/2/3`, `${p}a/2/4/5`]);
      assert.deepEqual(keysOf(await listAll(d, p)), Object.keys(objs).map((k) => `${p}${k}`).sort());
      assert.deepEqual(await listAll(d, `${p}none/`), []);
      assert.deepEqual(await listAll(d, `${p}a/1/`), [], 'below an object: nothing');
      // A prefix that ends inside a name matches as a string prefix (S3's meaning).
      assert.deepEqual(keysOf(await listAll(d, `${p}a`)), [`${p}a/1`, `${p}a/2/3`, `${p}a/2/4/5`, `${p}ab/6`]);
    });

    it('lists more than one page of keys', async () => {
      const p = ns();
      const count = 1010;
      const keys: string[] = [];
      for (let i = 0; i < count; i++) keys.push(`${p}k/${String(i).padStart(4, '0')}`);
      for (let i = 0; i < keys.length; i += 50) await Promise.all(keys.slice(i, i + 50).map((k) => d.put(k, 'x')));
      assert.deepEqual(keysOf(await listAll(d, `${p}k/`)), keys);
      assert.deepEqual((await d.children(`${p}k/`)).length, count);
    });

    it('names children: objects and "directories", sorted, unique, without the prefix', async () => {
      const p = ns();
      for (const k of ['c/x', 'c/y/z', 'c/y/w', 'a', 'b/q', 'cc/x', 'c/0']) await d.put(`${p}${k}`, k);
      assert.deepEqual(await d.children(p), ['a', 'b', 'c', 'cc']);
      assert.deepEqual(await d.children(`${p}c/`), ['0', 'x', 'y']);
      assert.deepEqual(await d.children(`${p}c/y/`), ['w', 'z']);
      assert.deepEqual(await d.children(`${p}missing/`), []);
      assert.deepEqual(await d.children(`${p}a/`), [], 'below an object: nothing');
    });

    it('commits an empty, a small and a multi-part file, then reads them whole and in ranges', async () => {
      const p = ns();
      const small = randomBytes(100_000);
      const big = randomBytes(opts.multipartBytes);
      const files: Array<[string, Buffer]> = [
        [`${p}empty`, Buffer.alloc(0)],
        [`${p}small`, small],
        [`${p}big`, big],
      ];
      for (const [key, bytes] of files) {
        const tmp = await writeTemp(d, bytes);
        await d.commitFile(tmp, key, bytes.length);
        // fs renames the file away; S3 leaves it for the caller.
        assert.equal(existsSync(tmp), d.kind === 's3', `temp file after commit (${d.kind})`);
        if (existsSync(tmp)) await fs.rm(tmp);
        assert.equal((await d.stat(key))?.size, bytes.length, key);
      }
      assert.equal((await readAll((await d.openRead(`${p}empty`, 0, -1))!)).length, 0);
      assert.deepEqual(await readAll((await d.openRead(`${p}small`, 0, small.length - 1))!), small);
      assert.deepEqual(await d.get(`${p}small`), small);
      const ranges: Array<[number, number]> = [
        [0, big.length - 1],
        [0, 0],
        [big.length - 1, big.length - 1],
        [opts.partBoundary - 100, opts.partBoundary + 99],
        [1234, 1_234_567],
      ];
      for (const [start, end] of ranges) {
        const got = await readAll((await d.openRead(`${p}big`, start, end))!);
        assert.equal(got.length, end - start + 1, `${start}-${end}`);
        assert.ok(got.equals(big.subarray(start, end + 1)), `bytes ${start}-${end}`);
      }
      assert.deepEqual(
        (await listAll(d, p)).map((o) => [o.key, o.size]),
        [
          [`${p}big`, big.length],
          [`${p}empty`, 0],
          [`${p}small`, small.length],
        ],
      );
    });

    it('commitFile replaces nothing it should not and leaves no temp file in the listing', async () => {
      const p = ns();
      const tmp = await writeTemp(d, Buffer.from('one'));
      await d.commitFile(tmp, `${p}x/y`, 3);
      await fs.rm(tmp, { force: true });
      assert.deepEqual(await d.children(p), ['x']);
      assert.deepEqual(await d.children(`${p}x/`), ['y']);
      assert.equal((await d.get(`${p}x/y`))?.toString(), 'one');
    });

    it('hands out fresh temp paths inside scratchDir, not created', () => {
      const a = d.tempPath();
      const b = d.tempPath();
      assert.notEqual(a, b);
      for (const t of [a, b]) {
        assert.ok(t.startsWith(`${d.scratchDir}/`), t);
        assert.ok(!t.slice(d.scratchDir.length + 1).includes('/'), t);
        assert.equal(existsSync(t), false);
      }
    });

    it('refuses keys with an empty, "." or ".." segment or a leading "/"', async () => {
      const bad = ['', '/abs', 'a//b', 'a/./b', 'a/../b', '..', '.', 'a/..', 'trailing/'];
      for (const key of bad) {
        const why = JSON.stringify(key);
        await assert.rejects(async () => d.get(key), Error, `get ${why}`);
        await assert.rejects(async () => d.put(key, 'x'), Error, `put ${why}`);
        await assert.rejects(async () => d.stat(key), Error, `stat ${why}`);
        await assert.rejects(async () => d.delete(key), Error, `delete ${why}`);
        await assert.rejects(async () => d.openRead(key, 0, 0), Error, `openRead ${why}`);
      }
      for (const prefix of ['../', '/x/', 'a/../', 'a//']) {
        await assert.rejects(async () => listAll(d, prefix), Error, `list ${prefix}`);
        await assert.rejects(async () => d.children(prefix), Error, `children ${prefix}`);
      }
      const tmp = await writeTemp(d, Buffer.from('z'));
      await assert.rejects(async () => d.commitFile(tmp, 'a/../b', 1));
      await fs.rm(tmp, { force: true });
      // None of that wrote anything.
      assert.equal(await d.get('a/b'), undefined);
      assert.equal(await d.get('b'), undefined);
    });

    it('the store root: list("") and children("") show objects only (not scratch files)', async () => {
      const f = await make();
      try {
        const r = f.driver;
        await r.open();
        assert.deepEqual(await r.children(''), []);
        assert.deepEqual(await listAll(r, ''), []);
        await r.put('top', 't');
        await r.put('k/x', 'x');
        await fs.writeFile(r.tempPath(), 'scratch');
        assert.deepEqual(await r.children(''), ['k', 'top']);
        assert.deepEqual(keysOf(await listAll(r, '')), ['k/x', 'top']);
      } finally {
        await f.cleanup();
      }
    });

    it('open() sweeps leftovers in scratchDir and keeps the objects', async () => {
      const p = ns();
      await d.put(`${p}kept`, 'kept');
      await fs.writeFile(d.tempPath(), 'half a download');
      await fs.writeFile(d.tempPath(), 'another');
      await fs.mkdir(`${d.scratchDir}/a-dir`);
      await fs.writeFile(`${d.scratchDir}/a-dir/f`, 'f');
      const again = fx.reopen();
      try {
        const swept = await again.open();
        assert.deepEqual(swept, { sweptTemp: 3, sweptUploads: 0 });
        assert.deepEqual(await fs.readdir(again.scratchDir), []);
        assert.equal((await again.get(`${p}kept`))?.toString(), 'kept');
        // And it works as a store at once: a commit through the swept scratch dir.
        const tmp = await writeTemp(again, Buffer.from('after'));
        await again.commitFile(tmp, `${p}after`, 5);
        assert.equal((await d.get(`${p}after`))?.toString(), 'after');
      } finally {
        await again.close();
      }
    });

    it('getWithEtag: the bytes and a bare tag that changes with the content; undefined when absent', async () => {
      const p = ns();
      assert.equal(await d.getWithEtag(`${p}none`), undefined);
      await d.put(`${p}k`, 'one');
      const a = await d.getWithEtag(`${p}k`);
      assert.equal(a?.bytes.toString(), 'one');
      assert.ok(a && a.etag.length > 0 && !a.etag.includes('"'), `a bare tag: ${a?.etag}`);
      assert.equal((await d.getWithEtag(`${p}k`))?.etag, a.etag, 'stable while unchanged');
      await d.put(`${p}k`, 'two');
      assert.notEqual((await d.getWithEtag(`${p}k`))?.etag, a.etag);
    });

    it('putIf ifNoneMatch "*": creates once; on an existing key it is a conflict and changes nothing', async () => {
      const p = ns();
      const won = await d.putIf(`${p}k`, 'first', { ifNoneMatch: '*' });
      assert.ok(won !== 'conflict');
      const got = await d.getWithEtag(`${p}k`);
      assert.equal(got?.bytes.toString(), 'first');
      assert.equal(got?.etag, won.etag, 'putIf answers the tag getWithEtag reads');
      assert.equal(await d.putIf(`${p}k`, 'second', { ifNoneMatch: '*' }), 'conflict');
      assert.equal((await d.get(`${p}k`))?.toString(), 'first');
    });

    it('putIf ifMatch: replaces on the current tag (bare or quoted), not on a stale one or an absent key', async () => {
      const p = ns();
      const v1 = await d.putIf(`${p}k`, 'v1', { ifNoneMatch: '*' });
      assert.ok(v1 !== 'conflict');
      const v2 = await d.putIf(`${p}k`, 'v2', { ifMatch: v1.etag });
      assert.ok(v2 !== 'conflict');
      assert.equal((await d.get(`${p}k`))?.toString(), 'v2');
      assert.equal(await d.putIf(`${p}k`, 'stale', { ifMatch: v1.etag }), 'conflict');
      assert.equal((await d.get(`${p}k`))?.toString(), 'v2');
      const v3 = await d.putIf(`${p}k`, 'v3', { ifMatch: `"${v2.etag}"` });
      assert.ok(v3 !== 'conflict', 'a quoted tag matches too');
      assert.equal((await d.getWithEtag(`${p}k`))?.etag, v3.etag);
      assert.equal(await d.putIf(`${p}absent`, 'x', { ifMatch: v3.etag }), 'conflict');
      assert.equal(await d.get(`${p}absent`), undefined);
    });

    it('putIf races: of 5 creates one wins, of 5 replaces of one tag one wins, and its bytes are there', async () => {
      const p = ns();
      const creates = await Promise.all([0, 1, 2, 3, 4].map((i) => d.putIf(`${p}k`, `create ${i}`, { ifNoneMatch: '*' })));
      const c = creates.findIndex((r) => r !== 'conflict');
      assert.equal(creates.filter((r) => r !== 'conflict').length, 1, JSON.stringify(creates));
      const cur = await d.getWithEtag(`${p}k`);
      assert.equal(cur?.bytes.toString(), `create ${c}`);
      const replaces = await Promise.all([0, 1, 2, 3, 4].map((i) => d.putIf(`${p}k`, `replace ${i}`, { ifMatch: cur!.etag })));
      const r = replaces.findIndex((x) => x !== 'conflict');
      assert.equal(replaces.filter((x) => x !== 'conflict').length, 1, JSON.stringify(replaces));
      const after = await d.getWithEtag(`${p}k`);
      assert.equal(after?.bytes.toString(), `replace ${r}`);
      assert.equal(after?.etag, (replaces[r] as { etag: string }).etag);
    });

    it('close() is idempotent', async () => {
      const f = await make();
      await f.driver.open();
      await f.driver.close();
      await f.driver.close();
      await f.cleanup();
    });
  });
}
