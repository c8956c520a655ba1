// A supervised informer: list, then watch from the list's resourceVersion, keeping a local
// cache of the objects and reporting add/update/delete. It never gives up:
//  - the watch ending normally (server timeout) re-watches from the last resourceVersion;
//  - 410 Gone (resourceVersion too old) re-lists;
//  - any other error (apiserver down, connection reset, 5xx) retries with jittered backoff,
//    which keeps a restarted apiserver from being flooded by every watcher at once;
//  - a timer re-lists periodically, and a watchdog restarts a watch that has been silent
//    for too long (silent stalls are a known field report for long-lived watches).
// client-node's own ListWatch stops for good on the first non-410 error, hence this wrapper
// around its Watch (the HTTP stream) and a list function built from its API clients.
// `ready` turns true after the first successful list and stays true.
import type { Watch } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { backoffDelay, jitter, sleep, type BackoffPolicy } from '../backoff.js';

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: { name?: string; namespace?: string; resourceVersion?: string; [k: string]: unknown };
  [k: string]: unknown;
}

export interface ListResult {
  items: unknown[];
  metadata?: { resourceVersion?: string; continue?: string };
}

/** One page of a list: at most `limit` items, from the `continue` token of the previous page. */
export interface ListPage {
  limit: number;
  continue?: string;
}

/** Items per list page: a re-list never holds more than one page of raw objects. */
export const LIST_PAGE_SIZE = 100;

export interface InformerOptions<T extends KubeObject> {
  /** For logs and metrics, e.g. "deployments". */
  name: string;
  /** Collection path to watch, e.g. /apis/apps/v1/namespaces/ns/deployments. */
  path: string;
  /** Lists one page (a lister that ignores the page returns everything at once). */
  list: (page?: ListPage) => Promise<ListResult>;
  /** Items per page (default LIST_PAGE_SIZE). */
  listPageSize?: number;
  watch: Watch;
  labelSelector?: string;
  /**
   * Maps each listed or watched object (a plain JSON copy) into what the cache keeps, e.g. a
   * Secret's summary without its values or a RegistryMirror without the fields nobody reads.
   * Applied before the object is cached or handed to any handler (list, ADDED, MODIFIED,
   * DELETED), so neither ever sees the raw object. Without it the whole object is kept.
   */
  transform?: (obj: any) => T;
  relistIntervalMs?: number;
  watchdogMs?: number;
  backoff?: BackoffPolicy;
  log: Logger;
  onRestart?: (reason: string) => void;
}

type Handler<T> = (obj: T, old?: T) => void;

class Gone extends Error {}

export class Informer<T extends KubeObject> {
  private readonly store = new Map<string, T>();
  private rv = '';
  private stopped = true;
  private failures = 0;
  private abortWatch: (() => void) | undefined;
  private relistDue = false;
  private readonly handlers = { add: [] as Handler<T>[], update: [] as Handler<T>[], delete: [] as Handler<T>[] };
  private readonly stopController = new AbortController();
  private syncedResolve!: () => void;
  /** Resolves after the first successful list. */
  readonly synced = new Promise<void>((r) => (this.syncedResolve = r));
  ready = false;
  private loop: Promise<void> | undefined;

  constructor(private readonly opts: InformerOptions<T>) {}

  on(event: 'add' | 'update' | 'delete', h: Handler<T>): this {
    this.handlers[event].push(h);
    return this;
  }

  get(namespace: string, name: string): T | undefined {
    return this.store.get(`${namespace}/${name}`);
  }

  list(namespace?: string): T[] {
    const all = [...this.store.values()];
    return namespace === undefined ? all : all.filter((o) => o.metadata?.namespace === namespace);
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.stopController.abort();
    this.abortWatch?.();
    await this.loop;
  }

  private async run(): Promise<void> {
    const relistEvery = this.opts.relistIntervalMs ?? 10 * 60_000;
    let nextRelist = Date.now() + jitter(relistEvery);
    while (!this.stopped) {
      try {
        if (!this.rv || this.relistDue || Date.now() >= nextRelist) {
          this.relistDue = false;
          await this.relist();
          nextRelist = Date.now() + jitter(relistEvery);
        }
        await this.watchOnce(nextRelist);
        this.failures = 0;
      } catch (err) {
        if (this.stopped) break;
        if (err instanceof Gone || statusOf(err) === 410) {
          this.opts.log.info({ informer: this.opts.name }, 'resourceVersion expired (410 Gone), re-listing');
          this.rv = '';
          this.opts.onRestart?.('gone');
          continue;
        }
        this.failures++;
        const delay = backoffDelay(this.failures, this.opts.backoff ?? { baseMs: 500, maxMs: 30_000 });
        this.opts.log.warn(
          { informer: this.opts.name, err: errorText(err), attempt: this.failures, retryInMs: delay },
          'list/watch failed; retrying',
        );
        this.opts.onRestart?.('error');
        await sleep(delay, this.stopController.signal);
      }
    }
  }

  private async relist(): Promise<void> {
    // Page by page, each raw page shaped (transformed) before the next is fetched, so the raw
    // objects held at once are one page's, whatever the collection's size. An expired continue
    // token is a 410, which re-lists from the start.
    const fresh = new Map<string, T>();
    let cont: string | undefined;
    let rv = '';
    do {
      const res = await this.opts.list({ limit: this.opts.listPageSize ?? LIST_PAGE_SIZE, continue: cont });
      for (const raw of res.items ?? []) {
        const obj = this.shape(raw);
        fresh.set(keyOf(obj), obj);
      }
      rv = res.metadata?.resourceVersion ?? rv;
      cont = res.metadata?.continue || undefined;
    } while (cont && !this.stopped);
    if (this.stopped) return;
    for (const [k, old] of this.store) {
      if (!fresh.has(k)) {
        this.store.delete(k);
        this.emit('delete', old);
      }
    }
    for (const [k, obj] of fresh) {
      const old = this.store.get(k);
      this.store.set(k, obj);
      if (!old) this.emit('add', obj);
      else if (old.metadata?.resourceVersion !== obj.metadata?.resourceVersion) this.emit('update', obj, old);
    }
    this.rv = rv;
    if (!this.ready) {
      this.ready = true;
      this.syncedResolve();
    }
  }

  /** One watch connection, until it ends (resolve), fails (reject) or is due for a relist. */
  private watchOnce(relistAt: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      let controller: AbortController | undefined;
      let watchdog: NodeJS.Timeout | undefined;
      let abortedOnPurpose = false;
      const watchdogMs = this.opts.watchdogMs ?? 5 * 60_000;
      const finish = (err?: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(watchdog);
        clearTimeout(relistTimer);
        this.abortWatch = undefined;
        controller?.abort();
        if (err && !abortedOnPurpose) reject(err);
        else resolve();
      };
      const abort = (why: string) => {
        abortedOnPurpose = true;
        if (why === 'watchdog') {
          this.opts.log.warn({ informer: this.opts.name, silentMs: watchdogMs }, 'watch silent for too long; restarting it');
          this.opts.onRestart?.('watchdog');
        }
        finish();
      };
      const armWatchdog = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => abort('watchdog'), watchdogMs);
      };
      const relistTimer = setTimeout(() => {
        this.relistDue = true;
        abort('relist');
      }, Math.max(0, relistAt - Date.now()));
      this.abortWatch = () => abort('stop');
      armWatchdog();

      const params: Record<string, string | number | boolean> = {
        resourceVersion: this.rv,
        allowWatchBookmarks: true,
        // The server ends the watch after this; re-watching from the last resourceVersion is cheap.
        timeoutSeconds: Math.floor(jitter(300, 1)),
      };
      if (this.opts.labelSelector) params.labelSelector = this.opts.labelSelector;

      this.opts.watch
        .watch(
          this.opts.path,
          params,
          (type: string, obj: any) => {
            if (settled) return;
            armWatchdog();
            try {
              this.onWatchEvent(type, obj);
            } catch (err) {
              finish(err);
            }
          },
          (err: unknown) => finish(err ?? undefined),
        )
        .then((c) => {
          controller = c;
          if (settled) c.abort();
        }, finish);
    });
  }

  private onWatchEvent(type: string, raw: any): void {
    if (type === 'ERROR') {
      if (raw?.code === 410) throw new Gone('410 Gone');
      throw new Error(`watch error event: ${raw?.message ?? JSON.stringify(raw)}`);
    }
    const rv = raw?.metadata?.resourceVersion;
    if (type === 'BOOKMARK') {
      if (rv) this.rv = rv;
      return;
    }
    const obj = this.shape(raw);
    const k = keyOf(obj);
    const old = this.store.get(k);
    if (type === 'DELETED') {
      this.store.delete(k);
      this.emit('delete', old ?? obj);
    } else if (type === 'ADDED' || type === 'MODIFIED') {
      this.store.set(k, obj);
      if (!old) this.emit('add', obj);
      else this.emit('update', obj, old);
    }
    if (rv) this.rv = rv;
  }

  private shape(raw: unknown): T {
    // List results from the typed API clients carry Date objects; watch events carry strings.
    // One JSON round trip makes both the same plain shape.
    const plain = JSON.parse(JSON.stringify(raw));
    return this.opts.transform ? this.opts.transform(plain) : (plain as T);
  }

  private emit(event: 'add' | 'update' | 'delete', obj: T, old?: T): void {
    for (const h of this.handlers[event]) {
      try {
        h(obj, old);
      } catch (err) {
        this.opts.log.error({ informer: this.opts.name, err: errorText(err) }, 'informer handler threw');
      }
    }
  }
}

export function statusOf(err: unknown): number | undefined {
  if (!err || typeof err !== 'object') return undefined;
  const e = err as { statusCode?: unknown; code?: unknown };
  const c = e.statusCode ?? e.code;
  return typeof c === 'number' ? c : undefined;
}

function keyOf(o: KubeObject): string {
  return `${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''}`;
}

/** A short, single-line description of an API or network error: "HTTP 422: <apiserver message>". */
export function errorText(err: unknown): string {
  if (err && typeof err === 'object') {
    const e = err as { code?: unknown; statusCode?: unknown; message?: unknown; body?: unknown };
    const code = e.statusCode ?? e.code;
    let body: string | undefined;
    if (typeof e.body === 'string') {
      try {
        body = (JSON.parse(e.body) as { message?: string }).message;
      } catch {
        body = e.body.slice(0, 300);
      }
    } else body = (e.body as { message?: string } | undefined)?.message;
    const text = body ?? String(e.message ?? '').split('\n')[0];
    return `${typeof code === 'number' ? `HTTP ${code}: ` : ''}${text}`;
  }
  return String(err);
}
