// The pure parts of the referrers support (issue 19): the referrers tag schema's tag name,
// the empty index, index parsing, the artifactType filter, and the route's path parsing.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { emptyIndex, filterDescriptors, parseIndex, referrersTag, renderIndex } from '../../mirror/cache/referrers-cache.js';
import { parseV2Path } from '../../mirror/v2/path.js';

const index = 'application/vnd.oci.image.index.v1+json';

describe('referrers (OCI 1.1)', () => {
  it('names the referrers tag as the spec table does', () => {
    const a64 = 'a'.repeat(64);
    assert.equal(referrersTag(`sha256:${a64}`), `sha256-${a64}`);
    assert.equal(referrersTag(`sha512:${'a'.repeat(128)}`), `sha512-${a64}`, 'encoded part truncated to 64');
    assert.equal(
      referrersTag(
        'test+algorithm+using+algorithm+separators+and+lots+of+characters+to+excercise+overall+truncation:alsoSome=InTheEncodedSectionToShowHyphenReplacementAndLotsAndLotsOfCharactersToExcerciseEncodedTruncation',
      ),
      'test-algorithm-using-algorithm-s-alsoSome-InTheEncodedSectionToShowHyphenReplacementAndLotsAndLot',
    );
  });

  it('answers no referrers with the empty image index of the spec', () => {
    assert.deepEqual(JSON.parse(emptyIndex().toString('utf8')), { schemaVersion: 2, mediaType: index, manifests: [] });
  });

  it('accepts only image indexes', () => {
    assert.ok(parseIndex(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: index, manifests: [] }))));
    assert.ok(parseIndex(Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [{ digest: 'x' }] }))), 'mediaType may be absent');
    for (const bad of ['', 'null', '[]', '{}', '{"manifests":{}}', '{"manifests":[1]}', '{"manifests":[null]}', `{"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}`, '{"manifests":[']) {
      assert.equal(parseIndex(Buffer.from(bad)), undefined, bad);
    }
  });

  it('filters by artifactType and keeps the exact bytes when nothing is dropped', () => {
    const sig = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: 'sha256:1', size: 1, artifactType: 'application/vnd.example.sig' };
    const sbom = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: 'sha256:2', size: 1, artifactType: 'application/vnd.example.sbom' };
    const nested = { mediaType: index, digest: 'sha256:3', size: 1 };
    const all = [sig, sbom, nested];
    assert.deepEqual(filterDescriptors(all, undefined), all);
    assert.deepEqual(filterDescriptors(all, 'application/vnd.example.sbom'), [sbom]);
    assert.deepEqual(filterDescriptors(all, 'application/vnd.example.none'), []);
    const bytes = Buffer.from(`  ${JSON.stringify({ schemaVersion: 2, mediaType: index, manifests: all, annotations: { a: 'b' } })}\n`);
    const parsed = parseIndex(bytes)!;
    assert.equal(renderIndex(parsed, bytes, parsed.manifests, undefined), bytes, 'unfiltered: the bytes as they came');
    const one = JSON.parse(renderIndex(parsed, bytes, parsed.manifests, 'application/vnd.example.sig').toString('utf8'));
    assert.deepEqual(one, { schemaVersion: 2, mediaType: index, manifests: [sig], annotations: { a: 'b' } });
    const none = JSON.parse(renderIndex(parsed, bytes, parsed.manifests, 'application/vnd.example.none').toString('utf8'));
    assert.deepEqual(none.manifests, []);
    // Several pages: rewritten with every page's descriptors.
    const first = parseIndex(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: index, manifests: [sig] })))!;
    assert.deepEqual(JSON.parse(renderIndex(first, undefined, [sig, sbom], undefined).toString('utf8')).manifests, [sig, sbom]);
  });

  it('routes /v2/<name>/referrers/<digest>', () => {
    assert.deepEqual(parseV2Path('/v2/org/app/referrers/sha256:abc'), { kind: 'referrers', name: 'org/app', digest: 'sha256:abc' });
    assert.deepEqual(parseV2Path('/v2/referrers/referrers/x'), { kind: 'referrers', name: 'referrers', digest: 'x' });
    assert.deepEqual(parseV2Path('/v2/a/referrers/manifests/v1'), { kind: 'manifest', name: 'a/referrers', reference: 'v1' });
    assert.deepEqual(parseV2Path('/v2/a/referrers/'), { kind: 'unknown' });
    assert.deepEqual(parseV2Path('/v2/a/referrers/x/y'), { kind: 'unknown' });
  });
});
