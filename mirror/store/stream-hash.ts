// Hashing a download off the event loop. Digest verification of a cold blob costs as much CPU
// as everything else the event loop does for it (sha256 runs at ~1.5 GB/s, one core): done
// inline it serialises with receiving and sending, and a cold blob cannot go faster than
// one core can hash, receive and send it. So a blob's bytes are copied, in batches of 1 MiB,
// to a hash worker thread (transferred, not cloned) that hashes them in parallel and sends
// back an ack per batch and the digest at the end. A copy costs about a tenth of the hash.
//
// Bounds: each hash's backlog (bytes handed over, not yet hashed) is reported to the
// download, which pauses its upstream while it is more than a window (store/download.ts);
// a small pool of workers (one per spare core, at most 4) is shared by all downloads, each
// new hash going to the least busy. Blobs under 1 MiB are hashed inline: a round trip would
// cost them more than the hash. A worker that dies fails the downloads it was hashing.

import { createHash, type Hash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';

export type ToWorker =
  | { op: 'start'; id: number; algorithm: string }
  | { op: 'update'; id: number; buf: ArrayBuffer; length: number }
  | { op: 'end'; id: number }
  | { op: 'drop'; id: number };

type FromWorker = { op: 'ack'; id: number; bytes: number; buf: ArrayBuffer } | { op: 'digest'; id: number; hex: string };

export interface StreamHash {
  update(chunk: Buffer): void;
  /** Bytes handed over and not hashed yet. */
  readonly backlog: number;
  /** The hex digest of everything updated; call once, at the end. */
  digest(): Promise<string>;
  /** Forget it (a failed download). */
  drop(): void;
}

export interface StreamHashEvents {
  /** The backlog went down. */
  progress(): void;
  /** The hash cannot finish (its worker died). */
  failed(err: Error): void;
}

const batchBytes = 1 << 20;
const inlineBelow = 1 << 20;
const maxWorkers = Math.max(1, Math.min(4, availableParallelism() - 1));

// Batch buffers travel to a worker and back (transferred both ways) and are filled again: at
// steady state hashing allocates nothing, which matters because every fresh ArrayBuffer is
// external memory that the garbage collector of both threads only frees late (the bench saw
// 220-290 MiB peak RSS on a cold 1 GiB blob before this). Room for a batch plus one chunk.
const batchCapacity = 2 * batchBytes;
const spareLimit = 8;
const spares: ArrayBuffer[] = [];

function batchBuffer(bytes: number): ArrayBuffer {
  if (bytes <= batchCapacity) return spares.pop() ?? new ArrayBuffer(batchCapacity);
  return new ArrayBuffer(bytes);
}

function returnBuffer(buf: ArrayBuffer): void {
  if (buf.byteLength === batchCapacity && spares.length < spareLimit) spares.push(buf);
}

/** A hash for one download: in a worker, or inline for a blob known to be small. */
export function streamHash(algorithm: string, expectedSize: number | undefined, events: StreamHashEvents): StreamHash {
  if (expectedSize !== undefined && expectedSize < inlineBelow) return new InlineHash(algorithm);
  return pool.open(algorithm, events);
}

class InlineHash implements StreamHash {
  readonly backlog = 0;
  private readonly hash: Hash;
  constructor(algorithm: string) {
    this.hash = createHash(algorithm);
  }
  update(chunk: Buffer): void {
    this.hash.update(chunk);
  }
  digest(): Promise<string> {
    return Promise.resolve(this.hash.digest('hex'));
  }
  drop(): void {}
}

class WorkerSlot {
  readonly worker: Worker;
  private readonly hashes = new Map<number, WorkerHash>();
  dead = false;

  constructor(onDeath: (slot: WorkerSlot) => void) {
    this.worker = new Worker(new URL('./hash-worker.js', import.meta.url));
    // Idle hash workers must not keep the process alive.
    this.worker.unref();
    this.worker.on('message', (m: FromWorker) => this.hashes.get(m.id)?.receive(m));
    const die = (err: Error) => {
      if (this.dead) return;
      this.dead = true;
      onDeath(this);
      for (const h of [...this.hashes.values()]) h.fail(err);
    };
    this.worker.on('error', die);
    this.worker.on('exit', (code) => die(new Error(`hash worker exited (code ${code})`)));
  }

  get active(): number {
    return this.hashes.size;
  }

  // A worker with hashes to finish keeps the process alive (a digest is awaited); an idle one
  // does not.
  add(h: WorkerHash): void {
    this.hashes.set(h.id, h);
    if (this.hashes.size === 1) this.worker.ref();
  }

  remove(h: WorkerHash): void {
    if (this.hashes.delete(h.id) && this.hashes.size === 0) this.worker.unref();
  }

  post(m: ToWorker, transfer?: ArrayBuffer[]): void {
    if (!this.dead) this.worker.postMessage(m, transfer);
  }
}

class HashPool {
  private readonly slots: WorkerSlot[] = [];
  private nextId = 1;

  open(algorithm: string, events: StreamHashEvents): StreamHash {
    const slot = this.pick();
    const h = new WorkerHash(this.nextId++, slot, events);
    slot.add(h);
    slot.post({ op: 'start', id: h.id, algorithm });
    return h;
  }

  private pick(): WorkerSlot {
    let best: WorkerSlot | undefined;
    for (const s of this.slots) if (!best || s.active < best.active) best = s;
    if (best && (best.active === 0 || this.slots.length >= maxWorkers)) return best;
    const slot = new WorkerSlot((dead) => this.slots.splice(this.slots.indexOf(dead), 1));
    this.slots.push(slot);
    return slot;
  }
}

const pool = new HashPool();

class WorkerHash implements StreamHash {
  backlog = 0;
  private parts: Buffer[] = [];
  private partBytes = 0;
  private done = false;
  private error: Error | undefined;
  private settle: { resolve(hex: string): void; reject(err: Error): void } | undefined;

  constructor(
    readonly id: number,
    private readonly slot: WorkerSlot,
    private readonly events: StreamHashEvents,
  ) {}

  update(chunk: Buffer): void {
    this.parts.push(chunk);
    this.partBytes += chunk.length;
    this.backlog += chunk.length;
    if (this.partBytes >= batchBytes) this.flush();
  }

  digest(): Promise<string> {
    if (this.error) return Promise.reject(this.error);
    this.flush();
    this.slot.post({ op: 'end', id: this.id });
    return new Promise((resolve, reject) => (this.settle = { resolve, reject }));
  }

  drop(): void {
    if (this.done) return;
    this.done = true;
    this.parts = [];
    this.slot.remove(this);
    this.slot.post({ op: 'drop', id: this.id });
  }

  receive(m: FromWorker): void {
    if (m.op === 'ack') {
      returnBuffer(m.buf);
      this.backlog -= m.bytes;
      this.events.progress();
      return;
    }
    this.done = true;
    this.slot.remove(this);
    this.settle?.resolve(m.hex);
  }

  fail(err: Error): void {
    if (this.done) return;
    this.done = true;
    this.error = err;
    this.slot.remove(this);
    this.settle?.reject(err);
    this.events.failed(err);
  }

  private flush(): void {
    if (this.partBytes === 0) return;
    // Transferred, not cloned: the worker owns the buffer until its ack hands it back.
    const ab = batchBuffer(this.partBytes);
    const buf = Buffer.from(ab);
    let off = 0;
    for (const p of this.parts) off += p.copy(buf, off);
    this.parts = [];
    this.partBytes = 0;
    this.slot.post({ op: 'update', id: this.id, buf: ab, length: off }, [ab]);
  }
}
