// Download's verification: the v2 default (the digest, whose hash reaches the commit) and the
// pluggable check v1 layers use (test/unit/download.test.ts covers the rest of Download).

import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parseDigest } from '../../mirror/reference.js';
import { Download, type DownloadSource } from '../../mirror/store/download.js';

const dir = mkdtempSync(join(tmpdir(), 'rm-test-download-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function source(chunks: Buffer[]): DownloadSource['body'] {
  return Readable.from(chunks);
}

async function drain(dl: Download): Promise<{ bytes: Buffer; error?: Error }> {
  const r = dl.attach();
  const parts: Buffer[] = [];
  try {
    for await (const c of r) parts.push(c as Buffer);
    return { bytes: Buffer.concat(parts) };
  } catch (err) {
    return { bytes: Buffer.concat(parts), error: err as Error };
  }
}

let n = 0;
const tmp = () => join(dir, `t${n++}`);
const data = randomBytes(300_000);
const hex = createHash('sha256').update(data).digest('hex');
const halves = [data.subarray(0, 100_000), data.subarray(100_000)];

describe('Download verification', () => {
  it('v2: bytes matching the digest are committed, with their hash', async () => {
    const dl = new Download(parseDigest(`sha256:${hex}`), data.length, tmp());
    await dl.prepare();
    let committed: [string, number, string] | undefined;
    const reading = drain(dl);
    const outcome = await dl.run({ body: source(halves), size: data.length }, async (t, size, h) => {
      committed = [readFileSync(t).toString('hex'), size, h];
    });
    assert.deepEqual(outcome, { ok: true, cached: true, size: data.length });
    assert.deepEqual(committed, [data.toString('hex'), data.length, hex]);
    assert.equal(dl.hashHex, hex);
    assert.deepEqual((await reading).bytes, data);
  });

  it('v1: no digest, a pluggable check sees the sha256 and size; its error fails the download', async () => {
    const seen: Array<[string, number]> = [];
    const ok = new Download(undefined, undefined, tmp(), (h, size) => void seen.push([h, size]));
    await ok.prepare();
    const okReading = drain(ok);
    assert.equal((await ok.run({ body: source(halves) }, async () => undefined)).ok, true);
    assert.deepEqual(seen, [[hex, data.length]]);
    assert.deepEqual((await okReading).bytes, data, 'unknown size: the stream ends once verified');

    const bad = new Download(undefined, undefined, tmp(), () => new Error('checksum mismatch'));
    await bad.prepare();
    const badReading = drain(bad);
    const outcome = await bad.run({ body: source(halves) }, async () => assert.fail('must not commit'));
    assert.equal(outcome.ok, false);
    assert.ok((await badReading).error, 'the reader is aborted, never ended cleanly');
  });

  it('v1: without digest or check the size still counts', async () => {
    const dl = new Download(undefined, data.length + 1, tmp());
    await dl.prepare();
    const reading = drain(dl);
    const outcome = await dl.run({ body: source(halves), size: data.length + 1 }, async () => assert.fail('must not commit'));
    assert.equal(outcome.ok, false);
    assert.match((outcome as { error: Error }).error.message, /Content-Length/);
    const got = await reading;
    assert.ok(got.error);
    assert.ok(got.bytes.length <= data.length, 'never more than was received, then abort');
  });
});
