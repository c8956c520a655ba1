// The benchmark's images, written as OCI layouts with tools/oci/layout.ts's LayoutWriter:
//
//   image  3 layers of pseudo-random data (BENCH_IMAGE_MB split 50/30/20), linux/amd64
//   blob   1 layer of BENCH_BLOB_MB: the "1 GB blob" of the throughput runs and of the cold
//          single-blob rows
//   many   BENCH_MANY_BLOBS layers of BENCH_MANY_BLOB_MB each: the cold many-blobs row fetches
//          them all at once, one client per blob (a rollout of many images)
//   warmup 1 layer of 1 MiB: pulled through every fresh cache before it is measured, so a
//          cold pull measures the cache's cold path and not a freshly started process
//          (Node compiles its hot code on first use; Go has nothing to warm up)
//
// Layers are gzip level 0 (stored deflate blocks): valid tar+gzip layers that registries and
// clients treat like any other, generated at disk speed instead of the ~55 MB/s real deflate
// manages on random bytes. Builds are cached per size in os.tmpdir() (published by an atomic
// rename, like the test fixtures), so only the first run pays for them.
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { LayoutWriter, type LayerInfo } from '../tools/oci/layout.js';

/** Bump when the generator changes, so stale cached builds are not reused. */
const BENCH_FIXTURE_FORMAT = 3;
export const BENCH_TAG = 'v1';

export interface BenchLayout {
  /** OCI layout directory; push with oci:<layoutDir>:<tag>. */
  layoutDir: string;
  tag: string;
  /** Digest of the image manifest in the layout (skopeo keeps OCI manifests byte for byte). */
  manifestDigest: string;
  layers: LayerInfo[];
}

export interface BenchFixtures {
  dir: string;
  image: BenchLayout;
  blob: BenchLayout;
  many: BenchLayout;
  warmup: BenchLayout;
}

export interface BenchFixtureSizes {
  /** Uncompressed payload of each image layer, in bytes. */
  imageLayerBytes: number[];
  blobBytes: number;
  /** Payload of each layer of the many-blobs image. */
  manyBlobBytes: number[];
}

/** Splits an image size into 3 layers, 50/30/20, as a base, a runtime and an app layer. */
export function splitImage(totalBytes: number): number[] {
  const a = Math.max(1, Math.round(totalBytes * 0.5));
  const b = Math.max(1, Math.round(totalBytes * 0.3));
  return [a, b, Math.max(1, totalBytes - a - b)];
}

export function defaultBenchFixturesDir(sizes: BenchFixtureSizes): string {
  return join(tmpdir(), `registry-mirror-bench-v${BENCH_FIXTURE_FORMAT}-${sizes.imageLayerBytes.join('_')}-${sizes.blobBytes}-${sizes.manyBlobBytes.length}x${sizes.manyBlobBytes[0] ?? 0}`);
}

interface Stored {
  format: number;
  sizes: BenchFixtureSizes;
  image: Omit<BenchLayout, 'layoutDir'>;
  blob: Omit<BenchLayout, 'layoutDir'>;
  many: Omit<BenchLayout, 'layoutDir'>;
  warmup: Omit<BenchLayout, 'layoutDir'>;
}

function load(dir: string, sizes: BenchFixtureSizes): BenchFixtures | undefined {
  const file = join(dir, 'bench-fixtures.json');
  if (!existsSync(file)) return undefined;
  const s = JSON.parse(readFileSync(file, 'utf8')) as Stored;
  if (s.format !== BENCH_FIXTURE_FORMAT || JSON.stringify(s.sizes) !== JSON.stringify(sizes)) return undefined;
  return {
    dir,
    image: { ...s.image, layoutDir: join(dir, 'image') },
    blob: { ...s.blob, layoutDir: join(dir, 'blob') },
    many: { ...s.many, layoutDir: join(dir, 'many') },
    warmup: { ...s.warmup, layoutDir: join(dir, 'warmup') },
  };
}

export async function writeLayout(dir: string, name: string, layerBytes: number[]): Promise<Omit<BenchLayout, 'layoutDir'>> {
  const w = new LayoutWriter(dir);
  const layers: LayerInfo[] = [];
  for (const [i, bytes] of layerBytes.entries()) {
    layers.push(await w.addBigLayer(`data/${name}-${i}.bin`, bytes, `bench-${name}-${i}-${bytes}`, { gzipLevel: 0 }));
  }
  const manifest = w.addImage({ name: `bench-${name}`, arch: 'amd64', cmd: ['/bin/true'], layers });
  w.writeTopIndex(BENCH_TAG, manifest);
  return { tag: BENCH_TAG, manifestDigest: manifest.digest, layers };
}

/** Builds (or reuses) the benchmark layouts. */
export async function buildBenchFixtures(sizes: BenchFixtureSizes, dir = defaultBenchFixturesDir(sizes)): Promise<BenchFixtures> {
  const cached = load(dir, sizes);
  if (cached) return cached;
  mkdirSync(dirname(dir), { recursive: true });
  const work = mkdtempSync(join(dirname(dir), `.${basename(dir)}.building-`));
  try {
    const stored: Stored = {
      format: BENCH_FIXTURE_FORMAT,
      sizes,
      image: await writeLayout(join(work, 'image'), 'image', sizes.imageLayerBytes),
      blob: await writeLayout(join(work, 'blob'), 'blob', [sizes.blobBytes]),
      many: await writeLayout(join(work, 'many'), 'many', sizes.manyBlobBytes),
      warmup: await writeLayout(join(work, 'warmup'), 'warmup', [1 << 20]),
    };
    writeFileSync(join(work, 'bench-fixtures.json'), JSON.stringify(stored, null, 2));
    chmodSync(work, 0o755);
    if (existsSync(dir) && !load(dir, sizes)) rmSync(dir, { recursive: true, force: true });
    try {
      renameSync(work, dir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
      // Another run published the same build first.
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const built = load(dir, sizes);
  if (!built) throw new Error(`bench fixture build in ${dir} did not produce bench-fixtures.json`);
  return built;
}
