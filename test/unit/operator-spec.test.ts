import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { parse } from 'yaml';
import { DURATION_PATTERN } from '../../mirror/duration.js';
import { formatBytes, parseQuantity, QUANTITY_PATTERN } from '../../operator/quantity.js';
import { resolveSpec, S3_BUCKET_PATTERN, S3_PREFIX_PATTERN, S3_REGION_PATTERN } from '../../operator/spec.js';
import type { RegistryMirror } from '../../operator/types.js';

const mk = (spec: any): RegistryMirror => ({
  apiVersion: 'registry-mirror.io/v1alpha1',
  kind: 'RegistryMirror',
  metadata: { name: 'm', namespace: 'n', uid: 'u' },
  spec,
});
function problems(spec: any): string {
  const r = resolveSpec(mk(spec));
  assert.equal(r.ok, false, 'expected problems');
  return (r as { problems: string[] }).problems.join('\n');
}

test('defaults: well-known registry URL, cache TTLs, replicas, nodeConfig, v1', () => {
  const r = resolveSpec(mk({ upstream: { registry: 'docker.io' } }));
  assert.ok(r.ok);
  assert.equal(r.spec.url, 'https://registry-1.docker.io');
  assert.equal(r.spec.ttl, '168h');
  assert.equal(r.spec.tagTTL, '5m');
  assert.equal(r.spec.replicas, 1);
  assert.equal(r.spec.nodeConfig, true);
  assert.deepEqual(r.spec.v1, { enabled: false, source: 'https://index.docker.io', tagsCacheTTL: '48h' });
  assert.equal(r.spec.storage, undefined);
});

test('explicit URL wins and loses its trailing slash', () => {
  const r = resolveSpec(mk({ upstream: { registry: 'registry.example.com:5000', url: 'http://10.0.0.1:5000/' } }));
  assert.ok(r.ok);
  assert.equal(r.spec.url, 'http://10.0.0.1:5000');
});

test('clear messages naming the field', () => {
  assert.match(problems({ upstream: {} }), /spec\.upstream\.registry is required/);
  assert.match(problems({ upstream: { registry: 'Docker.IO' } }), /spec\.upstream\.registry "Docker.IO" is not a registry host name/);
  assert.match(problems({ upstream: { registry: 'registry.corp' } }), /spec\.upstream\.url is required: "registry\.corp" is not a well-known registry/);
  assert.match(problems({ upstream: { registry: 'x.io', url: 'ftp://x.io' } }), /spec\.upstream\.url "ftp:\/\/x\.io" must use http or https/);
  assert.match(problems({ upstream: { registry: 'x.io', url: 'https://exa mple' } }), /is not a valid URL/);
  const creds = problems({ upstream: { registry: 'x.io', url: 'https://u:p@x.io' } });
  assert.match(creds, /must not contain credentials/);
  assert.ok(!creds.includes('u:p'), 'the message does not echo credentials');
  assert.match(problems({ upstream: { registry: 'x.io', url: 'https://x.io/?a=b' } }), /must not have a query/);
  assert.match(problems({ upstream: { registry: 'docker.io' }, cache: { ttl: '7d' } }), /spec\.cache\.ttl "7d" is not a duration/);
  assert.match(problems({ upstream: { registry: 'docker.io' }, replicas: 0 }), /spec\.replicas must be an integer >= 1/);
  assert.match(problems({ upstream: { registry: 'docker.io' }, storage: { size: 'lots' } }), /spec\.storage\.size "lots" is not a positive quantity/);
  assert.match(problems({ upstream: { registry: 'docker.io' }, storage: { size: '1Gi' }, replicas: 2 }), /ReadWriteOnce/);
  assert.match(problems({ upstream: { registry: 'ghcr.io' }, v1: { enabled: true } }), /spec\.v1\.source is required/);
  assert.match(problems({ upstream: { registry: 'docker.io', credentialsSecret: { name: 'Bad_Name' } } }), /not a valid Secret name/);
  assert.match(problems({ upstream: { registry: 'docker.io' }, resources: { limits: { memory: 'much' } } }), /spec\.resources\.limits\.memory "much"/);
});

test('several problems are reported together', () => {
  const p = problems({ upstream: { registry: 'registry.corp' }, cache: { tagTTL: 'soon' }, replicas: -1 });
  assert.equal(p.split('\n').length, 3);
});

test('quantities', () => {
  assert.equal(parseQuantity('1Ki'), 1024);
  assert.equal(parseQuantity('50Gi'), 50 * 2 ** 30);
  assert.equal(parseQuantity('500M'), 500e6);
  assert.equal(parseQuantity('1.5Gi'), 1.5 * 2 ** 30);
  assert.equal(parseQuantity('1e9'), 1e9);
  assert.equal(parseQuantity(1024), 1024);
  assert.equal(parseQuantity('10 Gi'), undefined);
  assert.equal(parseQuantity('-1Gi'), undefined);
  assert.equal(formatBytes(0), '0');
  assert.equal(formatBytes(1536), '1.5Ki');
  assert.equal(formatBytes(3 * 2 ** 30), '3Gi');
});


describe('spec.storage.s3', () => {
  const hub = { registry: 'docker.io' };
  const full = {
    bucket: 'my-bucket',
    endpoint: 'https://rgw.example:443/',
    region: 'us-east-1',
    prefix: 'registry-mirror/hub',
    forcePathStyle: true,
    redirect: true,
    presignTTL: '20m',
    partSize: '16Mi',
    credentialsSecret: { name: 's3-creds' },
  };

  test('resolves: no PVC, endpoint without trailing slash, partSize in bytes, size bounds the bucket', () => {
    const r = resolveSpec(mk({ upstream: hub, storage: { size: '100Gi', retain: false, s3: full } }));
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.spec.storage, undefined, 'no PVC');
    assert.deepEqual(r.spec.s3, {
      bucket: 'my-bucket',
      endpoint: 'https://rgw.example:443',
      region: 'us-east-1',
      prefix: 'registry-mirror/hub',
      forcePathStyle: true,
      redirect: true,
      presignTTL: '20m',
      partSize: 16 * 2 ** 20,
      credentialsSecret: 's3-creds',
      maxBytes: 100 * 2 ** 30,
    });
  });

  test('only the bucket: every optional field stays absent; no size, no bound', () => {
    const r = resolveSpec(mk({ upstream: hub, storage: { s3: { bucket: 'b12' } } }));
    assert.ok(r.ok, JSON.stringify(r));
    assert.deepEqual(r.spec.s3, { bucket: 'b12', maxBytes: 0 });
  });

  test('serviceAccountName (workload identity); several replicas are allowed (no ReadWriteOnce volume)', () => {
    const r = resolveSpec(mk({ upstream: hub, replicas: 3, storage: { size: '10Gi', s3: { bucket: 'bkt', serviceAccountName: 'mirror-irsa' } } }));
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.spec.s3?.serviceAccountName, 'mirror-irsa');
    assert.equal(r.spec.replicas, 3);
  });

  test('what the schema cannot say is reported, naming the field', () => {
    const s3 = (extra: object, storage: object = {}) => problems({ upstream: hub, storage: { ...storage, s3: { bucket: 'bkt', ...extra } } });
    assert.match(
      s3({ credentialsSecret: { name: 'k' }, serviceAccountName: 'sa' }),
      /spec\.storage\.s3\.credentialsSecret and spec\.storage\.s3\.serviceAccountName are mutually exclusive/,
    );
    assert.match(s3({ partSize: '1Mi' }), /spec\.storage\.s3\.partSize "1Mi" must be from 5Mi to 5Gi/);
    assert.match(s3({ partSize: 5 * 2 ** 20 - 1 }), /must be from 5Mi to 5Gi/);
    assert.match(s3({ partSize: '6Gi' }), /must be from 5Mi to 5Gi/);
    assert.match(s3({ partSize: 'big' }), /spec\.storage\.s3\.partSize "big" is not a quantity/);
    assert.match(s3({ presignTTL: '8d' }), /spec\.storage\.s3\.presignTTL "8d" is not a duration/);
    assert.match(s3({ presignTTL: '169h' }), /presignTTL "169h" must be from 1s to 168h/);
    assert.match(s3({ presignTTL: '0' }), /presignTTL "0" must be from 1s to 168h/);
    assert.match(s3({ endpoint: 'ftp://rgw.example' }), /spec\.storage\.s3\.endpoint "ftp:\/\/rgw\.example" must use http or https/);
    const creds = s3({ endpoint: 'https://AKIAXXXX:hunter2@rgw.example' });
    assert.match(creds, /spec\.storage\.s3\.endpoint must not contain credentials; put them in a Secret named by spec\.storage\.s3\.credentialsSecret/);
    assert.ok(!creds.includes('hunter2'), 'the message does not echo credentials');
    assert.match(s3({ bucket: '192.168.1.10' }), /spec\.storage\.s3\.bucket "192\.168\.1\.10" is not a bucket name/);
    assert.match(s3({ bucket: 'a..b' }), /is not a bucket name/);
    assert.match(s3({ bucket: 'Upper' }), /is not a bucket name/);
    assert.match(s3({ prefix: '/lead' }), /spec\.storage\.s3\.prefix "\/lead" must be/);
    assert.match(s3({ prefix: 'a/../b' }), /spec\.storage\.s3\.prefix .* no "\." or "\.\." segment/);
    assert.match(s3({ region: 'us east' }), /spec\.storage\.s3\.region "us east" is not a region name/);
    assert.match(s3({ serviceAccountName: 'Bad_SA' }), /spec\.storage\.s3\.serviceAccountName "Bad_SA" is not a valid ServiceAccount name/);
    assert.match(s3({ credentialsSecret: { name: 'Bad_Name' } }), /spec\.storage\.s3\.credentialsSecret\.name "Bad_Name" is not a valid Secret name/);
    assert.match(s3({ forcePathStyle: 'yes' }), /spec\.storage\.s3\.forcePathStyle must be true or false/);
    assert.match(problems({ upstream: hub, storage: { s3: {} } }), /spec\.storage\.s3\.bucket is required/);
    assert.match(s3({}, { storageClassName: 'fast' }), /spec\.storage\.storageClassName does not apply with spec\.storage\.s3/);
    assert.match(s3({}, { retain: true }), /spec\.storage\.retain does not apply with spec\.storage\.s3/);
    assert.match(s3({}, { size: 'lots' }), /spec\.storage\.size "lots" is not a positive quantity/);
  });

  test('inline keys (an older or hand-made CRD keeps them) are refused without quoting them', () => {
    const p = problems({ upstream: hub, storage: { s3: { bucket: 'bkt', accessKeyId: 'AKIAEXAMPLEKEY', secretAccessKey: 'wJalrXUtnFEMI-secret' } } });
    assert.match(p, /spec\.storage\.s3\.accessKeyId is not supported: put the keys in a Secret named by spec\.storage\.s3\.credentialsSecret/);
    assert.match(p, /spec\.storage\.s3\.secretAccessKey is not supported/);
    assert.ok(!p.includes('AKIAEXAMPLEKEY') && !p.includes('wJalrXUtnFEMI-secret'), 'no key material in the message');
  });

  test('a pin is checked against the bucket bound (all of storage.size)', () => {
    assert.ok(resolveSpec(mk({ upstream: hub, storage: { size: '1Mi', s3: { bucket: 'bkt' } }, prefetch: [{ image: 'docker.io/library/a:1', pin: true }] })).ok);
    assert.match(
      problems({ upstream: hub, storage: { size: '1Ki', s3: { bucket: 'bkt' } }, prefetch: [{ image: 'docker.io/library/a:1', pin: true }] }),
      /spec\.prefetch\[0\]\.pin .*cannot fit in storage\.maxBytes 1024/,
    );
  });

  test('the CRD schema uses the patterns the operator checks', () => {
    const crd = parse(readFileSync(new URL('../../../crds/registrymirrors.yaml', import.meta.url), 'utf8'));
    const spec = crd.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties;
    const s3 = spec.storage.properties.s3;
    assert.deepEqual(s3.required, ['bucket']);
    assert.equal(s3.properties.bucket.pattern, S3_BUCKET_PATTERN);
    assert.equal(s3.properties.prefix.pattern, S3_PREFIX_PATTERN);
    assert.equal(s3.properties.region.pattern, S3_REGION_PATTERN);
    assert.equal(s3.properties.presignTTL.pattern, DURATION_PATTERN);
    assert.equal(s3.properties.presignTTL.pattern, spec.cache.properties.ttl.pattern, 'the duration pattern the CRD already uses');
    assert.equal(s3.properties.partSize.pattern, QUANTITY_PATTERN);
    assert.equal(s3.properties.endpoint.pattern, spec.upstream.properties.url.pattern);
    assert.deepEqual(Object.keys(s3.properties).sort(), [
      'bucket', 'credentialsSecret', 'endpoint', 'forcePathStyle', 'partSize', 'prefix', 'presignTTL', 'redirect', 'region', 'serviceAccountName',
    ]);
    // Every one of these is checked again by resolveSpec; none inlines a secret.
    for (const k of ['accessKeyId', 'secretAccessKey']) assert.equal(s3.properties[k], undefined);
  });
});

describe('replicas and the store (a fleet needs a shared one)', () => {
  const hub = { registry: 'docker.io' };
  const named = (name: string, spec: any): RegistryMirror => ({ ...mk(spec), metadata: { name, namespace: 'n', uid: 'u' } });

  test('storage.s3: any number of replicas, with or without storage.size (it bounds the bucket)', () => {
    for (const storage of [{ s3: { bucket: 'bkt' } }, { size: '100Gi', s3: { bucket: 'bkt' } }]) {
      const r = resolveSpec(mk({ upstream: hub, replicas: 3, storage }));
      assert.ok(r.ok, JSON.stringify(r));
      assert.equal(r.spec.replicas, 3);
      assert.equal(r.spec.storage, undefined, 'no PVC');
    }
  });

  test('storage.size alone (one ReadWriteOnce PVC): still one replica, the message names the ways out', () => {
    const p = problems({ upstream: hub, replicas: 3, storage: { size: '10Gi' } });
    assert.match(p, /spec\.replicas is 3 but spec\.storage\.size puts the cache on one ReadWriteOnce volume/);
    assert.match(p, /use replicas: 1, add storage\.s3 so the replicas share one bucket, or drop storage\.size/);
    assert.ok(resolveSpec(mk({ upstream: hub, replicas: 1, storage: { size: '10Gi' } })).ok);
  });

  test('emptyDir (no storage): several replicas as before, each with its own cache', () => {
    const r = resolveSpec(mk({ upstream: hub, replicas: 3 }));
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.spec.replicas, 3);
    assert.equal(r.spec.s3, undefined);
  });

  test('storage.s3: the name also names <name>-peers, so it may have at most 57 characters', () => {
    const s3 = { upstream: hub, storage: { s3: { bucket: 'bkt' } } };
    assert.ok(resolveSpec(named(`m${'x'.repeat(56)}`, s3)).ok, '57 characters');
    const r = resolveSpec(named(`m${'x'.repeat(57)}`, s3));
    assert.equal(r.ok, false);
    assert.match((r as { problems: string[] }).problems.join('\n'), /is 58 characters long; with spec\.storage\.s3 it may have at most 57, because it also names the Service "<name>-peers"/);
    assert.ok(resolveSpec(named(`m${'x'.repeat(62)}`, { upstream: hub })).ok, 'without s3 a DNS label of 63 is fine');
  });
});
