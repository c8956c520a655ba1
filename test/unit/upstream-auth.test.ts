import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseChallenge } from '../../mirror/upstream/challenge.js';
import { fromDockerConfig } from '../../mirror/upstream/credentials.js';
import { upstreamName } from '../../mirror/cache/target.js';
import { acceptable } from '../../mirror/cache/manifest-cache.js';
import { parseBytes, parseDuration } from '../../mirror/duration.js';

describe('upstream auth helpers', () => {
  it('parses Bearer and Basic challenges', () => {
    assert.deepEqual(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/x:pull"'), {
      scheme: 'bearer',
      params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/x:pull' },
    });
    assert.deepEqual(parseChallenge('Basic realm="Registry Realm"'), { scheme: 'basic', params: { realm: 'Registry Realm' } });
    assert.deepEqual(parseChallenge(['Negotiate', 'Basic realm=x']), { scheme: 'basic', params: { realm: 'x' } });
    assert.equal(parseChallenge(undefined), undefined);
  });

  it('finds credentials in a docker config.json by any usual key', () => {
    const auth = Buffer.from('user:pa:ss').toString('base64');
    const doc = { auths: { 'https://index.docker.io/v1/': { auth }, 'ghcr.io': { username: 'g', password: 'h' } } };
    assert.deepEqual(fromDockerConfig(doc, ['docker.io', 'https://index.docker.io/v1/']), { username: 'user', password: 'pa:ss' });
    assert.deepEqual(fromDockerConfig(doc, ['ghcr.io']), { username: 'g', password: 'h' });
    assert.equal(fromDockerConfig(doc, ['quay.io']), undefined);
    assert.equal(fromDockerConfig({}, ['quay.io']), undefined);
  });

  it('applies library/ only to single-component Docker Hub names', () => {
    assert.equal(upstreamName('docker.io', 'https://registry-1.docker.io', 'alpine'), 'library/alpine');
    assert.equal(upstreamName('docker.io', 'http://127.0.0.1:5000', 'alpine'), 'library/alpine');
    assert.equal(upstreamName('docker.io', 'https://registry-1.docker.io', 'bitnami/redis'), 'bitnami/redis');
    assert.equal(upstreamName('ghcr.io', 'https://ghcr.io', 'alpine'), 'alpine');
  });

  it('matches media types against Accept', () => {
    assert.ok(acceptable('application/vnd.oci.image.index.v1+json', undefined));
    assert.ok(acceptable('application/vnd.oci.image.index.v1+json', 'application/json, application/vnd.oci.image.index.v1+json;q=0.5'));
    assert.ok(acceptable('application/x', '*/*'));
    assert.ok(!acceptable('application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.v2+json'));
  });

  it('parses Go durations and byte quantities', () => {
    assert.equal(parseDuration('168h'), 168 * 3600_000);
    assert.equal(parseDuration('1h30m10s250ms'), 5410_250);
    assert.equal(parseDuration('0'), 0);
    for (const bad of ['', '5', 'h', '5d', '1h 2m', '-1h']) assert.equal(parseDuration(bad), undefined, bad);
    assert.equal(parseBytes('10Gi'), 10 * 2 ** 30);
    assert.equal(parseBytes('500M'), 500e6);
    assert.equal(parseBytes(42), 42);
    for (const bad of ['-1', '1Zi', 'lots', -3, 1.5]) assert.equal(parseBytes(bad), undefined, String(bad));
  });
});

describe('manifest Accept towards the upstream', () => {
  it('passes explicit manifest types and widens generic ones', async () => {
    const { upstreamAccept, defaultAccept } = await import('../../mirror/cache/manifest-cache.js');
    assert.equal(upstreamAccept(undefined), defaultAccept);
    assert.equal(upstreamAccept('*/*'), defaultAccept);
    assert.equal(upstreamAccept('application/json'), defaultAccept);
    const docker = 'application/vnd.docker.distribution.manifest.v2+json';
    assert.equal(upstreamAccept(docker), docker);
  });
});
