// Which bytes prove which manifest digest (issue 11: a forged schema1 body must never be
// stored under another manifest's digest).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { manifestDigestHex, provesDigest, schema1Payload, schema1SignedType } from '../../mirror/manifest-digest.js';
import { parseDigest } from '../../mirror/reference.js';

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const digestOf = (b: Buffer | string) => parseDigest(`sha256:${sha(b)}`);

const payload = '{\n   "schemaVersion": 1,\n   "name": "library/app",\n   "tag": "v1",\n   "fsLayers": [{"blobSum": "sha256:aa"}]\n}';
const formatLength = payload.length - 2;
const formatTail = Buffer.from(payload.slice(formatLength)).toString('base64url');

function protectedHeader(length = formatLength, tail = formatTail): string {
  return Buffer.from(JSON.stringify({ formatLength: length, formatTail: tail, time: '2020-01-01T00:00:00Z' })).toString('base64url');
}

function signed(signatures = `[{"protected": "${protectedHeader()}", "signature": "x"}]`, between = ''): Buffer {
  return Buffer.from(`${payload.slice(0, formatLength)},\n   "signatures": ${signatures}${between}\n}`);
}

describe('manifest digests', () => {
  it('a signed schema1 manifest has the digest of its payload, as distribution computes it', () => {
    const body = signed();
    assert.equal(schema1Payload(body)?.toString(), payload);
    assert.equal(manifestDigestHex(body, schema1SignedType, 'sha256'), sha(payload));
    assert.ok(provesDigest(body, schema1SignedType, digestOf(payload)));
    assert.ok(!provesDigest(body, 'application/vnd.oci.image.manifest.v1+json', digestOf(payload)), 'only signed schema1 uses the payload');
  });

  it('every other type has the digest of its bytes, and bytes that hash to a digest always prove it', () => {
    const oci = Buffer.from('{"schemaVersion":2}');
    assert.equal(manifestDigestHex(oci, 'application/vnd.oci.image.manifest.v1+json', 'sha256'), sha(oci));
    assert.ok(provesDigest(oci, schema1SignedType, digestOf(oci)));
    assert.ok(!provesDigest(oci, 'application/vnd.oci.image.manifest.v1+json', digestOf('other')));
  });

  it('a forged schema1 body proves nothing: not another digest, not a payload with members added after the signatures', () => {
    const victim = Buffer.from('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}');
    // What the hostile upstream of issue 11 sent: any bytes, a schema1 type, a foreign digest.
    assert.ok(!provesDigest(Buffer.from('{"evil":true}'), schema1SignedType, digestOf(victim)));
    assert.equal(manifestDigestHex(Buffer.from('{"evil":true}'), schema1SignedType, 'sha256'), undefined);
    // The payload hashes right, but a repeated fsLayers after the signatures would override
    // the signed one in a client's JSON parser.
    const overriding = signed(undefined, ',\n   "fsLayers": [{"blobSum": "sha256:bb"}]');
    assert.equal(schema1Payload(overriding), undefined);
    assert.ok(!provesDigest(overriding, schema1SignedType, digestOf(payload)));
  });

  it('signatures must agree on the payload and fit the body', () => {
    const disagree = signed(`[{"protected": "${protectedHeader()}"}, {"protected": "${protectedHeader(formatLength - 1)}"}]`);
    assert.equal(schema1Payload(disagree), undefined);
    assert.equal(schema1Payload(signed(`[{"protected": "${protectedHeader(1 << 30)}"}]`)), undefined);
    assert.equal(schema1Payload(signed(`[{"protected": "${protectedHeader(formatLength, Buffer.from('\n]').toString('base64url'))}"}]`)), undefined);
    assert.equal(schema1Payload(signed('[]')), undefined);
    assert.equal(schema1Payload(signed('[{"protected": 5}]')), undefined);
    assert.equal(schema1Payload(Buffer.from('not json')), undefined);
  });
});
