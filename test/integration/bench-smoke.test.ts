// `npm run bench` with tiny sizes, so the benchmark cannot rot: it must run end to end
// against real registries, write its JSON with every figure (the cold blob rows of issue 14
// and the S3 section of issue 15 included), and show the mirror's one upstream GET per blob
// under concurrent cold pulls and in every cold blob row, and on S3 each cold blob written
// once (distribution: uploaded, then copied). The timings themselves are not judged here (the
// bench's targets are for full sizes on a quiet machine), only that every target is checked
// and printed.

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { repoRoot } from '../../tools/launch/mirror.js';
import { run, tempDir } from '../../tools/launch/proc.js';

/** Every leaf of a JSON value with its path. */
function leaves(value: unknown, path = ''): Array<[string, unknown]> {
  if (value !== null && typeof value === 'object') {
    return Object.entries(value as Record<string, unknown>).flatMap(([k, v]) => leaves(v, path ? `${path}.${k}` : k));
  }
  return [[path, value]];
}

describe('npm run bench (tiny sizes)', { timeout: 260_000 }, () => {
  it('runs end to end, writes every figure, and the mirror goes upstream once per blob', async () => {
    const out = tempDir('bench-results');
    const r = await run(process.execPath, [join(repoRoot(), 'dist', 'bench', 'bench.js')], {
      timeoutMs: 230_000,
      env: {
        BENCH_IMAGE_MB: '3',
        BENCH_BLOB_MB: '4',
        BENCH_CLIENTS: '4',
        BENCH_PULLS: '50',
        BENCH_CONNECTIONS: '8',
        BENCH_SECONDS: '1',
        BENCH_WARMUP_SECONDS: '0',
        BENCH_REPEAT: '1',
        // (6) runs by default; one round on a memstore Ceph.
        BENCH_S3: '1',
        BENCH_S3_STORE: 'memstore',
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
    assert.equal(result.version, 3);
    assert.deepEqual(result.sections, ['main', 's3']);

    // (1) continued: the cold blob rows, 1, 4 and 16 clients on one blob and 8 blobs at once.
    assert.deepEqual(
      result.coldBlobs.map((row: { id: string }) => row.id),
      ['sameBlob1', 'sameBlob4', 'sameBlob16', 'manyBlobs8'],
    );
    for (const row of result.coldBlobs) {
      // same-blob: N clients on 1 blob; different-blobs: 8 blobs, 1 client each.
      if (row.kind === 'same-blob') assert.equal(row.blobs, 1, `${row.id}: blobs`);
      else assert.equal(row.clients, 8, `${row.id}: clients`);
      assert.ok(Math.abs(row.totalMiB - row.clients * row.blobMiB) < 0.1, `${row.id}: totalMiB ${row.totalMiB}`);
      for (const role of ['mirror', 'distribution', 'direct']) {
        const f = row[role];
        assert.ok(f.ms > 0 && f.mibps > 0 && f.cpuMs >= 0, `coldBlobs.${row.id}.${role}: ${JSON.stringify(f)}`);
        assert.equal(f.runs.length, 1);
        assert.equal(f.cpuRuns.length, 1);
      }
      // The mirror goes upstream once per blob however many clients wait for it, and holds
      // the blob by the time the last client has it.
      assert.equal(row.mirror.minGetsPerBlob, 1, `${row.id}: mirror min GETs per blob`);
      assert.equal(row.mirror.maxGetsPerBlob, 1, `${row.id}: mirror max GETs per blob`);
      assert.equal(row.mirror.failedRequests, 0);
      assert.ok(row.mirror.settledMs > 0 && row.distribution.settledMs > 0, `${row.id}: settledMs`);
      assert.ok(row.distribution.minGetsPerBlob >= 1, `${row.id}: distribution GETs per blob`);
      for (const what of ['WallMirrorToDistribution', 'CpuMirrorToDistribution', 'WallMirrorToDirect']) {
        const key = `cold${row.id[0].toUpperCase()}${row.id.slice(1)}${what}`;
        assert.ok(key in result.ratios, `ratios.${key}`);
      }
    }
    // Every target of issues 7 (8), 14 (3 for the 3-layer pull, 2 per cold blob row, the
    // cold rows' GETs per blob, warm one client) and 15 (S3: bytes written, warm, warm with
    // redirect, cold) is there, met or missed.
    assert.equal(result.targets.length, 6 + 3 + 2 * 4 + 1 + 1 + 4);
    for (const t of result.targets) assert.ok([7, 14, 15].includes(t.issue) && typeof t.pass === 'boolean' && t.row && t.short, JSON.stringify(t));
    for (const row of ['s3Bytes', 's3Warm', 's3Redirect', 's3Cold']) {
      assert.ok(result.targets.some((t: { row: string; issue: number }) => t.row === row && t.issue === 15), `target ${row}`);
    }
    for (const id of ['sameBlob1', 'sameBlob4', 'sameBlob16', 'manyBlobs8']) {
      assert.ok(result.targets.some((t: { row: string }) => t.row === `cold:${id}`), `wall target for ${id}`);
      assert.ok(result.targets.some((t: { row: string }) => t.row === `coldCpu:${id}`), `CPU target for ${id}`);
    }
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

    // (6): both caches on buckets of one RGW, every pull measured once.
    const s3 = result.s3;
    assert.equal(s3.repeat, 1);
    assert.equal(s3.blobs, 4, 'config + 3 layers');
    assert.equal(result.software.ceph.split('.')[0], '16');
    for (const side of ['mirror', 'distribution']) {
      for (const kind of ['cold', 'warm', 'redirect']) {
        const f = s3[side][kind];
        assert.ok(f.ms > 0 && f.cpuMs >= 0 && f.serviceCpuMs >= 0, `s3.${side}.${kind}: ${JSON.stringify(f)}`);
        assert.equal(f.runs.length, 1);
        assert.ok(f.requestsPerBlob.total > 0, `s3.${side}.${kind}: S3 requests counted`);
        const methods = ['GET', 'HEAD', 'LIST', 'PUT', 'POST', 'DELETE'].reduce((n, m) => n + f.requestsPerBlob[m], 0);
        assert.ok(Math.abs(methods - f.requestsPerBlob.total) < 0.05, `s3.${side}.${kind}: methods add up`);
      }
      assert.ok(s3[side].cold.settledMs >= s3[side].cold.ms * 0.5, `s3.${side}: stored after`);
      // The client followed a 307 to RGW for every blob.
      assert.ok(s3[side].redirect.clientGetsPerBlob >= 1, `s3.${side}: presigned GETs per blob`);
    }
    // Written once, straight to the final key (the mirror); uploaded, then copied (distribution).
    assert.ok(s3.mirror.cold.bytesUploadedPerBlobByte >= 1 && s3.mirror.cold.bytesUploadedPerBlobByte < 1.01, JSON.stringify(s3.mirror.cold));
    assert.equal(s3.mirror.cold.bytesCopiedPerBlobByte, 0);
    assert.equal(s3.mirror.cold.requestsPerBlob.DELETE, 0);
    assert.ok(s3.distribution.cold.bytesUploadedPerBlobByte >= 1, JSON.stringify(s3.distribution.cold));
    assert.ok(s3.distribution.cold.bytesCopiedPerBlobByte >= 0.99, JSON.stringify(s3.distribution.cold));
    assert.ok(s3.distribution.cold.bytesWrittenPerBlobByte >= 1.99);
    assert.ok(result.rss['mirror-s3'].peakMiB > 0 && result.rss['distribution-s3'].peakMiB > 0);

    // The table was printed.
    assert.match(r.stdout, /\| 1\. cold pull/);
    assert.match(r.stdout, /\|\s+cold [\d.]+ MiB blob, 16 clients at once \(s\)/);
    assert.match(r.stdout, /\|\s+8 cold [\d.]+ MiB blobs at once, 1 client each \(s\)/);
    assert.match(r.stdout, /\| 6\. S3 store \(Ceph RGW, memstore\): cold pull/);
    assert.match(r.stdout, /\|\s+bytes written to S3 per blob byte\s+\|\s+1\.00 \|\s+2\.00 \|/);
    assert.match(r.stdout, /Targets \(issues 7, 14 and 15\): \d+ met, \d+ missed/);
    // Each missed target is shown as a miss, in the list and in the table.
    const missed = result.targets.filter((t: { pass: boolean }) => !t.pass).length;
    assert.equal((r.stdout.match(/^- MISS /gm) ?? []).length, missed);
    assert.equal((r.stdout.match(/\bMISS [<>=]/g) ?? []).length, missed);
  });
});

// `npm run bench -- fleet` (issue 16, items 8 and 9) with tiny sizes: three replicas of each
// side on one RGW bucket, then a rollout to 20 simulated nodes. Our fleet must cost the
// upstream exactly one GET per blob in both, fail no pull, and every figure must be there.
describe('npm run bench -- fleet (tiny sizes)', { timeout: 330_000 }, () => {
  it('runs end to end: one upstream GET per blob fleet-wide, every figure written and printed', async () => {
    const out = tempDir('bench-fleet-results');
    const r = await run(process.execPath, [join(repoRoot(), 'dist', 'bench', 'bench.js'), 'fleet'], {
      timeoutMs: 300_000,
      env: {
        BENCH_FLEET_LAYERS_MB: '0.5,0.4,0.3,0.2,0.1',
        BENCH_FLEET_PULLS: '12',
        BENCH_FLEET_WARM_CLIENTS: '3',
        BENCH_FLEET_WARM_SECONDS: '1',
        BENCH_ROLLOUT_NODES: '20',
        BENCH_ROLLOUT_SURGE: '8',
        BENCH_ROLLOUT_SPREAD_S: '2',
        BENCH_S3_PART_MB: '5',
        BENCH_RESULTS_DIR: out,
      },
      allowFail: true,
    });
    assert.equal(r.code, 0, `bench exited ${r.code}:\n${r.stderr.slice(-3000)}`);
    const files = readdirSync(out).filter((f) => f.endsWith('-fleet.json'));
    assert.equal(files.length, 1, 'one results file');
    const result = JSON.parse(readFileSync(join(out, files[0]!), 'utf8'));
    assert.deepEqual(result.sections, ['fleet', 'rollout']);
    assert.equal(result.params.blobs, 6, 'config + 5 layers');

    // Item 8: 12 cold pulls round-robin over 3 replicas.
    const f = result.fleet;
    assert.equal(f.replicas, 3);
    assert.deepEqual(Object.values(f.cold.mirror.upstreamGetsPerBlob), [1, 1, 1, 1, 1, 1], 'ours: one upstream GET per blob');
    assert.equal(f.cold.mirror.failedPulls, 0);
    assert.equal(f.cold.mirror.upstreamManifestRequests, 1, 'one manifest GET for the tag, fleet-wide');
    assert.equal(Object.keys(f.cold.distribution.upstreamGetsPerBlob).length, 6);
    assert.ok(f.cold.distribution.minGetsPerBlob >= 1, 'distribution measured the same way');
    for (const side of ['mirror', 'distribution']) {
      assert.ok(f.cold[side].ms > 0, `fleet.cold.${side}.ms`);
      assert.ok(f.cold[side].s3RequestsPerPull.total > 0, `fleet.cold.${side}: S3 requests counted`);
      for (const mode of ['all', 'one']) assert.ok(f.warm[side][mode].mibps > 0, `fleet.warm.${side}.${mode}`);
      assert.ok(f.warm[side].ratio > 0);
    }
    assert.equal(f.warm.mirror.upstreamRequests, 0, 'a warm fleet never goes upstream for a blob');

    // Item 9: the rollout.
    const o = result.rollout;
    assert.equal(o.nodes, 20);
    assert.deepEqual(Object.values(o.upstreamGetsPerBlob), [1, 1, 1, 1, 1, 1], 'rollout: one upstream GET per blob');
    assert.equal(o.failedNodes, 0);
    assert.ok(o.maxNodesPulling <= 8, `surge respected: ${o.maxNodesPulling}`);
    assert.ok(o.lastNodeMs > 0 && o.nodeMs.max <= o.lastNodeMs + 1 && o.nodeMs.p50 > 0);
    assert.ok(Math.abs(o.deliveredMiB - 20 * result.params.imageMiB) < 0.2, `every node got the whole image: ${o.deliveredMiB} MiB`);
    assert.ok(o.s3RequestsPerNode.total > 0 && o.s3RequestsPerNodeBlob.GET > 0);
    assert.equal(o.replicaFigures.length, 3);
    for (const rep of o.replicaFigures) {
      assert.ok(rep.pulls > 0 && rep.servedMiB > 0 && rep.peakMiBps > 0 && rep.peak5sMiBps > 0 && rep.peakRssMiB > 0, JSON.stringify(rep));
    }
    assert.ok(o.fleetPeakMiBps > 0 && o.service.rgwPeakRssMiB > 0);

    assert.equal(result.targets.length, 4);
    for (const t of result.targets) assert.ok(t.issue === 16 && t.pass, JSON.stringify(t));
    for (const [path, v] of leaves(result)) {
      assert.notEqual(v, null, `${path} is null`);
      if (typeof v === 'number') assert.ok(Number.isFinite(v), `${path} is ${v}`);
    }
    assert.match(r.stdout, /\| 7\. 12 cold pulls, [\d.]+ MiB in 6 blobs, round-robin over 3 replicas/);
    assert.match(r.stdout, /\| 8\. rollout: 20 nodes/);
    assert.match(r.stdout, /Targets \(issue 16\): 4 met, 0 missed/);
  });
});
