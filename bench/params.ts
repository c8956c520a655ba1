// The bench's knobs, all from the environment so `npm run bench` needs no arguments and the
// smoke test can shrink everything.
//
//   BENCH_IMAGE_MB=200          size of the 3-layer image (MiB; fractions allowed)
//   BENCH_BLOB_MB=1024          size of the single blob of the throughput runs (MiB)
//   BENCH_CLIENTS=16            concurrent clients of the many-clients throughput run
//   BENCH_PULLS=50              concurrent cold pulls in (3)
//   BENCH_CONNECTIONS=64        autocannon connections in (4)
//   BENCH_SECONDS=10            duration of each autocannon run in (4)
//   BENCH_WARMUP_SECONDS=2      untimed autocannon run before each timed one
//   BENCH_REPEAT=3              cold and warm single pulls: runs per server (median reported)
//   BENCH_ROUNDS=1              rounds of the blob throughput runs and of (3) (median reported)
//   BENCH_RESULTS_DIR=bench/results   where <timestamp>.json goes
//   BENCH_FIXTURES_DIR=...      where the layouts are built/cached (default: os.tmpdir())
import { join } from 'node:path';
import { repoRoot } from '../test/rig/mirror.js';

export interface BenchParams {
  imageBytes: number;
  blobBytes: number;
  clients: number;
  pulls: number;
  connections: number;
  seconds: number;
  warmupSeconds: number;
  repeat: number;
  rounds: number;
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

export function paramsFromEnv(env: NodeJS.ProcessEnv = process.env): BenchParams {
  const seconds = num(env, 'BENCH_SECONDS', 10, { min: 1, integer: true });
  return {
    imageBytes: Math.round(num(env, 'BENCH_IMAGE_MB', 200, { min: 0.01 }) * MiB),
    blobBytes: Math.round(num(env, 'BENCH_BLOB_MB', 1024, { min: 0.01 }) * MiB),
    clients: num(env, 'BENCH_CLIENTS', 16, { min: 1, integer: true }),
    pulls: num(env, 'BENCH_PULLS', 50, { min: 1, integer: true }),
    connections: num(env, 'BENCH_CONNECTIONS', 64, { min: 1, integer: true }),
    seconds,
    warmupSeconds: num(env, 'BENCH_WARMUP_SECONDS', Math.min(2, seconds), { min: 0, integer: true }),
    repeat: num(env, 'BENCH_REPEAT', 3, { min: 1, integer: true }),
    rounds: num(env, 'BENCH_ROUNDS', 1, { min: 1, integer: true }),
    resultsDir: env.BENCH_RESULTS_DIR || join(repoRoot(), 'bench', 'results'),
    fixturesDir: env.BENCH_FIXTURES_DIR || undefined,
  };
}
