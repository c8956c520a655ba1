import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatBytes, parseQuantity } from '../../operator/quantity.js';
import { resolveSpec } from '../../operator/spec.js';
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
