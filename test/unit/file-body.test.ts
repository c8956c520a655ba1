// FileBody, the warm-blob body: the bytes of a range exactly, through both of its paths
// (writeTo on a real HTTP response, and as a piped Readable), an empty body, a client that
// goes away mid-body, and a file that is shorter than promised.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer, request, type Server, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { FileBody } from '../../mirror/store/file-body.js';
import { tempDir } from '../../tools/launch/proc.js';

const size = 3 * (512 << 10) + 12345;
let file: string;
let data: Buffer;

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

async function serve(handler: (res: ServerResponse) => void): Promise<{ url: string; server: Server }> {
  const server = createServer((_req, res) => handler(res));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  return { url: `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}/`, server };
}

describe('FileBody', () => {
  before(() => {
    file = join(tempDir('file-body'), 'blob');
    data = Buffer.alloc(size);
    for (let i = 0; i < size; i++) data[i] = (i * 31 + (i >> 9)) & 0xff;
    writeFileSync(file, data);
  });

  for (const [start, end] of [
    [0, size - 1],
    [1000, 600_000],
    [size - 1, size - 1],
  ] as const) {
    it(`writeTo sends bytes ${start}-${end} exactly and closes`, async () => {
      let closed = false;
      let result: Error | undefined | 'pending' = 'pending';
      const { url, server } = await serve(async (res) => {
        res.writeHead(200, { 'content-length': end - start + 1 });
        const body = new FileBody(file, start, end);
        body.once('close', () => (closed = true));
        result = await body.writeTo(res);
      });
      try {
        const got = Buffer.from(await (await fetch(url)).arrayBuffer());
        assert.equal(got.length, end - start + 1);
        assert.equal(sha(got), sha(data.subarray(start, end + 1)));
        await new Promise((r) => setTimeout(r, 20));
        assert.equal(result, undefined);
        assert.ok(closed, 'close fires (the store pin hangs on it)');
      } finally {
        server.close();
      }
    });
  }

  it('an empty body (end < start) ends at once', async () => {
    const { url, server } = await serve(async (res) => {
      res.writeHead(200, { 'content-length': 0 });
      await new FileBody(file, 0, -1).writeTo(res);
    });
    try {
      const res = await fetch(url);
      assert.equal((await res.arrayBuffer()).byteLength, 0);
    } finally {
      server.close();
    }
  });

  it('works as a plain Readable too', async () => {
    const chunks: Buffer[] = [];
    for await (const c of new FileBody(file, 7, size - 8)) chunks.push(c as Buffer);
    assert.equal(sha(Buffer.concat(chunks)), sha(data.subarray(7, size - 7)));
  });

  it('a client that goes away mid-body: the body stops, closes, and reports no read error', async () => {
    let done: (v: Error | undefined) => void;
    const finished = new Promise<Error | undefined>((r) => (done = r));
    let closed = false;
    const { url, server } = await serve(async (res) => {
      res.writeHead(200, { 'content-length': size });
      const body = new FileBody(file, 0, size - 1);
      body.once('close', () => (closed = true));
      done(await body.writeTo(res));
    });
    try {
      await new Promise<void>((resolve) => {
        const req = request(url, (res) => {
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        });
        req.end();
      });
      assert.equal(await finished, undefined);
      await new Promise((r) => setTimeout(r, 50));
      assert.ok(closed, 'close fires after an abort too');
    } finally {
      server.close();
    }
  });

  it('a file shorter than promised aborts the response instead of ending it', async () => {
    let result: Error | undefined;
    const { url, server } = await serve(async (res) => {
      res.writeHead(200, { 'content-length': size + 100 });
      result = await new FileBody(file, 0, size + 99).writeTo(res);
    });
    try {
      const res = await fetch(url);
      await assert.rejects(res.arrayBuffer());
      assert.match(String(result?.message), /ends before byte/);
    } finally {
      server.close();
    }
  });
});
