// upstreamTimeouts, upstreamRetries and upstreamBreaker (with an upstream's own `breaker`) in
// the mirror config: defaults, values, and the one clear line a bad value gets.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, parseConfigText, upstreamBreakerFor } from '../../mirror/config.js';

describe('config: upstream timeouts and retries', () => {
  it('defaults: connect 10s, headers 30s, idle 60s; 3 attempts, 200ms backoff, 5s cap', () => {
    const c = parseConfigText('');
    assert.deepEqual(c.upstreamTimeouts, { connectMs: 10_000, headersMs: 30_000, idleMs: 60_000 });
    assert.deepEqual(c.upstreamRetries, { attempts: 3, backoffMs: 200, maxDelayMs: 5000 });
  });

  it('reads every key', () => {
    const c = parseConfigText('upstreamTimeouts: {connect: 2s, headers: 1500ms, idle: 1m}\nupstreamRetries: {attempts: 1, backoff: 50ms, maxDelay: 2s}\n');
    assert.deepEqual(c.upstreamTimeouts, { connectMs: 2000, headersMs: 1500, idleMs: 60_000 });
    assert.deepEqual(c.upstreamRetries, { attempts: 1, backoffMs: 50, maxDelayMs: 2000 });
    assert.equal(parseConfigText('upstreamRetries: {attempts: "5"}').upstreamRetries.attempts, 5);
  });

  for (const [yaml, key, message] of [
    ['upstreamTimeouts: {idle: 0s}', 'upstreamTimeouts.idle', /above 0/],
    ['upstreamTimeouts: {headers: 2d}', 'upstreamTimeouts.headers', /not a duration/],
    ['upstreamTimeouts: {connect: 2h}', 'upstreamTimeouts.connect', /at most 1h/],
    ['upstreamTimeouts: {read: 5s}', 'upstreamTimeouts.read', /unknown key/],
    ['upstreamTimeouts: 30s', 'upstreamTimeouts', /mapping/],
    ['upstreamRetries: {attempts: 0}', 'upstreamRetries.attempts', /from 1 \(no retries\) to 10/],
    ['upstreamRetries: {attempts: 2.5}', 'upstreamRetries.attempts', /whole number/],
    ['upstreamRetries: {attempts: 11}', 'upstreamRetries.attempts', /to 10/],
    ['upstreamRetries: {maxDelay: 0s}', 'upstreamRetries.maxDelay', /above 0/],
    ['upstreamRetries: {jitter: true}', 'upstreamRetries.jitter', /unknown key/],
  ] as const) {
    it(`refuses ${yaml}`, () => {
      assert.throws(
        () => parseConfigText(yaml),
        (err: unknown) => err instanceof ConfigError && err.key === key && message.test(err.message) && err.message.startsWith(`config: ${key}: `),
      );
    });
  }
});

describe('config: upstream circuit breaker', () => {
  it('default: 3 failed requests in a row open it for 10s, for every upstream', () => {
    const c = parseConfigText('');
    assert.deepEqual(c.upstreamBreaker, { failures: 3, openForMs: 10_000 });
    assert.equal(c.upstreams['docker.io']!.breaker, undefined, 'no override unless written');
    assert.deepEqual(upstreamBreakerFor(c, c.upstreams['docker.io']!), { failures: 3, openForMs: 10_000 });
  });

  it('reads upstreamBreaker, and an upstream\'s own breaker keys over it, key by key', () => {
    const c = parseConfigText(
      [
        'upstreamBreaker: {failures: 5, openFor: 30s}',
        'upstreams:',
        '  docker.io: {url: "https://registry-1.docker.io", breaker: {openFor: 1m}}',
        '  ghcr.io: {url: "https://ghcr.io", breaker: {failures: 0}}',
        '  quay.io: {url: "https://quay.io"}',
      ].join('\n'),
    );
    assert.deepEqual(c.upstreamBreaker, { failures: 5, openForMs: 30_000 });
    assert.deepEqual(upstreamBreakerFor(c, c.upstreams['docker.io']!), { failures: 5, openForMs: 60_000 });
    assert.deepEqual(upstreamBreakerFor(c, c.upstreams['ghcr.io']!), { failures: 0, openForMs: 30_000 }, '0 turns it off for ghcr.io only');
    assert.deepEqual(upstreamBreakerFor(c, c.upstreams['quay.io']!), { failures: 5, openForMs: 30_000 });
    assert.equal(parseConfigText('upstreamBreaker: {failures: "7"}').upstreamBreaker.failures, 7);
    assert.equal(parseConfigText('upstreamBreaker: {failures: 0}').upstreamBreaker.failures, 0);
  });

  for (const [yaml, key, message] of [
    ['upstreamBreaker: {failures: -1}', 'upstreamBreaker.failures', /whole number of failed requests from 1 to 100, or 0 to turn the breaker off/],
    ['upstreamBreaker: {failures: 1.5}', 'upstreamBreaker.failures', /whole number/],
    ['upstreamBreaker: {failures: 101}', 'upstreamBreaker.failures', /from 1 to 100/],
    ['upstreamBreaker: {failures: many}', 'upstreamBreaker.failures', /whole number/],
    ['upstreamBreaker: {openFor: 0s}', 'upstreamBreaker.openFor', /above 0/],
    ['upstreamBreaker: {openFor: 2h}', 'upstreamBreaker.openFor', /at most 1h/],
    ['upstreamBreaker: {openFor: 10}', 'upstreamBreaker.openFor', /not a duration/],
    ['upstreamBreaker: {threshold: 3}', 'upstreamBreaker.threshold', /unknown key \(known: failures, openFor\)/],
    ['upstreamBreaker: off', 'upstreamBreaker', /mapping/],
    ['upstreams: {docker.io: {url: "https://x", breaker: {openFor: soon}}}', 'upstreams.docker.io.breaker.openFor', /not a duration/],
    ['upstreams: {docker.io: {url: "https://x", breaker: {failures: 1000}}}', 'upstreams.docker.io.breaker.failures', /from 1 to 100/],
    ['upstreams: {docker.io: {url: "https://x", breaker: {halfOpen: 1}}}', 'upstreams.docker.io.breaker.halfOpen', /unknown key/],
    ['upstreams: {docker.io: {url: "https://x", breaker: true}}', 'upstreams.docker.io.breaker', /mapping/],
  ] as const) {
    it(`refuses ${yaml}`, () => {
      assert.throws(
        () => parseConfigText(yaml),
        (err: unknown) => err instanceof ConfigError && err.key === key && message.test(err.message) && err.message.startsWith(`config: ${key}: `),
      );
    });
  }
});
