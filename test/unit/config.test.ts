import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, parseConfig, parseConfigText } from '../../mirror/config.js';

describe('mirror config', () => {
  it('embedded default matches the documented contract', () => {
    const c = parseConfigText('');
    assert.deepEqual(c.listen, { host: '0.0.0.0', port: 5000 });
    assert.equal(c.logLevel, 'info');
    assert.deepEqual(c.storage, { path: './data', maxBytes: 0 });
    assert.deepEqual(c.cache, { ttlMs: 168 * 3600_000, tagTTLMs: 5 * 60_000, notFoundTTLMs: 15_000 });
    assert.equal(c.defaultUpstream, 'docker.io');
    assert.equal(c.upstreams['docker.io']!.url, 'https://registry-1.docker.io');
    assert.deepEqual(c.v1, { enabled: true, source: 'https://index.docker.io', tagsCacheTTLMs: 48 * 3600_000 });
  });

  it('reads YAML and lets MIRROR_* variables win', () => {
    const c = parseConfigText(
      'listen: 127.0.0.1:6000\nstorage: {path: /s, maxBytes: 10Gi}\ncache: {ttl: 1h30m, tagTTL: 30s}\nupstreams:\n  ghcr.io: {url: "https://ghcr.io/", username: u, password: p}\n',
      { MIRROR_LISTEN: '[::1]:7000', MIRROR_CACHE_TAGTTL: '1m', MIRROR_STORAGE_MAXBYTES: '1000' },
    );
    assert.deepEqual(c.listen, { host: '::1', port: 7000 });
    assert.equal(c.storage.maxBytes, 1000);
    assert.equal(c.cache.ttlMs, 90 * 60_000);
    assert.equal(c.cache.tagTTLMs, 60_000);
    assert.equal(c.defaultUpstream, 'ghcr.io', 'the first listed upstream is the default');
    assert.equal(c.upstreams['ghcr.io']!.url, 'https://ghcr.io');
    assert.equal(c.upstreams['docker.io'], undefined, 'listing upstreams replaces the embedded one');
  });

  it('shutdownDelay: 0 (the default: close at once) up to 1m', () => {
    assert.equal(parseConfig({}).shutdownDelayMs, 0);
    assert.equal(parseConfig({ shutdownDelay: '5s' }).shutdownDelayMs, 5000);
    assert.equal(parseConfig({ shutdownDelay: '1m' }).shutdownDelayMs, 60_000);
    for (const v of ['61s', '-1s', 'later', 5]) {
      assert.throws(
        () => parseConfig({ shutdownDelay: v }),
        (e: unknown) => e instanceof ConfigError && e.key === 'shutdownDelay',
        String(v),
      );
    }
  });

  it('cache.notFoundTTL: a duration from 0 (off) to 1h, MIRROR_CACHE_NOTFOUNDTTL wins', () => {
    assert.equal(parseConfig({ cache: { notFoundTTL: '0' } }).cache.notFoundTTLMs, 0);
    assert.equal(parseConfig({ cache: { notFoundTTL: '0s' } }).cache.notFoundTTLMs, 0);
    assert.equal(parseConfig({ cache: { notFoundTTL: '1h' } }).cache.notFoundTTLMs, 3_600_000);
    assert.equal(parseConfig({ cache: { notFoundTTL: '30s' } }, { MIRROR_CACHE_NOTFOUNDTTL: '2s' }).cache.notFoundTTLMs, 2000);
    for (const v of ['1h1s', '-1s', 'soon', 15]) {
      assert.throws(
        () => parseConfig({ cache: { notFoundTTL: v } }),
        (e: unknown) => e instanceof ConfigError && e.key === 'cache.notFoundTTL',
        String(v),
      );
    }
  });

  it('MIRROR_UPSTREAM_* configure the default upstream', () => {
    const c = parseConfig({}, { MIRROR_UPSTREAM_URL: 'http://127.0.0.1:5001', MIRROR_UPSTREAM_USERNAME: 'a', MIRROR_UPSTREAM_PASSWORD: 'b' });
    assert.deepEqual(c.upstreams['docker.io'], { name: 'docker.io', url: 'http://127.0.0.1:5001', username: 'a', password: 'b' });
  });

  const bad: Array<[string, unknown, string]> = [
    ['listen', { listen: 'nope' }, 'listen'],
    ['unknown key', { storage: { size: 1 } }, 'storage.size'],
    ['bad duration', { cache: { ttl: '7 days' } }, 'cache.ttl'],
    ['bad bytes', { storage: { maxBytes: '-5' } }, 'storage.maxBytes'],
    ['bad url', { upstreams: { 'docker.io': { url: 'ftp://x' } } }, 'upstreams.docker.io.url'],
    ['credentials in url', { upstreams: { 'docker.io': { url: 'https://u:p@x' } } }, 'upstreams.docker.io.url'],
    ['bad host key', { upstreams: { 'Not A Host': { url: 'https://x' } } }, 'upstreams.Not A Host'],
    ['default not configured', { defaultUpstream: 'quay.io' }, 'defaultUpstream'],
    ['half credentials', { upstreams: { 'docker.io': { url: 'https://x', username: 'u' } } }, 'upstreams.docker.io.username'],
    ['log level', { logLevel: 'loud' }, 'logLevel'],
  ];
  for (const [what, doc, key] of bad) {
    it(`rejects ${what} naming the key`, () => {
      assert.throws(() => parseConfig(doc), (err: unknown) => err instanceof ConfigError && err.key === key);
    });
  }

  it('rejects YAML that does not parse', () => {
    assert.throws(() => parseConfigText('a: [1'), ConfigError);
  });
});

describe('mirror config: clientTimeouts and limits', () => {
  it('defaults: idle and write 60s, 1024 connections', () => {
    const c = parseConfigText('');
    assert.deepEqual(c.clientTimeouts, { idleMs: 60_000, writeMs: 60_000 });
    assert.deepEqual(c.limits, { maxConnections: 1024 });
  });

  it('reads durations and a connection count (number or numeric string)', () => {
    const c = parseConfigText('clientTimeouts: {idle: 2s, write: 1m30s}\nlimits: {maxConnections: 3}\n');
    assert.deepEqual(c.clientTimeouts, { idleMs: 2000, writeMs: 90_000 });
    assert.deepEqual(c.limits, { maxConnections: 3 });
    assert.equal(parseConfigText('limits: {maxConnections: "200"}').limits.maxConnections, 200);
    assert.deepEqual(parseConfigText('clientTimeouts: {write: 250ms}').clientTimeouts, { idleMs: 60_000, writeMs: 250 }, 'keys default one by one');
  });

  const bad: Array<[string, string, RegExp]> = [
    ['clientTimeouts: {idle: 0s}', 'clientTimeouts.idle', /above 0/],
    ['clientTimeouts: {idle: "0"}', 'clientTimeouts.idle', /above 0/],
    ['clientTimeouts: {write: 2h}', 'clientTimeouts.write', /at most 1h/],
    ['clientTimeouts: {write: 60}', 'clientTimeouts.write', /not a duration/],
    ['clientTimeouts: {idle: soon}', 'clientTimeouts.idle', /not a duration/],
    ['clientTimeouts: {read: 5s}', 'clientTimeouts.read', /unknown key/],
    ['clientTimeouts: 30s', 'clientTimeouts', /mapping/],
    ['limits: {maxConnections: 0}', 'limits.maxConnections', /from 1 to 100000/],
    ['limits: {maxConnections: -5}', 'limits.maxConnections', /whole number/],
    ['limits: {maxConnections: 1.5}', 'limits.maxConnections', /whole number/],
    ['limits: {maxConnections: many}', 'limits.maxConnections', /whole number/],
    ['limits: {maxConnections: 100001}', 'limits.maxConnections', /from 1 to 100000/],
    ['limits: {connections: 5}', 'limits.connections', /unknown key/],
    ['limits: [1]', 'limits', /mapping/],
  ];
  for (const [yaml, key, message] of bad) {
    it(`rejects ${yaml} naming ${key}`, () => {
      assert.throws(() => parseConfigText(yaml), (err: unknown) => err instanceof ConfigError && err.key === key && message.test(err.message));
    });
  }
});
