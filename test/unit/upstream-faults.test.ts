// How upstream trouble becomes the client's error: a body that breaks off is UNAVAILABLE (a
// clean 503 when the response has not started), bad content is a 502, an upstream 4xx is no
// outage, and a name the "library/" prefix makes too long is refused before any request.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { upstreamName } from '../../mirror/cache/target.js';
import { RegistryError } from '../../mirror/errors.js';
import { parseDigest } from '../../mirror/reference.js';
import { Download } from '../../mirror/store/download.js';
import { upstreamError } from '../../mirror/upstream/client.js';

const dir = mkdtempSync(join(tmpdir(), 'upstream-faults-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const digestOf = (b: Buffer) => parseDigest(`sha256:${createHash('sha256').update(b).digest('hex')}`);

describe('upstream faults as client errors', () => {
  it('a body that fails (idle timeout, reset) fails the download as UNAVAILABLE', async () => {
    const data = Buffer.alloc(1000, 7);
    const body = Readable.from(
      (async function* () {
        yield data.subarray(0, 10);
        throw Object.assign(new Error('Body Timeout Error'), { code: 'UND_ERR_BODY_TIMEOUT' });
      })(),
    );
    const dl = new Download(digestOf(data), data.length, join(dir, 'a'));
    await dl.prepare();
    const reader = dl.attach();
    reader.on('error', () => undefined);
    const outcome = await dl.run({ body, size: data.length }, async () => undefined);
    assert.equal(outcome.ok, false);
    const err = (outcome as { error: Error }).error;
    assert.ok(err instanceof RegistryError);
    assert.equal(err.code, 'UNAVAILABLE');
    assert.equal(err.status, 503);
    assert.match(err.message, /UND_ERR_BODY_TIMEOUT/);
  });

  it('content that does not match its digest is DIGEST_INVALID with status 502, not 400', async () => {
    const data = Buffer.from('the real bytes');
    const dl = new Download(digestOf(data), data.length, join(dir, 'b'));
    await dl.prepare();
    dl.attach().on('error', () => undefined);
    const outcome = await dl.run({ body: Readable.from([Buffer.from('other bytes!!!')]), size: data.length }, async () => undefined);
    const err = (outcome as { error: Error }).error as RegistryError;
    assert.equal(err.code, 'DIGEST_INVALID');
    assert.equal(err.status, 502);
  });

  it('upstream statuses: 404, 401, 403, 429 as such; other 4xx a 404; 5xx UNAVAILABLE', () => {
    const nf = new RegistryError('MANIFEST_UNKNOWN', undefined, { reference: 'v1' });
    assert.equal(upstreamError(404, 'u', nf), nf);
    assert.equal(upstreamError(401, 'u', nf).code, 'UNAUTHORIZED');
    assert.equal(upstreamError(403, 'u', nf).code, 'DENIED');
    assert.equal(upstreamError(429, 'u', nf).code, 'TOOMANYREQUESTS');
    for (const s of [400, 405, 406, 410, 416]) {
      const e = upstreamError(s, 'u', nf);
      assert.equal(e.code, 'MANIFEST_UNKNOWN');
      assert.equal(e.status, 404);
      assert.match(e.message, new RegExp(`refused the request \\(${s}\\)`));
    }
    for (const s of [500, 502, 503, 504, 599]) assert.equal(upstreamError(s, 'u', nf).code, 'UNAVAILABLE');
  });

  it('a Docker Hub name that "library/" makes longer than 255 characters is NAME_INVALID', () => {
    assert.equal(upstreamName('docker.io', 'https://registry-1.docker.io', 'a'.repeat(247)), `library/${'a'.repeat(247)}`);
    assert.throws(() => upstreamName('docker.io', 'https://registry-1.docker.io', 'a'.repeat(248)), (e: unknown) => e instanceof RegistryError && e.code === 'NAME_INVALID');
    assert.equal(upstreamName('ghcr.io', 'https://ghcr.io', 'a'.repeat(255)), 'a'.repeat(255));
  });
});
