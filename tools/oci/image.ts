// Container images without a Docker engine: OCI image layouts and OCI archives assembled from
// directories on this machine, for `ctr -n k8s.io images import` on the test cluster's node
// and `skopeo copy oci:...` into a registry. scripts/build-image.mjs (npm run image) is
// projectImage() from the command line.
//
//   projectImage()   the registry-mirror image: the same content as the Dockerfile's final
//                    stage (node + its shared libraries instead of the node:20 base image,
//                    /app/package.json, production node_modules, dist/{bin,mirror,operator}),
//                    User 1000:1000, the same Entrypoint/Cmd/Env.
//   pauseImage()     registry.k8s.io/pause:3.6 made of busybox-static: a shell that waits
//                    forever and exits at once on SIGTERM.
//   busyboxImage()   a one-layer busybox image whose entrypoint is the given command.
//
// Layers are uncompressed tars written by GNU tar with a fixed order, owner and mtime, so the
// same input gives the same digest. Uncompressed keeps assembly fast (the node binary alone is
// ~100 MiB) and is a valid OCI layer media type for every client used here.
import { createHash } from 'node:crypto';
import { copyFileSync, createReadStream, existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, renameSync, rmSync, writeFileSync, chmodSync, symlinkSync, cpSync, openSync, writeSync, closeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { run } from '../launch/proc.js';
import { prngStream } from './layout.js';
import { repoRoot } from '../launch/mirror.js';

export const IMAGE_CACHE = process.env.IMAGE_CACHE_DIR ?? '/var/cache/registry-mirror/images';
/** Reference the e2e cluster knows the project image by (imported, never pulled). */
export const PROJECT_IMAGE = 'registry-mirror.local/registry-mirror:e2e';
export const PAUSE_IMAGE = 'registry.k8s.io/pause:3.6';
const TAR_MTIME = '@1700000000';

export interface ImageConfig {
  Entrypoint?: string[];
  Cmd?: string[];
  Env?: string[];
  User?: string;
  WorkingDir?: string;
  ExposedPorts?: Record<string, Record<string, never>>;
  Volumes?: Record<string, Record<string, never>>;
}

export interface BuiltImage {
  ref: string;
  /** OCI image layout directory (skopeo: oci:<layoutDir>:<tag>). */
  layoutDir: string;
  /** The tag under org.opencontainers.image.ref.name in the layout's index. */
  tag: string;
  /** The same layout as one tar (ctr images import). */
  archive: string;
  manifestDigest: string;
}

async function sha256File(path: string): Promise<{ digest: string; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(path)) {
    h.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { digest: `sha256:${h.digest('hex')}`, size };
}

/** GNU tar of a directory's content, reproducible (sorted names, fixed owner and mtime). */
async function tarDir(dir: string, out: string): Promise<void> {
  await run('tar', ['--sort=name', `--mtime=${TAR_MTIME}`, '--owner=0', '--group=0', '--numeric-owner', '--format=posix',
    '--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime', '-C', dir, '-cf', out, '.'], { timeoutMs: 300_000 });
}

/**
 * Writes an OCI layout (and an OCI archive of it) for an image whose layers are the given
 * root directories, in order. The layout goes to outDir (replaced atomically).
 */
export async function buildImage(opts: { ref: string; rootDirs: string[]; config: ImageConfig; outDir: string }): Promise<BuiltImage> {
  const tag = opts.ref.slice(opts.ref.lastIndexOf(':') + 1);
  const work = `${opts.outDir}.building-${process.pid}`;
  rmSync(work, { recursive: true, force: true });
  const blobs = join(work, 'layout', 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  const addBlob = async (tmp: string) => {
    const { digest, size } = await sha256File(tmp);
    renameSync(tmp, join(blobs, digest.slice(7)));
    return { digest, size };
  };
  const addJson = async (value: unknown, mediaType: string) => {
    const tmp = join(work, 'tmp.json');
    writeFileSync(tmp, JSON.stringify(value));
    return { mediaType, ...(await addBlob(tmp)) };
  };
  const layers = [];
  for (const [i, dir] of opts.rootDirs.entries()) {
    const tmp = join(work, `layer-${i}.tar`);
    await tarDir(dir, tmp);
    layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...(await addBlob(tmp)) });
  }
  const config = await addJson(
    {
      architecture: 'amd64',
      os: 'linux',
      created: '2023-11-14T22:13:20Z',
      config: opts.config,
      // Uncompressed layers: the diff id is the layer digest.
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
      history: layers.map(() => ({ created: '2023-11-14T22:13:20Z', created_by: 'tools/oci/image.ts' })),
    },
    'application/vnd.oci.image.config.v1+json',
  );
  const manifest = await addJson(
    { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config, layers },
    'application/vnd.oci.image.manifest.v1+json',
  );
  writeFileSync(join(work, 'layout', 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(
    join(work, 'layout', 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          ...manifest,
          platform: { architecture: 'amd64', os: 'linux' },
          // ctr import names the image after io.containerd.image.name; skopeo's oci: transport
          // finds it by ref.name.
          annotations: { 'io.containerd.image.name': opts.ref, 'org.opencontainers.image.ref.name': tag },
        },
      ],
    }),
  );
  await run('tar', ['--sort=name', `--mtime=${TAR_MTIME}`, '--owner=0', '--group=0', '--numeric-owner', '-C', join(work, 'layout'), '-cf', join(work, 'image.tar'), '.'], { timeoutMs: 300_000 });
  rmSync(opts.outDir, { recursive: true, force: true });
  mkdirSync(dirname(opts.outDir), { recursive: true });
  renameSync(work, opts.outDir);
  return { ref: opts.ref, tag, layoutDir: join(opts.outDir, 'layout'), archive: join(opts.outDir, 'image.tar'), manifestDigest: manifest.digest };
}

/** A root directory holding only busybox-static at /bin/busybox (plus /tmp, /etc). */
function busyboxRoot(dir: string): string {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, 'bin'), { recursive: true });
  mkdirSync(join(dir, 'tmp'), { recursive: true });
  chmodSync(join(dir, 'tmp'), 0o1777);
  mkdirSync(join(dir, 'etc'), { recursive: true });
  copyFileSync('/bin/busybox', join(dir, 'bin', 'busybox'));
  chmodSync(join(dir, 'bin', 'busybox'), 0o755);
  for (const applet of ['sh', 'sleep', 'cat', 'ls', 'wget']) symlinkSync('busybox', join(dir, 'bin', applet));
  writeFileSync(join(dir, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
  writeFileSync(join(dir, 'etc', 'group'), 'root:x:0:\nnogroup:x:65534:\n');
  return dir;
}

/** A shell that waits forever; SIGTERM ends it at once (the pause container's only duty). */
export const WAIT_FOREVER = "trap 'exit 0' TERM INT; sleep 2147483647 & wait";

export async function pauseImage(): Promise<BuiltImage> {
  return busyboxImage(PAUSE_IMAGE, ['/bin/busybox', 'sh', '-c', WAIT_FOREVER], 'pause-3.6');
}

/**
 * One-layer busybox image running `entrypoint`, built under IMAGE_CACHE/<cacheName>.
 * extraFiles (path -> content) make its layer differ from every other busybox image here: two
 * images with the same layer share the blob in containerd, and a pull of the second fetches
 * only what the first lacks. `randomLayerBytes` adds a second layer holding one file
 * (/data/random) of that many pseudo-random bytes seeded by cacheName (incompressible, as a
 * real large layer is), written in 1 MiB chunks: memory stays small whatever its size.
 */
export async function busyboxImage(
  ref: string,
  entrypoint: string[],
  cacheName: string,
  extraFiles: Record<string, string> = {},
  opts: { randomLayerBytes?: number } = {},
): Promise<BuiltImage> {
  const outDir = join(IMAGE_CACHE, cacheName);
  const root = busyboxRoot(join(IMAGE_CACHE, `${cacheName}.root-${process.pid}`));
  const dataRoot = join(IMAGE_CACHE, `${cacheName}.data-${process.pid}`);
  for (const [path, content] of Object.entries(extraFiles)) {
    mkdirSync(join(root, dirname(path)), { recursive: true });
    writeFileSync(join(root, path), content);
  }
  try {
    const rootDirs = [root];
    if (opts.randomLayerBytes) {
      rmSync(dataRoot, { recursive: true, force: true });
      mkdirSync(join(dataRoot, 'data'), { recursive: true });
      const next = prngStream(cacheName);
      const fd = openSync(join(dataRoot, 'data', 'random'), 'w');
      try {
        for (let left = opts.randomLayerBytes; left > 0; left -= MiB) writeSync(fd, next(Math.min(MiB, left)));
      } finally {
        closeSync(fd);
      }
      rootDirs.push(dataRoot);
    }
    return await buildImage({ ref, rootDirs, config: { Entrypoint: entrypoint, Env: ['PATH=/bin'] }, outDir });
  } finally {
    rmSync(root, { recursive: true, force: true });
    rmSync(dataRoot, { recursive: true, force: true });
  }
}

const MiB = 1024 * 1024;

/** Shared libraries `ldd` reports for a binary (the loader included), as absolute paths. */
export async function sharedLibraries(binary: string): Promise<string[]> {
  const { stdout } = await run('ldd', [binary]);
  const libs: string[] = [];
  for (const line of stdout.split('\n')) {
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m) libs.push(m[1]!);
  }
  return libs;
}

/** Production node_modules for the repo's package-lock.json, cached by the lock file's hash. */
async function productionModules(root: string): Promise<string> {
  const lock = readFileSync(join(root, 'package-lock.json'));
  const hash = createHash('sha256').update(lock).update(readFileSync(join(root, 'package.json'))).digest('hex').slice(0, 16);
  const dir = join(IMAGE_CACHE, `prod-modules-${hash}`);
  if (existsSync(join(dir, 'node_modules'))) return dir;
  const work = `${dir}.building-${process.pid}`;
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  copyFileSync(join(root, 'package.json'), join(work, 'package.json'));
  copyFileSync(join(root, 'package-lock.json'), join(work, 'package-lock.json'));
  // As the Dockerfile's `npm prune --omit=dev`: what a production install resolves to.
  await run('npm', ['ci', '--omit=dev', '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund'], { cwd: work, timeoutMs: 300_000 });
  rmSync(dir, { recursive: true, force: true });
  renameSync(work, dir);
  // Older lock files' installs are never used again.
  for (const e of readdirSync(IMAGE_CACHE)) {
    if (e.startsWith('prod-modules-') && join(IMAGE_CACHE, e) !== dir && !e.includes('.building-')) rmSync(join(IMAGE_CACHE, e), { recursive: true, force: true });
  }
  return dir;
}

/**
 * The project image, as the Dockerfile's final stage builds it, from the local node binary and
 * the built app (npm run build must have run). Two layers: runtime (node + libraries), app.
 */
export async function projectImage(ref = PROJECT_IMAGE): Promise<BuiltImage> {
  const root = repoRoot();
  if (!existsSync(join(root, 'dist', 'bin', 'registry-mirror.js'))) throw new Error('dist/ is missing: run npm run build first');
  const work = join(IMAGE_CACHE, `project.roots-${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  try {
    const runtime = join(work, 'runtime');
    const nodeBin = realpathSync(process.execPath);
    const put = (src: string, dest: string) => {
      mkdirSync(join(runtime, dirname(dest)), { recursive: true });
      copyFileSync(realpathSync(src), join(runtime, dest));
    };
    put(nodeBin, '/usr/local/bin/node');
    chmodSync(join(runtime, 'usr/local/bin/node'), 0o755);
    for (const lib of await sharedLibraries(nodeBin)) put(lib, lib);
    for (const d of ['tmp', 'etc']) mkdirSync(join(runtime, d), { recursive: true });
    chmodSync(join(runtime, 'tmp'), 0o1777);
    writeFileSync(join(runtime, 'etc', 'passwd'), 'root:x:0:0:root:/root:/sbin/nologin\nnode:x:1000:1000:node:/home/node:/sbin/nologin\n');
    writeFileSync(join(runtime, 'etc', 'group'), 'root:x:0:\nnode:x:1000:\n');
    mkdirSync(join(runtime, 'var', 'lib', 'registry-mirror'), { recursive: true });

    const app = join(work, 'app', 'app');
    mkdirSync(join(app, 'dist'), { recursive: true });
    copyFileSync(join(root, 'package.json'), join(app, 'package.json'));
    cpSync(join(await productionModules(root), 'node_modules'), join(app, 'node_modules'), { recursive: true, verbatimSymlinks: true });
    for (const d of ['bin', 'mirror', 'operator']) {
      cpSync(join(root, 'dist', d), join(app, 'dist', d), { recursive: true, filter: (src) => !src.endsWith('.map') });
    }
    return await buildImage({
      ref,
      rootDirs: [runtime, join(work, 'app')],
      config: {
        Entrypoint: ['/usr/local/bin/node', '/app/dist/bin/registry-mirror.js'],
        Cmd: ['serve'],
        Env: ['PATH=/usr/local/bin:/usr/bin:/bin', 'NODE_ENV=production', 'MIRROR_STORAGE_PATH=/var/lib/registry-mirror'],
        User: '1000:1000',
        WorkingDir: '/app',
        ExposedPorts: { '5000/tcp': {} },
        Volumes: { '/var/lib/registry-mirror': {} },
      },
      outDir: join(IMAGE_CACHE, 'project'),
    });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
