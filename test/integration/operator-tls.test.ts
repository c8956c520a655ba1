// spec.tls and node credentials against a real kube-apiserver, with the operator running under
// exactly deploy/rbac/operator.yaml and a node agent under the chart's node-agent rules:
//  - generated (the default): the CA Secret appears in the operator's namespace, the serving
//    Secret in the mirror's with every Service name and the ClusterIP (checked with
//    node:crypto), the <name>-ca ConfigMap, status.tls, and the Deployment mounts and probes;
//  - secret: the user's Secret is mounted and its ca.crt published; a missing one is reported;
//  - disabled: plain http, none of it;
//  - spec.auth + nodeConfig: the node agent's CSR is approved and signed by the operator, and
//    hosts.toml names the CA and the node's client certificate; forged CSRs are denied;
//  - no key material in the operator's log or any status.
import assert from 'node:assert/strict';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CertificatesV1Api } from '@kubernetes/client-node';
import { pino } from 'pino';
import { parse } from 'yaml';
import { connect } from '../../operator/kube/client.js';
import { parseNodeAgentFlags } from '../../operator/node-agent/flags.js';
import { COMPANION, readHostsToml } from '../../operator/node-agent/hosts-toml.js';
import { startNodeAgent, type NodeAgentHandle } from '../../operator/node-agent/main.js';
import { createCa, createCsr, issueServing, loadCa } from '../../operator/tls/ca.js';
import { NODE_CLIENT_SIGNER } from '../../operator/tls/csr.js';
import { kubeAvailable } from '../rig/kube.js';
import { tail, tempDir, waitFor } from '../../tools/launch/proc.js';
import { condition, createMirror, get, startInProcessOperator, waitMirror, type Cluster, startRbacCluster } from './operator-kit.js';

const OPS_NS = 'rm-system';
const NS = 'tls';
const AGENT_SA = 'rm-node-agent';
const AGENT_USER = `system:serviceaccount:${OPS_NS}:${AGENT_SA}`;
const NODE = 'worker-1';
const CLIENT_PASSWORD = 'tls-client-Pa55-3c1d';

describe('operator: spec.tls and node client certificates', { skip: !kubeAvailable() && 'kube-apiserver not built (test/rig/build-kube.sh)' }, () => {
  let cluster: Cluster;
  let op: Awaited<ReturnType<typeof startInProcessOperator>>;
  let agent: NodeAgentHandle | undefined;
  let hostsDir: string;
  let caPem: string;
  const dump = (err: unknown): never => {
    throw new Error(`${(err as Error).message}\n--- operator log ---\n${tail(readFileSync(op.logFile, 'utf8'), 40)}`);
  };
  const secretData = async (ns: string, name: string): Promise<(Record<string, any> & { text: (k: string) => string }) | undefined> => {
    const s = await get(cluster.kube, 'v1', 'Secret', ns, name);
    return s && { ...s, text: (k: string) => Buffer.from(s.data?.[k] ?? '', 'base64').toString('utf8') };
  };

  before(async () => {
    cluster = await startRbacCluster(OPS_NS, [NS], { [AGENT_USER]: [], 'tenant-user': [] });
    // The chart's node-agent rules (charts/registry-mirror/templates/rbac.yaml), for the agent's
    // ServiceAccount user; a tenant who may create CSRs too (to forge one).
    const role = (name: string, rules: unknown[], user: string) => [
      { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', metadata: { name }, rules },
      {
        apiVersion: 'rbac.authorization.k8s.io/v1',
        kind: 'ClusterRoleBinding',
        metadata: { name },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name },
        subjects: [{ kind: 'User', name: user, apiGroup: 'rbac.authorization.k8s.io' }],
      },
    ];
    for (const o of [
      ...role(
        'node-agent',
        [
          { apiGroups: ['registry-mirror.io'], resources: ['registrymirrors'], verbs: ['list', 'watch'] },
          { apiGroups: [''], resources: ['services'], verbs: ['list', 'watch'] },
          { apiGroups: ['registry-mirror.io'], resources: ['registrymirrors/status'], verbs: ['patch'] },
          { apiGroups: ['certificates.k8s.io'], resources: ['certificatesigningrequests'], verbs: ['create', 'get'] },
        ],
        AGENT_USER,
      ),
      ...role('tenant-csr', [{ apiGroups: ['certificates.k8s.io'], resources: ['certificatesigningrequests'], verbs: ['create', 'get'] }], 'tenant-user'),
      { apiVersion: 'v1', kind: 'Node', metadata: { name: NODE } },
    ]) {
      await cluster.kube.objects.create(o as any);
    }
    op = await startInProcessOperator(cluster, [
      '--kubeconfig', cluster.kubeconfigFor('operator-user'),
      '--ca-namespace', OPS_NS,
      '--node-agent-service-account', `${OPS_NS}/${AGENT_SA}`,
      '--node-config-namespaces', NS,
    ]);
  });
  after(async () => {
    await agent?.stop();
    await op?.stop();
    await cluster?.stop();
  });

  test('default (generated): CA Secret, serving Secret for the Service names and ClusterIP, CA ConfigMap, status.tls, mounts', async () => {
    const created = await createMirror(cluster.kube, NS, 'hub', { upstream: { registry: 'docker.io' } });
    const svc = await waitFor(() => get(cluster.kube, 'v1', 'Service', NS, 'hub'), 20_000, 'Service hub').catch(dump);
    const ip = svc!.spec.clusterIP as string;
    assert.equal(svc!.spec.ports[0].name, 'https');

    const ca = await waitFor(() => secretData(OPS_NS, 'registry-mirror-ca'), 20_000, 'CA Secret').catch(dump);
    caPem = ca!.text('ca.crt');
    const caCert = new X509Certificate(caPem);
    assert.equal(caCert.ca, true);
    assert.ok(ca!.text('ca.key').includes('PRIVATE KEY'), 'the CA key is in its Secret');
    assert.equal(ca!.metadata.ownerReferences, undefined, 'the CA outlives every mirror');

    // The first certificate may predate the ClusterIP; the Service's arrival brings a reissue.
    const serving = await waitFor(
      async () => {
        const s = await secretData(NS, 'hub-tls');
        return s && new X509Certificate(s.text('tls.crt')).checkIP(ip) ? s : undefined;
      },
      20_000,
      'serving certificate with the ClusterIP',
    ).catch(dump);
    assert.equal(serving!.type, 'kubernetes.io/tls');
    assert.equal(serving!.metadata.ownerReferences[0].uid, created.metadata.uid);
    const cert = new X509Certificate(serving!.text('tls.crt'));
    for (const h of ['hub', 'hub.tls', 'hub.tls.svc', 'hub.tls.svc.cluster.local']) assert.equal(cert.checkHost(h), h, h);
    assert.equal(cert.checkHost('other.tls.svc'), undefined);
    assert.ok(cert.checkIssued(caCert) && cert.verify(caCert.publicKey), 'issued by the operator CA');
    assert.ok(cert.checkPrivateKey(createPrivateKey(serving!.text('tls.key'))));
    assert.equal(serving!.text('ca.crt'), caPem);
    const days = (Date.parse(cert.validTo) - Date.now()) / 86_400_000;
    assert.ok(days > 89 && days <= 90, `valid 90 days (${days})`);

    const cm = await get(cluster.kube, 'v1', 'ConfigMap', NS, 'hub-ca');
    assert.deepEqual(cm!.data, { 'ca.crt': caPem });
    const cr = await waitMirror(cluster.kube, NS, 'hub', (m) => m.status?.tls?.notAfter === new Date(cert.validTo).toISOString(), 'status.tls of the current certificate').catch(dump);
    assert.equal(cr.status!.endpoint, 'https://hub.tls.svc:5000');
    assert.equal(cr.status!.tls!.mode, 'generated');
    assert.equal(cr.status!.tls!.caConfigMap, 'hub-ca');
    assert.equal(cr.status!.tls!.caBundle, caPem);
    const renew = Date.parse(cr.status!.tls!.renewAfter!);
    assert.ok(renew > Date.now() + 59 * 86_400_000 && renew < Date.now() + 61 * 86_400_000, 'renewed at two thirds');

    const dep = await get(cluster.kube, 'apps/v1', 'Deployment', NS, 'hub');
    const pod = dep!.spec.template.spec;
    assert.equal(pod.volumes.find((v: any) => v.name === 'tls').secret.secretName, 'hub-tls');
    const c = pod.containers[0];
    assert.deepEqual(c.volumeMounts.find((m: any) => m.name === 'tls'), { name: 'tls', mountPath: '/etc/registry-mirror/tls', readOnly: true });
    assert.equal(c.readinessProbe.httpGet.scheme, 'HTTPS');
    const config = parse((await get(cluster.kube, 'v1', 'ConfigMap', NS, 'hub-config'))!.data['config.yaml']);
    assert.deepEqual(config.tls, { certFile: '/etc/registry-mirror/tls/tls.crt', keyFile: '/etc/registry-mirror/tls/tls.key' });
  });

  test('a fleet (spec.storage.s3) checks its peers against the published CA', async () => {
    await createMirror(cluster.kube, NS, 'fleet', { upstream: { registry: 'ghcr.io' }, replicas: 2, storage: { s3: { bucket: 'tls-bucket' } } });
    // The Service is applied last: once it is there, everything is.
    const peers = await waitFor(() => get(cluster.kube, 'v1', 'Service', NS, 'fleet-peers'), 20_000, 'fleet peers Service').catch(dump);
    assert.equal(peers!.spec.ports[0].name, 'https');
    const cm = await get(cluster.kube, 'v1', 'ConfigMap', NS, 'fleet-config');
    assert.equal(parse(cm!.data['config.yaml']).tls.peerCAFile, '/etc/registry-mirror/ca/ca.crt');
    assert.equal((await get(cluster.kube, 'v1', 'ConfigMap', NS, 'fleet-ca'))?.data['ca.crt'], caPem);
  });

  test("secret: the user's Secret is mounted and its ca.crt published; a missing Secret is reported", async () => {
    const own = await loadCa(await createCa(new Date(), 'my own CA'));
    const leaf = await issueServing(own, ['own.tls.svc'], new Date());
    await cluster.kube.objects.create({
      apiVersion: 'v1',
      kind: 'Secret',
      type: 'kubernetes.io/tls',
      metadata: { name: 'own-cert', namespace: NS },
      stringData: { 'tls.crt': leaf.certPem, 'tls.key': leaf.keyPem, 'ca.crt': own.certPem },
    } as any);
    await createMirror(cluster.kube, NS, 'own', { upstream: { registry: 'quay.io' }, tls: { mode: 'secret', secretName: 'own-cert' } });
    const cr = await waitMirror(cluster.kube, NS, 'own', (m) => m.status?.tls?.mode === 'secret', 'status.tls secret').catch(dump);
    assert.equal(cr.status!.tls!.caBundle, own.certPem);
    assert.equal(cr.status!.tls!.notAfter, undefined, 'the user renews their own certificate');
    assert.equal((await get(cluster.kube, 'v1', 'ConfigMap', NS, 'own-ca'))?.data['ca.crt'], own.certPem);
    const dep = await get(cluster.kube, 'apps/v1', 'Deployment', NS, 'own');
    assert.equal(dep!.spec.template.spec.volumes.find((v: any) => v.name === 'tls').secret.secretName, 'own-cert');
    assert.equal(await get(cluster.kube, 'v1', 'Secret', NS, 'own-tls'), undefined, 'no certificate issued');

    await createMirror(cluster.kube, NS, 'lost', { upstream: { registry: 'quay.io' }, tls: { mode: 'secret', secretName: 'nope' } });
    const lost = await waitMirror(cluster.kube, NS, 'lost', (m) => condition(m, 'Degraded')?.reason === 'TLSSecretNotFound', 'TLSSecretNotFound').catch(dump);
    assert.match(condition(lost, 'Degraded')!.message, /Secret "nope" named by spec\.tls\.secretName does not exist in namespace "tls"/);
    assert.equal(await get(cluster.kube, 'apps/v1', 'Deployment', NS, 'lost'), undefined, 'nothing applied');
  });

  test('disabled: plain http, no certificate, no CA ConfigMap, no status.tls', async () => {
    await createMirror(cluster.kube, NS, 'plain', { upstream: { registry: 'registry.k8s.io' }, tls: { mode: 'disabled' } });
    const cr = await waitMirror(cluster.kube, NS, 'plain', (m) => m.status?.observedGeneration === 1, 'plain reconciled').catch(dump);
    assert.equal(cr.status!.endpoint, 'http://plain.tls.svc:5000');
    assert.equal(cr.status!.tls, undefined);
    assert.equal(await get(cluster.kube, 'v1', 'Secret', NS, 'plain-tls'), undefined);
    assert.equal(await get(cluster.kube, 'v1', 'ConfigMap', NS, 'plain-ca'), undefined);
    assert.equal(parse((await get(cluster.kube, 'v1', 'ConfigMap', NS, 'plain-config'))!.data['config.yaml']).tls, undefined);
  });

  test('spec.auth + nodeConfig: the node agent gets a client certificate through a CSR, and hosts.toml names it and the CA', async () => {
    await cluster.kube.objects.create({ apiVersion: 'v1', kind: 'Secret', metadata: { name: 'clients', namespace: NS }, stringData: { tokens: `${CLIENT_PASSWORD}\n` } } as any);
    await createMirror(cluster.kube, NS, 'private', { upstream: { registry: 'private.example.com', url: 'https://private.example.com' }, auth: { secret: { name: 'clients' } } });
    const config = await waitFor(
      async () => {
        const cm = await get(cluster.kube, 'v1', 'ConfigMap', NS, 'private-config');
        return cm && parse(cm.data['config.yaml']);
      },
      20_000,
      'private config',
    ).catch(dump);
    assert.equal(config.tls.clientCAFile, '/etc/registry-mirror/ca/client-ca.crt');
    // The objects are applied one after another: the CA ConfigMap may land after the config.
    const caMap = await waitFor(() => get(cluster.kube, 'v1', 'ConfigMap', NS, 'private-ca'), 20_000, 'private CA ConfigMap').catch(dump);
    assert.deepEqual(caMap!.data, { 'ca.crt': caPem, 'client-ca.crt': caPem });

    hostsDir = join(tempDir('tls-agent'), 'certs.d');
    mkdirSync(hostsDir, { recursive: true });
    const flags = parseNodeAgentFlags(
      ['--kubeconfig', cluster.kubeconfigFor(AGENT_USER), '--hosts-dir', hostsDir, '--containerd-config', join(hostsDir, '..', 'none.toml'), '--health-host', '127.0.0.1', '--health-port', '0', '--node-config-namespaces', NS],
      { NODE_NAME: NODE },
    );
    agent = await startNodeAgent(flags, { log: pino({ level: 'debug' }, createWriteStream(join(cluster.dir, 'tls-agent.log'), { flags: 'a' })) });

    const dir = join(hostsDir, 'private.example.com');
    await waitFor(() => existsSync(join(dir, 'hosts.toml')), 30_000, 'hosts.toml with the client certificate').catch(dump);
    const svc = await get(cluster.kube, 'v1', 'Service', NS, 'private');
    const doc = readHostsToml(readFileSync(join(dir, 'hosts.toml'), 'utf8'));
    assert.deepEqual(doc.hosts[0], {
      url: `https://${svc!.spec.clusterIP}:5000`,
      capabilities: ['pull', 'resolve'],
      dialTimeout: '200ms',
      ca: COMPANION.ca,
      client: [[COMPANION.clientCert, COMPANION.clientKey]],
    });
    assert.equal(readFileSync(join(dir, COMPANION.ca), 'utf8'), caPem);
    const clientCert = new X509Certificate(readFileSync(join(dir, COMPANION.clientCert), 'utf8'));
    assert.equal(clientCert.subject, `CN=node:${NODE}`);
    assert.ok(clientCert.checkIssued(new X509Certificate(caPem)) && clientCert.verify(new X509Certificate(caPem).publicKey));
    assert.ok(clientCert.checkPrivateKey(createPrivateKey(readFileSync(join(dir, COMPANION.clientKey), 'utf8'))));
    assert.equal(statSync(join(dir, COMPANION.clientKey)).mode & 0o777, 0o600);

    const cr = await waitMirror(cluster.kube, NS, 'private', (m) => condition(m, 'NodeConfig')?.reason === 'HostsConfigured', 'NodeConfig HostsConfigured').catch(dump);
    assert.equal(condition(cr, 'NodeConfig')!.status, 'True', 'no ClientAuthRequired: nodes have credentials now');

    // The CSR the agent made: approved by the operator, for the agent's user.
    const certs = cluster.kube.kc.makeApiClient(CertificatesV1Api);
    const csrs = (await certs.listCertificateSigningRequest()).items.filter((c) => c.spec.signerName === NODE_CLIENT_SIGNER);
    assert.equal(csrs.length, 1);
    assert.equal(csrs[0]!.spec.username, AGENT_USER);
    assert.equal(csrs[0]!.status?.conditions?.find((c) => c.type === 'Approved')?.status, 'True');
  });

  test('forged CSRs are denied: another requester, or a node that does not exist', async () => {
    const csrFor = async (user: string, name: string, cn: string) => {
      const { csrPem } = await createCsr(cn);
      const api = connect(cluster.kubeconfigFor(user)).kc.makeApiClient(CertificatesV1Api);
      await api.createCertificateSigningRequest({
        body: { metadata: { name }, spec: { request: Buffer.from(csrPem).toString('base64'), signerName: NODE_CLIENT_SIGNER, usages: ['client auth'] } },
      });
    };
    await csrFor('tenant-user', 'forged-requester', `node:${NODE}`);
    await csrFor(AGENT_USER, 'forged-node', 'node:ghost');
    const admin = cluster.kube.kc.makeApiClient(CertificatesV1Api);
    for (const [name, reason] of [['forged-requester', 'UnknownRequester'], ['forged-node', 'UnknownNode']] as const) {
      const denied = await waitFor(
        async () => {
          const c = await admin.readCertificateSigningRequest({ name });
          return c.status?.conditions?.find((x) => x.type === 'Denied');
        },
        20_000,
        `${name} denied`,
      ).catch(dump);
      assert.equal(denied!.reason, reason);
      const c = await admin.readCertificateSigningRequest({ name });
      assert.equal(c.status?.certificate, undefined, `${name}: nothing signed`);
    }
  });

  test('no key material in the operator log or any status', async () => {
    const ca = await secretData(OPS_NS, 'registry-mirror-ca');
    const keyBody = ca!.text('ca.key').split('\n')[1]!;
    const serving = (await secretData(NS, 'hub-tls'))!.text('tls.key').split('\n')[1]!;
    const log = readFileSync(op.logFile, 'utf8');
    const agentLog = readFileSync(join(cluster.dir, 'tls-agent.log'), 'utf8');
    for (const [what, text] of [['operator log', log], ['agent log', agentLog]] as const) {
      assert.equal(text.includes(keyBody), false, `${what}: no CA key`);
      assert.equal(text.includes(serving), false, `${what}: no serving key`);
      assert.equal(text.includes('PRIVATE KEY'), false, `${what}: no PEM key at all`);
      assert.equal(text.includes(CLIENT_PASSWORD), false, `${what}: no client token`);
    }
    const crs = (await cluster.kube.custom.listNamespacedCustomObject({ group: 'registry-mirror.io', version: 'v1alpha1', plural: 'registrymirrors', namespace: NS })) as any;
    assert.equal(JSON.stringify(crs.items.map((i: any) => i.status)).includes('PRIVATE KEY'), false);
  });
});
