// A real Kubernetes control plane for tests: etcd (Debian etcd-server) and kube-apiserver
// 1.20.2 (built by test/rig/build-kube.sh into /var/cache/registry-mirror/kube/bin, or
// $KUBE_BIN_DIR), each on free loopback ports in a temp dir, stopped by pid.
//
// No controller-manager runs: Deployments get no pods, garbage collection does not cascade and
// namespaces get no default ServiceAccount. Tests set object status themselves where they need
// it (e.g. a Pod marked Ready) and assert ownerReferences instead of cascading deletion.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Agent } from 'undici';
import { freePort, startProcess, tempDir, removeTempDir, tail, type ProcessHandle } from '../../tools/launch/proc.js';

export const KUBE_BIN_DIR = process.env.KUBE_BIN_DIR ?? '/var/cache/registry-mirror/kube/bin';

export interface KubeCluster {
  /** https://127.0.0.1:PORT */
  server: string;
  /** Bearer token of a system:masters user. */
  adminToken: string;
  /** Kubeconfig file for the admin user (TLS verification off: the cert is self-signed). */
  kubeconfig: string;
  /** Writes a kubeconfig for another token user of the token file (see users option). */
  kubeconfigFor(user: string): string;
  dir: string;
  /** Stops kube-apiserver and starts it again on the same port and etcd (data kept). */
  restart(): Promise<void>;
  /** Stops only kube-apiserver (restart() brings it back). */
  stopApiserver(): Promise<void>;
  startApiserver(): Promise<void>;
  stop(): Promise<void>;
  apiserverLog(): string;
}

export interface StartKubeOptions {
  /** Extra token users: name -> groups. Their tokens are in tokens.get(name). */
  users?: Record<string, string[]>;
  /** Address kube-apiserver binds and advertises (default 127.0.0.1). The e2e cluster uses the
   * node IP, so pods reach it through the kubernetes Service. */
  bindAddress?: string;
  /** More kube-apiserver flags. */
  extraArgs?: string[];
}

/** True when the kube-apiserver binary is present (build-kube.sh has run). */
export function kubeAvailable(): boolean {
  return existsSync(join(KUBE_BIN_DIR, 'kube-apiserver')) && existsSync('/usr/bin/etcd');
}

const insecure = new Agent({ connect: { rejectUnauthorized: false } });

export async function startKube(opts: StartKubeOptions = {}): Promise<KubeCluster & { tokens: Map<string, string> }> {
  const apiserverBin = join(KUBE_BIN_DIR, 'kube-apiserver');
  if (!existsSync(apiserverBin)) {
    throw new Error(`${apiserverBin} is missing: run test/rig/build-kube.sh (or set KUBE_BIN_DIR)`);
  }
  const dir = tempDir('kube');
  const [etcdClient, etcdPeer, apiPort] = [await freePort(), await freePort(), await freePort()];

  const etcd = startProcess({
    cmd: 'etcd',
    args: [
      '--name=test',
      `--data-dir=${join(dir, 'etcd')}`,
      `--listen-client-urls=http://127.0.0.1:${etcdClient}`,
      `--advertise-client-urls=http://127.0.0.1:${etcdClient}`,
      `--listen-peer-urls=http://127.0.0.1:${etcdPeer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeer}`,
      `--initial-cluster=test=http://127.0.0.1:${etcdPeer}`,
      '--log-level=warn',
    ],
    logFile: join(dir, 'etcd.log'),
  });

  const tokens = new Map<string, string>();
  const adminToken = randomBytes(16).toString('hex');
  tokens.set('admin', adminToken);
  const lines = [`${adminToken},admin,admin-uid,"system:masters"`];
  let uid = 1;
  for (const [user, groups] of Object.entries(opts.users ?? {})) {
    const t = randomBytes(16).toString('hex');
    tokens.set(user, t);
    lines.push(`${t},${user},uid-${uid++}${groups.length ? `,"${groups.join(',')}"` : ''}`);
  }
  writeFileSync(join(dir, 'tokens.csv'), `${lines.join('\n')}\n`);
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  writeFileSync(join(dir, 'sa.key'), privateKey.export({ type: 'pkcs1', format: 'pem' }));
  writeFileSync(join(dir, 'sa.pub'), publicKey.export({ type: 'spki', format: 'pem' }));

  const bindAddress = opts.bindAddress ?? '127.0.0.1';
  const server = `https://${bindAddress}:${apiPort}`;
  let apiserver: ProcessHandle | undefined;
  const startApiserver = async () => {
    apiserver = startProcess({
      cmd: apiserverBin,
      args: [
        `--etcd-servers=http://127.0.0.1:${etcdClient}`,
        `--bind-address=${bindAddress}`,
        `--secure-port=${apiPort}`,
        '--insecure-port=0',
        `--cert-dir=${join(dir, 'certs')}`,
        `--token-auth-file=${join(dir, 'tokens.csv')}`,
        '--authorization-mode=RBAC',
        `--service-account-key-file=${join(dir, 'sa.pub')}`,
        `--service-account-signing-key-file=${join(dir, 'sa.key')}`,
        '--service-account-issuer=https://kubernetes.default.svc',
        '--api-audiences=https://kubernetes.default.svc',
        '--service-cluster-ip-range=10.96.0.0/16',
        '--kubelet-preferred-address-types=InternalIP',
        '--allow-privileged=true',
        '--v=1',
        ...(opts.extraArgs ?? []),
      ],
      logFile: join(dir, 'apiserver.log'),
    });
    await waitReady(server, adminToken, apiserver);
  };

  await waitEtcd(etcdClient, etcd);
  await startApiserver();

  const writeKubeconfig = (user: string, token: string) => {
    const file = join(dir, `kubeconfig-${user}.yaml`);
    writeFileSync(
      file,
      [
        'apiVersion: v1',
        'kind: Config',
        'clusters:',
        `- name: test\n  cluster:\n    server: ${server}\n    insecure-skip-tls-verify: true`,
        'users:',
        `- name: ${user}\n  user:\n    token: ${token}`,
        'contexts:',
        `- name: test\n  context:\n    cluster: test\n    user: ${user}\n    namespace: default`,
        'current-context: test',
        '',
      ].join('\n'),
    );
    return file;
  };

  const stopApiserver = async () => {
    if (apiserver?.alive()) await apiserver.stop(10_000);
  };
  return {
    server,
    adminToken,
    tokens,
    dir,
    kubeconfig: writeKubeconfig('admin', adminToken),
    kubeconfigFor(user: string) {
      const t = tokens.get(user);
      if (!t) throw new Error(`no token user ${user}`);
      return writeKubeconfig(user, t);
    },
    stopApiserver,
    startApiserver,
    async restart() {
      await stopApiserver();
      await startApiserver();
    },
    async stop() {
      await stopApiserver();
      if (etcd.alive()) await etcd.stop(5000);
      try {
        removeTempDir(dir);
      } catch {
        /* removed at exit */
      }
    },
    apiserverLog: () => apiserver?.logText() ?? '',
  };
}

async function waitEtcd(port: number, etcd: ProcessHandle): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (!etcd.alive()) throw new Error(`etcd exited:\n${tail(etcd.logText())}`);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/health`);
      const body = (await res.json()) as { health?: string };
      if (body.health === 'true') return;
    } catch {
      /* not up yet */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`etcd not healthy after 20s:\n${tail(etcd.logText())}`);
}

async function waitReady(server: string, token: string, proc: ProcessHandle): Promise<void> {
  const deadline = Date.now() + 60_000;
  let last = '';
  while (Date.now() < deadline) {
    if (!proc.alive()) throw new Error(`kube-apiserver exited:\n${tail(proc.logText(), 40)}`);
    try {
      const res = await fetch(`${server}/readyz`, {
        headers: { authorization: `Bearer ${token}` },
        // @ts-expect-error undici's fetch takes a dispatcher; Node's RequestInit type lacks it
        dispatcher: insecure,
        signal: AbortSignal.timeout(2000),
      });
      last = `${res.status} ${(await res.text()).slice(0, 200)}`;
      if (res.status === 200) return;
    } catch (err) {
      last = (err as Error).message;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`kube-apiserver not ready after 60s (${last}):\n${tail(proc.logText(), 40)}`);
}
