// One upstream download of one blob, shared by every client that wants it while it runs.
// (v2 blobs, verified against their digest; v1 layers, which have no digest in their URL,
// pass their own `verify`: size and, when the source gives one, the payload checksum.)
//
// The bytes go to a temp file as they arrive, hashed on the way; each client reads the
// growing file through its own TailReader at its own pace, so a slow client never slows the
// download and followers never go upstream again (distribution's proxy re-fetches for them).
// A client is never handed the last byte before the digest and size are verified: with a
// Content-Length response that last byte is what would let a client accept a corrupt body as
// complete; with an unknown length the stream simply does not end until verification. On any
// failure every reader is destroyed, which aborts its connection mid-body.
//
// When the disk cannot take the bytes (ENOSPC) or the blob may not be cached at all (larger
// than the store bound), the download goes on "in memory": readers already attached get the
// remaining chunks pushed to their own queues, with the upstream paused while any queue is
// full. Such a download takes no new joiners: a later request starts its own.

import { createHash, type Hash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { RegistryError } from '../errors.js';
import type { Digest } from '../reference.js';
import { isNoSpace, removeQuietly } from './fsutil.js';

export interface DownloadSource {
  body: AsyncIterable<Buffer> & { destroy(err?: Error): unknown };
  /** From the upstream's Content-Length, when it sent one. */
  size?: number;
}

/**
 * Checks a finished transfer: the hex hash of all its bytes (with the digest's algorithm,
 * sha256 when there is no digest) and how many there were. An error fails the download.
 */
export type Verify = (hashHex: string, size: number) => Error | undefined;

export type DownloadOutcome =
  | { ok: true; cached: boolean; size: number }
  | { ok: false; error: Error };

// Each client of a running download reads (and buffers, as its highWaterMark) this much at a
// time: 256 KiB, not 1 MiB, keeps 200 concurrent cold clients (issue 8 load test) about 100 MB
// lighter at the same throughput.
const readChunk = 256 << 10;
const memoryQueueLimit = 4 << 20;

export class Download {
  readonly digest: Digest | undefined;
  readonly size: number | undefined;
  readonly tmpPath: string | undefined;
  /** Bytes received from upstream so far. */
  received = 0;
  /** Bytes of the temp file that are written and readable. */
  written = 0;
  /** Set when bytes stopped going to disk: from here on they go to reader queues. */
  diskEnd: number | undefined;
  state: 'running' | 'verified' | 'failed' = 'running';
  error: Error | undefined;
  noSpace = false;
  /** Hex hash of the whole body, set once the last byte has arrived. */
  hashHex: string | undefined;

  readonly done: Promise<DownloadOutcome>;
  private resolveDone!: (o: DownloadOutcome) => void;
  private readonly readers = new Set<TailReader>();
  private fh: FileHandle | undefined;
  private waiters: Array<() => void> = [];
  private source: DownloadSource | undefined;
  private readonly verify: Verify;

  /** Without `verify` the body must match `digest`; with neither only the size is checked. */
  constructor(digest: Digest | undefined, size: number | undefined, tmpPath: string | undefined, verify?: Verify) {
    this.digest = digest;
    this.verify = verify ?? (digest ? digestVerifier(digest) : () => undefined);
    this.size = size;
    this.tmpPath = tmpPath;
    if (tmpPath === undefined) this.diskEnd = 0;
    this.done = new Promise((r) => (this.resolveDone = r));
  }

  get joinable(): boolean {
    // An uncached transfer can only be shared before its first byte arrives.
    return this.state === 'running' && (this.diskEnd === undefined || this.received === 0);
  }

  get readerCount(): number {
    return this.readers.size;
  }

  /** Creates the temp file (when caching). Must be awaited before readers attach. */
  async prepare(): Promise<void> {
    if (this.tmpPath === undefined) return;
    try {
      this.fh = await fs.open(this.tmpPath, 'w+');
    } catch (err) {
      if (!isNoSpace(err)) throw err;
      this.noSpace = true;
      this.diskEnd = 0;
    }
  }

  /** A reader for bytes [start, end) of the blob; end defaults to the whole blob. */
  attach(start = 0, end?: number): TailReader {
    const r = new TailReader(this, start, end);
    this.readers.add(r);
    return r;
  }

  detach(r: TailReader): void {
    if (!this.readers.delete(r)) return;
    this.wake();
    // Nobody left to receive an uncached transfer: stop pulling it from the upstream.
    if (this.readers.size === 0 && this.diskEnd !== undefined && this.state === 'running') {
      this.source?.body.destroy(new Error('all clients went away'));
    }
    this.maybeCloseFile();
  }

  /** Pulls the upstream body to the end; resolves when verified (and committed) or failed. */
  async run(source: DownloadSource, commit: (tmp: string, size: number, hashHex: string) => Promise<void>): Promise<DownloadOutcome> {
    this.source = source;
    const hash = createHash(this.digest?.algorithm ?? 'sha256');
    try {
      try {
        for await (const chunk of source.body) {
          try {
            await this.accept(chunk, hash);
          } catch (err) {
            throw new LocalFailure(err);
          }
        }
      } catch (err) {
        // The upstream body failed (stalled past upstreamTimeouts.idle, reset, cut short):
        // upstream trouble, UNAVAILABLE. A client whose response has not started yet (a stall
        // before the first byte) gets a clean 503 to retry elsewhere, not a 500 of ours.
        if (err instanceof LocalFailure) throw err.cause;
        throw err instanceof RegistryError || (err as Error).name === 'V1Error'
          ? err
          : new RegistryError('UNAVAILABLE', `upstream transfer failed: ${(err as { code?: string }).code ?? (err as Error).message}`);
      }
      if (this.size !== undefined && this.received !== this.size) {
        throw new RegistryError('SIZE_INVALID', `upstream sent ${this.received} bytes, Content-Length said ${this.size}`);
      }
      this.hashHex = hash.digest('hex');
      const invalid = this.verify(this.hashHex, this.received);
      if (invalid) throw invalid;
      let cached = false;
      if (this.fh && this.diskEnd === undefined) {
        try {
          await this.fh.sync();
          await commit(this.tmpPath!, this.received, this.hashHex);
          cached = true;
        } catch (err) {
          // The client's bytes are verified; only caching failed (e.g. disk full at rename).
          if (!isNoSpace(err)) this.error = err as Error;
          else this.noSpace = true;
        }
      }
      this.state = 'verified';
      this.wake();
      const outcome: DownloadOutcome = { ok: true, cached, size: this.received };
      this.resolveDone(outcome);
      this.maybeCloseFile();
      if (!cached && this.tmpPath) await removeQuietly(this.tmpPath);
      return outcome;
    } catch (err) {
      return this.fail(err as Error);
    }
  }

  private async accept(chunk: Buffer, hash: Hash): Promise<void> {
    if (this.state !== 'running') throw this.error ?? new Error('download stopped');
    hash.update(chunk);
    const offset = this.received;
    this.received += chunk.length;
    if (this.size !== undefined && this.received > this.size) {
      throw new RegistryError('SIZE_INVALID', `upstream sent more than its Content-Length of ${this.size} bytes`);
    }
    if (this.diskEnd === undefined) {
      try {
        // A write can be short: when the disk fills up in the middle of a chunk the kernel
        // writes what fits and reports that count; only the next write fails with ENOSPC.
        // `written` must only ever cover bytes really in the file, or readers would wait
        // for bytes past its end forever.
        for (let done = 0; done < chunk.length; ) {
          const { bytesWritten } = await this.fh!.write(chunk, done, chunk.length - done, offset + done);
          done += bytesWritten;
          this.written = offset + done;
        }
        this.wake();
        return;
      } catch (err) {
        if (!isNoSpace(err)) throw err;
        this.noSpace = true;
        // The rest of this chunk (from `written` on) and every later one go to the queues;
        // readers take queued bytes from their own position, so the whole chunk is queued.
        this.diskEnd = this.written;
      }
    }
    if (this.readers.size === 0) throw new Error('all clients went away');
    for (const r of this.readers) r.enqueue(chunk, offset);
    this.wake();
    // Upstream waits for the slowest reader: memory stays bounded by the queue limit.
    while (this.state === 'running' && [...this.readers].some((r) => r.queuedBytes > memoryQueueLimit)) {
      await this.changed();
    }
  }

  private async fail(error: Error): Promise<DownloadOutcome> {
    this.state = 'failed';
    this.error = error;
    this.source?.body.destroy(error);
    for (const r of [...this.readers]) r.destroy(error);
    this.wake();
    const outcome: DownloadOutcome = { ok: false, error };
    this.resolveDone(outcome);
    this.maybeCloseFile();
    if (this.tmpPath) await removeQuietly(this.tmpPath);
    return outcome;
  }

  /** Resolves at the next change of state or bytes. */
  changed(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }

  wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  async readAt(buf: Buffer, length: number, position: number): Promise<number> {
    const { bytesRead } = await this.fh!.read(buf, 0, length, position);
    return bytesRead;
  }

  private maybeCloseFile(): void {
    if (this.state !== 'running' && this.readers.size === 0 && this.fh) {
      const fh = this.fh;
      this.fh = undefined;
      fh.close().catch(() => undefined);
    }
  }
}

/** An error of our own side (disk, readers) while taking a chunk, as opposed to the upstream's. */
class LocalFailure extends Error {
  constructor(override readonly cause: unknown) {
    super('local failure');
  }
}

function digestVerifier(digest: Digest): Verify {
  return (hashHex) => {
    const actual = `${digest.algorithm}:${hashHex}`;
    if (actual === digest.value) return undefined;
    // 502, not DIGEST_INVALID's usual 400 (a bad push): when the mismatch shows before the
    // response started, the client asked for nothing wrong; the upstream sent bad content.
    return new RegistryError('DIGEST_INVALID', 'upstream content does not match its digest', { expected: digest.value, actual }, 502);
  };
}

/** A client's view of a Download: a Readable that follows the growing temp file. */
export class TailReader extends Readable {
  private pos: number;
  private readonly end: number | undefined;
  private pumping = false;
  private queue: Array<{ offset: number; chunk: Buffer }> = [];
  queuedBytes = 0;

  constructor(
    private readonly dl: Download,
    start: number,
    end: number | undefined,
  ) {
    super({ highWaterMark: readChunk });
    this.pos = start;
    this.end = end;
  }

  enqueue(chunk: Buffer, offset: number): void {
    this.queue.push({ offset, chunk });
    this.queuedBytes += chunk.length;
    if (!this.pumping) this.pump();
  }

  override _read(): void {
    if (!this.pumping) this.pump();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.dl.detach(this);
    cb(err);
  }

  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      for (;;) {
        if (this.destroyed) return;
        const dl = this.dl;
        if (dl.state === 'failed') {
          this.destroy(dl.error ?? new Error('download failed'));
          return;
        }
        const total = dl.state === 'verified' ? dl.received : undefined;
        const stop = Math.min(this.end ?? Infinity, total ?? Infinity);
        if (this.pos >= stop) {
          this.push(null);
          this.dl.detach(this);
          return;
        }
        // Before verification the last byte of the blob is held back (see the file comment).
        const allowed = dl.state === 'verified' ? Infinity : dl.size !== undefined ? dl.size - 1 : Infinity;
        const limit = Math.min(stop, allowed);
        let chunk: Buffer | undefined;
        const onDisk = dl.diskEnd ?? dl.written;
        if (this.pos < onDisk && this.pos < limit) {
          const n = Math.min(readChunk, onDisk - this.pos, limit - this.pos);
          const buf = Buffer.allocUnsafe(n);
          const got = await dl.readAt(buf, n, this.pos);
          // Bytes below `written` are in the file; reading none means the file lost them,
          // and waiting would hang the client: abort the body instead.
          if (got === 0) throw new Error(`temp file ends before byte ${this.pos} it should hold`);
          chunk = buf.subarray(0, got);
        } else if (dl.diskEnd !== undefined && this.pos >= dl.diskEnd) {
          chunk = this.takeQueued(limit);
        }
        if (this.destroyed) return;
        if (chunk && chunk.length > 0) {
          this.pos += chunk.length;
          if (!this.push(chunk)) return;
          continue;
        }
        await dl.changed();
      }
    } catch (err) {
      this.destroy(err as Error);
    } finally {
      this.pumping = false;
    }
  }

  private takeQueued(limit: number): Buffer | undefined {
    while (this.queue.length > 0) {
      const head = this.queue[0]!;
      const headEnd = head.offset + head.chunk.length;
      if (headEnd <= this.pos) {
        this.dropHead();
        continue;
      }
      const from = this.pos - head.offset;
      const to = Math.min(head.chunk.length, limit - head.offset);
      if (to <= from) return undefined;
      const out = head.chunk.subarray(from, to);
      if (to === head.chunk.length) this.dropHead();
      return out;
    }
    return undefined;
  }

  private dropHead(): void {
    const head = this.queue.shift()!;
    this.queuedBytes -= head.chunk.length;
    this.dl.wake();
  }
}
