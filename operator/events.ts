// Kubernetes Events (events.k8s.io/v1) about RegistryMirrors, recorded the way client-go's
// recorder does it so that a controller stuck in a loop cannot flood the apiserver:
//  - aggregation: an Event repeated for the same object (same uid, type, reason, action and
//    note) is not created again; the existing Event's `series` (count, lastObservedTime) is
//    patched instead. The correlation cache holds CORRELATION_CACHE_SIZE keys (LRU).
//  - spam filter: a token bucket per (object uid, reason), BURST tokens refilled one per
//    REFILL_MS (client-go's spam filter: burst 25, one per 5 minutes); an Event without a
//    token is dropped and counted. The buckets are kept for RATE_CACHE_SIZE keys (LRU).
// Events are best effort: a write that fails is logged and counted, never thrown to the
// reconcile that recorded it. Writes go out one at a time in record order (a patch needs the
// name its create got), at most MAX_PENDING waiting; more are dropped and counted.
import type { Logger } from 'pino';
import { LRUCache } from 'lru-cache';
import { EventsV1Api, type KubeConfig } from '@kubernetes/client-node';
import { errorText, statusOf } from './kube/informer.js';

export type EventType = 'Normal' | 'Warning';

/** The object an Event is about (events.k8s.io/v1 `regarding`). */
export interface EventObject {
  apiVersion: string;
  kind: string;
  namespace: string;
  name: string;
  uid: string;
}

export interface EventInput {
  type: EventType;
  /** CamelCase, why the event happened (Degraded reasons, Applied, ReplicasLost, ...). */
  reason: string;
  /** CamelCase, what the controller did or failed to do (Apply, Reconcile, ...). */
  action: string;
  /** For humans; at most NOTE_MAX_BYTES (the apiserver's limit), longer ones are cut. */
  note: string;
}

export const BURST = 10;
export const REFILL_MS = 5 * 60_000;
export const CORRELATION_CACHE_SIZE = 4096;
export const RATE_CACHE_SIZE = 4096;
export const MAX_PENDING = 256;
/** events.k8s.io/v1 refuses a note over 1 kB. */
export const NOTE_MAX_BYTES = 1024;
/** The apiserver's limit on reason and action. */
const REASON_MAX = 128;

export interface Bucket {
  tokens: number;
  /** When `tokens` was last brought up to date (ms). */
  at: number;
}

/** Takes one token from a bucket refilled at one per refillMs up to burst. Pure. */
export function takeToken(b: Bucket | undefined, now: number, burst = BURST, refillMs = REFILL_MS): { ok: boolean; bucket: Bucket } {
  const start = b ?? { tokens: burst, at: now };
  const refilled = Math.floor(Math.max(0, now - start.at) / refillMs);
  // The refill clock only advances by whole tokens, so a steady trickle still earns them.
  const tokens = Math.min(burst, start.tokens + refilled);
  const at = tokens === burst ? now : start.at + refilled * refillMs;
  if (tokens < 1) return { ok: false, bucket: { tokens, at } };
  return { ok: true, bucket: { tokens: tokens - 1, at } };
}

interface Series {
  /** The Event's name once created (undefined while the create is on its way or failed). */
  name?: string;
  count: number;
  lastObservedTime: string;
}

/** What to write for one recorded event. */
export type Decision =
  | { kind: 'create'; key: string }
  | { kind: 'patch'; key: string; count: number; lastObservedTime: string }
  | { kind: 'drop'; why: 'rate_limited' };

/**
 * The recorder's memory, without I/O: whether an event is new (create), a repeat (patch the
 * series) or over its rate (drop). Both caches are LRUs of stated size.
 */
export class EventCorrelator {
  private readonly series: LRUCache<string, Series>;
  private readonly buckets: LRUCache<string, Bucket>;

  constructor(
    private readonly opts: { burst?: number; refillMs?: number; cacheSize?: number; rateCacheSize?: number } = {},
  ) {
    this.series = new LRUCache({ max: opts.cacheSize ?? CORRELATION_CACHE_SIZE });
    this.buckets = new LRUCache({ max: opts.rateCacheSize ?? RATE_CACHE_SIZE });
  }

  observe(obj: EventObject, e: EventInput, now: Date): Decision {
    const rateKey = `${obj.uid}\u0000${e.reason}`;
    const t = takeToken(this.buckets.get(rateKey), now.getTime(), this.opts.burst ?? BURST, this.opts.refillMs ?? REFILL_MS);
    this.buckets.set(rateKey, t.bucket);
    if (!t.ok) return { kind: 'drop', why: 'rate_limited' };
    const key = correlationKey(obj, e);
    const seen = this.series.get(key);
    const time = microTime(now);
    if (!seen) {
      this.series.set(key, { count: 1, lastObservedTime: time });
      return { kind: 'create', key };
    }
    seen.count++;
    seen.lastObservedTime = time;
    return { kind: 'patch', key, count: seen.count, lastObservedTime: time };
  }

  /** The name the apiserver accepted for the Event of this key. */
  created(key: string, name: string): void {
    const s = this.series.get(key);
    if (s) s.name = name;
  }

  nameOf(key: string): string | undefined {
    return this.series.get(key)?.name;
  }

  /** The Event is gone (expired by the apiserver's TTL, or its create failed): start afresh. */
  restart(key: string, name: string | undefined, now: Date): void {
    this.series.set(key, { name, count: 1, lastObservedTime: microTime(now) });
  }

  get sizes(): { series: number; buckets: number } {
    return { series: this.series.size, buckets: this.buckets.size };
  }
}

export function correlationKey(obj: EventObject, e: EventInput): string {
  return [obj.uid, e.type, e.reason, e.action, clipNote(e.note)].join('\u0000');
}

/** MicroTime as the apiserver parses it: RFC 3339 with exactly six fractional digits. */
export function microTime(d: Date): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

/** The note cut to NOTE_MAX_BYTES of UTF-8, control characters made spaces. */
export function clipNote(note: string): string {
  const clean = note.replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, ' ');
  if (Buffer.byteLength(clean) <= NOTE_MAX_BYTES) return clean;
  let out = clean.slice(0, NOTE_MAX_BYTES - 3);
  while (Buffer.byteLength(out) > NOTE_MAX_BYTES - 3) out = out.slice(0, -1);
  return `${out}…`;
}

/** `<object>.<hex time><hex counter>` as client-go names them; unique within this process. */
export function eventName(objectName: string, now: Date, seq: number): string {
  const suffix = `${now.getTime().toString(16)}${(seq % 0x10000).toString(16).padStart(4, '0')}`;
  return `${objectName.slice(0, 253 - suffix.length - 1)}.${suffix}`;
}

/** The events.k8s.io/v1 Event for a first occurrence. */
export function eventBody(obj: EventObject, e: EventInput, source: { controller: string; instance: string }, name: string, now: Date) {
  return {
    apiVersion: 'events.k8s.io/v1',
    kind: 'Event',
    metadata: { name, namespace: obj.namespace },
    eventTime: microTime(now),
    reportingController: source.controller,
    reportingInstance: source.instance.slice(0, 128),
    action: e.action.slice(0, REASON_MAX),
    reason: e.reason.slice(0, REASON_MAX),
    type: e.type,
    note: clipNote(e.note),
    regarding: { apiVersion: obj.apiVersion, kind: obj.kind, namespace: obj.namespace, name: obj.name, uid: obj.uid },
  };
}

/** Results of event writes (registry_mirror_operator_events_total{result}). */
export type EventResult = 'created' | 'series_updated' | 'rate_limited' | 'backlog_full' | 'failed';

export interface RecorderOptions {
  kc: KubeConfig;
  log: Logger;
  /** reportingController, e.g. registry-mirror.io/operator. */
  controller: string;
  /** reportingInstance: this replica (its pod name). */
  instance: string;
  count?: (result: EventResult) => void;
  correlator?: EventCorrelator;
  now?: () => Date;
}

export class EventRecorder {
  private readonly api: EventsV1Api;
  private readonly correlator: EventCorrelator;
  private chain: Promise<void> = Promise.resolve();
  private pending = 0;
  private seq = 0;

  constructor(private readonly o: RecorderOptions) {
    this.api = o.kc.makeApiClient(EventsV1Api);
    this.correlator = o.correlator ?? new EventCorrelator();
  }

  /** Records an event; returns at once (the write is queued). Never throws. */
  record(obj: EventObject, e: EventInput): void {
    const now = this.o.now?.() ?? new Date();
    const d = this.correlator.observe(obj, e, now);
    if (d.kind === 'drop') return this.count(d.why);
    if (this.pending >= MAX_PENDING) return this.count('backlog_full');
    this.pending++;
    this.chain = this.chain
      .then(() => this.write(obj, e, d, now))
      .catch((err) => {
        this.count('failed');
        // The note may name tenants' objects but never holds a secret value.
        this.o.log.warn({ registryMirror: `${obj.namespace}/${obj.name}`, reason: e.reason, err: errorText(err) }, 'could not write an Event');
      })
      .finally(() => this.pending--);
  }

  /** Resolves once every event recorded so far was written (or given up). */
  idle(): Promise<void> {
    return this.chain;
  }

  private async write(obj: EventObject, e: EventInput, d: Exclude<Decision, { kind: 'drop' }>, now: Date): Promise<void> {
    const name = d.kind === 'patch' ? this.correlator.nameOf(d.key) : undefined;
    if (d.kind === 'patch' && name) {
      try {
        // JSON patch "add" sets /series whether or not the Event has one yet.
        await this.api.patchNamespacedEvent({
          name,
          namespace: obj.namespace,
          body: [{ op: 'add', path: '/series', value: { count: d.count, lastObservedTime: d.lastObservedTime } }],
        });
        this.count('series_updated');
        return;
      } catch (err) {
        // Expired (the apiserver keeps Events for --event-ttl, 1h by default): a new one.
        if (statusOf(err) !== 404) throw err;
      }
    }
    // A repeat whose Event is gone or was never created starts a new series.
    if (d.kind === 'patch') this.correlator.restart(d.key, undefined, now);
    const fresh = eventName(obj.name, now, this.seq++);
    await this.api.createNamespacedEvent({
      namespace: obj.namespace,
      body: eventBody(obj, e, { controller: this.o.controller, instance: this.o.instance }, fresh, now) as any,
    });
    this.correlator.created(d.key, fresh);
    this.count('created');
  }

  private count(result: EventResult): void {
    this.o.count?.(result);
  }
}
