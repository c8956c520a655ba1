// A byte range of a file on disk as a response body: the warm-blob hot path.
//
// Why not fs.createReadStream: it allocates a fresh buffer for every read. Those buffers live
// outside the V8 heap, and V8 answers each ~64 MB of new external memory with a full
// mark-compact of the whole heap, so serving 16 GiB cost the mirror ~17 s of CPU, half of it
// in the garbage collector (bench, issue 7). writeTo() instead reads into two buffers that
// it reuses: one is filled from the file while the other is being written to the socket,
// and a buffer is only filled again once the socket's write callback has released it. The
// buffers come from a small shared pool, so a warm request allocates nothing at steady state.
//
// FileBody is still a Readable (fresh buffer per read) for any consumer that pipes it; the
// route uses writeTo() when it can own the response. Either way the body ends by destroying
// the stream, so its 'close' (which callers hang the store pin on) fires exactly once.

import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { Readable, type Duplex, type Writable } from 'node:stream';

// 1 MiB: per byte the least CPU of 256 KiB..2 MiB with 1 and with 16 clients (bench, issue 7:
// ~400 ms per GiB served, against ~550 (1 client) and ~1000 (16) for createReadStream).
const chunkSize = 1 << 20;
/** Idle buffers kept for reuse: 8 MiB. */
const poolLimit = 8;
const pool: Buffer[] = [];

function takeBuffer(): Buffer {
  return pool.pop() ?? Buffer.allocUnsafeSlow(chunkSize);
}

function giveBuffer(b: Buffer): void {
  if (pool.length < poolLimit && b.length === chunkSize) pool.push(b);
}

/**
 * The buffers one response needs: two full chunks to overlap reading and writing, but one
 * for a body that fits in a single read, of the body's own size when that is much smaller.
 * Under load (issue 8: 200 clients) most warm bodies are configs and small layers, and two
 * 1 MiB buffers each for those made the external memory swing by hundreds of MB.
 */
function buffersFor(bytes: number): Buffer[] {
  if (bytes > chunkSize) return [takeBuffer(), takeBuffer()];
  if (bytes > chunkSize / 4) return [takeBuffer()];
  return [Buffer.allocUnsafe(bytes)];
}

export class FileBody extends Readable {
  private fh: FileHandle | undefined;
  private opening: Promise<FileHandle> | undefined;
  private pos: number;
  /** Exclusive end offset. */
  private readonly stop: number;

  /** Bytes [start, end] of path (end inclusive, as in Content-Range); end < start is empty. */
  constructor(
    readonly path: string,
    start: number,
    end: number,
  ) {
    super({ highWaterMark: chunkSize });
    this.pos = start;
    this.stop = Math.max(start, end + 1);
  }

  private open(): Promise<FileHandle> {
    this.opening ??= fs.open(this.path, 'r').then((fh) => {
      if (this.destroyed) {
        void fh.close().catch(() => undefined);
        throw new Error('body destroyed before its file was open');
      }
      return (this.fh = fh);
    });
    return this.opening;
  }

  private async readChunk(fh: FileHandle, buf: Buffer): Promise<number> {
    const n = Math.min(buf.length, this.stop - this.pos);
    const { bytesRead } = await fh.read(buf, 0, n, this.pos);
    // The store never shrinks a committed file; a short read means it is gone or damaged.
    if (bytesRead === 0) throw new Error(`${this.path} ends before byte ${this.pos}`);
    this.pos += bytesRead;
    return bytesRead;
  }

  override _read(): void {
    if (this.pos >= this.stop) {
      this.push(null);
      return;
    }
    this.open()
      .then(async (fh) => {
        const buf = Buffer.allocUnsafeSlow(Math.min(chunkSize, this.stop - this.pos));
        const n = await this.readChunk(fh, buf);
        this.push(buf.subarray(0, n));
      })
      .catch((err: Error) => this.destroy(err));
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const fh = this.fh;
    this.fh = undefined;
    if (!fh) return cb(err);
    fh.close().then(
      () => cb(err),
      () => cb(err),
    );
  }

  /**
   * Writes the whole body to res (headers must already be written) and ends it. On a read
   * error or when the client goes away, res is destroyed (a client never sees a short body
   * end cleanly). Resolves with the read error, if that is what stopped it (a client that
   * went away is no error of ours: the request log shows it as aborted).
   */
  async writeTo(res: Writable): Promise<Error | undefined> {
    const bufs = buffersFor(this.stop - this.pos);
    let pending: Promise<void> | undefined;
    let clean = false;
    let readError: Error | undefined;
    // Remembers a failure of the file side, to tell it from a client that went away.
    const reading = <T>(p: Promise<T>): Promise<T> =>
      p.catch((err: Error) => {
        readError = err;
        throw err;
      });
    try {
      if (this.pos < this.stop) {
        const fh = await reading(this.open());
        for (let i = 0; this.pos < this.stop; i++) {
          const buf = bufs[i % bufs.length]!;
          // This buffer's previous write was awaited one turn ago, so it is free again.
          const n = await reading(this.readChunk(fh, buf));
          if (pending) await pending;
          pending = writeChunk(res, buf.subarray(0, n));
          // Handled here too: it may reject (client gone) while the next read is running.
          pending.catch(() => undefined);
        }
        if (pending) await pending;
      }
      res.end();
      clean = true;
      return undefined;
    } catch {
      res.destroy(readError);
      return readError;
    } finally {
      // After an abort the socket may not have let go of a buffer yet: leave those to GC.
      if (clean) bufs.forEach(giveBuffer);
      this.destroy();
    }
  }
}

/**
 * One write, settled by its callback, or rejected at once when the response or its connection
 * closes first. The connection matters for a pipelined response still queued behind another:
 * it has no socket yet, buffers the chunk and, when the connection is destroyed, never sees
 * a callback or a 'close' of its own, which left writeTo (and the FileBody's file handle,
 * buffers and store pin) waiting for ever.
 */
function writeChunk(res: Writable, chunk: Buffer): Promise<void> {
  const conn = connectionOf(res);
  if (res.destroyed || conn?.destroyed) return Promise.reject(new Error('client closed the connection'));
  return new Promise((resolve, reject) => {
    const onClose = (): void => {
      settle();
      reject(new Error('client closed the connection'));
    };
    const settle = (): void => {
      res.off('close', onClose);
      conn?.off('close', onClose);
    };
    res.once('close', onClose);
    conn?.once('close', onClose);
    res.write(chunk, (err) => {
      settle();
      if (err) reject(err);
      else resolve();
    });
  });
}

/** The connection under an http.ServerResponse (through its request while it is queued). */
function connectionOf(res: Writable): Duplex | undefined {
  const r = res as Writable & { socket?: Duplex | null; req?: { socket?: Duplex | null } };
  return r.socket ?? r.req?.socket ?? undefined;
}
