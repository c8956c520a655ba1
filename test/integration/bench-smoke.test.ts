// `npm run bench` with tiny sizes, so the benchmark cannot rot: it must run end to end
// against real registries, write its JSON with every figure, and show the mirror's one
// upstream GET per blob under concurrent cold pulls. The figures themselves are not judged
// here (the bench's targets are for full sizes on a quiet machine).

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { repoRoot } from '../rig/mirror.js';
import { run, tempDir } from '../rig/proc.js';

/** Every leaf of a JSON value with its path. */
function leaves(value: unknown, path = ''): Array<[string, unknown]> {
  if (value !== null && typeof value === 'object') {
    return Object.entries(value as Record<string, unknown>).flatMap(([k, v]) => leaves(v, path ? `${path}.${k}` : k));
  }
  return [[path, value]];
}

describe('npm run bench (tiny sizes)', { timeout: 120_000 }, () => {
  it('runs end to end, writes every figure, and the mirror goes upstream once per blob', async () => {
    const out = tempDir('bench-results');
    const r = await run(process.execPath, [join(repoRoot(), 'dist', 'bench', 'bench.js')], {
      timeoutMs: 90_000,
      env: {
        BENCH_IMAGE_MB: '3',
        BENCH_BLOB_MB: '4',
        BENCH_CLIENTS: '4',
        BENCH_PULLS: '50',
        BENCH_CONNECTIONS: '8',
        BENCH_SECONDS: '1',
        BENCH_WARMUP_SECONDS: '0',
        BENCH_REPEAT: '1',
        BENCH_RESULTS_DIR: out,
      },
      allowFail: true,
    });
    assert.equal(r.code, 0, `bench exited ${r.code}:\n${r.stderr.slice(-3000)}`);

    const files = readdirSync(out).filter((f) => f.endsWith('.json'));
    assert.equal(files.length, 1, 'one results file');
    const result = JSON.parse(readFileSync(join(out, files[0]!), 'utf8'));

    // Every figure is there, for every server.
    for (const role of ['mirror', 'distribution', 'direct']) {
      assert.ok(result.coldPull[role].ms > 0, `coldPull.${role}`);
      assert.ok(result.warmPull[role].ms > 0, `warmPull.${role}`);
      assert.ok(result.concurrentColdPulls[role].ms > 0, `concurrentColdPulls.${role}`);
      const m = result.manifestByTag[role];
      assert.ok(m.rps > 0 && m.p50Ms >= 0 && m.p99Ms >= m.p50Ms, `manifestByTag.${role}: ${JSON.stringify(m)}`);
      assert.equal(m.non2xx, 0);
    }
    for (const role of ['mirror', 'distribution', 'direct']) {
      assert.ok(result.coldPull[role].cpuMs >= 0, `coldPull.${role}.cpuMs`);
      assert.equal(result.coldPull[role].runs.length, 1);
    }
    for (const role of ['mirror', 'distribution', 'direct', 'static']) {
      assert.ok(result.blobWarmMiBps.one[role] > 0, `blobWarmMiBps.one.${role}`);
      assert.ok(result.blobWarmMiBps.many[role] > 0, `blobWarmMiBps.many.${role}`);
      assert.ok(result.blobWarmCpuMsPerGiB.many[role] >= 0, `blobWarmCpuMsPerGiB.many.${role}`);
    }
    for (const role of ['mirror', 'distribution', 'upstream', 'static']) {
      assert.ok(result.rss[role].peakMiB > 0, `rss.${role}`);
    }
    assert.ok(result.mirrorRssMovingBlobMiB > 0);
    assert.equal(result.targets.length, 8);
    // JSON turns NaN and Infinity into null: a null anywhere is a figure that went wrong.
    for (const [path, v] of leaves(result)) {
      assert.notEqual(v, null, `${path} is null`);
      if (typeof v === 'number') assert.ok(Number.isFinite(v), `${path} is ${v}`);
    }

    // (3): exactly one upstream GET per blob through the mirror, for every blob of the image.
    const c = result.concurrentColdPulls.mirror;
    const perBlob = Object.values(c.upstreamGetsPerBlob) as number[];
    assert.equal(perBlob.length, 4, 'config + 3 layers');
    assert.deepEqual(perBlob, [1, 1, 1, 1]);
    assert.equal(c.maxGetsPerBlob, 1);
    // distribution was measured the same way (its count is what it is: at least one).
    assert.ok(Math.min(...(Object.values(result.concurrentColdPulls.distribution.upstreamGetsPerBlob) as number[])) >= 1);
    // A warm cache never goes upstream for the blob.
    assert.deepEqual(result.blobWarmUpstreamRequests, { mirror: 0, distribution: 0 });

    // The table was printed.
    assert.match(r.stdout, /\| 1\. cold pull/);
    assert.match(r.stdout, /Targets \(issue 7\):/);
  });
});
