import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { evictionOrder } from '../../mirror/store/evictor.js';
import type { ContentEntry } from '../../mirror/store/content-store.js';

const blob = (digest: string, lastAccess: number): ContentEntry => ({ digest, kind: 'blob', size: 1, lastAccess });
const manifest = (digest: string, lastAccess: number, refs: string[]): ContentEntry => ({
  digest,
  kind: 'manifest',
  size: 1,
  lastAccess,
  mediaType: 'x',
  refs,
});

describe('eviction order', () => {
  it('oldest first', () => {
    const order = evictionOrder([blob('b', 30), blob('a', 10), blob('c', 20)], 0).map((r) => r.entry.digest);
    assert.deepEqual(order, ['a', 'c', 'b']);
  });

  it('a blob is as young as the newest manifest using it, and manifests go first on a tie', () => {
    const entries = [
      blob('layer-shared', 1),
      blob('layer-old', 1),
      manifest('m-old', 5, ['layer-old', 'layer-shared']),
      manifest('m-new', 50, ['layer-shared']),
    ];
    const order = evictionOrder(entries, 0).map((r) => r.entry.digest);
    assert.deepEqual(order, ['m-old', 'layer-old', 'm-new', 'layer-shared']);
  });

  it('propagates through an index to its platform manifests and their layers', () => {
    const entries = [
      blob('layer', 1),
      manifest('platform', 2, ['layer']),
      manifest('index', 100, ['platform']),
      blob('unrelated', 50),
    ];
    const order = evictionOrder(entries, 0).map((r) => `${r.entry.digest}@${r.effectiveAccess}`);
    assert.deepEqual(order, ['unrelated@50', 'index@100', 'platform@100', 'layer@100']);
  });
});
