// RepoIndex.prune: the records of removed content go in one walk (links, tags, repositories
// left empty, so the catalog stops listing them); records of content that is back in the
// store stay; remembered links are forgotten with their files.

import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LRUCache } from 'lru-cache';
import { describe, it } from 'node:test';
import { parseDigest, type Digest } from '../../mirror/reference.js';
import type { ContentKind } from '../../mirror/store/content-store.js';
import { knownLinksMax, RepoIndex } from '../../mirror/store/repo-index.js';
import { tempDir } from '../rig/proc.js';

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
  return { root, repos: new RepoIndex(root, join(root, 'tmp')) };
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
    assert.ok(existsSync(join(root, 'repos', 'quay.io')), 'repos/<upstream> itself stays');
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
