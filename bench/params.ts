// The bench's knobs, all from the environment so `npm run bench` needs no arguments and the
// smoke test can shrink everything.
//
//   BENCH_IMAGE_MB=200          size of the 3-layer image (MiB; fractions allowed)
//   BENCH_BLOB_MB=1024          size of the single blob of the throughput runs and of the cold
//                               single-blob rows (MiB)
//   BENCH_CLIENTS=16            concurrent clients of the many-clients warm throughput run
//   BENCH_COLD_CLIENTS=1,4,16   cold single-blob rows: one row per count, that many clients
//                               GETting the same cold blob at once
//   BENCH_MANY_BLOBS=8          cold many-blobs row: this many different cold blobs at once,
//                               one client each (a rollout of many images)
//   BENCH_MANY_BLOB_MB=         size of each of those blobs (default BENCH_BLOB_MB / BENCH_MANY_BLOBS)
//   BENCH_PULLS=50              concurrent cold pulls in (3)
//   BENCH_CONNECTIONS=64        autocannon connections in (4)
//   BENCH_SECONDS=10            duration of each autocannon run in (4)
//   BENCH_WARMUP_SECONDS=2      untimed autocannon run before each timed one
//   BENCH_REPEAT=3              cold and warm single pulls and every cold blob row: runs per
//                               server, each cold run on fresh caches (median reported)
//   BENCH_ROUNDS=1              rounds of the warm blob throughput runs and of (3) (median reported)
//   BENCH_S3=1                  (6) the S3 section on a Ceph RGW: 1 runs it after (1)-(5), 0
//                               skips it, `only` runs it alone (setup, then (6)); it pulls
//                               the image of (1), so BENCH_IMAGE_MB scales it too
//   BENCH_S3_REPEAT=            its rounds, each on a fresh prefix (default BENCH_REPEAT)
//   BENCH_S3_STORE=memstore     the OSD's object store: memstore (RAM) or bluestore (a sparse
//                               file on disk; ~10 s more to start, bounded OSD memory)
//   BENCH_S3_PART_MB=16         multipart part size of both caches (the mirror's partSize,
//                               distribution's chunksize; >= 5)
//   BENCH_RESULTS_DIR=bench/results   where <timestamp>.json goes
//   BENCH_FIXTURES_DIR=...      where the layouts are built/cached (default: os.tmpdir())
import { join } from 'node:path';
import { repoRoot } from '../tools/launch/mirror.js';

export interface BenchParams {
  imageBytes: number;
  blobBytes: number;
  clients: number;
  coldClients: number[];
  manyBlobs: number;
  manyBlobBytes: number;
  pulls: number;
  connections: number;
  seconds: number;
  warmupSeconds: number;
  repeat: number;
  rounds: number;
  /** (1)-(5) run unless BENCH_S3=only. */
  main: boolean;
  /** (6): the S3 section runs. */
  s3: boolean;
  s3Repeat: number;
  s3Store: 'memstore' | 'bluestore';
  s3PartBytes: number;
  resultsDir: string;
  fixturesDir?: string;
}

const MiB = 1 << 20;

function num(env: NodeJS.ProcessEnv, name: string, fallback: number, opts: { min: number; integer?: boolean }): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < opts.min || (opts.integer && !Number.isInteger(v))) {
    throw new Error(`${name}=${raw}: want ${opts.integer ? 'an integer' : 'a number'} >= ${opts.min}`);
  }
  return v;
}

function intList(env: NodeJS.ProcessEnv, name: string, fallback: number[]): number[] {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const v = raw.split(',').map((s) => Number(s.trim()));
  if (v.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`${name}=${raw}: want a comma-separated list of integers >= 1`);
  return [...new Set(v)];
}

export function paramsFromEnv(env: NodeJS.ProcessEnv = process.env): BenchParams {
  const seconds = num(env, 'BENCH_SECONDS', 10, { min: 1, integer: true });
  const blobMiB = num(env, 'BENCH_BLOB_MB', 1024, { min: 0.01 });
  const manyBlobs = num(env, 'BENCH_MANY_BLOBS', 8, { min: 1, integer: true });
  const repeat = num(env, 'BENCH_REPEAT', 3, { min: 1, integer: true });
  const s3Mode = (env.BENCH_S3 ?? '').trim() || '1';
  if (!['0', '1', 'only'].includes(s3Mode)) throw new Error(`BENCH_S3=${env.BENCH_S3}: want 1, 0 or only`);
  const s3Store = (env.BENCH_S3_STORE ?? '').trim() || 'memstore';
  if (s3Store !== 'memstore' && s3Store !== 'bluestore') throw new Error(`BENCH_S3_STORE=${env.BENCH_S3_STORE}: want memstore or bluestore`);
  return {
    imageBytes: Math.round(num(env, 'BENCH_IMAGE_MB', 200, { min: 0.01 }) * MiB),
    blobBytes: Math.round(blobMiB * MiB),
    clients: num(env, 'BENCH_CLIENTS', 16, { min: 1, integer: true }),
    coldClients: intList(env, 'BENCH_COLD_CLIENTS', [1, 4, 16]),
    manyBlobs,
    manyBlobBytes: Math.round(num(env, 'BENCH_MANY_BLOB_MB', blobMiB / manyBlobs, { min: 0.01 }) * MiB),
    pulls: num(env, 'BENCH_PULLS', 50, { min: 1, integer: true }),
    connections: num(env, 'BENCH_CONNECTIONS', 64, { min: 1, integer: true }),
    seconds,
    warmupSeconds: num(env, 'BENCH_WARMUP_SECONDS', Math.min(2, seconds), { min: 0, integer: true }),
    repeat,
    rounds: num(env, 'BENCH_ROUNDS', 1, { min: 1, integer: true }),
    main: s3Mode !== 'only',
    s3: s3Mode !== '0',
    s3Repeat: num(env, 'BENCH_S3_REPEAT', repeat, { min: 1, integer: true }),
    s3Store,
    s3PartBytes: Math.round(num(env, 'BENCH_S3_PART_MB', 16, { min: 5 }) * MiB),
    resultsDir: env.BENCH_RESULTS_DIR || join(repoRoot(), 'bench', 'results'),
    fixturesDir: env.BENCH_FIXTURES_DIR || undefined,
  };
}

// ---- how long a run takes ------------------------------------------------------------
//
// A rough model of a run on a 2-core machine (a 2 vCPU VM, loopback, page cache warm), made
// from the phases' real durations there: MiB/s each kind of transfer achieves, plus fixed
// costs. It is printed at the start so nobody starts a long run by surprise; a busy machine
// takes longer. The first run with given sizes also builds the fixtures (~300 MiB/s).
// With the defaults it comes to about 14 minutes, most of them the cold blob rows (the
// 16-client row alone moves 16 GiB through each server per run), about 1.5 minutes the S3
// section; BENCH_COLD_CLIENTS and BENCH_REPEAT are the knobs that shorten it (BENCH_S3=0 and
// BENCH_S3_REPEAT for the S3 section). Checked against BENCH_BLOB_MB=256
// BENCH_IMAGE_MB=64 BENCH_REPEAT=1: 173 s estimated, 176 s measured (load average 10).

const RATE = {
  /** skopeo pushing the fixtures to the upstream */
  push: 150,
  /** a warm transfer, all clients together (upstream, static, warm caches) */
  warm: 1500,
  /** a cold cache fetching from the upstream, all its fetches together (the slower cache, today the mirror) */
  cold: 150,
  /** a cold cache serving many clients at once (one blob or several), all clients together */
  coldFanout: 500,
  /** 3-layer image pulls, cold through a cache / direct */
  coldPull: 200,
  directPull: 700,
  /** (3): many cold pulls, MiB/s of all pulls together */
  concurrentPulls: 400,
};
/** Start two fresh caches and pull the warm-up image through each, then stop them. */
const FRESH_CACHES_S = 4;
/**
 * (6), measured at the defaults with BENCH_S3=only (load average 9 on 2 cores): Ceph up in 2-3 s
 * on memstore, 10 s on BlueStore; per round about 16 s of fixed costs (two pairs of fresh
 * caches on S3, RGW's logs falling quiet after each of 8 pulls) plus the pulls themselves,
 * distribution's cold store (upload, then copy) the longest.
 */
const S3 = { startMemstore: 3, startBluestore: 10, perRound: 16, mibps: 17 };
/** Log settling, settled() polls and the like, per measured server. */
const PER_MEASURE_S = 1;

/** Estimated seconds per phase of a run (see above); `total` is their sum. */
export function estimateSeconds(p: BenchParams): Record<'setup' | 'coldPull' | 'warm' | 'manifest' | 'concurrentColdPulls' | 'coldBlobs' | 's3' | 'total', number> {
  const img = p.imageBytes / MiB;
  const blob = p.blobBytes / MiB;
  const many = (p.manyBlobs * p.manyBlobBytes) / MiB;
  const s3 = p.s3 ? (p.s3Store === 'memstore' ? S3.startMemstore : S3.startBluestore) + p.s3Repeat * (S3.perRound + img / S3.mibps) : 0;
  if (!p.main) {
    const setup = img / RATE.push + img / RATE.directPull + 5;
    return { setup: Math.round(setup), coldPull: 0, warm: 0, manifest: 0, concurrentColdPulls: 0, coldBlobs: 0, s3: Math.round(s3), total: Math.round(setup + s3) };
  }
  const setup = (img + blob + many) / RATE.push + 5;
  const coldPull = p.repeat * (FRESH_CACHES_S + img / RATE.directPull + 2 * (img / RATE.coldPull) + 3 * PER_MEASURE_S);
  const warmPull = p.repeat * 3 * (img / RATE.directPull + 0.2);
  // Warm blob: the caches fetch it once (untimed), then 4 servers x (1 + clients) transfers per round.
  const warmBlob = 2 * (blob / RATE.cold) + 2 * (blob / RATE.warm) + p.rounds * 4 * ((1 + p.clients) * blob / RATE.warm + 2 * PER_MEASURE_S);
  const manifest = 3 * (p.seconds + p.warmupSeconds + 2);
  const concurrent = p.rounds * (FRESH_CACHES_S + (3 * p.pulls * img) / RATE.concurrentPulls + 3 * PER_MEASURE_S);
  // Cold blob rows: per row and run fresh caches, then direct, mirror and distribution, each
  // delivering `delivered` MiB; a cache is no faster than its cold fetch of `fetched` MiB.
  const coldRow = (fetched: number, delivered: number) =>
    FRESH_CACHES_S + delivered / RATE.warm + 2 * Math.max(fetched / RATE.cold, delivered / RATE.coldFanout) + 3 * PER_MEASURE_S;
  const coldBlobs = p.repeat * (p.coldClients.reduce((s, n) => s + coldRow(blob, n * blob), 0) + coldRow(many, many));
  const phases = {
    setup: Math.round(setup),
    coldPull: Math.round(coldPull),
    warm: Math.round(warmPull + warmBlob),
    manifest: Math.round(manifest),
    concurrentColdPulls: Math.round(concurrent),
    coldBlobs: Math.round(coldBlobs),
    s3: Math.round(s3),
  };
  return { ...phases, total: Object.values(phases).reduce((a, b) => a + b, 0) };
}

// ---- `npm run bench -- fleet` / `-- rollout` (issue 16, items 8 and 9; bench/fleet.ts) --------
//
//   BENCH_FLEET_REPLICAS=3         replicas of each side, on one bucket of one Ceph RGW
//   BENCH_FLEET_LAYERS_MB=4,3.5,3,2.5,2   the 5 layers of the fleet image and of the rollout's
//                                  new image (same sizes, other content), MiB each
//   BENCH_FLEET_PULLS=50           concurrent cold pulls, round-robin over the replicas
//   BENCH_FLEET_ROUNDS=1           rounds of the cold pulls and warm throughput, fresh prefixes each
//   BENCH_FLEET_WARM_CLIENTS=12    clients pulling the warm image in a loop, spread over all
//                                  replicas, then all on one
//   BENCH_FLEET_WARM_SECONDS=8     duration of each warm throughput run
//   BENCH_ROLLOUT_NODES=500        simulated nodes pulling the new image
//   BENCH_ROLLOUT_SURGE=100        nodes pulling at once at most (the rollout's surge)
//   BENCH_ROLLOUT_SPREAD_S=20      node start times spread uniformly over this many seconds
//   BENCH_ROLLOUT_NODE_CONCURRENCY=3  blob GETs at once per node (containerd's max_concurrent_downloads)
//   BENCH_ROLLOUT_SEED=1           seed of the start times
//   BENCH_RESULTS_DIR, BENCH_S3_PART_MB as above

export interface FleetParams {
  /** Sections to run: `fleet` runs both, `rollout` the rollout alone. */
  fleet: boolean;
  rollout: boolean;
  replicas: number;
  layerBytes: number[];
  pulls: number;
  rounds: number;
  warmClients: number;
  warmSeconds: number;
  nodes: number;
  surge: number;
  spreadSeconds: number;
  nodeConcurrency: number;
  seed: number;
  partBytes: number;
  resultsDir: string;
}

export function fleetParamsFromEnv(scenario: 'fleet' | 'rollout', env: NodeJS.ProcessEnv = process.env): FleetParams {
  const layersRaw = (env.BENCH_FLEET_LAYERS_MB ?? '').trim() || '4,3.5,3,2.5,2';
  const layers = layersRaw.split(',').map((s) => Number(s.trim()));
  if (layers.some((v) => !Number.isFinite(v) || v < 0.01)) throw new Error(`BENCH_FLEET_LAYERS_MB=${layersRaw}: want a comma-separated list of sizes >= 0.01`);
  return {
    fleet: scenario === 'fleet',
    rollout: true,
    replicas: num(env, 'BENCH_FLEET_REPLICAS', 3, { min: 1, integer: true }),
    layerBytes: layers.map((v) => Math.round(v * MiB)),
    pulls: num(env, 'BENCH_FLEET_PULLS', 50, { min: 1, integer: true }),
    rounds: num(env, 'BENCH_FLEET_ROUNDS', 1, { min: 1, integer: true }),
    warmClients: num(env, 'BENCH_FLEET_WARM_CLIENTS', 12, { min: 1, integer: true }),
    warmSeconds: num(env, 'BENCH_FLEET_WARM_SECONDS', 8, { min: 1 }),
    nodes: num(env, 'BENCH_ROLLOUT_NODES', 500, { min: 1, integer: true }),
    surge: num(env, 'BENCH_ROLLOUT_SURGE', 100, { min: 1, integer: true }),
    spreadSeconds: num(env, 'BENCH_ROLLOUT_SPREAD_S', 20, { min: 0 }),
    nodeConcurrency: num(env, 'BENCH_ROLLOUT_NODE_CONCURRENCY', 3, { min: 1, integer: true }),
    seed: num(env, 'BENCH_ROLLOUT_SEED', 1, { min: 0, integer: true }),
    partBytes: Math.round(num(env, 'BENCH_S3_PART_MB', 16, { min: 5 }) * MiB),
    resultsDir: env.BENCH_RESULTS_DIR || join(repoRoot(), 'bench', 'results'),
  };
}
