// RepoIndex.prune: the records of removed content go in one walk (links, tags, repositories
// left empty, so the catalog stops listing them); records of content that is back in the
// store stay; remembered links are forgotten with their files.

import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LRUCache } from 'lru-cache';
import { describe, it } from 'node:test';
import { parseDigest, type Digest } from '../../mirror/reference.js';
import type { ContentKind } from '../../mirror/store/content-store.js';
import { knownLinksMax, RepoIndex } from '../../mirror/store/repo-index.js';
import { tempDir } from '../../tools/launch/proc.js';
import { FsDriver } from '../../mirror/store/drivers/fs-driver.js';

const ociManifest = 'application/vnd.oci.image.manifest.v1+json';
const digest = (c: string): Digest => parseDigest(`sha256:${c.repeat(64)}`);

/** A stand-in for ContentStore.has over a set of "kind digest" keys. */
function contents(...present: Array<[ContentKind, Digest]>) {
  const keys = new Set(present.map(([k, d]) => `${k} ${d.value}`));
  return {
    has: (kind: ContentKind, d: string) => keys.has(`${kind} ${d}`),
    add: (kind: ContentKind, d: Digest) => keys.add(`${kind} ${d.value}`),
    remove: (kind: ContentKind, d: Digest) => keys.delete(`${kind} ${d.value}`),
  };
}

function makeIndex() {
  const root = join(tempDir('repo-index'), 'store');
  mkdirSync(join(root, 'tmp'), { recursive: true });
  return { root, repos: new RepoIndex(new FsDriver(root)) };
}

const tag = (d: Digest) => ({ digest: d.value, mediaType: ociManifest, checkedAt: 1 });
const linkFile = (root: string, name: string, d: Digest) => join(root, 'repos', 'docker.io', name, '_links', d.algorithm, d.hex);

describe('repo index: prune', () => {
  it('removes links and tags of removed content, and repositories left with neither', async () => {
    const { root, repos } = makeIndex();
    const [m1, b1, m2, b2] = [digest('1'), digest('2'), digest('3'), digest('4')];
    await repos.link('docker.io', 'team/app', m1);
    await repos.link('docker.io', 'team/app', b1);
    await repos.setTag('docker.io', 'team/app', 'v1', tag(m1));
    await repos.link('docker.io', 'team/mixed', m1);
    await repos.link('docker.io', 'team/mixed', b2);
    await repos.setTag('docker.io', 'team/mixed', 'v1', tag(m1));
    await repos.setTag('docker.io', 'team/mixed', 'v2', tag(m2));
    await repos.link('docker.io', 'team/other', b2);
    await repos.link('quay.io', 'team/app', m1);
    assert.deepEqual(await repos.listRepositories('docker.io'), ['team/app', 'team/mixed', 'team/other']);

    const store = contents(['manifest', m2], ['blob', b2]);
    const r = await repos.prune(new Set([m1.value, b1.value]), store.has);
    assert.deepEqual(r, { links: 4, tags: 2, repositories: 2 });
    assert.deepEqual(await repos.listRepositories('docker.io'), ['team/mixed', 'team/other']);
    assert.deepEqual(await repos.listRepositories('quay.io'), [], 'every upstream is walked');
    assert.ok(!existsSync(join(root, 'repos', 'docker.io', 'team', 'app')), 'the emptied repository directory is gone');
    assert.ok(!existsSync(join(root, 'repos', 'quay.io')), 'an upstream left with no repository goes too');
    assert.ok(existsSync(join(root, 'repos')));
    assert.deepEqual(await repos.listTags('docker.io', 'team/mixed'), ['v2']);
    assert.equal(await repos.isLinked('docker.io', 'team/mixed', m1), false);
    assert.equal(await repos.isLinked('docker.io', 'team/mixed', b2), true);
    assert.equal(await repos.isLinked('docker.io', 'team/other', b2), true);
    // Remembered (by link() above) and forgotten by the prune, not just removed on disk.
    assert.equal(await repos.isLinked('docker.io', 'team/app', b1), false);
    assert.equal(await repos.isLinked('quay.io', 'team/app', m1), false);
  });

  it('keeps the records of a digest that is back in the store by prune time', async () => {
    const { root, repos } = makeIndex();
    const m = digest('5');
    await repos.link('docker.io', 'team/app', m);
    await repos.setTag('docker.io', 'team/app', 'v1', tag(m));
    const store = contents();
    // Removed by the evictor, then downloaded again before the prune ran.
    store.add('manifest', m);
    const r = await repos.prune(new Set([m.value]), store.has);
    assert.deepEqual(r, { links: 0, tags: 0, repositories: 0 });
    assert.ok(existsSync(linkFile(root, 'team/app', m)));
    assert.equal(await repos.isLinked('docker.io', 'team/app', m), true);
    assert.equal((await repos.getTag('docker.io', 'team/app', 'v1'))?.digest, m.value);
    assert.deepEqual(await repos.listRepositories('docker.io'), ['team/app']);
  });

  it('by kind: the link stays while the other kind of its digest is stored; the tag goes with the manifest', async () => {
    const { root, repos } = makeIndex();
    const d = digest('6');
    await repos.link('docker.io', 'team/app', d);
    await repos.setTag('docker.io', 'team/app', 'v1', tag(d));
    // The manifest was also fetched as a blob; only the manifest was removed.
    const store = contents(['blob', d]);
    const r = await repos.prune(new Set([d.value]), store.has);
    assert.deepEqual(r, { links: 0, tags: 1, repositories: 0 });
    assert.ok(existsSync(linkFile(root, 'team/app', d)));
    assert.deepEqual(await repos.listTags('docker.io', 'team/app'), []);
    assert.deepEqual(await repos.listRepositories('docker.io'), ['team/app'], 'still linked: still a repository');
    store.remove('blob', d);
    assert.deepEqual(await repos.prune(new Set([d.value]), store.has), { links: 1, tags: 0, repositories: 1 });
    assert.deepEqual(await repos.listRepositories('docker.io'), []);
  });

  it('removes empty parents up to repos/<upstream>, not a parent that is a repository or holds one', async () => {
    const { root, repos } = makeIndex();
    const [a, b] = [digest('7'), digest('8')];
    await repos.link('docker.io', 'deep/er/still', a);
    await repos.link('docker.io', 'ns', b);
    await repos.link('docker.io', 'ns/child', a);
    await repos.link('docker.io', 'ns/keep', b);
    const r = await repos.prune(new Set([a.value]), contents(['blob', b]).has);
    assert.deepEqual(r, { links: 2, tags: 0, repositories: 2 });
    assert.ok(!existsSync(join(root, 'repos', 'docker.io', 'deep')));
    assert.ok(!existsSync(join(root, 'repos', 'docker.io', 'ns', 'child')));
    assert.deepEqual(await repos.listRepositories('docker.io'), ['ns', 'ns/keep']);
  });

  it('leaves records it does not understand, and unrelated digests, alone', async () => {
    const { root, repos } = makeIndex();
    const [gone, other] = [digest('9'), digest('a')];
    await repos.setTag('docker.io', 'team/app', 'v1', tag(other));
    await repos.link('docker.io', 'team/app', gone);
    const tags = join(root, 'repos', 'docker.io', 'team', 'app', '_tags');
    writeFileSync(join(tags, 'broken'), '{"digest": ');
    const r = await repos.prune(new Set([gone.value]), contents().has);
    assert.deepEqual(r, { links: 1, tags: 0, repositories: 0 });
    assert.deepEqual(await repos.listTags('docker.io', 'team/app'), ['broken', 'v1']);
    assert.deepEqual(await repos.listRepositories('docker.io'), ['team/app']);
  });

  it('remembers links in a bounded LRU; a link not remembered is found on disk', async () => {
    assert.equal(knownLinksMax, 100_000);
    const { root, repos } = makeIndex();
    const cache = (repos as unknown as { knownLinks: LRUCache<string, true> }).knownLinks;
    assert.equal(cache.max, knownLinksMax);
    // A link written by an earlier run: not remembered, found on disk, then remembered.
    const d = digest('b');
    mkdirSync(join(linkFile(root, 'team/app', d), '..'), { recursive: true });
    writeFileSync(linkFile(root, 'team/app', d), '');
    assert.equal(cache.size, 0);
    assert.equal(await repos.isLinked('docker.io', 'team/app', d), true);
    assert.equal(cache.get(`docker.io/team/app@${d.value}`), true);
    // Dropped from memory (as the least recently used past the bound): the file answers again.
    cache.clear();
    assert.equal(await repos.isLinked('docker.io', 'team/app', d), true);
    assert.equal(await repos.isLinked('docker.io', 'team/app', digest('c')), false);
  });
});

describe('repo index: tag mappings per format class', () => {
  const dockerList = 'application/vnd.docker.distribution.manifest.list.v2+json';
  const schema1 = 'application/vnd.docker.distribution.manifest.v1+prettyjws';
  const rec = (d: Digest, mediaType: string, checkedAt = 1) => ({ digest: d.value, mediaType, checkedAt });
  const tagFile = (root: string, name: string, t: string) => join(root, 'repos', 'docker.io', name, '_tags', t);

  it('keeps one mapping per class; setting one keeps the others', async () => {
    const { root, repos } = makeIndex();
    const [list, amd64, s1] = [digest('1'), digest('2'), digest('3')];
    await repos.setTag('docker.io', 'team/app', 'v1', rec(list, dockerList), 'index');
    await repos.setTag('docker.io', 'team/app', 'v1', rec(amd64, ociManifest), 'image');
    await repos.setTag('docker.io', 'team/app', 'v1', rec(s1, schema1), 'schema1');
    assert.deepEqual(await repos.getTagRecords('docker.io', 'team/app', 'v1'), {
      index: rec(list, dockerList),
      image: rec(amd64, ociManifest),
      schema1: rec(s1, schema1),
    });
    assert.equal((await repos.getTag('docker.io', 'team/app', 'v1', 'image'))?.digest, amd64.value);
    assert.equal((await repos.getTag('docker.io', 'team/app', 'v1'))?.digest, list.value, 'without a class: index first');
    // The file keeps a single top-level record for older readers: the index mapping.
    const file = JSON.parse(readFileSync(tagFile(root, 'team/app', 'v1'), 'utf8')) as { digest: string; classes: object };
    assert.equal(file.digest, list.value);
    assert.deepEqual(Object.keys(file.classes), ['index', 'image', 'schema1']);
    // An index-class answer that is a single image is recorded under the class asked for.
    await repos.setTag('docker.io', 'team/app', 'v2', rec(amd64, ociManifest), 'index');
    assert.deepEqual(await repos.getTagRecords('docker.io', 'team/app', 'v2'), { index: rec(amd64, ociManifest) });
    assert.deepEqual(await repos.listTags('docker.io', 'team/app'), ['v1', 'v2']);
  });

  it('concurrent updates of different classes are not lost', async () => {
    const { repos } = makeIndex();
    const ds = [digest('4'), digest('5'), digest('6')];
    await Promise.all(
      (['index', 'image', 'schema1'] as const).map((c, i) => repos.setTag('docker.io', 'team/app', 'v1', rec(ds[i]!, ociManifest), c)),
    );
    const got = await repos.getTagRecords('docker.io', 'team/app', 'v1');
    assert.deepEqual(Object.keys(got).sort(), ['image', 'index', 'schema1']);
  });

  it('reads an older single record as the class of its media type', async () => {
    const { root, repos } = makeIndex();
    const [a, b] = [digest('7'), digest('8')];
    mkdirSync(join(tagFile(root, 'team/app', 'x'), '..'), { recursive: true });
    writeFileSync(tagFile(root, 'team/app', 'old-list'), JSON.stringify(rec(a, dockerList, 5)));
    writeFileSync(tagFile(root, 'team/app', 'old-s1'), JSON.stringify(rec(b, schema1, 6)));
    writeFileSync(tagFile(root, 'team/app', 'old-image'), JSON.stringify(rec(b, ociManifest, 7)));
    assert.deepEqual(await repos.getTagRecords('docker.io', 'team/app', 'old-list'), { index: rec(a, dockerList, 5) });
    assert.deepEqual(await repos.getTagRecords('docker.io', 'team/app', 'old-s1'), { schema1: rec(b, schema1, 6) });
    assert.equal(await repos.getTag('docker.io', 'team/app', 'old-s1', 'index'), undefined, 'a schema 1 record never answers another class');
    assert.deepEqual(await repos.getTagRecords('docker.io', 'team/app', 'old-image'), { image: rec(b, ociManifest, 7) });
    // Updating another class keeps the old record, now under its class.
    await repos.setTag('docker.io', 'team/app', 'old-s1', rec(a, dockerList), 'index');
    assert.deepEqual(await repos.getTagRecords('docker.io', 'team/app', 'old-s1'), { index: rec(a, dockerList), schema1: rec(b, schema1, 6) });
    // The 4-argument form files a record under the class of its media type.
    await repos.setTag('docker.io', 'team/app', 'plain', rec(b, schema1));
    assert.deepEqual(await repos.getTagRecords('docker.io', 'team/app', 'plain'), { schema1: rec(b, schema1) });
  });

  it('removeTag drops one class (the file goes with its last) or all', async () => {
    const { root, repos } = makeIndex();
    const [a, b] = [digest('9'), digest('a')];
    await repos.setTag('docker.io', 'team/app', 'v1', rec(a, dockerList), 'index');
    await repos.setTag('docker.io', 'team/app', 'v1', rec(b, schema1), 'schema1');
    await repos.removeTag('docker.io', 'team/app', 'v1', 'schema1');
    assert.deepEqual(await repos.getTagRecords('docker.io', 'team/app', 'v1'), { index: rec(a, dockerList) });
    await repos.removeTag('docker.io', 'team/app', 'v1', 'image');
    assert.deepEqual(await repos.getTagRecords('docker.io', 'team/app', 'v1'), { index: rec(a, dockerList) });
    await repos.removeTag('docker.io', 'team/app', 'v1', 'index');
    assert.ok(!existsSync(tagFile(root, 'team/app', 'v1')));
    await repos.setTag('docker.io', 'team/app', 'v2', rec(a, dockerList), 'index');
    await repos.setTag('docker.io', 'team/app', 'v2', rec(b, schema1), 'schema1');
    await repos.removeTag('docker.io', 'team/app', 'v2');
    assert.deepEqual(await repos.listTags('docker.io', 'team/app'), []);
  });

  it('prune removes the mappings of removed manifests in every class, old records too', async () => {
    const { root, repos } = makeIndex();
    const [list, amd64, s1, other] = [digest('b'), digest('c'), digest('d'), digest('e')];
    await repos.setTag('docker.io', 'team/app', 'multi', rec(list, dockerList), 'index');
    await repos.setTag('docker.io', 'team/app', 'multi', rec(amd64, ociManifest), 'image');
    await repos.setTag('docker.io', 'team/app', 'multi', rec(s1, schema1), 'schema1');
    await repos.setTag('docker.io', 'team/app', 'gone', rec(amd64, ociManifest), 'index');
    await repos.setTag('docker.io', 'team/app', 'gone', rec(s1, schema1), 'schema1');
    writeFileSync(tagFile(root, 'team/app', 'legacy'), JSON.stringify(rec(s1, schema1)));
    writeFileSync(tagFile(root, 'team/app', 'kept'), JSON.stringify(rec(other, ociManifest)));
    const r = await repos.prune(new Set([amd64.value, s1.value]), contents(['manifest', list], ['manifest', other]).has);
    assert.deepEqual(r, { links: 0, tags: 5, repositories: 0 });
    assert.deepEqual(await repos.getTagRecords('docker.io', 'team/app', 'multi'), { index: rec(list, dockerList) });
    const file = JSON.parse(readFileSync(tagFile(root, 'team/app', 'multi'), 'utf8')) as { digest: string };
    assert.equal(file.digest, list.value, 'the rewritten file names what is left');
    assert.deepEqual(await repos.listTags('docker.io', 'team/app'), ['kept', 'multi']);
    // With every mapping gone the repository goes too.
    const r2 = await repos.prune(new Set([list.value, other.value]), contents().has);
    assert.deepEqual(r2, { links: 0, tags: 2, repositories: 1 });
    assert.deepEqual(await repos.listRepositories('docker.io'), []);
  });
});
