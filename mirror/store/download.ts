// One upstream download of one blob, shared by every client that wants it while it runs.
// (v2 blobs, verified against their digest; v1 layers, which have no digest in their URL,
// pass their own `verify`: size and, when the source gives one, the payload checksum.)
//
// The cold path is three things at once, none waiting on another (issue 14):
// - the upstream body flows in ('data' events, no per-chunk promise), each chunk appended to
//   a memory window (the most recent `windowBytes` of the blob) and handed to a hash worker
//   thread (store/stream-hash.ts), so hashing runs beside the event loop, not in it;
// - a writer appends the window to the temp file with batched writev calls, off the event
//   loop; the upstream pauses only when the disk, or the hash, falls a whole window behind;
// - each client follows through its own TailReader: near the front it is handed slices of
//   the window (no copy, no read back), behind the window it reads the temp file at its own
//   pace. A slow client never slows the download or the other clients, and followers never
//   go upstream again (distribution's proxy re-fetches for them).
// So a blob in flight holds at most one window, plus one upstream chunk and the hash's backlog
// (itself at most a window), however many clients follow it; each client adds only its own
// stream buffers.
//
// A client is never handed the last byte before the digest and size are verified: with a
// Content-Length response that last byte is what would let a client accept a corrupt body as
// complete; with an unknown length the stream simply does not end until verification. On any
// failure every reader is destroyed, which aborts its connection mid-body.
//
// Durability: once verified, the clients get their last byte at once; the rest of the file
// is written, fsynced and only then renamed into the store (commit). Nothing is visible in
// the store before that rename, so a crash at any moment, also between a client's last byte
// and the rename, leaves only a temp file, which the store removes at start. Requests that
// arrive between verification and the rename join this download (the file and window are
// complete by then) instead of fetching again.
//
// When the disk cannot take the bytes (ENOSPC) or the blob may not be cached at all (larger
// than the store bound), the download goes on "in memory": the window keeps every byte some
// attached reader still needs, and the upstream pauses while the slowest reader is a window
// behind. Such a download takes no new joiners: a later request starts its own.

import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { RegistryError } from '../errors.js';
import type { Digest } from '../reference.js';
import { isNoSpace, removeQuietly } from './fsutil.js';
import { streamHash, type StreamHash } from './stream-hash.js';

export interface DownloadSource {
  body: Readable;
  /** From the upstream's Content-Length, when it sent one. */
  size?: number;
  /** Sees every chunk as it arrives (v1 layers: the payload checksum). */
  tap?: (chunk: Buffer) => void;
}

/**
 * Checks a finished transfer: the hex hash of all its bytes (with the digest's algorithm,
 * sha256 when there is no digest) and how many there were. An error fails the download.
 */
export type Verify = (hashHex: string, size: number) => Error | undefined;

export type DownloadOutcome =
  | { ok: true; cached: boolean; size: number }
  | { ok: false; error: Error };

/** The memory a blob in flight may hold for its readers and its writer (plus one chunk). */
export const windowBytes = 8 << 20;
// A reader behind the window reads the file this much at a time (and buffers as much, as its
// highWaterMark): 256 KiB keeps 200 concurrent cold clients (issue 8 load test) light.
const readChunk = 256 << 10;
// The writer waits for this much before a writev (but for the last bytes): each call is a
// round trip through the thread pool and back through a busy event loop, so 64 KiB writes
// would pace the whole download at a few hundred MB/s.
const writeBatch = 1 << 20;
// At most this many chunks and bytes per writev (Linux IOV_MAX is 1024), and two writes at
// once: on a machine where first-touch page cache pages are dear (a VM) one thread of the pool
// copying into the page cache is slower than the network.
const maxIovecs = 256;
const maxWriteBytes = 4 << 20;
const writeLanes = 2;

interface PendingWrite {
  from: number;
  to: number;
  /** Bytes the write reported, -1 while it runs. */
  written: number;
}

// Crash tests only: hold every commit this long after the clients got their last byte, so a
// test can kill the process in that window (test/integration/crash-verify.test.ts).
const holdBeforeCommitMs = Number(process.env.REGISTRY_MIRROR_TEST_HOLD_BEFORE_COMMIT_MS ?? 0);

export class Download {
  readonly digest: Digest | undefined;
  readonly size: number | undefined;
  readonly tmpPath: string | undefined;
  /** Bytes received from upstream so far. */
  received = 0;
  /** Bytes of the temp file that are written and readable. */
  written = 0;
  /** Set when bytes stopped going to disk: from here on the window keeps them for readers. */
  diskEnd: number | undefined;
  state: 'running' | 'verified' | 'failed' = 'running';
  error: Error | undefined;
  noSpace = false;
  /** Hex hash of the whole body, set once the last byte has arrived. */
  hashHex: string | undefined;

  /** Settles with the outcome (committed, or known not to be cached, or failed). */
  readonly done: Promise<DownloadOutcome>;
  private resolveDone!: (o: DownloadOutcome) => void;
  /** Settles after `done`, once a temp file that was not committed is removed too. */
  private readonly finished: Promise<DownloadOutcome>;
  private resolveFinished!: (o: DownloadOutcome) => void;
  private settled = false;
  private readonly readers = new Set<TailReader>();
  private fh: FileHandle | undefined;
  private source: DownloadSource | undefined;
  private readonly verify: Verify;
  private hash: StreamHash | undefined;
  private paused = false;
  // The window: chunks[i] holds bytes from offsets[i]; together [windowStart, received).
  private chunks: Buffer[] = [];
  private offsets: number[] = [];
  private windowStart = 0;
  private held = 0;
  /** Writes in flight, and the ranges issued to them in order. */
  private lanes = 0;
  private pending: PendingWrite[] = [];
  /** Bytes handed to writes so far. */
  private issued = 0;
  private writeFailed = false;
  /** The upstream body has ended: the writer takes what is left, however little. */
  private ended = false;
  private drainWaiters: Array<() => void> = [];

  /** Without `verify` the body must match `digest`; with neither only the size is checked. */
  /** sync: fsync the temp file before commit (a file store renames it in; S3 uploads a copy). */
  private readonly sync: boolean;

  constructor(digest: Digest | undefined, size: number | undefined, tmpPath: string | undefined, verify?: Verify, options: { sync?: boolean } = {}) {
    this.sync = options.sync ?? true;
    this.digest = digest;
    this.verify = verify ?? (digest ? digestVerifier(digest) : () => undefined);
    this.size = size;
    this.tmpPath = tmpPath;
    if (tmpPath === undefined) this.diskEnd = 0;
    this.done = new Promise((r) => (this.resolveDone = r));
    this.finished = new Promise((r) => (this.resolveFinished = r));
  }

  get joinable(): boolean {
    // An uncached transfer can only be shared before its first byte arrives.
    return !this.settled && this.state !== 'failed' && (this.diskEnd === undefined || this.received === 0);
  }

  get readerCount(): number {
    return this.readers.size;
  }

  /** Bytes of the blob held in memory right now (the window). */
  get heldBytes(): number {
    return this.held;
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
    if (this.diskEnd !== undefined && this.state === 'running') {
      // Nobody left to receive an uncached transfer: stop pulling it from the upstream.
      if (this.readers.size === 0) this.source?.body.destroy(new Error('all clients went away'));
      else this.readerMoved();
    }
    this.maybeCloseFile();
  }

  /**
   * Pulls the upstream body to the end. Resolves when the blob is verified and committed, or
   * verified and known not to be cacheable, or failed, and a temp file left is removed.
   */
  run(source: DownloadSource, commit: (tmp: string, size: number, hashHex: string) => Promise<void>): Promise<DownloadOutcome> {
    this.source = source;
    this.hash = streamHash(this.digest?.algorithm ?? 'sha256', this.size, {
      progress: () => this.resumeIfRoom(),
      failed: (err) => this.fail(err),
    });
    const body = source.body;
    body.on('data', (chunk: Buffer) => this.accept(chunk));
    body.once('end', () => void this.finish(commit));
    body.on('error', (err) => this.fail(upstreamFailure(err)));
    body.once('close', () => {
      if (this.state === 'running' && !body.readableEnded) this.fail(new RegistryError('UNAVAILABLE', 'upstream transfer failed: body closed early'));
    });
    return this.finished;
  }

  private accept(chunk: Buffer): void {
    if (this.state !== 'running') return;
    try {
      this.hash!.update(chunk);
      this.source!.tap?.(chunk);
    } catch (err) {
      this.fail(err as Error);
      return;
    }
    this.offsets.push(this.received);
    this.chunks.push(chunk);
    this.held += chunk.length;
    this.received += chunk.length;
    if (this.size !== undefined && this.received > this.size) {
      this.fail(new RegistryError('SIZE_INVALID', `upstream sent more than its Content-Length of ${this.size} bytes`));
      return;
    }
    if (this.diskEnd === undefined) {
      if (this.received - this.issued >= writeBatch) this.startWriter();
    } else if (this.readers.size === 0) {
      this.fail(new Error('all clients went away'));
      return;
    }
    this.trim();
    this.notifyReaders();
    if (!this.paused && this.behind() > windowBytes) {
      this.paused = true;
      this.source!.body.pause();
    }
  }

  private async finish(commit: (tmp: string, size: number, hashHex: string) => Promise<void>): Promise<void> {
    if (this.state !== 'running') return;
    // The last partial batch goes to the file now.
    this.ended = true;
    if (this.diskEnd === undefined) this.startWriter();
    if (this.size !== undefined && this.received !== this.size) {
      this.fail(new RegistryError('SIZE_INVALID', `upstream sent ${this.received} bytes, Content-Length said ${this.size}`));
      return;
    }
    try {
      this.hashHex = await this.hash!.digest();
    } catch (err) {
      this.fail(err as Error);
      return;
    }
    if (this.state !== 'running') return;
    const invalid = this.verify(this.hashHex, this.received);
    if (invalid) {
      this.fail(invalid);
      return;
    }
    // Verified: every reader may have its last byte now; the commit follows behind them.
    this.state = 'verified';
    this.notifyReaders();
    void this.settle(commit);
  }

  private async settle(commit: (tmp: string, size: number, hashHex: string) => Promise<void>): Promise<void> {
    let cached = false;
    if (this.fh && this.diskEnd === undefined) {
      try {
        await this.writesDone();
        if (this.error) throw this.error;
        if (this.diskEnd === undefined) {
          if (holdBeforeCommitMs > 0) await new Promise((r) => setTimeout(r, holdBeforeCommitMs));
          if (this.sync) await this.fh.sync();
          await commit(this.tmpPath!, this.received, this.hashHex!);
          cached = true;
        }
      } catch (err) {
        // The clients' bytes are verified; only caching failed (e.g. disk full at rename).
        if (!isNoSpace(err)) this.error = err as Error;
        else this.noSpace = true;
      }
    }
    this.settled = true;
    const outcome: DownloadOutcome = { ok: true, cached, size: this.received };
    // `done` first: the callers' figures are current before the temp file is gone.
    this.resolveDone(outcome);
    this.maybeCloseFile();
    if (!cached && this.tmpPath) await removeQuietly(this.tmpPath);
    this.resolveFinished(outcome);
  }

  private fail(error: Error): void {
    if (this.state === 'failed' || this.settled) return;
    this.state = 'failed';
    this.error = error;
    this.hash?.drop();
    this.source?.body.destroy(error);
    for (const r of [...this.readers]) r.destroy(error);
    this.chunks = [];
    this.offsets = [];
    this.held = 0;
    this.settled = true;
    const outcome: DownloadOutcome = { ok: false, error };
    this.resolveDone(outcome);
    this.maybeCloseFile();
    void (this.tmpPath ? removeQuietly(this.tmpPath) : Promise.resolve()).then(() => this.resolveFinished(outcome));
  }

  // ---- the writer ------------------------------------------------------------------------

  /** Issues writes of whatever is ready, on up to `writeLanes` ranges at once. */
  private startWriter(): void {
    if (!this.fh) return;
    while (this.lanes < writeLanes && this.diskEnd === undefined && this.state !== 'failed' && !this.writeFailed) {
      const ready = this.received - this.issued;
      if (ready <= 0 || (!this.ended && ready < writeBatch)) break;
      const from = this.issued;
      const batch = this.sliceForWrite(from);
      const w: PendingWrite = { from, to: from + batch.reduce((n, b) => n + b.length, 0), written: -1 };
      this.issued = w.to;
      this.pending.push(w);
      this.lanes++;
      this.fh.writev(batch, from).then(
        ({ bytesWritten }) => this.wrote(w, bytesWritten),
        (err: unknown) => this.writeError(w, err),
      );
    }
    if (this.lanes === 0) this.writerIdle();
  }

  private wrote(w: PendingWrite, n: number): void {
    this.lanes--;
    w.written = n;
    // `written` only ever covers bytes really in the file, in order: readers never wait for
    // bytes past its end. A write can be short (the disk filled up mid-batch: the kernel writes
    // what fits and the next write fails with ENOSPC): the rest is written again from there.
    while (this.pending.length > 0 && this.pending[0]!.written >= 0) {
      const head = this.pending.shift()!;
      this.written = head.from + head.written;
      if (head.written < head.to - head.from) {
        if (head.written === 0) {
          this.writeError(undefined, new Error('temp file write made no progress'));
          return;
        }
        this.issued = this.written;
        this.pending = [];
        break;
      }
    }
    this.trim();
    this.notifyReaders();
    this.resumeIfRoom();
    this.startWriter();
  }

  private writeError(w: PendingWrite | undefined, err: unknown): void {
    if (w) this.lanes--;
    this.pending = [];
    if (isNoSpace(err)) {
      // From here on bytes stay in memory for the readers attached now (file comment).
      this.noSpace = true;
      this.diskEnd ??= this.written;
      if (this.state === 'running' && this.readers.size === 0) this.fail(new Error('all clients went away'));
    } else {
      this.writeFailed = true;
      // A disk error fails the clients mid-body while the download runs; once the bytes are
      // verified (all in the window or the file already) it only keeps them out of the store.
      if (this.state === 'verified') this.error = err as Error;
      else this.fail(err as Error);
    }
    if (this.lanes === 0) this.writerIdle();
  }

  private writerIdle(): void {
    if (!this.writerDone()) return;
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
    this.maybeCloseFile();
  }

  /** Resolves when every byte received is in the file, or the file is given up on. */
  private writesDone(): Promise<void> {
    if (this.writerDone()) return Promise.resolve();
    return new Promise((r) => this.drainWaiters.push(r));
  }

  private writerDone(): boolean {
    return this.lanes === 0 && (this.written >= this.received || this.diskEnd !== undefined || this.writeFailed || !this.fh);
  }

  /** The window's bytes from `from` on, up to one write's worth, as writev buffers. */
  private sliceForWrite(from: number): Buffer[] {
    const out: Buffer[] = [];
    let bytes = 0;
    for (let i = this.indexOf(from); i < this.chunks.length && out.length < maxIovecs && bytes < maxWriteBytes; i++) {
      const c = this.chunks[i]!;
      const part = out.length === 0 ? c.subarray(from - this.offsets[i]!) : c;
      out.push(part);
      bytes += part.length;
    }
    return out;
  }

  // ---- the window ------------------------------------------------------------------------

  /** How far the consumers that pace the upstream are behind it: the hash, and the disk or the slowest reader. */
  private behind(): number {
    const hashing = this.hash?.backlog ?? 0;
    if (this.diskEnd === undefined) return Math.max(hashing, this.received - this.written);
    return Math.max(hashing, this.received - this.slowestReader());
  }

  private slowestReader(): number {
    let min = this.received;
    for (const r of this.readers) min = Math.min(min, r.position);
    return min;
  }

  /** Drops the oldest chunks nobody needs from memory any more. */
  private trim(): void {
    // On disk: keep the most recent window, and anything the writer has not written yet.
    // In memory: keep what the slowest reader has yet to take.
    const keepFrom = this.diskEnd === undefined ? this.written : this.slowestReader();
    let drop = 0;
    while (drop < this.chunks.length) {
      const c = this.chunks[drop]!;
      const end = this.offsets[drop]! + c.length;
      if (end > keepFrom || (this.diskEnd === undefined && this.held - c.length < windowBytes)) break;
      this.held -= c.length;
      this.windowStart = end;
      drop++;
    }
    if (drop > 0) {
      this.chunks.splice(0, drop);
      this.offsets.splice(0, drop);
    }
  }

  private resumeIfRoom(): void {
    if (this.paused && this.behind() <= windowBytes) {
      this.paused = false;
      this.source!.body.resume();
    }
  }

  /** A reader moved on: in memory mode that may free the window and let the upstream go on. */
  readerMoved(): void {
    if (this.diskEnd === undefined) return;
    this.trim();
    this.resumeIfRoom();
  }

  private indexOf(pos: number): number {
    let lo = 0;
    let hi = this.offsets.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.offsets[mid]! <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Bytes [pos, limit) from the window, as far as one chunk goes; no copy. */
  fromWindow(pos: number, limit: number): Buffer | undefined {
    if (pos < this.windowStart || pos >= this.received) return undefined;
    const i = this.indexOf(pos);
    const c = this.chunks[i]!;
    const off = this.offsets[i]!;
    return c.subarray(pos - off, Math.min(c.length, limit - off));
  }

  /** Where the file stops being readable for a reader at `pos` behind the window. */
  fileEnd(): number {
    return Math.min(this.written, this.diskEnd ?? Infinity);
  }

  private notifyReaders(): void {
    for (const r of this.readers) r.notify();
  }

  async readAt(buf: Buffer, length: number, position: number): Promise<number> {
    const { bytesRead } = await this.fh!.read(buf, 0, length, position);
    return bytesRead;
  }

  private maybeCloseFile(): void {
    if (this.settled && this.lanes === 0 && this.readers.size === 0 && this.fh) {
      const fh = this.fh;
      this.fh = undefined;
      fh.close().catch(() => undefined);
    }
  }
}

/** The upstream body failed (stalled past upstreamTimeouts.idle, reset, cut short). */
function upstreamFailure(err: Error): Error {
  // Upstream trouble is UNAVAILABLE: a client whose response has not started yet (a stall
  // before the first byte) gets a clean 503 to retry elsewhere, not a 500 of ours.
  if (err instanceof RegistryError || err.name === 'V1Error') return err;
  return new RegistryError('UNAVAILABLE', `upstream transfer failed: ${(err as { code?: string }).code ?? err.message}`);
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

/** A client's view of a Download: a Readable that follows the window, or the file behind it. */
export class TailReader extends Readable {
  private pos: number;
  private readonly end: number | undefined;
  /** Set by _read until a push is refused: the stream wants bytes. */
  private wanted = false;
  private reading = false;

  constructor(
    private readonly dl: Download,
    start: number,
    end: number | undefined,
  ) {
    super({ highWaterMark: readChunk });
    this.pos = start;
    this.end = end;
  }

  get position(): number {
    return this.pos;
  }

  override _read(): void {
    this.wanted = true;
    this.pump();
  }

  /** The download has news (bytes, verification): go on if the stream wants bytes. */
  notify(): void {
    if (this.wanted) this.pump();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.dl.detach(this);
    cb(err);
  }

  private pump(): void {
    if (this.reading) return;
    const dl = this.dl;
    while (this.wanted && !this.destroyed) {
      if (dl.state === 'failed') {
        this.destroy(dl.error ?? new Error('download failed'));
        return;
      }
      const total = dl.state === 'verified' ? dl.received : undefined;
      const stop = Math.min(this.end ?? Infinity, total ?? Infinity);
      if (this.pos >= stop) {
        this.wanted = false;
        this.push(null);
        dl.detach(this);
        return;
      }
      // Before verification the last byte of the blob is held back (see the file comment).
      const allowed = dl.state === 'verified' ? Infinity : dl.size !== undefined ? dl.size - 1 : Infinity;
      const limit = Math.min(stop, allowed);
      if (this.pos >= limit) return;
      const chunk = dl.fromWindow(this.pos, limit);
      if (chunk) {
        this.deliver(chunk);
        continue;
      }
      const fileEnd = dl.fileEnd();
      if (this.pos < fileEnd) {
        this.readFile(Math.min(readChunk, fileEnd - this.pos, limit - this.pos));
        return;
      }
      // Nothing yet: notify() comes with the next bytes.
      return;
    }
  }

  private deliver(chunk: Buffer): void {
    this.pos += chunk.length;
    if (!this.push(chunk)) this.wanted = false;
    this.dl.readerMoved();
  }

  private readFile(n: number): void {
    this.reading = true;
    const buf = Buffer.allocUnsafe(n);
    this.dl.readAt(buf, n, this.pos).then(
      (got) => {
        this.reading = false;
        if (this.destroyed) return;
        // Bytes below `written` are in the file; reading none means the file lost them,
        // and waiting would hang the client: abort the body instead.
        if (got === 0) throw new Error(`temp file ends before byte ${this.pos} it should hold`);
        this.deliver(buf.subarray(0, got));
        this.pump();
      },
      (err: Error) => {
        this.reading = false;
        this.destroy(err);
      },
    ).catch((err: Error) => this.destroy(err));
  }
}
