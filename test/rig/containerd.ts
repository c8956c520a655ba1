// A real containerd (Debian's 1.6) as the client that matters most: it is what pulls through
// the mirror on a Kubernetes node. Each instance has its own root, state and socket in a temp
// dir, so tests never touch (or depend on) a system containerd.
//
// Facts this module relies on, checked against containerd/ctr 1.6.20:
//  - `ctr images pull --hosts-dir DIR` reads DIR/<registry>/hosts.toml exactly as the CRI's
//    registry.config_path does; it appends `?ns=<registry>` to every request to any host
//    but the registry's own default (registry-1.docker.io gets none; a loopback `server`
//    does get it). ctr 1.6 has no --local flag; pulls are
//    transferred by the ctr client and unpacked by the daemon into the native snapshotter,
//    which works here for both amd64 and arm64 layers (native just extracts files).
//  - `ctr images rm --sync` removes the image and garbage-collects its content and snapshots
//    before returning; a failed pull's partial ingest is released with its lease.
//  - On a connection error, a 404 or a 5xx, per request (manifest HEAD or blob GET),
//    containerd tries the next host (finally `server`); a digest mismatch is not retried on
//    another host: the pull fails. An interrupted blob body is resumed with
//    `Range: bytes=N-` on the same host.
//  - hosts.toml `dial_timeout` is unknown to 1.6 (ignored without error).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run, startProcess, tempDir, waitFor, tail, type ProcessHandle, type RunResult } from '../../tools/launch/proc.js';

export interface PullOptions {
  /** Directory holding <registry>/hosts.toml files. */
  hostsDir?: string;
  /** e.g. "linux/arm64"; default: this machine's platform. */
  platform?: string;
  allPlatforms?: boolean;
  /** "user:password" for the registry. */
  user?: string;
  /** Talk plain HTTP to the registry in the reference (when no hosts.toml is used). */
  plainHttp?: boolean;
  timeoutMs?: number;
}

export interface ContainerdHandle {
  /** The gRPC socket path, for `ctr --address`. */
  address: string;
  root: string;
  logFile: string;
  pid: number;
  /** Runs ctr against this containerd; throws with stderr on failure. */
  ctr(args: string[], opts?: { timeoutMs?: number }): Promise<RunResult>;
  /** Pulls (fetch, verify, unpack into native) ref, e.g. "docker.io/library/small:v1". */
  pull(ref: string, opts?: PullOptions): Promise<RunResult & { ms: number }>;
  removeImage(ref: string): Promise<void>;
  /** Image names known to containerd. */
  images(): Promise<string[]>;
  /** Digests of every blob in the content store. */
  contentDigests(): Promise<string[]>;
  /** Removes every image, blob and snapshot, so the next pull fetches everything again. */
  removeAllContent(): Promise<void>;
  logText(): string;
  stop(): Promise<void>;
}

export interface ContainerdOptions {
  /** containerd namespace for ctr commands. */
  namespace?: string;
  /** containerd log level (debug shows every resolver request). */
  logLevel?: 'debug' | 'info' | 'warn';
}

function toml(s: string): string {
  // A TOML basic string is JSON-compatible for the ASCII paths and URLs we write.
  return JSON.stringify(s);
}

export async function startContainerd(opts: ContainerdOptions = {}): Promise<ContainerdHandle> {
  const dir = tempDir('containerd');
  const root = join(dir, 'root');
  const state = join(dir, 'state');
  // unix socket paths are limited to 108 bytes; mkdtemp names under /tmp stay well inside.
  const address = join(dir, 'c.sock');
  const configFile = join(dir, 'config.toml');
  const logFile = join(dir, 'containerd.log');
  const namespace = opts.namespace ?? 'default';
  writeFileSync(
    configFile,
    [
      'version = 2',
      `root = ${toml(root)}`,
      `state = ${toml(state)}`,
      // No CRI (not needed, and it would want CNI and a sandbox image); no snapshotters that
      // probe for kernel features this VM may lack and fill the log with errors.
      'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]',
      '[grpc]',
      `  address = ${toml(address)}`,
      '[ttrpc]',
      `  address = ${toml(address + '.ttrpc')}`,
      '[debug]',
      `  level = ${toml(opts.logLevel ?? 'info')}`,
      // The default is /opt/containerd, shared with any system containerd.
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = ${toml(join(dir, 'opt'))}`,
      '',
    ].join('\n'),
  );

  const proc: ProcessHandle = startProcess({ cmd: 'containerd', args: ['--config', configFile], logFile });
  const ctr = async (args: string[], o: { timeoutMs?: number } = {}): Promise<RunResult> =>
    run('ctr', ['--address', address, '--namespace', namespace, ...args], { timeoutMs: o.timeoutMs ?? 60000 });

  try {
    await waitFor(
      async () => {
        if (!proc.alive()) throw new Error(`containerd exited:\n${tail(proc.logText())}`);
        await ctr(['version'], { timeoutMs: 5000 });
        return true;
      },
      20000,
      'containerd to answer ctr version',
    );
  } catch (err) {
    await proc.stop(2000);
    throw new Error(`${(err as Error).message}\ncontainerd log:\n${tail(proc.logText())}`);
  }

  const images = async (): Promise<string[]> => (await ctr(['images', 'ls', '-q'])).stdout.split('\n').filter(Boolean);
  const contentDigests = async (): Promise<string[]> => (await ctr(['content', 'ls', '-q'])).stdout.split('\n').filter(Boolean);

  return {
    address,
    root,
    logFile,
    pid: proc.pid,
    ctr,
    async pull(ref, o = {}) {
      const args = ['images', 'pull', '--snapshotter', 'native'];
      if (o.hostsDir) args.push('--hosts-dir', o.hostsDir);
      if (o.platform) args.push('--platform', o.platform);
      if (o.allPlatforms) args.push('--all-platforms');
      if (o.user) args.push('--user', o.user);
      if (o.plainHttp) args.push('--plain-http');
      const started = Date.now();
      const r = await ctr([...args, ref], { timeoutMs: o.timeoutMs ?? 120000 });
      return { ...r, ms: Date.now() - started };
    },
    async removeImage(ref) {
      await ctr(['images', 'rm', '--sync', ref]);
    },
    images,
    contentDigests,
    async removeAllContent() {
      const refs = await images();
      if (refs.length > 0) await ctr(['images', 'rm', '--sync', ...refs]);
      // Blobs fetched without an image (e.g. left by a failed pull whose lease was kept)
      // are not garbage to containerd's GC until unreferenced; delete them outright.
      const left = await contentDigests();
      if (left.length > 0) await ctr(['content', 'rm', ...left]);
      const still = await contentDigests();
      if (still.length > 0) throw new Error(`containerd still holds content after removeAllContent: ${still.join(', ')}`);
    },
    logText: () => proc.logText(),
    async stop() {
      await proc.stop(5000);
    },
  };
}

export interface HostsTomlOptions {
  /**
   * The upstream containerd falls back to when the mirror fails. Default: what the node agent
   * writes in production (registry-1.docker.io for docker.io, https://<registry> otherwise).
   * Tests that may make containerd fall back should point this at a registry on 127.0.0.1,
   * or containerd will try the internet (a DNS lookup, which fails here).
   */
  server?: string;
  /** Go duration, e.g. "200ms": how long containerd waits to connect before the next host. */
  dialTimeout?: string;
  capabilities?: string[];
  /** CA file(s) the mirror's (https) certificate verifies against: `ca = ...`. */
  ca?: string;
  /** A client certificate and its key for the mirror: `client = [[cert, key]]`. */
  client?: { certFile: string; keyFile: string };
}

/**
 * Writes <hostsDir>/<registry>/hosts.toml sending pulls for `registry` to mirrorUrl (http, or
 * https with `ca` and optionally `client`) first. Returns the file's path.
 */
export function writeHostsToml(hostsDir: string, registry: string, mirrorUrl: string, opts: HostsTomlOptions = {}): string {
  const server = opts.server ?? (registry === 'docker.io' ? 'https://registry-1.docker.io' : `https://${registry}`);
  const dir = join(hostsDir, registry);
  mkdirSync(dir, { recursive: true });
  const lines = [
    `server = ${toml(server)}`,
    '',
    `[host.${toml(mirrorUrl.replace(/\/$/, ''))}]`,
    `  capabilities = [${(opts.capabilities ?? ['pull', 'resolve']).map(toml).join(', ')}]`,
  ];
  if (opts.dialTimeout) lines.push(`  dial_timeout = ${toml(opts.dialTimeout)}`);
  if (opts.ca) lines.push(`  ca = ${toml(opts.ca)}`);
  if (opts.client) lines.push(`  client = [[${toml(opts.client.certFile)}, ${toml(opts.client.keyFile)}]]`);
  const path = join(dir, 'hosts.toml');
  writeFileSync(path, lines.join('\n') + '\n');
  return path;
}
