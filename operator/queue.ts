// A work queue of object keys ("namespace/name") in the shape of client-go's: a key is queued
// at most once however often it is added, is never processed by two workers at once (an add
// during processing re-queues it after), and failing keys come back after a per-key
// exponential backoff that resets on success.
import { backoffDelay, type BackoffPolicy } from './backoff.js';
import { timerDelay } from '../mirror/duration.js';

export type Worker = (key: string) => Promise<void>;

export interface QueueOptions {
  backoff?: BackoffPolicy;
  concurrency?: number;
  onError?: (key: string, err: unknown, retryInMs: number) => void;
  onDepth?: (depth: number) => void;
}

export class WorkQueue {
  private readonly order: string[] = [];
  private readonly queued = new Set<string>();
  private readonly processing = new Set<string>();
  /** Keys added while they were being processed: re-queued when processing ends. */
  private readonly dirty = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private running = 0;
  private stopped = false;
  private idleWaiters: Array<() => void> = [];
  private readonly backoff: BackoffPolicy;
  private readonly concurrency: number;

  constructor(
    private readonly worker: Worker,
    private readonly opts: QueueOptions = {},
  ) {
    this.backoff = opts.backoff ?? { baseMs: 200, maxMs: 60_000 };
    this.concurrency = opts.concurrency ?? 2;
  }

  add(key: string): void {
    if (this.stopped) return;
    if (this.processing.has(key)) {
      this.dirty.add(key);
      return;
    }
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.order.push(key);
    this.opts.onDepth?.(this.order.length);
    this.pump();
  }

  /** Adds the key after `ms`, unless an earlier delayed add for it is pending. */
  addAfter(key: string, ms: number): void {
    if (this.stopped || this.timers.has(key)) return;
    const t = setTimeout(() => {
      this.timers.delete(key);
      this.add(key);
    }, timerDelay(ms));
    this.timers.set(key, t);
  }

  /** Number of consecutive failures recorded for the key. */
  attempts(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  get depth(): number {
    return this.order.length;
  }

  /** Resolves when nothing is queued, processing or waiting on a timer. */
  idle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.order.length = 0;
    this.queued.clear();
    this.dirty.clear();
    while (this.running > 0) await new Promise((r) => setTimeout(r, 10));
  }

  private isIdle(): boolean {
    return this.order.length === 0 && this.running === 0 && this.timers.size === 0;
  }

  private pump(): void {
    while (!this.stopped && this.running < this.concurrency && this.order.length > 0) {
      const key = this.order.shift()!;
      this.queued.delete(key);
      this.opts.onDepth?.(this.order.length);
      this.processing.add(key);
      this.running++;
      void this.process(key);
    }
  }

  private async process(key: string): Promise<void> {
    try {
      await this.worker(key);
      this.failures.delete(key);
    } catch (err) {
      const n = (this.failures.get(key) ?? 0) + 1;
      this.failures.set(key, n);
      const delay = backoffDelay(n, this.backoff);
      this.opts.onError?.(key, err, delay);
      if (!this.stopped) this.addAfter(key, delay);
    } finally {
      this.processing.delete(key);
      this.running--;
      if (this.dirty.delete(key)) this.add(key);
      this.pump();
      if (this.isIdle()) for (const w of this.idleWaiters.splice(0)) w();
    }
  }
}
