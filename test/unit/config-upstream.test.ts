// upstreamTimeouts and upstreamRetries in the mirror config: defaults, values, and the one
// clear line a bad value gets.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, parseConfigText } from '../../mirror/config.js';

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
