// End to end on a real single-node cluster (test/rig/cluster.ts): helm install the chart with
// the project image (assembled as an OCI archive, tools/oci/image.ts, and imported into the
// node), apply a RegistryMirror for docker.io whose upstream is a real docker-registry on the
// CNI bridge address, and check the user story: the node agent writes hosts.toml into the
// node containerd's config_path, a Deployment of docker.io/library/<fixture> is pulled by the
// node's containerd *through the mirror* (the mirror's log, its /stats and the upstream's
// access log prove it), `kubectl get registrymirrors` shows Ready and cache figures; then
// deleting the RegistryMirror and `helm uninstall` each remove the node's hosts.toml.
//
// Every process is stopped by pid in after(), network changes are undone there too (also
// after a failure); on a failure the cluster's state and the component logs are printed.
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request as httpsRequest } from 'node:https';
import { X509Certificate } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { readHostsToml, managedOwner } from '../../operator/node-agent/hosts-toml.js';
import { BRIDGE_IP, clusterAvailable, startCluster, type Cluster } from '../rig/cluster.js';
import { busyboxImage, projectImage, WAIT_FOREVER } from '../../tools/oci/image.js';
import { run, waitFor } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { skopeoCopy } from '../../tools/launch/skopeo.js';
import { e2eKit, installChart, RELEASE, RELEASE_NS } from './kit.js';

const avail = clusterAvailable();
const NS = 'mirrors';
const FIXTURE = 'rm-e2e-sleeper';
const FIXTURE_REF = `docker.io/library/${FIXTURE}:v1`;
/** A second image (its own layer), pulled in the TLS story. */
const TLS_FIXTURE = 'rm-e2e-sleeper-tls';
const TLS_FIXTURE_REF = `docker.io/library/${TLS_FIXTURE}:v1`;
const CLIENT_TOKEN = 'e2e-other-client-token-7f3a9c';

function mirrorYaml(upstreamUrl: string, storage?: string): string {
  return [
    'apiVersion: registry-mirror.io/v1alpha1',
    'kind: RegistryMirror',
    'metadata: {name: docker-hub, namespace: mirrors}',
    'spec:',
    `  upstream: {registry: docker.io, url: "${upstreamUrl}"}`,
    '  cache: {tagTTL: 1m}',
    // This story checks the pull path over plain http (its assertions fetch http://ClusterIP);
    // spec.tls defaults to generated, so it says so.
    '  tls: {mode: disabled}',
    ...(storage ? [`  storage: {size: ${storage}}`] : []),
    '  logLevel: info',
    '',
  ].join('\n');
}

/** A hostPath PersistentVolume (no provisioner runs here) for the mirror's cache PVC. */
function pvYaml(path: string): string {
  return `apiVersion: v1
kind: PersistentVolume
metadata: {name: rm-e2e-cache}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: "${path}", type: Directory}
`;
}

/** The status of a GET over https trusting only ca (the certificate names the ClusterIP, which is checked). */
function fetchHttps(url: string, ca: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { ca }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

const SLEEPER = `apiVersion: apps/v1
kind: Deployment
metadata: {name: sleeper, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: sleeper}}
  template:
    metadata: {labels: {app: sleeper}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: sleeper
          image: ${FIXTURE_REF}
          imagePullPolicy: IfNotPresent
`;

describe('end to end on a single-node cluster', { skip: !avail.ok && avail.why, timeout: 10 * 60_000 }, () => {
  let cluster: Cluster;
  let upstream: RegistryHandle;
  let hostsFile: string;
  let clusterIP = '';
  let cacheDir = '';
  let tlsSleeper: Awaited<ReturnType<typeof busyboxImage>>;
  const { mark, k, jsonpath, step } = e2eKit('e2e', () => cluster, [
    ['app.kubernetes.io/component=operator', RELEASE_NS],
    ['app.kubernetes.io/component=node-agent', RELEASE_NS],
    ['app.kubernetes.io/instance=docker-hub', NS],
  ]);
  const t0 = Date.now();

  before(
    step(async () => {
      const [project, sleeper, tlsImage] = await Promise.all([
        projectImage(),
        // Its own layer and config (not the pause image's), so every blob of it is pulled.
        busyboxImage(FIXTURE_REF, ['/bin/busybox', 'sh', '-c', `echo ${FIXTURE} started; ${WAIT_FOREVER}`], 'e2e-sleeper', {
          '/etc/rm-e2e-fixture': `${FIXTURE}\n`,
        }),
        busyboxImage(TLS_FIXTURE_REF, ['/bin/busybox', 'sh', '-c', `echo ${TLS_FIXTURE} started; ${WAIT_FOREVER}`], 'e2e-sleeper-tls', {
          '/etc/rm-e2e-fixture': `${TLS_FIXTURE}\n`,
        }),
        (async () => {
          cluster = await startCluster();
          mark('cluster ready');
        })(),
      ]);
      mark('images built');
      await cluster.importImage(project.archive);
      mark('project image imported');
      // The upstream: a real docker-registry on the bridge address, where both the mirror pod
      // and the node's containerd reach it. The fixture is pushed there, never imported.
      upstream = await startRegistry({ listenHost: BRIDGE_IP });
      await skopeoCopy(`oci:${sleeper.layoutDir}:${sleeper.tag}`, `docker://${upstream.host}/library/${FIXTURE}:v1`);
      await skopeoCopy(`oci:${tlsImage.layoutDir}:${tlsImage.tag}`, `docker://${upstream.host}/library/${TLS_FIXTURE}:v1`);
      tlsSleeper = tlsImage;
      hostsFile = join(cluster.certsDir, 'docker.io', 'hosts.toml');
      cacheDir = join(cluster.dir, 'pv', 'rm-e2e-cache');
      // A registry the agent has nothing to do with: its file must survive everything.
      mkdirSync(join(cluster.certsDir, 'quay.io'), { recursive: true });
      writeFileSync(join(cluster.certsDir, 'quay.io', 'hosts.toml'), 'server = "https://quay.io"\n');
      mark('upstream ready');
    }),
  );

  after(async () => {
    const t = Date.now();
    await upstream?.stop().catch(() => {});
    await cluster?.stop();
    process.stderr.write(`# e2e teardown ${((Date.now() - t) / 1000).toFixed(1)}s, total ${((Date.now() - t0) / 1000).toFixed(1)}s\n`);
  });

  it(
    'installs with helm: operator and node agent run',
    step(async () => {
      // The RegistryMirror lives in its own namespace: steering the nodes from there is the
      // admin's decision (README "Tenancy"), made here at install.
      assert.match(await installChart(cluster, [NS]), /STATUS: deployed/);
      mark('helm install done');
      assert.equal(await jsonpath(['get', 'ds', '-n', RELEASE_NS, `${RELEASE}-registry-mirror-node-agent`], '{.status.numberReady}'), '1');
      assert.equal(await jsonpath(['get', 'deploy', '-n', RELEASE_NS, `${RELEASE}-registry-mirror-operator`], '{.status.readyReplicas}'), '1');
      // The agent checked the node containerd's config and found config_path set.
      const logs = await k('logs', '-n', RELEASE_NS, `ds/${RELEASE}-registry-mirror-node-agent`);
      assert.match(logs, /node agent started/);
      assert.match(logs, /containerd reads hosts.toml files from the hosts directory/);
      assert.doesNotMatch(logs, /"level":40/, 'no warnings');
    }),
  );

  it(
    'a RegistryMirror for docker.io becomes Ready and the node agent points containerd at it',
    step(async () => {
      await k('create', 'namespace', NS);
      // hostPath ignores fsGroup: the directory must be writable by the mirror's uid itself.
      mkdirSync(cacheDir, { recursive: true });
      chmodSync(cacheDir, 0o777);
      await cluster.kubectl(['apply', '-f', '-'], { stdin: pvYaml(cacheDir) });
      await cluster.kubectl(['apply', '-f', '-'], { stdin: mirrorYaml(upstream.url, '1Gi') });
      await waitFor(async () => (await jsonpath(['get', 'registrymirror', '-n', NS, 'docker-hub'], '{.status.conditions[?(@.type=="Ready")].status}')) === 'True', 120_000, 'RegistryMirror Ready');
      mark('mirror Ready');
      assert.equal(await jsonpath(['get', 'pvc', '-n', NS, 'docker-hub-cache'], '{.status.phase}'), 'Bound');
      assert.equal(await jsonpath(['get', 'pvc', '-n', NS, 'docker-hub-cache'], '{.spec.volumeName}'), 'rm-e2e-cache');
      clusterIP = await jsonpath(['get', 'svc', '-n', NS, 'docker-hub'], '{.spec.clusterIP}');
      assert.match(clusterIP, /^10\.96\./);
      await waitFor(() => existsSync(hostsFile) && readFileSync(hostsFile, 'utf8').includes(clusterIP), 30_000, `hosts.toml naming ${clusterIP}`);
      const text = readFileSync(hostsFile, 'utf8');
      // The marker names the RegistryMirror and the node agent instance (release) that wrote it.
      assert.equal(managedOwner(text), `${NS}/docker-hub@${RELEASE_NS}/${RELEASE}-registry-mirror-node-agent`);
      const doc = readHostsToml(text);
      assert.equal(doc.server, upstream.url);
      assert.deepEqual(doc.hosts, [{ url: `http://${clusterIP}:5000`, capabilities: ['pull', 'resolve'], dialTimeout: '200ms' }]);
      await waitFor(async () => (await jsonpath(['get', 'registrymirror', '-n', NS, 'docker-hub'], '{.status.conditions[?(@.type=="NodeConfig")].reason}')) === 'HostsConfigured', 30_000, 'NodeConfig condition');
      // The mirror answers on its ClusterIP from the node (kube-proxy's rules).
      const res = await fetch(`http://${clusterIP}:5000/v2/`);
      assert.equal(res.status, 200);
    }),
  );

  it(
    "the node's containerd pulls docker.io/library/<fixture> through the mirror",
    step(async () => {
      const pushed = (await upstream.requests()).length; // skopeo's push so far
      await cluster.kubectl(['apply', '-f', '-'], { stdin: SLEEPER });
      await waitFor(async () => (await jsonpath(['get', 'deploy', 'sleeper'], '{.status.availableReplicas}')) === '1', 120_000, 'sleeper Deployment available');
      mark('sleeper running');
      assert.equal(await jsonpath(['get', 'pods', '-l', 'app=sleeper'], '{.items[0].status.phase}'), 'Running');
      // The mirror's request log: the manifest and blobs, asked for by containerd with ?ns=docker.io.
      const log = await k('logs', '-n', NS, 'deploy/docker-hub');
      assert.match(log, new RegExp(`/v2/library/${FIXTURE}/manifests/v1\\?ns=docker\\.io`));
      // Config and layer: both blobs of the image came through the mirror.
      const blobGets = log.match(new RegExp(`"GET","url":"/v2/library/${FIXTURE}/blobs/sha256:[0-9a-f]{64}\\?ns=docker\\.io","status":200`, 'g')) ?? [];
      assert.equal(blobGets.length, 2, log);
      // Its figures: a miss that went upstream.
      const stats = (await (await fetch(`http://${clusterIP}:5000/stats`)).json()) as Record<string, number>;
      assert.ok(stats.misses! > 0 && stats.bytesFromUpstream! > 0 && stats.bytesServed! > 0, JSON.stringify(stats));
      const metrics = await (await fetch(`http://${clusterIP}:5000/metrics`)).text();
      assert.match(metrics, /^registry_mirror_\w+(\{[^}]*\})? [1-9]/m);
      // Every upstream request came from the mirror; containerd never had to fall back.
      const pulls = (await upstream.requests()).slice(pushed).filter((r) => r.path.includes(FIXTURE));
      assert.ok(pulls.length > 0, 'the upstream served the fixture');
      assert.deepEqual([...new Set(pulls.map((r) => r.userAgent))], ['registry-mirror'], JSON.stringify(pulls));
      // The blobs are in the mirror's volume (the hostPath PersistentVolume), not in the pod.
      const { stdout: stored } = await run('find', [cacheDir, '-type', 'f', '-size', '+100k']);
      assert.ok(stored.trim().split('\n').filter(Boolean).length >= 1, `no layer-sized file under the PV: ${stored}`);
    }),
  );

  it(
    'kubectl get registrymirrors shows Ready and non-zero cache figures',
    step(async () => {
      await waitFor(async () => Number(await jsonpath(['get', 'registrymirror', '-n', NS, 'docker-hub'], '{.status.cache.bytesServed}')) > 0, 60_000, 'status.cache figures');
      const table = await k('get', 'registrymirrors', '-n', NS);
      process.stderr.write(`# ${table.trim().split('\n').join('\n# ')}\n`);
      const [header, row] = table.trim().split('\n');
      assert.match(header!, /NAME\s+REGISTRY\s+READY\s+PODS\s+HIT RATIO\s+STORED\s+AGE/);
      const cols = row!.trim().split(/\s+/);
      assert.equal(cols[0], 'docker-hub');
      assert.equal(cols[1], 'docker.io');
      assert.equal(cols[2], 'True');
      assert.equal(cols[3], '1', `Pods column (ready replicas): ${row}`);
      assert.match(cols[5]!, /^[1-9][\d.]*(Ki|Mi|Gi|B)?/, `Stored column: ${row}`);
    }),
  );

  it(
    'TLS with spec.auth: the node pulls over TLS with its own client certificate, and the mirror logs who pulled',
    step(async () => {
      assert.ok(tlsSleeper);
      // Other clients keep a bearer token; the node gets a certificate from the operator's CA.
      await cluster.kubectl(['apply', '-f', '-'], {
        stdin: `apiVersion: v1\nkind: Secret\nmetadata: {name: hub-clients, namespace: ${NS}}\nstringData: {tokens: "${CLIENT_TOKEN}"}\n`,
      });
      await k('patch', 'registrymirror', '-n', NS, 'docker-hub', '--type', 'merge', '-p', JSON.stringify({ spec: { tls: { mode: 'generated' }, auth: { secret: { name: 'hub-clients' } } } }));
      await waitFor(
        () => existsSync(hostsFile) && readHostsToml(readFileSync(hostsFile, 'utf8')).hosts[0]?.client !== undefined,
        180_000,
        'hosts.toml with https, the CA and the node client certificate',
      );
      mark('hosts.toml over TLS');
      const doc = readHostsToml(readFileSync(hostsFile, 'utf8'));
      assert.deepEqual(doc.hosts, [
        {
          url: `https://${clusterIP}:5000`,
          capabilities: ['pull', 'resolve'],
          dialTimeout: '200ms',
          ca: 'registry-mirror-ca.crt',
          client: [['registry-mirror-client.crt', 'registry-mirror-client.key']],
        },
      ]);
      const dir = join(cluster.certsDir, 'docker.io');
      const ca = readFileSync(join(dir, 'registry-mirror-ca.crt'), 'utf8');
      assert.equal(ca.trim(), (await jsonpath(['get', 'configmap', '-n', NS, 'docker-hub-ca'], '{.data.ca\\.crt}')).trim());
      const nodeCert = new X509Certificate(readFileSync(join(dir, 'registry-mirror-client.crt'), 'utf8'));
      const nodeName = await jsonpath(['get', 'nodes'], '{.items[0].metadata.name}');
      assert.equal(nodeCert.subject, `CN=node:${nodeName}`);
      await waitFor(async () => (await jsonpath(['get', 'registrymirror', '-n', NS, 'docker-hub'], '{.status.conditions[?(@.type=="Ready")].status}')) === 'True', 180_000, 'mirror Ready over TLS');
      // Without credentials the mirror refuses; with the published CA the TLS is verified.
      const noCreds = await fetchHttps(`https://${clusterIP}:5000/v2/`, ca);
      assert.equal(noCreds, 401);

      await cluster.kubectl(['apply', '-f', '-'], { stdin: SLEEPER.replaceAll('sleeper', 'sleeper-tls').replace(FIXTURE_REF, TLS_FIXTURE_REF) });
      await waitFor(async () => (await jsonpath(['get', 'deploy', 'sleeper-tls'], '{.status.availableReplicas}')) === '1', 180_000, 'sleeper-tls available');
      mark('sleeper-tls running');
      const log = await k('logs', '-n', NS, 'deploy/docker-hub');
      const lines = log.split('\n').filter((l) => l.includes(`/v2/library/${TLS_FIXTURE}/`));
      assert.ok(lines.some((l) => /manifests\/v1/.test(l) && l.includes(`"principal":"cert:node:${nodeName}"`)), lines.join('\n'));
      assert.ok(lines.filter((l) => /blobs\/sha256:/.test(l) && /"status":200/.test(l)).every((l) => l.includes(`"principal":"cert:node:${nodeName}"`)));
      assert.doesNotMatch(log, new RegExp(CLIENT_TOKEN), 'no token in the log');
      assert.doesNotMatch(log, /PRIVATE KEY/);
      await k('delete', 'deploy', 'sleeper-tls', '--wait=true');
    }),
  );

  it(
    'deleting the RegistryMirror removes the hosts.toml and the mirror',
    step(async () => {
      await k('delete', 'deploy', 'sleeper', '--wait=true');
      await k('delete', 'registrymirror', '-n', NS, 'docker-hub', '--wait=true');
      // The file, then its (then empty) directory.
      await waitFor(() => !existsSync(join(cluster.certsDir, 'docker.io')), 30_000, 'hosts.toml and its directory removed');
      await waitFor(async () => (await cluster.kubectl(['get', 'deploy,svc,pvc', '-n', NS, '-o', 'name'], { allowFail: true })).stdout.trim() === '', 60_000, 'mirror Deployment, Service and PVC garbage-collected');
      mark('RegistryMirror deleted');
    }),
  );

  it(
    'helm uninstall removes the operator and node agent, and the agent restores the node',
    step(async () => {
      // A mirror again (on an emptyDir this time), so the node has a file when the chart goes.
      await cluster.kubectl(['apply', '-f', '-'], { stdin: mirrorYaml(upstream.url) });
      await waitFor(() => existsSync(hostsFile), 90_000, 'hosts.toml written again');
      mark('hosts.toml written again');
      await cluster.helm(['uninstall', RELEASE, '--namespace', RELEASE_NS, '--wait', '--timeout', '2m']);
      mark('helm uninstall returned');
      await waitFor(() => !existsSync(hostsFile), 60_000, 'hosts.toml removed by the node agent at uninstall');
      await waitFor(async () => (await cluster.kubectl(['get', 'pods', '-n', RELEASE_NS, '-o', 'name'], { allowFail: true })).stdout.trim() === '', 120_000, 'operator and node agent pods gone');
      assert.equal((await cluster.kubectl(['get', 'ds,deploy,sa', '-n', RELEASE_NS, '-l', `app.kubernetes.io/instance=${RELEASE}`, '-o', 'name'])).stdout.trim(), '');
      assert.equal((await cluster.kubectl(['get', 'clusterrole', `${RELEASE}-registry-mirror-node-agent`], { allowFail: true })).code, 1);
      // The CRD stays (Helm never deletes crds/); the RegistryMirror applied by hand goes with kubectl.
      await k('delete', 'registrymirror', '-n', NS, 'docker-hub', '--wait=true');
      assert.equal(readFileSync(join(cluster.certsDir, 'quay.io', 'hosts.toml'), 'utf8'), 'server = "https://quay.io"\n');
      mark('uninstalled');
    }),
  );
});
