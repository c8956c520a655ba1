import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isValidName, isValidRegistryHost, parseDigest, parseManifestReference } from '../../mirror/reference.js';
import { RegistryError } from '../../mirror/errors.js';
import { decodePath, parseV2Path } from '../../mirror/v2/path.js';

const hex64 = 'a'.repeat(64);

describe('reference grammar', () => {
  it('accepts distribution names and refuses anything path-like', () => {
    for (const ok of ['library/alpine', 'a', 'my-org/app_x/a.b', 'a__b', 'a---b', 'ghcr.io/org/x']) assert.ok(isValidName(ok), ok);
    for (const bad of ['', '..', 'a/../b', '/a', 'a/', 'A', 'a//b', 'a\\b', 'a%2fb', '_a', 'a.', '.a', 'a\0b', 'x'.repeat(256)]) {
      assert.ok(!isValidName(bad), JSON.stringify(bad));
    }
  });

  it('parses sha256 and sha512 digests only', () => {
    assert.equal(parseDigest(`sha256:${hex64}`).hex, hex64);
    assert.equal(parseDigest(`sha512:${'b'.repeat(128)}`).algorithm, 'sha512');
    for (const bad of [`sha256:${'A'.repeat(64)}`, 'sha256:abc', `md5:${hex64}`, `sha256:${hex64}/../x`, hex64]) {
      assert.throws(() => parseDigest(bad), (e: unknown) => e instanceof RegistryError && e.code === 'DIGEST_INVALID', bad);
    }
  });

  it('tells tags from digests and validates both', () => {
    assert.deepEqual(parseManifestReference('v1.2_3-x'), { kind: 'tag', tag: 'v1.2_3-x' });
    assert.equal(parseManifestReference(`sha256:${hex64}`).kind, 'digest');
    assert.throws(() => parseManifestReference('-bad'), (e: unknown) => (e as RegistryError).code === 'TAG_INVALID');
    assert.throws(() => parseManifestReference('x'.repeat(129)), (e: unknown) => (e as RegistryError).code === 'TAG_INVALID');
  });

  it('validates registry hosts', () => {
    for (const ok of ['docker.io', 'ghcr.io', 'localhost:5000', '127.0.0.1:5001', 'registry.k8s.io']) assert.ok(isValidRegistryHost(ok), ok);
    for (const bad of ['', 'a/b', 'A.io', 'x..y', 'host:', 'evil.com/../']) assert.ok(!isValidRegistryHost(bad), bad);
  });
});

describe('v2 paths', () => {
  it('splits names with slashes from the end', () => {
    assert.deepEqual(parseV2Path('/v2/'), { kind: 'base' });
    assert.deepEqual(parseV2Path('/v2/_catalog'), { kind: 'catalog' });
    assert.deepEqual(parseV2Path('/v2/a/b/c/manifests/latest'), { kind: 'manifest', name: 'a/b/c', reference: 'latest' });
    assert.deepEqual(parseV2Path(`/v2/a/blobs/sha256:${hex64}`), { kind: 'blob', name: 'a', digest: `sha256:${hex64}` });
    assert.deepEqual(parseV2Path('/v2/a/b/tags/list'), { kind: 'tags', name: 'a/b' });
    assert.deepEqual(parseV2Path('/v2/a/blobs/uploads/'), { kind: 'upload', name: 'a' });
    assert.deepEqual(parseV2Path('/v2/a/blobs/uploads/123'), { kind: 'upload', name: 'a' });
    assert.deepEqual(parseV2Path('/v2/a/other'), { kind: 'unknown' });
  });

  it('decodes once and refuses malformed escapes and NUL', () => {
    assert.equal(decodePath('/v2/a/manifests/x?ns=docker.io'), '/v2/a/manifests/x');
    assert.equal(decodePath('/v2/%2e%2e/x'), '/v2/../x');
    assert.equal(decodePath('/v2/%zz'), undefined);
    assert.equal(decodePath('/v2/a%00b'), undefined);
  });
});
