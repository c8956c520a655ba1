// `registry-mirror verify`'s progress (mirror/verify-progress.ts): the line, and when it is
// written on a terminal (rewritten, at most 4 a second) and elsewhere (plain lines, every 10 s
// or 10%).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatProgress, ProgressReporter, type VerifyProgress } from '../../mirror/verify-progress.js';

const MiB = 1 << 20;
const at = (bytes: number, elapsedMs: number, objects = 1): VerifyProgress => ({ objects, totalObjects: 10, bytes, totalBytes: 100 * MiB, elapsedMs });

describe('verify progress', () => {
  it('objects, bytes, share, rate and ETA', () => {
    assert.equal(formatProgress(at(25 * MiB, 5000, 3)), 'verify: 3/10 objects, 25.0 MiB of 100.0 MiB (25%), 5.0 MiB/s, ETA 15s');
    assert.equal(formatProgress(at(0, 0, 0)), 'verify: 0/10 objects, 0 B of 100.0 MiB (0.0%), 0 B/s, ETA ?');
    assert.equal(formatProgress({ objects: 0, totalObjects: 0, bytes: 0, totalBytes: 0, elapsedMs: 10 }), 'verify: 0/0 objects, 0 B of 0 B (-), 0 B/s, ETA 0s');
  });

  it('on a terminal: one line rewritten in place, at most 4 times a second', () => {
    const r = new ProgressReporter(true);
    const first = r.update(at(1 * MiB, 100), 1000);
    assert.match(first!, /^\rverify: 1\/10 objects, .*\x1b\[K$/);
    assert.equal(r.update(at(2 * MiB, 200), 1100), undefined);
    assert.equal(r.update(at(3 * MiB, 300), 1249), undefined);
    assert.ok(r.update(at(4 * MiB, 400), 1250));
    const end = r.finish({ ...at(100 * MiB, 10_000, 10), done: true });
    assert.match(end, /^\rverify: 10\/10 objects, 100\.0 MiB of 100\.0 MiB \(100%\).*\x1b\[K\n$/);
  });

  it('elsewhere: plain lines, every 10 s or each 10% of the bytes, no control characters', () => {
    const r = new ProgressReporter(false);
    const lines: string[] = [];
    let now = 0;
    for (let mib = 0; mib <= 100; mib++) {
      now += 50; // 20 MiB/s: 5 s in all, so only the 10% steps write
      const out = r.update(at(mib * MiB, now), now);
      if (out) lines.push(out);
    }
    assert.equal(lines.length, 11, lines.join(''));
    for (const l of lines) assert.match(l, /^verify: [^\r\x1b]*\n$/);
    const slow = new ProgressReporter(false);
    assert.ok(slow.update(at(0, 0), 0));
    assert.equal(slow.update(at(1, 9_999), 9_999), undefined);
    assert.ok(slow.update(at(2, 10_000), 10_000), 'ten seconds on: a line even without a new 10%');
  });
});
