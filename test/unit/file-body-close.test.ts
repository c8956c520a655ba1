// FileBody.writeTo when the connection is destroyed under it (what clientTimeouts.write does to
// a client that stopped reading): every body on that connection must close, releasing its file
// handle, buffers and the store pin hung on 'close'. That includes a pipelined response still
// queued behind the stalled one, which has no socket of its own and used to wait for ever.

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FileBody } from '../../mirror/store/file-body.js';
import { tempDir } from '../../tools/launch/proc.js';

// Larger than what the kernel buffers of a loopback connection take from a stalled client.
const size = 16 << 20;

describe('FileBody on a destroyed connection', () => {
  let file: string;
  let server: Server;
  const bodies: Array<{ url: string; closed: Promise<void>; result: Promise<Error | undefined> }> = [];
  const sockets: Socket[] = [];

  before(async () => {
    file = join(tempDir('file-body-close'), 'blob');
    writeFileSync(file, Buffer.alloc(size, 0x5a));
    server = createServer((req, res) => {
      const body = new FileBody(file, 0, size - 1);
      const closed = new Promise<void>((r) => body.once('close', () => r()));
      res.writeHead(200, { 'content-length': size });
      bodies.push({ url: req.url ?? '', closed, result: body.writeTo(res) });
    });
    server.on('connection', (s: Socket) => sockets.push(s));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  });

  after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  });

  it('closes the body being written and the pipelined one queued behind it', async () => {
    const { port } = server.address() as AddressInfo;
    const client = connect(port, '127.0.0.1');
    client.on('error', () => undefined);
    await new Promise<void>((r) => client.once('connect', () => r()));
    // Two pipelined GETs, and never a byte read.
    client.write('GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n');
    client.pause();
    try {
      const deadline = Date.now() + 5000;
      while (bodies.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(
        bodies.map((b) => b.url),
        ['/first', '/second'],
      );
      await new Promise((r) => setTimeout(r, 300)); // the first stalls, the second waits behind it
      sockets[0]!.destroy();
      const timeout = new Promise<string>((r) => setTimeout(() => r('still open'), 2000).unref());
      for (const b of bodies) {
        assert.equal(await Promise.race([b.closed.then(() => 'closed'), timeout]), 'closed', `${b.url}: its FileBody closes`);
        assert.equal(await b.result, undefined, `${b.url}: a client gone is no read error`);
      }
    } finally {
      client.destroy();
    }
  });
});
