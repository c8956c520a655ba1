// Issue 12 on a real kube-apiserver: the operator and a node agent, both in this process with
// the same admin policy (admin namespace "registry-mirror"; team-b may use only ghcr.io as an
// upstream). A tenant's older RegistryMirror in another namespace must not steer the nodes:
// it gets NodeConfig=False/NamespaceNotAllowed (from the operator and the agent alike) while
// the admin's newer one is what hosts.toml points at. A refused upstream is Degraded and never
// applied, a metadata-address fallback never reaches a node, and a RegistryMirror with a huge
// spec costs the agent's cache only a small summary.
import assert from 'node:assert/strict';
import { createWriteStream, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { fileOwner } from '../../operator/node-agent/files.js';
import { parseNodeAgentFlags } from '../../operator/node-agent/flags.js';
import { readHostsToml } from '../../operator/node-agent/hosts-toml.js';
import { startNodeAgent, type NodeAgentHandle } from '../../operator/node-agent/main.js';
import { GROUP, PLURAL, VERSION } from '../../operator/types.js';
import { kubeAvailable } from '../rig/kube.js';
import { tempDir, waitFor } from '../../tools/launch/proc.js';
import { condition, createMirror, createNamespace, get, getMirror, startClusterWithCrd, startInProcessOperator, waitMirror, type Cluster } from './operator-kit.js';

const ADMIN_NS = 'registry-mirror';
const POLICY_ARGS = ['--admin-namespace', ADMIN_NS, '--allowed-upstream', 'team-b=https://ghcr.io'];

describe('node tenancy on a real kube-apiserver', { skip: !kubeAvailable() && 'kube-apiserver not built (test/rig/build-kube.sh)' }, () => {
  let cluster: Cluster;
  let operator: Awaited<ReturnType<typeof startInProcessOperator>>;
  let agent: NodeAgentHandle;
  let hostsDir: string;

  const file = (registry: string) => join(hostsDir, registry, 'hosts.toml');
  const readFile = (registry: string) => (existsSync(file(registry)) ? readFileSync(file(registry), 'utf8') : undefined);
  const nodeConfig = (ns: string, name: string, reason: string) =>
    waitMirror(cluster.kube, ns, name, (cr) => condition(cr, 'NodeConfig')?.reason === reason, `${ns}/${name} NodeConfig ${reason}`, 30_000);

  before(async () => {
    cluster = await startClusterWithCrd();
    for (const ns of [ADMIN_NS, 'team-a', 'team-b']) await createNamespace(cluster.kube, ns);
    hostsDir = join(tempDir('node-tenancy'), 'certs.d');
    mkdirSync(hostsDir, { recursive: true });
    operator = await startInProcessOperator(cluster, POLICY_ARGS);
    const flags = parseNodeAgentFlags(
      [
        '--kubeconfig', cluster.kubeconfig,
        '--hosts-dir', hostsDir,
        '--containerd-config', join(hostsDir, '..', 'none.toml'),
        '--health-host', '127.0.0.1',
        '--health-port', '0',
        '--resync-interval', '2s',
        ...POLICY_ARGS,
      ],
      { POD_NAMESPACE: ADMIN_NS, NODE_AGENT_DAEMONSET: 'rm-node-agent' },
    );
    agent = await startNodeAgent(flags, { log: pino({ level: 'debug' }, createWriteStream(join(cluster.dir, 'node-agent.log'), { flags: 'a' })) });
  });

  after(async () => {
    await agent?.stop();
    await operator?.stop();
    await cluster?.stop();
  });

  it("keeps a tenant's older RegistryMirror off the nodes; the admin's newer one configures them", async () => {
    // The tenant comes first: under "oldest wins" alone it would have steered every node.
    await createMirror(cluster.kube, 'team-a', 'hub', { upstream: { registry: 'docker.io', url: 'https://evil.example' } });
    await new Promise((r) => setTimeout(r, 1100)); // creationTimestamp has one-second resolution
    await createMirror(cluster.kube, ADMIN_NS, 'hub', { upstream: { registry: 'docker.io' } });

    const tenant = await nodeConfig('team-a', 'hub', 'NamespaceNotAllowed');
    const c = condition(tenant, 'NodeConfig')!;
    assert.equal(c.status, 'False');
    assert.match(c.message, /an admin must list namespace team-a in nodeConfig\.allowedNamespaces of the registry-mirror chart/);
    // The tenant's mirror itself is still deployed for in-cluster clients (its Service exists).
    assert.ok(await get(cluster.kube, 'v1', 'Service', 'team-a', 'hub'));

    await nodeConfig(ADMIN_NS, 'hub', 'HostsConfigured');
    await waitFor(() => fileOwner(readFile('docker.io') ?? '')?.mirror === `${ADMIN_NS}/hub`, 15_000, 'docker.io hosts.toml of the admin mirror');
    const doc = readHostsToml(readFile('docker.io')!);
    assert.equal(doc.server, 'https://registry-1.docker.io');
    assert.doesNotMatch(readFile('docker.io')!, /evil/);
    const svc = await get(cluster.kube, 'v1', 'Service', ADMIN_NS, 'hub');
    assert.equal(doc.hosts[0]?.url, `http://${svc!.spec.clusterIP}:5000`);
    // Not planned for nodes: the agent's summary carries the refusal, and no spec.
    const cached = agent.agent.cached().mirrors.find((m) => m.metadata.namespace === 'team-a');
    assert.equal(cached?.refused?.reason, 'NamespaceNotAllowed');
    assert.equal(cached?.spec, undefined);
  });

  it('never writes a metadata-address fallback, even for a registry nobody else mirrors', async () => {
    await createMirror(cluster.kube, ADMIN_NS, 'quay', { upstream: { registry: 'quay.io', url: 'http://169.254.169.254' } });
    const cr = await nodeConfig(ADMIN_NS, 'quay', 'UnsafeUpstream');
    assert.match(condition(cr, 'NodeConfig')!.message, /link-local/);
    await agent.agent.syncNow();
    assert.equal(readFile('quay.io'), undefined);
  });

  it('refuses an upstream the policy does not allow for the namespace: Degraded, nothing applied', async () => {
    await createMirror(cluster.kube, 'team-b', 'hub', { upstream: { registry: 'docker.io', url: 'https://evil.example' } });
    const cr = await waitMirror(cluster.kube, 'team-b', 'hub', (c) => condition(c, 'Degraded')?.reason === 'UpstreamNotAllowed', 'Degraded UpstreamNotAllowed', 30_000);
    assert.equal(condition(cr, 'Degraded')!.status, 'True');
    assert.match(condition(cr, 'Degraded')!.message, /nodeConfig\.allowedUpstreams/);
    assert.equal(await get(cluster.kube, 'apps/v1', 'Deployment', 'team-b', 'hub'), undefined);
    assert.equal(await get(cluster.kube, 'v1', 'ConfigMap', 'team-b', 'hub-config'), undefined);
    // An allowed upstream in the same namespace is applied.
    await createMirror(cluster.kube, 'team-b', 'ghcr', { upstream: { registry: 'ghcr.io' } });
    await waitFor(async () => !!(await get(cluster.kube, 'apps/v1', 'Deployment', 'team-b', 'ghcr')), 30_000, 'team-b/ghcr applied');
  });

  it("keeps only a small summary of a RegistryMirror with a huge resources value in the agent's cache", async () => {
    // As large as the installed CRD admits (an older CRD let 1.4 MB through; a bounded one
    // refuses it at admission, and then the largest accepted value is used).
    let created = false;
    for (const size of [1_400_000, 100_000, 4096, 253, 63]) {
      try {
        await cluster.kube.custom.createNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          plural: PLURAL,
          namespace: ADMIN_NS,
          body: {
            apiVersion: `${GROUP}/${VERSION}`,
            kind: 'RegistryMirror',
            metadata: { name: 'big', namespace: ADMIN_NS },
            spec: { upstream: { registry: 'big.example.com', url: 'https://big.example.com' }, resources: { limits: { memory: '1'.repeat(size) } } },
          },
        });
        created = true;
        break;
      } catch (err: any) {
        if (err?.code !== 422 && err?.code !== 413) throw err;
      }
    }
    assert.ok(created, 'some resources value is accepted');
    const full = JSON.stringify(await getMirror(cluster.kube, ADMIN_NS, 'big')).length;
    await waitFor(() => agent.agent.cached().mirrors.some((m) => m.metadata.name === 'big'), 15_000, 'agent saw the big mirror');
    const summary = agent.agent.cached().mirrors.find((m) => m.metadata.name === 'big')!;
    const size = JSON.stringify(summary).length;
    assert.ok(size < 2048, `summary is ${size} bytes`);
    assert.doesNotMatch(JSON.stringify(summary), /111111111111/);
    assert.ok(full > size, `the object (${full} bytes) is larger than its summary (${size})`);
    // Every cached object is a summary, and the Service summaries hold no labels or selectors.
    const all = agent.agent.cached();
    for (const m of all.mirrors) assert.ok(JSON.stringify(m).length < 4096);
    for (const s of all.services) assert.deepEqual(Object.keys(s.metadata ?? {}).sort(), ['name', 'namespace', 'ownerReferences', 'resourceVersion']);
    // The operator refuses 1.4 MB values (InvalidSpec), and so the nodes never get it either.
    if (full > 100_000) await nodeConfig(ADMIN_NS, 'big', 'InvalidSpec');
  });
});
