// The `tls` config block, the checks on certificate/key/CA files, the reloader's decisions and
// the name a client certificate gives a request. Certificates are made by the openssl CLI.
import assert from 'node:assert/strict';
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import type { SecureContextOptions } from 'node:tls';
import { certificatePrincipalName } from '../../mirror/access/client-certificate.js';
import { ConfigError, parseConfig, type TlsConfig } from '../../mirror/config.js';
import { loadTlsMaterial, readTlsMaterial, TlsMaterialError, TlsReloader } from '../../mirror/tls/serving.js';
import { tempDir } from '../../tools/launch/proc.js';
import { metricValue } from '../integration/helpers.js';
import { createTestCa, issueCert, type IssuedCert, type TestCa } from '../rig/test-ca.js';

const s3 = { bucket: 'mirror-bucket', endpoint: 'http://127.0.0.1:1' };
const configError = (key: string, message?: RegExp) => (e: unknown) => e instanceof ConfigError && e.key === key && (!message || message.test(e.message));

describe('config: tls', () => {
  it('is absent by default: plain HTTP', () => {
    assert.equal(parseConfig({}).tls, undefined);
  });

  it('takes certFile and keyFile, optional CAs, reloadInterval default 5s', () => {
    assert.deepEqual(parseConfig({ tls: { certFile: '/c', keyFile: '/k' } }).tls, { certFile: '/c', keyFile: '/k', reloadIntervalMs: 5000 });
    assert.deepEqual(parseConfig({ tls: { certFile: '/c', keyFile: '/k', clientCAFile: '/ca', peerCAFile: '/p', reloadInterval: '250ms' } }).tls, {
      certFile: '/c',
      keyFile: '/k',
      clientCAFile: '/ca',
      peerCAFile: '/p',
      reloadIntervalMs: 250,
    });
  });

  it('refuses unknown keys, a missing half of the pair, bad intervals and non-mappings', () => {
    assert.throws(() => parseConfig({ tls: { certFile: '/c', keyFile: '/k', caFile: '/x' } }), configError('tls.caFile', /unknown key/));
    assert.throws(() => parseConfig({ tls: { certFile: '/c' } }), configError('tls.keyFile', /both required/));
    assert.throws(() => parseConfig({ tls: { keyFile: '/k' } }), configError('tls.certFile', /both required/));
    assert.throws(() => parseConfig({ tls: { certFile: '', keyFile: '/k' } }), configError('tls.certFile', /empty/));
    assert.throws(() => parseConfig({ tls: { certFile: '/c', keyFile: '/k', clientCAFile: 5 } }), configError('tls.clientCAFile'));
    for (const v of ['10ms', '2h', 'often']) {
      assert.throws(() => parseConfig({ tls: { certFile: '/c', keyFile: '/k', reloadInterval: v } }), configError('tls.reloadInterval'), v);
    }
    assert.throws(() => parseConfig({ tls: true }), configError('tls', /mapping/));
  });

  it('with cluster, peerCAFile is required', () => {
    const cluster = { peers: { static: ['10.0.0.1:5000'] }, self: '10.0.0.1:5000' };
    assert.throws(() => parseConfig({ storage: { s3 }, cluster, tls: { certFile: '/c', keyFile: '/k' } }), configError('tls.peerCAFile', /required with cluster/));
    assert.equal(parseConfig({ storage: { s3 }, cluster, tls: { certFile: '/c', keyFile: '/k', peerCAFile: '/p' } }).tls?.peerCAFile, '/p');
  });
});

describe('tls files', () => {
  let ca: TestCa;
  let server: IssuedCert;
  let other: IssuedCert;
  const tlsConfig = (pair: IssuedCert, extra: Partial<TlsConfig> = {}): TlsConfig => ({ certFile: pair.certFile, keyFile: pair.keyFile, reloadIntervalMs: 5000, ...extra });

  before(async () => {
    ca = await createTestCa();
    server = await issueCert(ca, { cn: 'mirror', ips: ['127.0.0.1'] });
    other = await issueCert(ca, { cn: 'other', ips: ['127.0.0.1'] });
  });

  it('reads a matching pair: expiry and fingerprint of the certificate', () => {
    const m = readTlsMaterial(tlsConfig(server, { clientCAFile: ca.certFile }));
    assert.ok(m.notAfter.getTime() > Date.now() && m.notAfter.getTime() < Date.now() + 2 * 86_400_000);
    assert.match(m.fingerprint, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    assert.ok(m.clientCa);
  });

  it('refuses a key of another certificate, a missing file and non-PEM content, naming the key, never the content', () => {
    assert.throws(() => readTlsMaterial({ ...tlsConfig(server), keyFile: other.keyFile }), (e: unknown) => e instanceof TlsMaterialError && e.key === 'tls.keyFile' && /does not belong/.test(e.message));
    assert.throws(() => loadTlsMaterial({ ...tlsConfig(server), certFile: '/nonexistent/tls.crt' }), configError('tls.certFile', /cannot read .*ENOENT/));
    const dir = tempDir('tls-unit');
    writeFileSync(join(dir, 'junk'), 'not a certificate at all');
    assert.throws(() => loadTlsMaterial({ ...tlsConfig(server), clientCAFile: join(dir, 'junk') }), configError('tls.clientCAFile', /no PEM certificate/));
    assert.throws(() => loadTlsMaterial({ ...tlsConfig(server), keyFile: join(dir, 'junk') }), (e: unknown) => e instanceof ConfigError && e.key === 'tls.keyFile' && !e.message.includes('not a certificate'));
  });

  it('the reloader applies new content once, keeps the old pair on a bad one and counts both', async () => {
    const dir = tempDir('tls-reload');
    const files = { certFile: join(dir, 'tls.crt'), keyFile: join(dir, 'tls.key') };
    const put = (pair: IssuedCert, keyFrom: IssuedCert = pair) => {
      copyFileSync(pair.certFile, files.certFile);
      copyFileSync(keyFrom.keyFile, files.keyFile);
    };
    put(server);
    const cfg = tlsConfig(files as IssuedCert);
    const applied: SecureContextOptions[] = [];
    const registry = new Registry();
    const reloader = new TlsReloader(cfg, loadTlsMaterial(cfg), (o) => applied.push(o), registry, pino({ level: 'silent' }));
    const first = reloader.current.fingerprint;
    const count = async (result: string) => metricValue(await registry.metrics(), 'registry_mirror_tls_reloads_total', { result });

    reloader.check();
    assert.equal(applied.length, 0, 'unchanged content is not applied again');
    put(other, server);
    reloader.check();
    reloader.check();
    assert.equal(applied.length, 0);
    assert.equal(reloader.current.fingerprint, first, 'a mismatched pair keeps the old certificate');
    assert.equal(await count('error'), 1, 'one failure counted once, however often it is seen');
    put(other);
    reloader.check();
    assert.equal(applied.length, 1);
    assert.notEqual(reloader.current.fingerprint, first);
    assert.equal(await count('ok'), 1);
    const notAfter = metricValue(await registry.metrics(), 'registry_mirror_tls_certificate_not_after_seconds');
    assert.equal(notAfter, Math.floor(reloader.current.notAfter.getTime() / 1000));
  });
});

describe('client certificate principal', () => {
  it('is cert:<CN>, or the fingerprint when the CN is absent or unprintable', () => {
    const fp = 'AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF';
    assert.equal(certificatePrincipalName('node:worker-1', fp), 'cert:node:worker-1');
    assert.equal(certificatePrincipalName(['node:a', 'node:b'], fp), 'cert:node:a');
    assert.equal(certificatePrincipalName(undefined, fp), 'cert:sha256:abcdef0123456789');
    assert.equal(certificatePrincipalName('has space\n"x"', fp), 'cert:sha256:abcdef0123456789');
    assert.equal(certificatePrincipalName('x'.repeat(129), fp), 'cert:sha256:abcdef0123456789');
  });
});
