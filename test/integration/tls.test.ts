// The mirror over HTTPS (config `tls`) with certificates made by the openssl CLI: containerd
// pulls with the CA named in hosts.toml and falls back to the upstream when the CA is wrong;
// a certificate rotated the way a Kubernetes Secret volume rotates it (a new directory, the
// `..data` symlink swapped) during 20 concurrent pulls fails none, keeps open connections and
// is served to the next handshake; an unusable new pair keeps the old one; TLS below 1.2 is
// refused. With tls.clientCAFile, client certificates authenticate nodes (containerd's
// `client = [...]`, skopeo's --cert-dir) as cert:<CN>, alone or next to `auth`. No log line
// holds a key, a certificate or a token.

import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { Agent, request, type Dispatcher } from 'undici';
import { buildFixtures, pushImage } from '../fixtures/images.js';
import { startContainerd, writeHostsToml, type ContainerdHandle } from '../rig/containerd.js';
import { createTestCa, issueCert, type IssuedCert, type TestCa } from '../rig/test-ca.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { tempDir, waitFor } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { skopeoCopyToDir } from '../../tools/launch/skopeo.js';
import { MANIFEST_ACCEPT } from '../../tools/oci/oci-client.js';
import { metricValue, pushRandomImage, type RandomImage } from './helpers.js';

const TOKEN = 'tls-test-read-only-token-5d1e8a';

/**
 * A directory laid out as kubelet mounts a kubernetes.io/tls Secret: tls.crt and tls.key are
 * symlinks into `..data`, itself a symlink to a timestamped directory; an update writes a new
 * directory and renames a new `..data` link over the old one (atomic).
 */
class SecretVolume {
  readonly certFile: string;
  readonly keyFile: string;
  private generation = 0;

  constructor(readonly dir: string, pair: IssuedCert) {
    this.certFile = join(dir, 'tls.crt');
    this.keyFile = join(dir, 'tls.key');
    this.write(pair);
    symlinkSync('..data/tls.crt', this.certFile);
    symlinkSync('..data/tls.key', this.keyFile);
  }

  /** Publishes cert (and the key of keyFrom, by default the same pair) as the new content. */
  write(pair: IssuedCert, keyFrom: IssuedCert = pair): void {
    const gen = join(this.dir, `..gen_${++this.generation}`);
    mkdirSync(gen);
    copyFileSync(pair.certFile, join(gen, 'tls.crt'));
    copyFileSync(keyFrom.keyFile, join(gen, 'tls.key'));
    const tmp = join(this.dir, '..data_tmp');
    symlinkSync(`..gen_${this.generation}`, tmp);
    renameSync(tmp, join(this.dir, '..data'));
  }
}

const fingerprintOf = (certFile: string) => new X509Certificate(readFileSync(certFile)).fingerprint256;

/** The fingerprint of the certificate a new TLS connection to host:port is served. */
function servedFingerprint(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, ca: readFileSync(ca), servername: 'localhost' }, () => {
      const fp = socket.getPeerCertificate().fingerprint256;
      socket.end();
      resolve(fp);
    });
    socket.once('error', reject);
  });
}

async function get(dispatcher: Dispatcher, url: string, headers: Record<string, string> = {}, fresh = false): Promise<{ status: number; body: Buffer }> {
  const res = await request(url, { dispatcher, headers, reset: fresh });
  return { status: res.statusCode, body: Buffer.from(await res.body.arrayBuffer()) };
}

/** Pulls a single-manifest image (manifest, config, layers) with digests checked; the manifest on a fresh connection. */
async function pullOverTls(dispatcher: Dispatcher, base: string, image: RandomImage): Promise<void> {
  const m = await get(dispatcher, `${base}/v2/${image.repository}/manifests/${image.tag}`, { accept: MANIFEST_ACCEPT }, true);
  assert.equal(m.status, 200, `manifest of ${image.repository}`);
  for (const d of [image.config.digest, ...image.layers.map((l) => l.digest)]) {
    const b = await get(dispatcher, `${base}/v2/${image.repository}/blobs/${d}`);
    assert.equal(b.status, 200, `${image.repository}@${d}`);
    assert.equal(`sha256:${createHash('sha256').update(b.body).digest('hex')}`, d);
  }
}

/** The PEM body lines of a file (what a leaked key or certificate would show in a log). */
const pemLines = (file: string) => readFileSync(file, 'utf8').split('\n').filter((l) => l.length >= 40 && !l.startsWith('-----'));

describe('TLS: serving, rotation and client certificates', { timeout: 600_000 }, () => {
  let ca: TestCa;
  let wrongCa: TestCa;
  let registry: RegistryHandle;
  let containerd: ContainerdHandle;
  let secret: SecretVolume;
  let first: IssuedCert;
  let mirror: MirrorHandle;
  let certOnly: MirrorHandle;
  let withAuth: MirrorHandle;
  let trusting: Agent;
  const serverNames = { cn: 'registry-mirror', dns: ['localhost'], ips: ['127.0.0.1'] };
  const issued: IssuedCert[] = [];
  const issue = async (authority: TestCa, o: Parameters<typeof issueCert>[1]) => {
    const pair = await issueCert(authority, o);
    issued.push(pair);
    return pair;
  };

  before(async () => {
    ca = await createTestCa('mirror CA');
    wrongCa = await createTestCa('some other CA');
    first = await issue(ca, serverNames);
    secret = new SecretVolume(tempDir('tls-secret'), first);
    registry = await startRegistry();
    const fixtures = await buildFixtures();
    for (const repository of ['library/small', 'library/fallback', 'library/nodeonly', 'library/skopeo']) {
      await pushImage(fixtures.images.small, registry.host, { repository });
    }
    const upstreams = { 'docker.io': { url: registry.url } };
    mirror = await startMirror({ logLevel: 'debug', upstreams, tls: { certFile: secret.certFile, keyFile: secret.keyFile, reloadInterval: '200ms' } }, { caFile: ca.certFile });
    const clientTls = { certFile: first.certFile, keyFile: first.keyFile, clientCAFile: ca.certFile };
    certOnly = await startMirror({ logLevel: 'debug', upstreams, tls: clientTls }, { caFile: ca.certFile });
    const tokensDir = tempDir('tls-tokens');
    writeFileSync(join(tokensDir, 'tokens'), `${TOKEN}\n`);
    withAuth = await startMirror({ logLevel: 'debug', upstreams, auth: { tokensFile: join(tokensDir, 'tokens') }, tls: clientTls }, { caFile: ca.certFile });
    trusting = new Agent({ connect: { ca: readFileSync(ca.certFile) } });
    containerd = await startContainerd();
  });

  after(async () => {
    await trusting?.close();
    await containerd?.stop();
    for (const m of [mirror, certOnly, withAuth]) await m?.stop();
    await registry?.stop();
  });

  it('containerd pulls over https with the CA named in hosts.toml', async () => {
    const hostsDir = tempDir('tls-hosts');
    // The fallback refuses connections: a pull that succeeds went through the mirror.
    writeHostsToml(hostsDir, 'docker.io', mirror.url, { server: 'http://127.0.0.1:9', ca: ca.certFile });
    await containerd.pull('docker.io/library/small:v1', { hostsDir });
    assert.match(mirror.logText(), /"url":"\/v2\/library\/small\/manifests\/v1\?ns=docker\.io","status":200/);
    assert.equal((await fetch(`${mirror.url.replace('https:', 'http:')}/v2/`).catch((e: Error) => e)) instanceof Error, true, 'no plain HTTP on the https port');
  });

  it('with a wrong CA containerd falls back to the upstream; the mirror serves it nothing', async () => {
    const hostsDir = tempDir('tls-hosts-wrong');
    writeHostsToml(hostsDir, 'docker.io', mirror.url, { server: registry.url, ca: wrongCa.certFile });
    const fromUpstream = async () => (await registry.requests()).filter((r) => r.path.startsWith('/v2/library/fallback/') && /containerd/i.test(r.userAgent)).length;
    assert.equal(await fromUpstream(), 0);
    await containerd.pull('docker.io/library/fallback:v1', { hostsDir });
    assert.ok((await fromUpstream()) > 0, 'containerd fetched from the upstream itself');
    assert.doesNotMatch(mirror.logText(), /library\/fallback/, 'no request reached the mirror');
  });

  it('a key that does not match its certificate stops start-up: exit 2 naming tls.keyFile', async () => {
    const other = await issue(ca, serverNames);
    const m = await startMirror({ tls: { certFile: first.certFile, keyFile: other.keyFile } }, { noWait: true, caFile: ca.certFile });
    assert.equal(await m.exited(), 2);
    assert.match(m.logText(), /registry-mirror: config: tls\.keyFile: the key in \S+ does not belong to the certificate in \S+/);
    assert.doesNotMatch(m.logText(), /PRIVATE KEY/);
  });

  it('TLS below 1.2 is refused', async () => {
    const err = await new Promise<Error>((resolve) => {
      const s = tlsConnect({ host: '127.0.0.1', port: mirror.port, ca: readFileSync(ca.certFile), minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' }, () => {
        s.end();
        resolve(new Error('connected'));
      });
      s.once('error', resolve);
    });
    // The server's alert: this client itself offers TLS 1.0-1.1 (it connects to a server that allows them).
    assert.match(err.message, /alert protocol version/);
  });

  it('a rotated certificate (Secret volume update) during 20 concurrent pulls fails none; open connections stay, new ones get the new certificate', async () => {
    const images: RandomImage[] = [];
    for (let i = 0; i < 20; i++) images.push(await pushRandomImage(registry.url, `rotate/app-${i}`, 'v1', [1_500_000, 700_000], `rotate-${i}`));
    const pid = mirror.pid();
    const metrics = async () => (await get(trusting, `${mirror.url}/metrics`)).body.toString('utf8');
    const okBefore = metricValue(await metrics(), 'registry_mirror_tls_reloads_total', { result: 'ok' })!;
    // A keep-alive connection opened before the rotation.
    const keepAlive = new HttpsAgent({ keepAlive: true, maxSockets: 1, ca: readFileSync(ca.certFile) });
    const viaKeepAlive = () =>
      new Promise<{ status: number; reused: boolean }>((resolve, reject) => {
        const req = httpsRequest(`${mirror.url}/v2/`, { agent: keepAlive }, (res) => {
          res.resume();
          res.once('end', () => resolve({ status: res.statusCode ?? 0, reused: req.reusedSocket }));
        });
        req.once('error', reject);
        req.end();
      });
    assert.equal((await viaKeepAlive()).status, 200);

    const second = await issue(ca, serverNames);
    const agents = images.map(() => new Agent({ connect: { ca: readFileSync(ca.certFile) } }));
    const pulls = images.map((image, i) => pullOverTls(agents[i]!, mirror.url, image));
    await waitFor(() => /"url":"\/v2\/rotate\/app-\d+\/blobs\//.test(mirror.logText()), 20_000, 'the pulls to be under way');
    secret.write(second);
    const results = await Promise.allSettled(pulls);
    await Promise.all(agents.map((a) => a.close()));
    assert.deepEqual(results.filter((r) => r.status === 'rejected'), [], 'no pull failed');

    await waitFor(async () => metricValue(await metrics(), 'registry_mirror_tls_reloads_total', { result: 'ok' }) === okBefore + 1, 10_000, 'the reload');
    const again = await viaKeepAlive();
    keepAlive.destroy();
    assert.deepEqual(again, { status: 200, reused: true }, 'the connection opened before the rotation still serves');
    assert.equal(await servedFingerprint(mirror.port, ca.certFile), fingerprintOf(second.certFile), 'a new connection gets the new certificate');
    assert.notEqual(fingerprintOf(second.certFile), fingerprintOf(first.certFile));
    const notAfter = metricValue(await metrics(), 'registry_mirror_tls_certificate_not_after_seconds');
    assert.equal(notAfter, Math.floor(new Date(new X509Certificate(readFileSync(second.certFile)).validTo).getTime() / 1000));
    assert.equal(mirror.pid(), pid, 'no restart');
    const log = mirror.logText();
    const reloadedAt = log.lastIndexOf('tls certificate reloaded');
    assert.match(log.slice(0, reloadedAt), /"url":"\/v2\/rotate\//, 'pulls were under way before the rotation');
    assert.match(log.slice(reloadedAt), /"url":"\/v2\/rotate\//, 'and still running after it');
  });

  it('a new pair whose key does not match keeps the old certificate and is counted as an error', async () => {
    const metrics = async () => (await get(trusting, `${mirror.url}/metrics`)).body.toString('utf8');
    const errorsBefore = metricValue(await metrics(), 'registry_mirror_tls_reloads_total', { result: 'error' })!;
    const served = await servedFingerprint(mirror.port, ca.certFile);
    const third = await issue(ca, serverNames);
    const fourth = await issue(ca, serverNames);
    secret.write(third, fourth);
    await waitFor(async () => metricValue(await metrics(), 'registry_mirror_tls_reloads_total', { result: 'error' }) === errorsBefore + 1, 10_000, 'the failed reload');
    assert.equal(await servedFingerprint(mirror.port, ca.certFile), served, 'the previous certificate is still served');
    assert.match(mirror.logText(), /does not belong to the certificate/);
    secret.write(third);
    await waitFor(async () => (await servedFingerprint(mirror.port, ca.certFile)) === fingerprintOf(third.certFile), 10_000, 'the fixed pair');
  });

  it('clientCAFile without auth: a client certificate is required; containerd with `client` in hosts.toml pulls as cert:node:<name>', async () => {
    const url = `${certOnly.url}/v2/library/nodeonly/manifests/v1`;
    const none = await get(trusting, url, { accept: MANIFEST_ACCEPT });
    assert.equal(none.status, 401);
    assert.equal((JSON.parse(none.body.toString('utf8')) as { errors: Array<{ code: string }> }).errors[0]!.code, 'UNAUTHORIZED');
    assert.equal((await get(trusting, `${certOnly.url}/readyz`)).status, 200, 'probes need no certificate');
    const stranger = await issue(wrongCa, { cn: 'node:intruder', usage: ['clientAuth'] });
    const strangerAgent = new Agent({ connect: { ca: readFileSync(ca.certFile), cert: readFileSync(stranger.certFile), key: readFileSync(stranger.keyFile) } });
    assert.equal((await get(strangerAgent, url)).status, 401, 'a certificate of another CA is refused');
    await strangerAgent.close();
    const metrics = (await get(trusting, `${certOnly.url}/metrics`)).body.toString('utf8');
    assert.ok((metricValue(metrics, 'registry_mirror_client_auth_total', { result: 'bad-certificate' }) ?? 0) >= 1);

    const node = await issue(ca, { cn: 'node:worker-1', usage: ['clientAuth'] });
    const noClient = tempDir('tls-hosts-noclient');
    writeHostsToml(noClient, 'docker.io', certOnly.url, { server: 'http://127.0.0.1:9', ca: ca.certFile });
    await assert.rejects(containerd.pull('docker.io/library/nodeonly:v1', { hostsDir: noClient, timeoutMs: 60_000 }));
    assert.match(certOnly.logText(), /"url":"\/v2\/library\/nodeonly\/manifests\/v1\?ns=docker\.io","status":401/, 'refused by the mirror');
    const hostsDir = tempDir('tls-hosts-client');
    writeHostsToml(hostsDir, 'docker.io', certOnly.url, { server: 'http://127.0.0.1:9', ca: ca.certFile, client: node });
    await containerd.pull('docker.io/library/nodeonly:v1', { hostsDir });
    assert.match(certOnly.logText(), /"url":"\/v2\/library\/nodeonly\/manifests\/v1\?ns=docker\.io","status":200,[^\n]*"principal":"cert:node:worker-1"/);
  });

  it('skopeo copies through the mirror with --src-cert-dir (ca.crt, client.cert, client.key)', async () => {
    const certDir = tempDir('tls-certs-d');
    copyFileSync(ca.certFile, join(certDir, 'ca.crt'));
    await issue(ca, { cn: 'node:skopeo', usage: ['clientAuth'], dir: certDir, certName: 'client.cert', keyName: 'client.key' });
    const out = tempDir('tls-skopeo');
    const pulled = await skopeoCopyToDir(`${certOnly.host}/library/skopeo:v1`, join(out, 'img'), { srcCertDir: certDir });
    const direct = await skopeoCopyToDir(`${registry.host}/library/skopeo:v1`, join(out, 'direct'));
    assert.equal(pulled.manifestDigest, direct.manifestDigest);
    assert.match(certOnly.logText(), /"principal":"cert:node:skopeo"/);
  });

  it('with auth too: a verified certificate or valid credentials pull; neither is 401 with the challenge', async () => {
    const url = `${withAuth.url}/v2/library/small/manifests/v1`;
    const node = await issue(ca, { cn: 'node:worker-2', usage: ['clientAuth'] });
    const nodeAgent = new Agent({ connect: { ca: readFileSync(ca.certFile), cert: readFileSync(node.certFile), key: readFileSync(node.keyFile) } });
    assert.equal((await get(nodeAgent, url, { accept: MANIFEST_ACCEPT })).status, 200);
    await nodeAgent.close();
    assert.equal((await get(trusting, url, { accept: MANIFEST_ACCEPT, authorization: `Bearer ${TOKEN}` })).status, 200);
    const stranger = await issue(wrongCa, { cn: 'node:intruder', usage: ['clientAuth'] });
    const strangerAgent = new Agent({ connect: { ca: readFileSync(ca.certFile), cert: readFileSync(stranger.certFile), key: readFileSync(stranger.keyFile) } });
    assert.equal((await get(strangerAgent, url, { accept: MANIFEST_ACCEPT, authorization: `Bearer ${TOKEN}` })).status, 200, 'a bad certificate falls back to the token');
    assert.equal((await get(strangerAgent, url)).status, 401);
    await strangerAgent.close();
    const res = await request(url, { dispatcher: trusting });
    await res.body.dump();
    assert.equal(res.statusCode, 401);
    assert.equal(res.headers['www-authenticate'], 'Bearer realm="registry-mirror"');
    const log = withAuth.logText();
    assert.match(log, /"principal":"cert:node:worker-2"/);
    assert.match(log, /"principal":"token:[0-9a-f]{8}"/);
  });

  it('limits.maxConnections counts TLS connections: past it a request is answered 503', async () => {
    const limited = await startMirror({ upstreams: { 'docker.io': { url: registry.url } }, limits: { maxConnections: 1 }, tls: { certFile: first.certFile, keyFile: first.keyFile } }, { caFile: ca.certFile });
    const raw = (): Promise<string> =>
      new Promise((resolve, reject) => {
        const s = tlsConnect({ host: '127.0.0.1', port: limited.port, ca: readFileSync(ca.certFile), servername: 'localhost' }, () => s.write('GET /v2/ HTTP/1.1\r\nHost: mirror\r\n\r\n'));
        let text = '';
        s.on('data', (b: Buffer) => {
          text += b.toString('latin1');
          if (text.includes('\r\n\r\n')) resolve(text.split('\r\n')[0]!);
        });
        s.once('error', reject);
        held.push(s);
      });
    const held: Array<{ destroy(): void }> = [];
    try {
      assert.equal(await raw(), 'HTTP/1.1 200 OK', 'the first connection is served (and stays open)');
      assert.equal(await raw(), 'HTTP/1.1 503 Service Unavailable', 'the second is over the limit');
    } finally {
      for (const s of held) s.destroy();
      await limited.stop();
    }
  });

  it('no log holds a key, a certificate or a token', () => {
    for (const m of [mirror, certOnly, withAuth]) {
      const log = m.logText();
      assert.ok(log.length > 0);
      assert.doesNotMatch(log, /PRIVATE KEY|BEGIN CERTIFICATE/);
      assert.ok(!log.includes(TOKEN), 'the token');
      for (const pair of [...issued, { certFile: ca.certFile, keyFile: ca.keyFile }]) {
        for (const line of [...pemLines(pair.keyFile), ...pemLines(pair.certFile)]) assert.ok(!log.includes(line), `a PEM line of ${pair.keyFile} or its certificate`);
      }
    }
  });
});
