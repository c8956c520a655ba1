import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { validAncestry } from '../../mirror/cache/v1-cache.js';
import { ConfigError, parseConfig } from '../../mirror/config.js';
import { V1Error } from '../../mirror/v1/errors.js';
import { checksumsFromImagesList, parseRepositoryName, parseV1Path, payloadChecksums } from '../../mirror/v1/path.js';

const id = 'a'.repeat(64);
const id2 = 'b'.repeat(64);
const sum = `sha256:${createHash('sha256').update('x').digest('hex')}`;

describe('v1 paths and names', () => {
  it('parses the pull API', () => {
    assert.deepEqual(parseV1Path('/v1/_ping'), { kind: 'ping' });
    assert.deepEqual(parseV1Path(`/v1/images/${id}/json`), { kind: 'image-json', id });
    assert.deepEqual(parseV1Path(`/v1/images/${id}/ancestry`), { kind: 'ancestry', id });
    assert.deepEqual(parseV1Path(`/v1/images/${id}/layer`), { kind: 'layer', id });
    const repo = { namespace: 'team', repository: 'app' };
    assert.deepEqual(parseV1Path('/v1/repositories/team/app/images'), { kind: 'images', repo });
    assert.deepEqual(parseV1Path('/v1/repositories/team/app/tags'), { kind: 'tags', repo });
    assert.deepEqual(parseV1Path('/v1/repositories/team/app/tags/1.0-rc_1'), { kind: 'tag', repo, tag: '1.0-rc_1' });
    assert.deepEqual(parseV1Path('/v1/repositories/team/app/json'), { kind: 'repo-json', repo });
    assert.deepEqual(parseV1Path('/v1/repositories/team/app/tags/'), { kind: 'tags', repo }, 'trailing slash');
  });

  it('a single component means library/<name>; two components are tried first', () => {
    const busybox = { namespace: 'library', repository: 'busybox' };
    assert.deepEqual(parseV1Path('/v1/repositories/busybox/tags'), { kind: 'tags', repo: busybox });
    assert.deepEqual(parseV1Path('/v1/repositories/busybox/tags/latest'), { kind: 'tag', repo: busybox, tag: 'latest' });
    assert.deepEqual(parseV1Path('/v1/repositories/busybox/images'), { kind: 'images', repo: busybox });
    assert.deepEqual(parseV1Path('/v1/repositories/ab/tags/tags'), { kind: 'tags', repo: { namespace: 'ab', repository: 'tags' } });
  });

  it('unknown routes are unknown, not errors', () => {
    for (const p of ['/v1', '/v1/', '/v1/search', '/v1/images/x', '/v1/repositories/a/b/c/d/e', `/v1/images/${id}/files`, '/v1/users/']) {
      assert.deepEqual(parseV1Path(p), { kind: 'unknown' }, p);
    }
  });

  const status = (f: () => unknown) => {
    try {
      f();
    } catch (err) {
      return err instanceof V1Error ? err.status : -1;
    }
    return 0;
  };

  it('validates names, tags and ids with 400', () => {
    for (const p of [
      '/v1/images/ABCDEF/json',
      `/v1/images/${'A'.repeat(64)}/layer`,
      `/v1/images/${id}0/layer`,
      '/v1/repositories/Team/app/tags',
      '/v1/repositories/t/app/tags',
      '/v1/repositories/-team/app/tags',
      '/v1/repositories/te--am/app/tags',
      '/v1/repositories/team/../tags',
      '/v1/repositories/team/.hidden/tags',
      '/v1/repositories/team/App/tags',
      '/v1/repositories/team/a%b/tags',
      '/v1/repositories/team/app/tags/.bad',
      `/v1/repositories/team/app/tags/${'t'.repeat(129)}`,
      `/v1/repositories/${id}/tags`,
    ]) {
      assert.equal(status(() => parseV1Path(p)), 400, p);
    }
    assert.deepEqual(parseRepositoryName('my_team-1/app.v2-x_y'), { namespace: 'my_team-1', repository: 'app.v2-x_y' });
    assert.equal(status(() => parseRepositoryName(`team/${'a'.repeat(256)}`)), 400);
    assert.equal(status(() => parseRepositoryName(`${'a'.repeat(256)}/x`)), 400);
    assert.equal(status(() => parseRepositoryName(`${'a'.repeat(255)}/x`)), 0);
  });
});

describe('v1 checksums and documents', () => {
  it('finds sha256 payload checksums, never tarsums', () => {
    assert.deepEqual(payloadChecksums(sum), [sum]);
    assert.deepEqual(payloadChecksums(`['${sum}', 'tarsum+sha256:${'c'.repeat(64)}']`), [sum], 'the seed printed a python list');
    assert.deepEqual(payloadChecksums(`tarsum+sha256:${'c'.repeat(64)}`), []);
    assert.deepEqual(payloadChecksums([sum, sum]), [sum]);
    assert.deepEqual(payloadChecksums(`sha256:${'c'.repeat(65)}`), []);
    assert.deepEqual(payloadChecksums(undefined), []);
  });

  it('reads checksums from an images list', () => {
    const list = Buffer.from(JSON.stringify([{ id, checksum: sum }, { id: id2 }, { id: 'bad', checksum: sum }, null]));
    assert.deepEqual([...checksumsFromImagesList(list)], [[id, [sum]]]);
    assert.equal(checksumsFromImagesList(Buffer.from('{')).size, 0);
    assert.equal(checksumsFromImagesList(Buffer.from('{"a":1}')).size, 0);
  });

  it('accepts an ancestry that starts with the image and lists only ids', () => {
    assert.ok(validAncestry(Buffer.from(JSON.stringify([id, id2])), id));
    assert.ok(!validAncestry(Buffer.from(JSON.stringify([id2, id])), id));
    assert.ok(!validAncestry(Buffer.from(JSON.stringify([id, '../x'])), id));
    assert.ok(!validAncestry(Buffer.from(JSON.stringify({ id })), id));
    assert.ok(!validAncestry(Buffer.from('nope'), id));
  });
});

describe('v1 config', () => {
  it('v1.sourceIndex is optional and validated like source', () => {
    assert.equal(parseConfig({}).v1.sourceIndex, undefined);
    const c = parseConfig({ v1: { enabled: true, source: 'http://registry.local:5000/', sourceIndex: 'https://index.local/', tagsCacheTTL: '10m' } });
    assert.deepEqual(c.v1, { enabled: true, source: 'http://registry.local:5000', sourceIndex: 'https://index.local', tagsCacheTTLMs: 600_000 });
    assert.throws(() => parseConfig({ v1: { sourceIndex: 'ftp://x' } }), (e: unknown) => e instanceof ConfigError && e.key === 'v1.sourceIndex');
    assert.throws(() => parseConfig({ v1: { tagsCacheTTL: 'soon' } }), (e: unknown) => e instanceof ConfigError && e.key === 'v1.tagsCacheTTL');
    assert.throws(() => parseConfig({ v1: { mirror: true } }), (e: unknown) => e instanceof ConfigError && e.key === 'v1.mirror');
  });
});
