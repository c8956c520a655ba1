// `registry-mirror verify` over a store built with the store's own classes: a clean store is
// consistent; a flipped byte, a stray file and a broken record are corruption (quarantined
// with --repair, never deleted); tmp leftovers, orphan .type files and records pointing at
// evicted content are harmless leftovers (removed with --repair).

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseDigest } from '../../mirror/reference.js';
import { ContentStore } from '../../mirror/store/content-store.js';
import { RepoIndex } from '../../mirror/store/repo-index.js';
import { V1Index } from '../../mirror/store/v1-index.js';
import { verifyStore } from '../../mirror/verify.js';
import type { VerifyProgress } from '../../mirror/verify-progress.js';
import { tempDir } from '../../tools/launch/proc.js';
import { FsDriver } from '../../mirror/store/drivers/fs-driver.js';

const sha = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function makeStore() {
  const root = join(tempDir('verify'), 'store');
  const store = new ContentStore(new FsDriver(root));
  await store.open();
  const repos = new RepoIndex(new FsDriver(root));
  const v1 = new V1Index(new FsDriver(root));
  const blobs: Buffer[] = [Buffer.from('layer one '.repeat(1000)), Buffer.from('config')];
  for (const b of blobs) {
    const tmp = store.tempPath();
    writeFileSync(tmp, b);
    await store.commitBlob(tmp, parseDigest(sha(b)), b.length);
    await repos.link('docker.io', 'library/app', parseDigest(sha(b)));
  }
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, config: { digest: sha(blobs[1]!) }, layers: [{ digest: sha(blobs[0]!) }] }));
  const md = parseDigest(sha(manifest));
  await store.putManifest(md, 'application/vnd.oci.image.manifest.v1+json', manifest);
  await repos.link('docker.io', 'library/app', md);
  await repos.setTag('docker.io', 'library/app', 'v1', { digest: md.value, mediaType: 'application/vnd.oci.image.manifest.v1+json', checkedAt: 1 });
  await v1.setImage('a'.repeat(64), 'layer', { digest: sha(blobs[0]!), size: blobs[0]!.length });
  return { root, store, repos, v1, blobs, manifest, md };
}

const blobFile = (root: string, digest: string) => join(root, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));

describe('verify', () => {
  it('a store written by the mirror is consistent', async () => {
    const { root } = await makeStore();
    const r = await verifyStore(new FsDriver(root));
    assert.deepEqual(r.findings, []);
    assert.equal(r.corrupt, 0);
    assert.equal(r.checked.blobs, 2);
    assert.equal(r.checked.manifests, 1);
    assert.equal(r.checked.tags, 1);
    assert.equal(r.checked.links, 3);
    assert.equal(r.checked.v1Records, 1);
  });

  it('reports progress: every object and byte of the content listed at the start, then done', async () => {
    const { root, blobs, manifest } = await makeStore();
    const seen: VerifyProgress[] = [];
    await verifyStore(new FsDriver(root), { onProgress: (p) => seen.push(p) });
    const total = blobs.reduce((n, b) => n + b.length, 0) + manifest.length;
    assert.ok(seen.length >= 4);
    assert.ok(seen.every((p) => p.totalObjects === 3 && p.totalBytes === total));
    assert.deepEqual(seen.at(0), { objects: 0, totalObjects: 3, bytes: 0, totalBytes: total, elapsedMs: seen[0]!.elapsedMs });
    const last = seen.at(-1)!;
    assert.equal(last.done, true);
    assert.equal(last.objects, 3);
    assert.equal(last.bytes, total);
    for (let i = 1; i < seen.length; i++) assert.ok(seen[i]!.bytes >= seen[i - 1]!.bytes && seen[i]!.objects >= seen[i - 1]!.objects, 'never backwards');
  });

  it('a flipped byte is corruption: reported, then quarantined with --repair, never deleted', async () => {
    const { root, blobs } = await makeStore();
    const d = sha(blobs[0]!);
    const path = blobFile(root, d);
    const bytes = readFileSync(path);
    bytes[100] ^= 0x01;
    writeFileSync(path, bytes);

    const r = await verifyStore(new FsDriver(root));
    assert.equal(r.corrupt, 1);
    assert.equal(r.findings[0]!.path, `blobs/sha256/${d.slice(7, 9)}/${d.slice(7)}`);
    assert.match(r.findings[0]!.problem, /hashes to sha256:[a-f0-9]{64}, not its name/);
    assert.ok(existsSync(path), 'without --repair nothing moves');

    const fixed = await verifyStore(new FsDriver(root), { repair: true, now: new Date(0) });
    assert.equal(fixed.corrupt, 1);
    assert.ok(!existsSync(path));
    const q = join(root, 'quarantine', '1970-01-01T00-00-00-000Z', 'blobs', 'sha256', d.slice(7, 9), d.slice(7));
    assert.deepEqual(readFileSync(q), bytes, 'the corrupt bytes are kept in quarantine');
    // The link and the v1 record to that blob now point nowhere: harmless, removed.
    const left = fixed.findings.filter((f) => f.class === 'leftover');
    assert.equal(left.length, 2);
    assert.ok(left.every((f) => /not in the store/.test(f.problem) && f.action === 'removed'));
    assert.deepEqual((await verifyStore(new FsDriver(root))).findings, []);
  });

  it('a corrupt manifest goes to quarantine with its .type; strays and broken records are corruption too', async () => {
    const { root, md } = await makeStore();
    const mpath = join(root, 'manifests', 'sha256', md.hex.slice(0, 2), md.hex);
    writeFileSync(mpath, '{"schemaVersion": 2}');
    mkdirSync(join(root, 'blobs', 'sha256', 'zz'), { recursive: true });
    writeFileSync(join(root, 'blobs', 'sha256', 'zz', 'stray'), 'x');
    mkdirSync(join(root, 'blobs', 'sha256', 'ab'), { recursive: true });
    writeFileSync(join(root, 'blobs', 'sha256', 'ab', 'not-a-digest'), 'x');
    writeFileSync(join(root, 'repos', 'docker.io', 'library', 'app', '_tags', 'v1'), '{"digest": "sha256:');
    const r = await verifyStore(new FsDriver(root), { repair: true, now: new Date(0) });
    const problems = r.findings.filter((f) => f.class === 'corrupt').map((f) => f.path).sort();
    assert.deepEqual(problems, ['blobs/sha256/ab/not-a-digest', 'blobs/sha256/zz/stray', `manifests/sha256/${md.hex.slice(0, 2)}/${md.hex}`, 'repos/docker.io/library/app/_tags/v1'].sort());
    const qm = join(root, 'quarantine', '1970-01-01T00-00-00-000Z', 'manifests', 'sha256', md.hex.slice(0, 2));
    assert.deepEqual(readdirSync(qm).sort(), [md.hex, `${md.hex}.type`]);
    assert.equal((await verifyStore(new FsDriver(root))).corrupt, 0, 'consistent after the repair');
  });

  it('tmp leftovers, an orphan .type and a tag of an evicted manifest are harmless leftovers', async () => {
    const { root, store, md } = await makeStore();
    writeFileSync(join(root, 'tmp', '123-456-abc'), 'half a download');
    const other = 'b'.repeat(64);
    mkdirSync(join(root, 'manifests', 'sha256', 'bb'), { recursive: true });
    writeFileSync(join(root, 'manifests', 'sha256', 'bb', `${other}.type`), 'application/vnd.oci.image.manifest.v1+json');
    await store.remove('manifest', md.value);
    const r = await verifyStore(new FsDriver(root));
    assert.equal(r.corrupt, 0);
    assert.deepEqual(r.findings.map((f) => f.path).sort(), [
      `manifests/sha256/bb/${other}.type`,
      `repos/docker.io/library/app/_links/sha256/${md.hex}`,
      'repos/docker.io/library/app/_tags/v1',
      'tmp/123-456-abc',
    ]);
    const fixed = await verifyStore(new FsDriver(root), { repair: true });
    assert.ok(fixed.findings.every((f) => f.action === 'removed'));
    assert.deepEqual((await verifyStore(new FsDriver(root))).findings, []);
    assert.ok(!existsSync(join(root, 'quarantine')), 'leftovers are not quarantined');
  });
});
