// FsDriver: the StoreDriver conformance suite on temp dirs, then what only a directory does:
// the layout (key = path under the root), durable renames, pruning of emptied parents with
// rmdir (never the first segment, never a directory someone just wrote into), put racing a
// delete that removes its parent, and errors that keep their Node codes.

import assert from 'node:assert/strict';
import { existsSync, promises as fs, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isStoreUnavailable } from '../../mirror/store/driver.js';
import { FsDriver } from '../../mirror/store/drivers/fs-driver.js';
import { FileBody } from '../../mirror/store/file-body.js';
import { removeTempDir, tempDir } from '../../tools/launch/proc.js';
import { readAll, storeDriverSuite, writeTemp } from './store-driver-suite.js';

storeDriverSuite(
  'filesystem',
  async () => {
    const dir = tempDir('fs-driver');
    const root = join(dir, 'store');
    const driver = new FsDriver(root);
    return {
      driver,
      reopen: () => new FsDriver(root),
      cleanup: async () => {
        await driver.close();
        removeTempDir(dir);
      },
    };
  },
  { multipartBytes: 12 * 1024 * 1024, partBoundary: 5 * 1024 * 1024 },
);

async function openStore(): Promise<{ d: FsDriver; root: string }> {
  const root = join(tempDir('fs-driver'), 'store');
  const d = new FsDriver(root);
  await d.open();
  return { d, root };
}

describe('FsDriver', () => {
  it('maps key k to join(root, k), with scratch in root/tmp, and states what it is', async () => {
    const { d, root } = await openStore();
    assert.equal(d.kind, 'filesystem');
    assert.equal(d.location, root);
    assert.equal(d.scratchDir, join(root, 'tmp'));
    assert.equal(d.shared, false);
    assert.equal(d.syncBeforeCommit, true);
    await d.put('repos/docker.io/library/alpine/_tags/3.19', 'tag');
    assert.equal(readFileSync(join(root, 'repos/docker.io/library/alpine/_tags/3.19'), 'utf8'), 'tag');
    const tmp = await writeTemp(d, Buffer.from('blob'));
    await d.commitFile(tmp, 'blobs/sha256/ab/abcd', 4);
    assert.equal(readFileSync(join(root, 'blobs/sha256/ab/abcd'), 'utf8'), 'blob');
    // Atomic writes leave nothing behind in scratch.
    assert.deepEqual(await fs.readdir(d.scratchDir), []);
  });

  it('refuses keys inside the scratch dir (open() would sweep them)', async () => {
    const { d } = await openStore();
    await assert.rejects(async () => d.put('tmp/x', 'x'), /scratch/);
    await assert.rejects(async () => d.get('tmp'), /scratch/);
  });

  it('delete prunes emptied parents up to, not including, the first segment', async () => {
    const { d, root } = await openStore();
    await d.put('repos/a/b/_tags/t', 't');
    await d.delete('repos/a/b/_tags/t');
    assert.equal(existsSync(join(root, 'repos/a')), false, 'repos/a and below are gone');
    assert.equal(existsSync(join(root, 'repos')), true, 'the first segment stays');
    // A parent with something else in it stays, and so does everything above it.
    await d.put('repos/x/y/1', '1');
    await d.put('repos/x/z', 'z');
    await d.delete('repos/x/y/1');
    assert.equal(existsSync(join(root, 'repos/x/y')), false);
    assert.equal(existsSync(join(root, 'repos/x/z')), true);
    // A key of one segment: only the file.
    await d.put('single', 's');
    await d.delete('single');
    assert.deepEqual((await fs.readdir(root)).sort(), ['repos', 'tmp']);
  });

  it('delete never removes a non-empty directory (rmdir, not rm -r), nor a directory named as a key', async () => {
    const { d, root } = await openStore();
    await d.put('r/a/b/keep', 'k');
    // Something the store does not know about, in a parent of the deleted key.
    writeFileSync(join(root, 'r/a/stranger'), 's');
    await d.put('r/a/b/gone', 'g');
    await d.delete('r/a/b/gone');
    await d.delete('r/a/b/keep');
    assert.equal(existsSync(join(root, 'r/a/b')), false);
    assert.equal(readFileSync(join(root, 'r/a/stranger'), 'utf8'), 's');
    await d.delete('r/a');
    assert.equal(readFileSync(join(root, 'r/a/stranger'), 'utf8'), 's', 'a directory is no object to delete');
  });

  it('put and commitFile survive a delete that removes their new parent meanwhile (one retry on ENOENT)', async () => {
    const { d, root } = await openStore();
    // The race, made deterministic: right after the writer's mkdir of the parent, a delete of
    // another key there runs whole (the parent is empty, so it removes it) before the rename.
    const parent = join(root, 'race/p/dir');
    const realMkdir = fs.mkdir;
    let races = 0;
    let armed = false;
    fs.mkdir = (async (path: string, options?: unknown) => {
      const made = await (realMkdir as (p: string, o?: unknown) => Promise<string | undefined>)(path, options);
      if (armed && path === parent) {
        armed = false;
        races++;
        await d.delete('race/p/dir/other');
        assert.equal(existsSync(parent), false, 'the delete removed the empty parent');
      }
      return made;
    }) as typeof fs.mkdir;
    try {
      armed = true;
      await d.put('race/p/dir/new', 'put');
      assert.equal((await d.get('race/p/dir/new'))?.toString(), 'put');
      await d.delete('race/p/dir/new');
      armed = true;
      const tmp = await writeTemp(d, Buffer.from('committed'));
      await d.commitFile(tmp, 'race/p/dir/blob', 9);
      assert.equal((await d.get('race/p/dir/blob'))?.toString(), 'committed');
      assert.equal(existsSync(tmp), false);
    } finally {
      fs.mkdir = realMkdir;
    }
    assert.equal(races, 2, 'both writes met the race');
    assert.deepEqual(await fs.readdir(d.scratchDir), [], 'no temp file left behind');
  });

  it('commitFile is a rename: the temp file is gone, the inode moved', async () => {
    const { d, root } = await openStore();
    const tmp = await writeTemp(d, Buffer.from('content'));
    const ino = (await fs.stat(tmp)).ino;
    await d.commitFile(tmp, 'blobs/x/y', 7);
    assert.equal(existsSync(tmp), false);
    assert.equal((await fs.stat(join(root, 'blobs/x/y'))).ino, ino);
  });

  it('openRead gives a FileBody of the range; an empty object is an empty body', async () => {
    const { d } = await openStore();
    await d.put('o/data', '0123456789');
    const body = await d.openRead('o/data', 2, 5);
    assert.ok(body instanceof FileBody);
    assert.equal((await readAll(body)).toString(), '2345');
    await d.put('o/empty', '');
    assert.equal((await readAll((await d.openRead('o/empty', 0, -1))!)).length, 0);
  });

  it('keeps Node error codes: a missing temp file, a root that cannot be a directory', async () => {
    const { d, root } = await openStore();
    const missing = d.tempPath();
    await assert.rejects(
      () => d.commitFile(missing, 'blobs/a/b', 1),
      (err: NodeJS.ErrnoException) => err.code === 'ENOENT' && !isStoreUnavailable(err),
    );
    assert.equal(await d.stat('blobs/a/b'), undefined);
    // A key whose parent is a file: ENOTDIR, not "unavailable".
    await d.put('f', 'file');
    await assert.rejects(
      () => d.put('f/g', 'x'),
      (err: NodeJS.ErrnoException) => (err.code === 'ENOTDIR' || err.code === 'EEXIST') && !isStoreUnavailable(err),
    );
    const bad = new FsDriver(join(root, 'f', 'below-a-file'));
    await assert.rejects(
      () => bad.open(),
      (err: NodeJS.ErrnoException) => err.code === 'ENOTDIR' && !isStoreUnavailable(err),
    );
  });

  it('open() on a missing root creates it; sweeps an earlier run\'s scratch', async () => {
    const base = tempDir('fs-driver');
    const root = join(base, 'deep', 'store');
    const d = new FsDriver(root);
    assert.deepEqual(await d.open(), { sweptTemp: 0, sweptUploads: 0 });
    assert.ok(existsSync(join(root, 'tmp')));
    writeFileSync(join(root, 'tmp', 'leftover'), 'x');
    assert.deepEqual(await new FsDriver(root).open(), { sweptTemp: 1, sweptUploads: 0 });
    removeTempDir(base);
  });
});
