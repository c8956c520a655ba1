// The node agent against a real kube-apiserver (etcd + kube-apiserver 1.20, test/rig/kube.ts):
// RegistryMirrors and their Services are created by the test (no operator, no controllers:
// the apiserver itself allocates ClusterIPs), the agent runs in this process with a temp dir
// as the node's certs.d, and the files and the NodeConfig condition are checked as they come
// and go, including the backup and byte-for-byte restore of a hosts.toml that was there first.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createWriteStream } from 'node:fs';
import { pino } from 'pino';
import { BACKUP_SUFFIX, managedOwner as markerOwner, readHostsToml } from '../../operator/node-agent/hosts-toml.js';
import { fileOwner } from '../../operator/node-agent/files.js';
import { parseNodeAgentFlags } from '../../operator/node-agent/flags.js';
import { startNodeAgent, type NodeAgentHandle } from '../../operator/node-agent/main.js';
import { MANAGED_SELECTOR } from '../../operator/render/names.js';
import { kubeAvailable } from '../rig/kube.js';
import { tempDir, waitFor } from '../../tools/launch/proc.js';
import { condition, createMirror, createNamespace, deleteMirror, eventsAbout, getMirror, patchMirror, startClusterWithCrd, waitMirror, type Cluster } from './operator-kit.js';
import { NODE_AGENT_CONTROLLER } from '../../operator/node-agent/agent.js';

const [labelKey, labelValue] = MANAGED_SELECTOR.split('=') as [string, string];
const NS = 'mirrors';
/** The RegistryMirror named in a managed file's marker (the agent instance is checked apart). */
const managedOwner = (t: string) => (markerOwner(t) === undefined ? undefined : fileOwner(t)?.mirror);
const ORIGINAL = '# written by the node\'s admin\nserver = "https://registry-1.docker.io"\n\n[host."https://corp-cache.example.com"]\n  capabilities = ["pull", "resolve"]\n';

// No operator runs here (Services are made by hand): the mirrors are plain http, so nothing waits
// for a certificate. The TLS path is in operator-tls.test.ts and node-tenancy.test.ts.
describe('node agent on a real kube-apiserver', { skip: !kubeAvailable() && 'kube-apiserver not built (test/rig/build-kube.sh)' }, () => {
  let cluster: Cluster;
  let hostsDir: string;
  let agent: NodeAgentHandle;
  let logFile: string;

  // As the operator creates it: labelled, and controlled by the RegistryMirror (by uid).
  const createService = async (name: string) => {
    const cr = await getMirror(cluster.kube, NS, name);
    const ownerReferences = [{ apiVersion: 'registry-mirror.io/v1alpha1', kind: 'RegistryMirror', name, uid: cr.metadata.uid, controller: true, blockOwnerDeletion: true }];
    const svc = (await cluster.kube.objects.create({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name, namespace: NS, labels: { [labelKey]: labelValue }, ownerReferences },
      spec: { ports: [{ name: 'http', port: 5000, targetPort: 'http' as any }], selector: { app: name } },
    } as any)) as any;
    return svc.spec.clusterIP as string;
  };
  const file = (registry: string) => join(hostsDir, registry, 'hosts.toml');
  const readFile = (registry: string) => (existsSync(file(registry)) ? readFileSync(file(registry), 'utf8') : undefined);
  const waitFile = (registry: string, pred: (text: string | undefined) => boolean, what: string) =>
    waitFor(() => pred(readFile(registry)), 15_000, `${what} (${registry}/hosts.toml now: ${readFile(registry) ?? 'absent'})`);
  const start = async () => {
    const flags = parseNodeAgentFlags(
      ['--kubeconfig', cluster.kubeconfig, '--hosts-dir', hostsDir, '--containerd-config', join(hostsDir, '..', 'no-config.toml'), '--health-host', '127.0.0.1', '--health-port', '0', '--resync-interval', '2s', '--node-config-namespaces', NS],
      { POD_NAMESPACE: 'kube-system', NODE_AGENT_DAEMONSET: 'rm-node-agent', NODE_NAME: 'node-a' },
    );
    return startNodeAgent(flags, { log: pino({ level: 'debug' }, createWriteStream(logFile, { flags: 'a' })) });
  };

  before(async () => {
    cluster = await startClusterWithCrd();
    await createNamespace(cluster.kube, NS);
    hostsDir = join(tempDir('node-agent'), 'certs.d');
    logFile = join(cluster.dir, 'node-agent.log');
    mkdirSync(join(hostsDir, 'docker.io'), { recursive: true });
    writeFileSync(file('docker.io'), ORIGINAL);
    // A registry the agent never manages: must stay untouched throughout.
    mkdirSync(join(hostsDir, 'quay.io'), { recursive: true });
    writeFileSync(file('quay.io'), 'server = "https://quay.io"\n');
    agent = await start();
  });

  after(async () => {
    await agent?.stop();
    await cluster?.stop();
  });

  it('writes hosts.toml for a mirror once its Service has a ClusterIP, backing up the file that was there', async () => {
    await createMirror(cluster.kube, NS, 'hub', { upstream: { registry: 'docker.io', url: 'http://10.88.0.1:5999' }, tls: { mode: 'disabled' } });
    // No Service yet: nothing is written, the condition says why.
    await waitMirror(cluster.kube, NS, 'hub', (cr) => condition(cr, 'NodeConfig')?.reason === 'WaitingForService', 'WaitingForService');
    assert.equal(readFile('docker.io'), ORIGINAL);

    const ip = await createService('hub');
    await waitFile('docker.io', (t) => managedOwner(t ?? '') === `${NS}/hub`, 'managed file');
    const doc = readHostsToml(readFile('docker.io')!);
    assert.equal(doc.server, 'http://10.88.0.1:5999');
    assert.deepEqual(doc.hosts.map((h) => h.url), [`http://${ip}:5000`, 'https://corp-cache.example.com', 'https://registry-1.docker.io']);
    assert.deepEqual(doc.hosts[0], { url: `http://${ip}:5000`, capabilities: ['pull', 'resolve'], dialTimeout: '200ms' });
    assert.equal(readFileSync(join(hostsDir, 'docker.io', `hosts.toml${BACKUP_SUFFIX}`), 'utf8'), ORIGINAL);
    // The marker names this agent's instance (its release: namespace/DaemonSet).
    assert.equal(fileOwner(readFile('docker.io')!)?.instance, 'kube-system/rm-node-agent');
    const cr = await waitMirror(cluster.kube, NS, 'hub', (c) => condition(c, 'NodeConfig')?.status === 'True', 'NodeConfig True');
    assert.equal(condition(cr, 'NodeConfig')?.reason, 'HostsConfigured');
  });

  it('lets the older of two mirrors for one registry win, and reports the conflict on the newer', async () => {
    await createMirror(cluster.kube, NS, 'hub-too', { upstream: { registry: 'docker.io', url: 'http://10.88.0.1:5998' }, tls: { mode: 'disabled' } });
    await createService('hub-too');
    const loser = await waitMirror(cluster.kube, NS, 'hub-too', (c) => condition(c, 'NodeConfig')?.reason === 'RegistryConflict', 'RegistryConflict');
    assert.match(condition(loser, 'NodeConfig')!.message, /mirrors\/hub/);
    assert.equal(condition(loser, 'NodeConfig')!.status, 'False');
    assert.equal(managedOwner(readFile('docker.io')!), `${NS}/hub`);
    // A conflict only the agents see is also a Warning Event on the RegistryMirror.
    const event = await waitFor(
      async () => (await eventsAbout(cluster.kube, NS, loser.metadata.uid)).find((e) => e.reason === 'RegistryConflict'),
      15_000,
      'RegistryConflict Event',
    );
    assert.equal(event!.type, 'Warning');
    assert.equal(event!.note, condition(loser, 'NodeConfig')!.message);
    assert.equal(event!.reportingController, NODE_AGENT_CONTROLLER);
    assert.equal(event!.reportingInstance, 'node-a');
  });

  it('handles a second registry, and nodeConfig.enabled=false removes its file and directory', async () => {
    await createMirror(cluster.kube, NS, 'ghcr', { upstream: { registry: 'ghcr.io' }, tls: { mode: 'disabled' } });
    const ip = await createService('ghcr');
    await waitFile('ghcr.io', (t) => !!t && readHostsToml(t).hosts[0]?.url === `http://${ip}:5000`, 'ghcr.io file');
    assert.equal(readHostsToml(readFile('ghcr.io')!).server, 'https://ghcr.io');
    await patchMirror(cluster.kube, NS, 'ghcr', { spec: { nodeConfig: { enabled: false } } });
    await waitFile('ghcr.io', (t) => t === undefined, 'ghcr.io file removed');
    assert.equal(existsSync(join(hostsDir, 'ghcr.io')), false);
    await waitMirror(cluster.kube, NS, 'ghcr', (c) => condition(c, 'NodeConfig')?.reason === 'Disabled', 'NodeConfig Disabled');
  });

  it('takes over again (keeping the new file as the backup) when an admin writes over its file', async () => {
    writeFileSync(file('docker.io'), ORIGINAL);
    await waitFile('docker.io', (t) => managedOwner(t ?? '') === `${NS}/hub`, 'file taken over again at the resync');
    assert.equal(readFileSync(join(hostsDir, 'docker.io', `hosts.toml${BACKUP_SUFFIX}`), 'utf8'), ORIGINAL);
  });

  it('moves to the next mirror when the winner goes, and restores the original file when the last one goes', async () => {
    await deleteMirror(cluster.kube, NS, 'hub');
    await waitFile('docker.io', (t) => managedOwner(t ?? '') === `${NS}/hub-too`, 'hub-too takes over');
    await waitMirror(cluster.kube, NS, 'hub-too', (c) => condition(c, 'NodeConfig')?.status === 'True', 'hub-too NodeConfig True');
    await deleteMirror(cluster.kube, NS, 'hub-too');
    await waitFile('docker.io', (t) => t === ORIGINAL, 'original restored');
    assert.equal(existsSync(join(hostsDir, 'docker.io', `hosts.toml${BACKUP_SUFFIX}`)), false);
    assert.equal(readFile('quay.io'), 'server = "https://quay.io"\n');
  });

  it('keeps its files over a restart, and removes them when its DaemonSet is gone at shutdown', async () => {
    await createMirror(cluster.kube, NS, 'k8s', { upstream: { registry: 'registry.k8s.io' }, tls: { mode: 'disabled' } });
    await createService('k8s');
    await waitFile('registry.k8s.io', (t) => managedOwner(t ?? '') === `${NS}/k8s`, 'registry.k8s.io file');
    // There is no DaemonSet rm-node-agent in kube-system: stop() takes that as an uninstall.
    await agent.stop();
    assert.equal(readFile('registry.k8s.io'), undefined);
    assert.equal(readFile('docker.io'), ORIGINAL);
    assert.equal(readFile('quay.io'), 'server = "https://quay.io"\n');
    // A restarted agent writes it again from the cluster's state.
    agent = await start();
    await waitFile('registry.k8s.io', (t) => managedOwner(t ?? '') === `${NS}/k8s`, 'registry.k8s.io file again');
  });
});
