import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { Download, windowBytes } from '../../mirror/store/download.js';
import { parseDigest } from '../../mirror/reference.js';

const dir = mkdtempSync(join(tmpdir(), 'download-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function digestOf(b: Buffer) {
  return parseDigest(`sha256:${createHash('sha256').update(b).digest('hex')}`);
}

/** A source whose chunks, and then its end, are released one step() at a time by the test. */
function gatedSource(chunks: Buffer[]) {
  let permits = 0;
  let wake: () => void = () => undefined;
  const body = Readable.from(
    (async function* () {
      for (const c of chunks) {
        while (permits === 0) await new Promise<void>((r) => (wake = r));
        permits--;
        yield c;
      }
      // The end of the body is one more step, so a test can look before verification.
      while (permits === 0) await new Promise<void>((r) => (wake = r));
    })(),
  );
  return {
    body,
    step: () => {
      permits++;
      wake();
    },
  };
}

async function collect(stream: NodeJS.ReadableStream): Promise<{ data: Buffer; error?: Error }> {
  const parts: Buffer[] = [];
  try {
    for await (const c of stream) parts.push(c as Buffer);
    return { data: Buffer.concat(parts) };
  } catch (error) {
    return { data: Buffer.concat(parts), error: error as Error };
  }
}

describe('Download', () => {
  it('streams to every reader, verifies, then commits', async () => {
    const content = Buffer.from('hello, registry mirror'.repeat(1000));
    const tmp = join(dir, 'a');
    const dl = new Download(digestOf(content), content.length, tmp);
    await dl.prepare();
    const r1 = collect(dl.attach());
    const r2 = collect(dl.attach());
    let committed = '';
    const outcome = await dl.run({ body: Readable.from([content.subarray(0, 7000), content.subarray(7000)]), size: content.length }, async (t) => {
      committed = readFileSync(t).toString();
    });
    assert.deepEqual(outcome, { ok: true, cached: true, size: content.length });
    assert.equal(committed, content.toString());
    assert.deepEqual((await r1).data, content);
    assert.deepEqual((await r2).data, content);
  });

  it('holds back the last byte until the digest is verified', async () => {
    const content = Buffer.from('0123456789');
    const src = gatedSource([content.subarray(0, 5), content.subarray(5)]);
    const dl = new Download(digestOf(content), content.length, join(dir, 'b'));
    await dl.prepare();
    const reader = dl.attach();
    const seen: Buffer[] = [];
    reader.on('data', (c: Buffer) => seen.push(c));
    // The reader ends once the digest verifies, before the commit settles `running`.
    const ended = new Promise((r) => reader.once('end', r));
    const running = dl.run({ body: src.body, size: content.length }, async () => undefined);
    src.step();
    src.step();
    await new Promise((r) => setTimeout(r, 50));
    // Everything is on disk, but verification has not run until the source ends.
    assert.ok(Buffer.concat(seen).length <= content.length - 1);
    src.step();
    await running;
    await ended;
    assert.deepEqual(Buffer.concat(seen), content);
  });

  it('a digest mismatch destroys every reader and removes the temp file', async () => {
    const content = Buffer.from('corrupted content');
    const tmp = join(dir, 'c');
    const dl = new Download(digestOf(Buffer.from('something else')), content.length, tmp);
    await dl.prepare();
    const r = collect(dl.attach());
    let committed = false;
    const outcome = await dl.run({ body: Readable.from([content]), size: content.length }, async () => {
      committed = true;
    });
    assert.equal(outcome.ok, false);
    assert.equal(committed, false);
    const got = await r;
    assert.ok(got.error, 'reader must error, not end cleanly');
    assert.ok(got.data.length < content.length);
    assert.equal(existsSync(tmp), false);
  });

  it('a short body is a failure even when the bytes so far are fine', async () => {
    const content = Buffer.from('abcdef');
    const dl = new Download(digestOf(content), content.length + 10, join(dir, 'd'));
    await dl.prepare();
    const r = collect(dl.attach());
    const outcome = await dl.run({ body: Readable.from([content]), size: content.length + 10 }, async () => undefined);
    assert.equal(outcome.ok, false);
    assert.ok((await r).error);
  });

  it('a late joiner reads from the start of the growing file', async () => {
    const content = Buffer.alloc(3 << 20, 7);
    const src = gatedSource([content.subarray(0, 1 << 20), content.subarray(1 << 20, 2 << 20), content.subarray(2 << 20)]);
    const dl = new Download(digestOf(content), content.length, join(dir, 'e'));
    await dl.prepare();
    const first = collect(dl.attach());
    const running = dl.run({ body: src.body, size: content.length }, async () => undefined);
    src.step();
    src.step();
    await new Promise((r) => setTimeout(r, 30));
    assert.ok(dl.joinable);
    const late = collect(dl.attach());
    src.step();
    src.step();
    await running;
    assert.deepEqual((await first).data, content);
    assert.deepEqual((await late).data, content);
  });

  it('without a temp file (uncacheable) bytes go through reader queues', async () => {
    const content = Buffer.from('x'.repeat(100_000));
    const dl = new Download(digestOf(content), content.length, undefined);
    await dl.prepare();
    const r = collect(dl.attach());
    const outcome = await dl.run({ body: Readable.from([content.subarray(0, 50_000), content.subarray(50_000)]), size: content.length }, async () => {
      throw new Error('must not commit');
    });
    assert.deepEqual(outcome, { ok: true, cached: false, size: content.length });
    assert.deepEqual((await r).data, content);
  });
  it('holds at most a window of memory per blob however many clients follow, fast or stalled', async () => {
    const chunk = 64 << 10;
    const content = Buffer.alloc(48 << 20);
    for (let i = 0; i < content.length; i += 4096) content.writeUInt32BE(i, i);
    const dl = new Download(digestOf(content), content.length, join(dir, 'window'));
    await dl.prepare();
    let peak = 0;
    // Ten clients read as fast as they can; ten read nothing until the download is over.
    const fast = Array.from({ length: 10 }, () => collect(dl.attach()));
    const stalled = Array.from({ length: 10 }, () => {
      const r = dl.attach();
      r.pause();
      return r;
    });
    const body = Readable.from(
      (function* () {
        for (let off = 0; off < content.length; off += chunk) {
          peak = Math.max(peak, dl.heldBytes);
          yield content.subarray(off, off + chunk);
        }
      })(),
    );
    const outcome = await dl.run({ body, size: content.length }, async () => undefined);
    assert.deepEqual(outcome, { ok: true, cached: true, size: content.length });
    for (const f of fast) assert.ok((await f).data.equals(content));
    // Stalled clients held nothing back: they read what they missed from the file.
    for (const r of stalled) assert.ok((await collect(r.resume())).data.equals(content));
    assert.ok(peak > 0 && peak <= windowBytes + 2 * chunk, `peak ${peak} bytes held, window ${windowBytes}`);
  });

  it('uncached, stalled clients pause the upstream instead of growing memory', async () => {
    const chunk = 64 << 10;
    const content = Buffer.alloc(32 << 20, 3);
    const dl = new Download(digestOf(content), content.length, undefined);
    await dl.prepare();
    const slow = dl.attach();
    slow.pause();
    let peak = 0;
    let sent = 0;
    const body = Readable.from(
      (function* () {
        for (let off = 0; off < content.length; off += chunk) {
          peak = Math.max(peak, dl.heldBytes);
          sent = off;
          yield content.subarray(off, off + chunk);
        }
      })(),
    );
    const running = dl.run({ body, size: content.length }, async () => undefined);
    await new Promise((r) => setTimeout(r, 100));
    assert.ok(sent < windowBytes + 4 * chunk, `the upstream waits for the stalled client (${sent} bytes sent)`);
    const got = await collect(slow.resume());
    assert.deepEqual((await running).ok, true);
    assert.ok(got.data.equals(content));
    assert.ok(peak <= windowBytes + 2 * chunk, `peak ${peak} bytes held, window ${windowBytes}`);
  });
});
