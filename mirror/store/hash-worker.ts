// The worker thread side of store/stream-hash.ts: holds one hash per download, answers each
// batch with an ack that hands its buffer back (for the sender's backpressure and reuse), and
// each end with the hex digest.
import { createHash, type Hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import type { ToWorker } from './stream-hash.js';

const hashes = new Map<number, Hash>();

parentPort!.on('message', (m: ToWorker) => {
  switch (m.op) {
    case 'start':
      hashes.set(m.id, createHash(m.algorithm));
      return;
    case 'update': {
      const h = hashes.get(m.id);
      if (h) h.update(new Uint8Array(m.buf, 0, m.length));
      // The buffer goes back to be filled again: neither side allocates per batch.
      parentPort!.postMessage({ op: 'ack', id: m.id, bytes: m.length, buf: m.buf }, [m.buf]);
      return;
    }
    case 'end': {
      const h = hashes.get(m.id);
      hashes.delete(m.id);
      parentPort!.postMessage({ op: 'digest', id: m.id, hex: h ? h.digest('hex') : '' });
      return;
    }
    case 'drop':
      hashes.delete(m.id);
      return;
  }
});
