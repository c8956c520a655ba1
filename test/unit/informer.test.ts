// The informer's transform: every listed and watched object passes through it before it is
// cached or handed to a handler, so a cache can keep only the fields it uses.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Watch } from '@kubernetes/client-node';
import pino from 'pino';
import { Informer, type KubeObject } from '../../operator/kube/informer.js';

type Slim = KubeObject & { metadata: { name: string; namespace: string; resourceVersion?: string }; size: number };

function fakeWatch() {
  let emit: ((type: string, obj: unknown) => void) | undefined;
  let connected!: () => void;
  const ready = new Promise<void>((r) => (connected = r));
  const watch = {
    async watch(_path: string, _params: unknown, cb: (type: string, obj: unknown) => void, _done: (err?: unknown) => void) {
      emit = cb;
      connected();
      return new AbortController();
    },
  } as unknown as Watch;
  return { watch, ready, send: (type: string, obj: unknown) => emit!(type, obj) };
}

const big = (name: string, rv: string) => ({
  apiVersion: 'v1',
  kind: 'Thing',
  metadata: { name, namespace: 'ns', resourceVersion: rv, annotations: { huge: 'x'.repeat(100_000) } },
  data: { blob: 'y'.repeat(100_000) },
});

test('informer: transform applies to listed and watched objects before caching and handlers', async () => {
  const w = fakeWatch();
  const seen: Array<[string, unknown, unknown]> = [];
  let calls = 0;
  const inf = new Informer<Slim>({
    name: 'things',
    path: '/api/v1/things',
    list: async () => ({ items: [big('a', '1')], metadata: { resourceVersion: '1' } }),
    watch: w.watch,
    log: pino({ level: 'silent' }),
    transform: (o: any): Slim => {
      calls++;
      return {
        metadata: { name: o.metadata.name, namespace: o.metadata.namespace, resourceVersion: o.metadata.resourceVersion },
        size: JSON.stringify(o).length,
      };
    },
  });
  const slim = (o: unknown) => assert.deepEqual(Object.keys(o as object).sort(), ['metadata', 'size']);
  inf.on('add', (o) => seen.push(['add', o, undefined]));
  inf.on('update', (o, old) => seen.push(['update', o, old]));
  inf.on('delete', (o) => seen.push(['delete', o, undefined]));
  inf.start();
  try {
    await inf.synced;
    await w.ready;
    w.send('ADDED', big('b', '2'));
    w.send('MODIFIED', big('a', '3'));
    w.send('DELETED', big('b', '4'));
    assert.equal(calls, 4);
    assert.deepEqual(seen.map((s) => `${s[0]}:${(s[1] as Slim).metadata.name}`), ['add:a', 'add:b', 'update:a', 'delete:b']);
    for (const [, o, old] of seen) {
      slim(o);
      if (old) slim(old);
      assert.ok((o as Slim).size > 200_000);
    }
    assert.deepEqual(inf.list().map((o) => o.metadata.name), ['a']);
    slim(inf.get('ns', 'a'));
    assert.equal(inf.get('ns', 'a')!.metadata.resourceVersion, '3');
  } finally {
    await inf.stop();
  }
});

test('informer: re-lists page by page, shaping each page before fetching the next', { timeout: 10_000 }, async () => {
  const w = fakeWatch();
  const pages: Array<{ limit: number; continue?: string }> = [];
  let shapedBeforeNextPage = true;
  let shaped = 0;
  const all = ['a', 'b', 'c', 'd', 'e'].map((n, i) => big(n, String(i + 1)));
  const inf = new Informer<Slim>({
    name: 'things',
    path: '/api/v1/things',
    listPageSize: 2,
    list: async (page) => {
      pages.push({ ...page! });
      const from = page?.continue ? Number(page.continue) : 0;
      if (shaped !== from) shapedBeforeNextPage = false;
      const to = from + page!.limit;
      return { items: all.slice(from, to), metadata: { resourceVersion: '9', continue: to < all.length ? String(to) : undefined } };
    },
    watch: w.watch,
    log: pino({ level: 'silent' }),
    transform: (o: any): Slim => {
      shaped++;
      return { metadata: { name: o.metadata.name, namespace: o.metadata.namespace }, size: 0 };
    },
  });
  inf.start();
  try {
    await Promise.race([inf.synced, new Promise((_r, reject) => setTimeout(() => reject(new Error('never synced')), 3000))]);
    assert.deepEqual(pages, [{ limit: 2, continue: undefined }, { limit: 2, continue: '2' }, { limit: 2, continue: '4' }]);
    assert.ok(shapedBeforeNextPage);
    assert.deepEqual(inf.list().map((o) => o.metadata.name), ['a', 'b', 'c', 'd', 'e']);
  } finally {
    await inf.stop();
  }
});
