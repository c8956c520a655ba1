// A real Docker Engine (Debian bookworm's docker.io: dockerd 20.10.24) as a client of the
// mirror, the way Docker users point it there: `registry-mirrors` (and, for pulling from the
// mirror by `mirror:port/name`, `insecure-registries`) in daemon.json.
//
// Each instance is confined to one temp dir: its own --data-root, --exec-root, --pidfile,
// unix socket, daemon.json (--config-file, so /etc/docker/daemon.json is never read) and
// libtrust key (daemon.json "deprecated-key-path": dockerd 20.10 otherwise writes /etc/docker/key.json),
// and its own containerd (test/rig/containerd.ts, passed with --containerd, so dockerd starts
// no managed containerd whose defaults reach /opt/containerd). No iptables, no ip6tables, no
// bridge, no ip forwarding or masquerading: it changes nothing in the host's network. vfs
// storage (no overlay mounts to leave behind). The CLI gets its own DOCKER_CONFIG dir.
//
// Facts this module relies on, checked against dockerd 20.10.24 (Debian):
//  - registry-mirrors applies to docker.io only; dockerd asks the mirror for
//    /v2/library/<name>/... and, when the mirror fails (connection error, 404, 5xx), falls
//    back to registry-1.docker.io and reports *that* error. Tests have no internet, so a
//    pull that needed the fallback fails.
//  - An http:// registry mirror is accepted without insecure-registries (see the docker
//    integration test); pulling `127.0.0.1:PORT/name` directly needs insecure-registries
//    (or it tries https).
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startContainerd, type ContainerdHandle } from './containerd.js';
import { freePort, run, startProcess, tail, tempDir, waitFor, type ProcessHandle, type RunResult } from '../../tools/launch/proc.js';

/** Where dockerd may connect directly: loopback and the rig's own test addresses on lo. */
export const localNetworks = '127.0.0.0/8,10.77.0.0/16,localhost';

export interface DockerOptions {
  /** daemon.json registry-mirrors, e.g. ["http://127.0.0.1:5000"]. */
  registryMirrors?: string[];
  /** daemon.json insecure-registries, e.g. ["127.0.0.1:5000"]. */
  insecureRegistries?: string[];
  /** dockerd --log-level (debug logs every registry request it makes). */
  logLevel?: 'debug' | 'info' | 'warn';
  startTimeoutMs?: number;
  /**
   * Name of the cgroup (under each controller's root) that containers go in (--cgroup-parent).
   * Default: one unique to this instance, removed by stop() (only containers create it).
   */
  cgroupParent?: string;
}

export interface DockerHandle {
  /** "unix:///tmp/.../docker.sock", for DOCKER_HOST or -H. */
  host: string;
  dir: string;
  dataRoot: string;
  execRoot: string;
  pidFile: string;
  logFile: string;
  pid: number;
  /** Time from spawning dockerd to its first answer to `docker version` (ms). */
  startMs: number;
  containerd: ContainerdHandle;
  /** Runs the docker CLI against this daemon (-H); throws with stderr on failure unless allowFail. */
  docker(args: string[], opts?: { timeoutMs?: number; allowFail?: boolean }): Promise<RunResult>;
  /** `docker pull`; returns the digest it reports ("Digest: sha256:..."). */
  pull(ref: string, opts?: { timeoutMs?: number }): Promise<RunResult & { digest?: string; ms: number }>;
  /** RepoDigests and Id of a local image. */
  inspect(ref: string): Promise<{ id: string; repoDigests: string[] }>;
  /** Rewrites daemon.json with these keys changed and has dockerd reload it (SIGHUP to its pid). */
  reload(changes: Record<string, unknown>): Promise<void>;
  /** Removes every image (and container), so the next pull fetches again. */
  removeAllImages(): Promise<void>;
  logText(): string;
  stop(): Promise<void>;
}

/** The docker CLI of the docker.io package (a newer one in /usr/local/bin must not be picked up by PATH). */
export function dockerCli(): string {
  return existsSync('/usr/bin/docker') ? '/usr/bin/docker' : 'docker';
}

export function dockerdBin(): string {
  return existsSync('/usr/sbin/dockerd') ? '/usr/sbin/dockerd' : 'dockerd';
}

/** Why the Docker tests cannot run here (not root), or undefined. A missing dockerd is a failure, not a skip. */
export function dockerSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'dockerd needs root (run the suite as root, as CI does)';
  return undefined;
}

export async function startDocker(opts: DockerOptions = {}): Promise<DockerHandle> {
  const dir = tempDir('docker');
  const dataRoot = join(dir, 'data');
  const execRoot = join(dir, 'exec');
  const pidFile = join(dir, 'docker.pid');
  const socket = join(dir, 'docker.sock');
  const host = `unix://${socket}`;
  const configFile = join(dir, 'daemon.json');
  const cliConfig = join(dir, 'cli');
  const logFile = join(dir, 'dockerd.log');
  mkdirSync(cliConfig);
  // deprecated-key-path has no flag in 20.10, only this daemon.json key.
  const cgroupParent = opts.cgroupParent ?? `rm-test-docker-${process.pid}-${dir.slice(-6).replace(/[^A-Za-z0-9]/g, '_')}`;
  const daemonJson: Record<string, unknown> = { 'deprecated-key-path': join(dir, 'key.json'), 'cgroup-parent': `/${cgroupParent}` };
  if (opts.registryMirrors) daemonJson['registry-mirrors'] = opts.registryMirrors;
  if (opts.insecureRegistries) daemonJson['insecure-registries'] = opts.insecureRegistries;
  writeFileSync(configFile, JSON.stringify(daemonJson, null, 2));
  writeFileSync(join(cliConfig, 'config.json'), '{}');

  const containerd = await startContainerd();
  // dockerd falls back to registry-1.docker.io whenever a mirror fails. This machine may reach
  // nothing but loopback and its own test addresses, so every registry request that is not
  // for one of those goes to a proxy port nobody listens on: refused at once, and no DNS
  // look-up of a public name either (the proxy would resolve it).
  const noInternet = `http://127.0.0.1:${await freePort()}`;
  const started = Date.now();
  const proc: ProcessHandle = startProcess({
    cmd: dockerdBin(),
    args: [
      '--config-file', configFile,
      '--data-root', dataRoot,
      '--exec-root', execRoot,
      '--pidfile', pidFile,
      '-H', host,
      '--containerd', containerd.address,
      '--storage-driver', 'vfs',
      '--iptables=false',
      '--ip6tables=false',
      '--bridge=none',
      '--ip-forward=false',
      '--ip-masq=false',
      '--userland-proxy=false',
      '--log-level', opts.logLevel ?? 'info',
    ],
    // dockerd resolves nothing from HOME, but keep the CLI's and any helper's state here too.
    env: { DOCKER_CONFIG: cliConfig, HTTP_PROXY: noInternet, HTTPS_PROXY: noInternet, NO_PROXY: localNetworks },
    logFile,
  });
  const docker = async (args: string[], o: { timeoutMs?: number; allowFail?: boolean } = {}): Promise<RunResult> =>
    run(dockerCli(), ['-H', host, ...args], { timeoutMs: o.timeoutMs ?? 60000, allowFail: o.allowFail, env: { DOCKER_CONFIG: cliConfig, DOCKER_HOST: host } });

  let startMs = 0;
  try {
    await waitFor(
      async () => {
        if (!proc.alive()) return 'exited';
        await docker(['version', '--format', '{{.Server.Version}}'], { timeoutMs: 5000 });
        return 'up';
      },
      opts.startTimeoutMs ?? 60000,
      'dockerd to answer docker version',
    ).then((state) => {
      if (state === 'exited') throw new Error('dockerd exited');
    });
    startMs = Date.now() - started;
  } catch (err) {
    await proc.stop(5000);
    await containerd.stop();
    throw new Error(`${(err as Error).message}\ndockerd log:\n${tail(proc.logText())}`);
  }

  const readLog = (): string => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');
  const images = async (): Promise<string[]> => (await docker(['images', '-aq', '--no-trunc'])).stdout.split('\n').filter(Boolean);

  return {
    host,
    dir,
    dataRoot,
    execRoot,
    pidFile,
    logFile,
    pid: proc.pid,
    startMs,
    containerd,
    docker,
    async pull(ref, o = {}) {
      const t0 = Date.now();
      const r = await docker(['pull', ref], { timeoutMs: o.timeoutMs ?? 180000 });
      const digest = /Digest: (sha256:[a-f0-9]{64})/.exec(r.stdout)?.[1];
      return { ...r, digest, ms: Date.now() - t0 };
    },
    async inspect(ref) {
      const r = await docker(['image', 'inspect', '--format', '{{json .}}', ref]);
      const j = JSON.parse(r.stdout) as { Id: string; RepoDigests: string[] | null };
      return { id: j.Id, repoDigests: j.RepoDigests ?? [] };
    },
    async removeAllImages() {
      const containers = (await docker(['ps', '-aq'])).stdout.split('\n').filter(Boolean);
      if (containers.length > 0) await docker(['rm', '-f', ...containers]);
      const ids = [...new Set(await images())];
      if (ids.length > 0) await docker(['rmi', '-f', ...ids]);
      const left = await images();
      if (left.length > 0) throw new Error(`dockerd still holds images: ${left.join(', ')}`);
    },
    logText: readLog,
    async reload(changes) {
      Object.assign(daemonJson, changes);
      writeFileSync(configFile, JSON.stringify(daemonJson, null, 2));
      const reloads = () => (readLog().match(/Reloaded configuration/g) ?? []).length;
      const before = reloads();
      process.kill(proc.pid, 'SIGHUP');
      await waitFor(() => reloads() > before, 10000, 'dockerd to reload daemon.json');
    },
    async stop() {
      // dockerd stops its containers (none outlive it here) and exits on SIGTERM.
      await proc.stop(15000);
      await containerd.stop();
      // The empty per-instance cgroups a container run leaves under each controller.
      for (const dirPath of cgroupDirs(cgroupParent)) rmCgroup(dirPath);
    },
  };
}

/** /sys/fs/cgroup/<controller>/<name> (cgroup v1) and /sys/fs/cgroup[/unified]/<name> (v2) that exist. */
function cgroupDirs(name: string): string[] {
  const root = '/sys/fs/cgroup';
  const out: string[] = [];
  let controllers: string[] = [];
  try {
    controllers = readdirSync(root);
  } catch {
    return out;
  }
  for (const c of ['', ...controllers]) {
    const p = c ? join(root, c, name) : join(root, name);
    if (existsSync(p)) out.push(p);
  }
  return out;
}

/** A cgroup directory is removed with rmdir once its children are (deepest first). */
function rmCgroup(path: string): void {
  try {
    for (const e of readdirSync(path, { withFileTypes: true })) if (e.isDirectory()) rmCgroup(join(path, e.name));
    rmdirSync(path);
  } catch {
    /* busy or already gone */
  }
}
