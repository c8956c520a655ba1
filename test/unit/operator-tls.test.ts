// spec.tls on the operator side: validation and defaults, what is rendered for each mode, the
// operator's CA and the certificates it issues (checked with node:crypto, not with the library
// that made them), when a serving certificate is reissued, which node CSRs are signed, and
// what the node agent writes for an https mirror.
import assert from 'node:assert/strict';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { parse } from 'yaml';
import '../../operator/tls/reflect-metadata.js';
import * as x509 from '@peculiar/x509';
import { render } from '../../operator/render/index.js';
import { mirrorConfigProblem } from '../../operator/render/mirror-config.js';
import { serviceDnsNames } from '../../operator/render/names.js';
import { resolveSpec, type ResolvedSpec } from '../../operator/spec.js';
import { CA_LIFETIME_MS, createCa, createCsr, issueServing, LEAF_LIFETIME_MS, loadCa, renewalTime, signClientCsr } from '../../operator/tls/ca.js';
import { judgeCsr, NODE_CLIENT_SIGNER, csrState, type CsrLike } from '../../operator/tls/csr.js';
import { fingerprintOf, hostsHash, issueServingSecret, servingAction, TLS_ANNOTATION, type OperatorCa } from '../../operator/tls/serving.js';
import { summarizeSecret } from '../../operator/secrets.js';
import { HostsDir } from '../../operator/node-agent/files.js';
import { COMPANION, readHostsToml } from '../../operator/node-agent/hosts-toml.js';
import { plan, type MirrorLike, type ServiceLike } from '../../operator/node-agent/plan.js';
import { DEFAULT_POLICY } from '../../operator/node-policy.js';
import type { RegistryMirror, RegistryMirrorSpec } from '../../operator/types.js';

const NOW = new Date('2026-01-01T00:00:00Z');
const DAY = 24 * 3_600_000;

function cr(spec: RegistryMirrorSpec, name = 'hub'): RegistryMirror {
  return { apiVersion: 'registry-mirror.io/v1alpha1', kind: 'RegistryMirror', metadata: { name, namespace: 'ns1', uid: 'uid-1', generation: 1 }, spec };
}
function resolved(c: RegistryMirror): ResolvedSpec {
  const r = resolveSpec(c);
  assert.ok(r.ok, JSON.stringify(r));
  return r.spec;
}
function problems(spec: RegistryMirrorSpec): string {
  const r = resolveSpec(cr(spec));
  assert.equal(r.ok, false);
  return (r as { problems: string[] }).problems.join('; ');
}

let caPromise: Promise<OperatorCa> | undefined;
function operatorCa(): Promise<OperatorCa> {
  caPromise ??= (async () => {
    const m = await createCa(NOW);
    const ca = await loadCa(m);
    return { ...ca, fingerprint: fingerprintOf(m.certPem) };
  })();
  return caPromise;
}

describe('spec.tls: validation and defaults', () => {
  test('absent means generated (secure by default); disabled and secret are asked for', () => {
    assert.deepEqual(resolved(cr({ upstream: { registry: 'docker.io' } })).tls, { mode: 'generated' });
    assert.deepEqual(resolved(cr({ upstream: { registry: 'docker.io' }, tls: {} })).tls, { mode: 'generated' });
    assert.deepEqual(resolved(cr({ upstream: { registry: 'docker.io' }, tls: { mode: 'disabled' } })).tls, { mode: 'disabled' });
    assert.deepEqual(resolved(cr({ upstream: { registry: 'docker.io' }, tls: { mode: 'secret', secretName: 'mine' } })).tls, { mode: 'secret', secretName: 'mine' });
  });

  test('bad input names the field and what to do', () => {
    assert.match(problems({ upstream: { registry: 'docker.io' }, tls: { mode: 'secret' } }), /spec\.tls\.secretName is required with spec\.tls\.mode secret/);
    assert.match(problems({ upstream: { registry: 'docker.io' }, tls: { mode: 'generated', secretName: 'x' } }), /spec\.tls\.secretName applies only to spec\.tls\.mode secret/);
    assert.match(problems({ upstream: { registry: 'docker.io' }, tls: { mode: 'on' as any } }), /spec\.tls\.mode "on" must be one of generated, secret, disabled/);
    assert.match(problems({ upstream: { registry: 'docker.io' }, tls: { mode: 'secret', secretName: 'Not_A_Name' } }), /spec\.tls\.secretName "Not_A_Name" is not a valid Secret name/);
  });
});

describe('spec.tls: rendering', () => {
  const caPem = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';
  const auth = { keys: ['htpasswd' as const], hash: 'h' };

  test('generated with spec.auth: serving files from <name>-tls, client CA from <name>-ca, https everywhere', () => {
    const c = cr({ upstream: { registry: 'docker.io' }, auth: { secret: { name: 'clients' } } });
    const r = render(c, resolved(c), { defaultImage: 'i', auth, ca: { serving: caPem, operator: caPem } });
    const config = parse((r.configMap.data as Record<string, string>)['config.yaml']);
    assert.deepEqual(config.tls, {
      certFile: '/etc/registry-mirror/tls/tls.crt',
      keyFile: '/etc/registry-mirror/tls/tls.key',
      clientCAFile: '/etc/registry-mirror/ca/client-ca.crt',
    });
    assert.equal(mirrorConfigProblem((r.configMap.data as Record<string, string>)['config.yaml']), undefined, 'the mirror accepts it');
    const pod = (r.deployment as any).spec.template.spec;
    const vols = Object.fromEntries(pod.volumes.map((v: any) => [v.name, v]));
    assert.equal(vols.tls.secret.secretName, 'hub-tls');
    assert.deepEqual(vols.ca.configMap, { name: 'hub-ca', items: [{ key: 'client-ca.crt', path: 'client-ca.crt' }] });
    assert.deepEqual(r.caConfigMap?.data, { 'ca.crt': caPem, 'client-ca.crt': caPem });
    assert.equal(r.caConfigMap?.metadata.ownerReferences?.[0]?.uid, 'uid-1');
    assert.equal((r.service.spec as any).ports[0].name, 'https');
    assert.equal(pod.containers[0].livenessProbe.httpGet.scheme, 'HTTPS');
    assert.equal(JSON.stringify(r).includes('PRIVATE KEY'), false, 'nothing rendered holds a key');
  });

  test('a fleet checks its peers against ca.crt; secret mode mounts the user Secret', () => {
    const c = cr({ upstream: { registry: 'docker.io' }, replicas: 2, storage: { s3: { bucket: 'bkt' } }, tls: { mode: 'secret', secretName: 'cm-cert' } });
    const r = render(c, resolved(c), { defaultImage: 'i', ca: { serving: caPem } });
    const yaml = (r.configMap.data as Record<string, string>)['config.yaml'];
    assert.equal(parse(yaml).tls.peerCAFile, '/etc/registry-mirror/ca/ca.crt');
    assert.equal(mirrorConfigProblem(yaml), undefined);
    const vols = Object.fromEntries((r.deployment as any).spec.template.spec.volumes.map((v: any) => [v.name, v]));
    assert.equal(vols.tls.secret.secretName, 'cm-cert');
    assert.deepEqual(vols.ca.configMap.items, [{ key: 'ca.crt', path: 'ca.crt' }]);
    assert.deepEqual(r.caConfigMap?.data, { 'ca.crt': caPem }, 'no client CA without spec.auth');
    assert.equal((r.peersService!.spec as any).ports[0].name, 'https');
  });

  test('disabled: plain http, no TLS volume, no CA ConfigMap', () => {
    const c = cr({ upstream: { registry: 'docker.io' }, tls: { mode: 'disabled' } });
    const r = render(c, resolved(c), { defaultImage: 'i' });
    assert.equal(parse((r.configMap.data as Record<string, string>)['config.yaml']).tls, undefined);
    assert.equal(r.caConfigMap, undefined);
    const pod = (r.deployment as any).spec.template.spec;
    assert.deepEqual(pod.volumes.map((v: any) => v.name), ['config', 'cache-tmp', 'tmp']);
    assert.deepEqual(pod.containers[0].readinessProbe.httpGet, { path: '/readyz', port: 'http' });
  });
});

describe("the operator's CA", () => {
  test('a CA: self-signed, CA:TRUE, ten years; loadCa refuses a non-CA or a broken key without quoting it', async () => {
    const m = await createCa(NOW);
    const cert = new X509Certificate(m.certPem);
    assert.equal(cert.ca, true);
    assert.ok(cert.verify(cert.publicKey), 'self-signed');
    assert.ok(Math.abs(Date.parse(cert.validTo) - (NOW.getTime() + CA_LIFETIME_MS)) < 1000);
    assert.match(m.keyPem, /^-----BEGIN PRIVATE KEY-----/);
    await assert.rejects(loadCa({ certPem: m.certPem, keyPem: 'not a key SECRET-MATERIAL' }), (err: Error) => !err.message.includes('SECRET-MATERIAL') && /not a PEM ECDSA/.test(err.message));
    const ca = await operatorCa();
    const leaf = await issueServing(ca, ['x'], NOW);
    await assert.rejects(loadCa({ certPem: leaf.certPem, keyPem: leaf.keyPem }), /not a CA/);
  });

  test('serving certificate: every Service name and the ClusterIP, signed by the CA, 90 days, renewed at 2/3', async () => {
    const ca = await operatorCa();
    const hosts = [...serviceDnsNames(cr({ upstream: { registry: 'docker.io' } })), '10.96.12.34'];
    assert.deepEqual(hosts.slice(0, 4), ['hub', 'hub.ns1', 'hub.ns1.svc', 'hub.ns1.svc.cluster.local']);
    const issued = await issueServing(ca, hosts, NOW);
    const cert = new X509Certificate(issued.certPem);
    for (const h of hosts.slice(0, 4)) assert.equal(cert.checkHost(h), h, h);
    assert.equal(cert.checkIP('10.96.12.34'), '10.96.12.34');
    assert.equal(cert.checkHost('other.ns1.svc'), undefined);
    assert.equal(cert.checkIP('10.96.12.35'), undefined);
    assert.ok(cert.verify(new X509Certificate(ca.certPem).publicKey), 'signed by the CA');
    assert.ok(cert.checkIssued(new X509Certificate(ca.certPem)));
    assert.equal(cert.ca, false);
    assert.ok(cert.checkPrivateKey(createPrivateKey(issued.keyPem)));
    assert.ok(Math.abs(Date.parse(cert.validTo) - (NOW.getTime() + LEAF_LIFETIME_MS)) < 1000);
    assert.ok(Date.parse(cert.validFrom) < NOW.getTime(), 'backdated for clock skew');
    const eku = new x509.X509Certificate(issued.certPem).getExtension(x509.ExtendedKeyUsageExtension);
    assert.deepEqual([...(eku?.usages ?? [])], [x509.ExtendedKeyUsage.serverAuth]);
    const renew = renewalTime(issued.notBefore, issued.notAfter).getTime();
    assert.ok(renew > NOW.getTime() + 59 * DAY && renew < NOW.getTime() + 61 * DAY, `renewal two thirds in: ${new Date(renew).toISOString()}`);
  });

  test('the serving Secret: kubernetes.io/tls with ca.crt, owned, and annotated with what decides reissue', async () => {
    const ca = await operatorCa();
    const c = cr({ upstream: { registry: 'docker.io' } });
    const hosts = serviceDnsNames(c);
    const { secret, notAfter, renewAfter } = await issueServingSecret(c, ca, hosts, NOW);
    assert.equal(secret.metadata.name, 'hub-tls');
    assert.equal(secret.type, 'kubernetes.io/tls');
    assert.equal(secret.metadata.ownerReferences?.[0]?.uid, 'uid-1');
    const data = secret.data as Record<string, string>;
    assert.equal(Buffer.from(data['ca.crt']!, 'base64').toString(), ca.certPem);
    assert.deepEqual(secret.metadata.annotations, {
      [TLS_ANNOTATION.hosts]: hostsHash(hosts),
      [TLS_ANNOTATION.ca]: ca.fingerprint,
      [TLS_ANNOTATION.notAfter]: notAfter.toISOString(),
      [TLS_ANNOTATION.renewAfter]: renewAfter.toISOString(),
    });
    // What the operator keeps of it: key names, the annotations, the owner; no key material.
    const summary = summarizeSecret({ ...secret, metadata: { ...secret.metadata, uid: 's-uid' } });
    assert.equal(JSON.stringify(summary).includes(Buffer.from(data['tls.key']!, 'base64').toString().slice(30, 60)), false);
    assert.equal(summary.controllerUid, 'uid-1');
    const want = { ownerUid: 'uid-1', hosts, caFingerprint: ca.fingerprint };
    assert.deepEqual(servingAction(summary, want, NOW), { issue: false });
    assert.deepEqual(servingAction(undefined, want, NOW), { issue: true, why: 'missing' });
    assert.deepEqual(servingAction(summary, { ...want, hosts: [...hosts, '10.96.0.7'] }, NOW), { issue: true, why: 'hosts' }, 'the ClusterIP arrived');
    assert.deepEqual(servingAction(summary, { ...want, caFingerprint: 'other' }, NOW), { issue: true, why: 'ca' });
    assert.deepEqual(servingAction(summary, want, new Date(renewAfter.getTime() - 1000)), { issue: false });
    assert.deepEqual(servingAction(summary, want, renewAfter), { issue: true, why: 'renew' });
    assert.deepEqual(servingAction(summary, { ...want, ownerUid: 'someone-else' }, NOW), { issue: true, why: 'foreign' });
  });
});

describe('node client CSRs', () => {
  const AGENT = 'system:serviceaccount:registry-mirror:registry-mirror-node-agent';
  const nodes = new Set(['worker-1']);
  const nodeExists = async (n: string) => nodes.has(n);
  const csr = async (cn: string, over: Partial<NonNullable<CsrLike['spec']>> = {}, pem?: string): Promise<CsrLike> => ({
    metadata: { name: 'c1' },
    spec: {
      request: Buffer.from(pem ?? (await createCsr(cn)).csrPem).toString('base64'),
      signerName: NODE_CLIENT_SIGNER,
      username: AGENT,
      usages: ['client auth', 'digital signature'],
      ...over,
    },
  });
  const judge = async (c: CsrLike) => judgeCsr(c, { agentUser: AGENT, nodeExists });

  test('the node agent asking for node:<an existing node> is approved, and the certificate names it', async () => {
    const { csrPem, keyPem } = await createCsr('node:worker-1');
    const v = await judge(await csr('', { expirationSeconds: 7200 }, csrPem));
    assert.deepEqual(v, { approve: true, nodeName: 'worker-1', lifetimeMs: 7_200_000 });
    const ca = await operatorCa();
    const signed = await signClientCsr(ca, csrPem, 'node:worker-1', NOW, 7_200_000);
    const cert = new X509Certificate(signed.certPem);
    assert.equal(cert.subject, 'CN=node:worker-1');
    assert.ok(cert.checkPrivateKey(createPrivateKey(keyPem)), 'for the key the node made');
    assert.ok(cert.verify(new X509Certificate(ca.certPem).publicKey));
    assert.deepEqual([...(new x509.X509Certificate(signed.certPem).getExtension(x509.ExtendedKeyUsageExtension)?.usages ?? [])], [x509.ExtendedKeyUsage.clientAuth]);
  });

  test('refused: another requester, another CN, a node that does not exist, a token bound to another node, other usages', async () => {
    const reason = async (c: CsrLike) => {
      const v = await judge(c);
      assert.equal(v.approve, false);
      return (v as { reason: string }).reason;
    };
    assert.equal(await reason(await csr('node:worker-1', { username: 'system:serviceaccount:tenant:sneaky' })), 'UnknownRequester');
    assert.equal(await reason(await csr('admin')), 'BadSubject');
    assert.equal(await reason(await csr('node:')), 'BadSubject');
    assert.equal(await reason(await csr('node:worker-2')), 'UnknownNode');
    assert.equal(await reason(await csr('node:worker-1', { extra: { 'authentication.kubernetes.io/node-name': ['worker-9'] } })), 'NodeMismatch');
    assert.equal(await reason(await csr('node:worker-1', { usages: ['client auth', 'server auth'] })), 'BadUsages');
    assert.equal(await reason(await csr('node:worker-1', { request: Buffer.from('garbage').toString('base64') })), 'BadRequest');
    // A request for more than a CN (an O that would map to a group, a SAN) is refused whole.
    const keys = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as CryptoKeyPair;
    const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
    const withO = await x509.Pkcs10CertificateRequestGenerator.create({ name: [{ CN: ['node:worker-1'] }, { O: ['system:masters'] }], keys, signingAlgorithm: alg });
    assert.equal(await reason(await csr('', {}, withO.toString('pem'))), 'BadSubject');
    const withSan = await x509.Pkcs10CertificateRequestGenerator.create({
      name: [{ CN: ['node:worker-1'] }],
      keys,
      signingAlgorithm: alg,
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: 'hub.ns1.svc' }])],
    });
    assert.equal(await reason(await csr('', {}, withSan.toString('pem'))), 'BadSubject');
  });

  test('CSR states', () => {
    assert.equal(csrState({}), 'pending');
    assert.equal(csrState({ status: { conditions: [{ type: 'Approved', status: 'True' }] } }), 'approved');
    assert.equal(csrState({ status: { conditions: [{ type: 'Approved', status: 'True' }], certificate: 'x' } }), 'issued');
    assert.equal(csrState({ status: { conditions: [{ type: 'Denied', status: 'True' }] } }), 'denied');
    assert.equal(csrState({ status: { conditions: [{ type: 'Approved', status: 'True' }, { type: 'Failed', status: 'True' }] } }), 'failed');
  });
});

describe('node agent: https mirrors', () => {
  const OPEN = { ...DEFAULT_POLICY, namespaces: ['*'] };
  const ca = '-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n';
  const client = { certPem: '-----BEGIN CERTIFICATE-----\nNODE\n-----END CERTIFICATE-----\n', keyPem: '-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n' };
  const m = (spec: Partial<RegistryMirrorSpec>, tls?: unknown): MirrorLike => ({
    metadata: { namespace: 'a', name: 'hub', creationTimestamp: '2024-01-01T00:00:00Z', uid: 'uid-a-hub' },
    spec: { upstream: { registry: 'docker.io' }, ...spec },
    ...(tls ? { status: { tls } } : {}),
  });
  const svc: ServiceLike = {
    metadata: { namespace: 'a', name: 'hub', ownerReferences: [{ kind: 'RegistryMirror', uid: 'uid-a-hub', controller: true }] },
    spec: { clusterIP: '10.96.0.10' },
  };

  test('waits for status.tls; then https with the published CA', () => {
    const waiting = plan([m({})], [svc], { policy: OPEN });
    assert.equal(waiting.entries.size, 0);
    assert.equal(waiting.conditions.get('a/hub')?.reason, 'WaitingForCertificate');
    const p = plan([m({}, { mode: 'generated', caBundle: ca })], [svc], { policy: OPEN });
    const e = p.entries.get('docker.io')!;
    assert.equal(e.mirrorUrl, 'https://10.96.0.10:5000');
    assert.equal(e.caPem, ca);
    assert.equal(e.client, undefined);
    assert.equal(p.needsClientCredential, false);
  });

  test('spec.auth over TLS: a candidate (no ClientAuthRequired), configured once the node has its certificate', () => {
    const auth = m({ auth: { secret: { name: 'clients' } } }, { mode: 'generated', caBundle: ca });
    const before = plan([auth], [svc], { policy: OPEN });
    assert.equal(before.needsClientCredential, true);
    assert.equal(before.entries.size, 0, 'no file until the node can authenticate');
    assert.equal(before.conditions.get('a/hub')?.reason, 'HostsConfigured');
    const withCred = plan([auth], [svc], { policy: OPEN, clientCredential: client });
    assert.deepEqual(withCred.entries.get('docker.io')?.client, client);
    const plain = plan([m({ auth: { secret: { name: 'clients' } }, tls: { mode: 'disabled' } })], [svc], { policy: OPEN });
    assert.equal(plain.conditions.get('a/hub')?.reason, 'ClientAuthRequired', 'without TLS nodes still have no credentials');
  });

  const dir = mkdtempSync(join(tmpdir(), 'tls-hosts-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('hosts.toml names the CA and the client pair next to it (key 0600); removal takes them along', () => {
    const hosts = new HostsDir(dir, 'test');
    const e = { registry: 'docker.io', server: 'https://registry-1.docker.io', mirrorUrl: 'https://10.96.0.10:5000', owner: 'a/hub', caPem: ca, client };
    hosts.sync(new Map([['docker.io', e]]));
    const d = join(dir, 'docker.io');
    const doc = readHostsToml(readFileSync(join(d, 'hosts.toml'), 'utf8'));
    assert.deepEqual(doc.hosts[0], {
      url: 'https://10.96.0.10:5000',
      capabilities: ['pull', 'resolve'],
      dialTimeout: '200ms',
      ca: COMPANION.ca,
      client: [[COMPANION.clientCert, COMPANION.clientKey]],
    });
    assert.equal(readFileSync(join(d, COMPANION.ca), 'utf8'), ca);
    assert.equal(readFileSync(join(d, COMPANION.clientKey), 'utf8'), client.keyPem);
    assert.equal(statSync(join(d, COMPANION.clientKey)).mode & 0o777, 0o600);
    // A renewed certificate alone is a change; dropping auth removes the pair.
    const renewed = { ...client, certPem: client.certPem.replace('NODE', 'NODE2') };
    assert.equal(hosts.sync(new Map([['docker.io', { ...e, client: renewed }]])).changes.length, 1);
    assert.equal(readFileSync(join(d, COMPANION.clientCert), 'utf8'), renewed.certPem);
    hosts.sync(new Map([['docker.io', { ...e, client: undefined }]]));
    assert.equal(existsSync(join(d, COMPANION.clientKey)), false);
    hosts.sync(new Map());
    assert.equal(existsSync(d), false, 'the registry directory is gone with its files');
  });
});
