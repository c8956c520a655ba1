// Retries of idempotent upstream requests: which failures are retried, the full-jitter
// backoff, Retry-After, and the bounded number of attempts (mirror/upstream/retry.ts).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Dispatcher } from 'undici';
import { backoffDelay, isRetryableError, retryAfterMs, withRetries, type RetryPolicy } from '../../mirror/upstream/retry.js';

const policy: RetryPolicy = { attempts: 3, backoffMs: 100, maxDelayMs: 1000 };

function response(statusCode: number, headers: Record<string, string> = {}): Dispatcher.ResponseData & { dumped: boolean } {
  const r = {
    statusCode,
    headers,
    dumped: false,
    body: { dump: async () => void (r.dumped = true) },
  };
  return r as unknown as Dispatcher.ResponseData & { dumped: boolean };
}

function scripted(outcomes: Array<number | Error | [number, Record<string, string>]>) {
  const sent: Array<ReturnType<typeof response>> = [];
  let i = 0;
  const send = async () => {
    const o = outcomes[Math.min(i++, outcomes.length - 1)]!;
    if (o instanceof Error) throw o;
    const r = Array.isArray(o) ? response(o[0], o[1]) : response(o);
    sent.push(r);
    return r;
  };
  return { send, sent, calls: () => i };
}

const connRefused = () => Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });

describe('upstream retries', () => {
  it('full jitter: random(0, min(maxDelay, backoff * 2^(n-1)))', () => {
    assert.equal(backoffDelay(1, policy, () => 0.999), 99);
    assert.equal(backoffDelay(2, policy, () => 0.999), 199);
    assert.equal(backoffDelay(3, policy, () => 0.5), 200);
    assert.equal(backoffDelay(20, policy, () => 0.999), 999, 'capped at maxDelay');
    assert.equal(backoffDelay(3, policy, () => 0), 0);
  });

  it('Retry-After as seconds or an HTTP date', () => {
    assert.equal(retryAfterMs('3'), 3000);
    assert.equal(retryAfterMs(new Date(10_000).toUTCString(), 4_000), 6000);
    assert.equal(retryAfterMs(new Date(1_000).toUTCString(), 4_000), 0, 'a date in the past: at once');
    assert.equal(retryAfterMs('soon'), undefined);
    assert.equal(retryAfterMs(undefined), undefined);
    assert.equal(retryAfterMs(['2', '9']), 2000);
  });

  it('connection errors and timeouts before the headers are retryable; others are not', () => {
    assert.ok(isRetryableError(connRefused()));
    assert.ok(isRetryableError({ code: 'UND_ERR_HEADERS_TIMEOUT' }));
    assert.ok(isRetryableError({ cause: { code: 'ECONNRESET' } }));
    assert.ok(!isRetryableError(new TypeError('invalid url')));
    assert.ok(!isRetryableError({ code: 'UND_ERR_INVALID_ARG' }));
  });

  it('500, 502 then 200: three attempts, failed bodies dumped, statuses reported', async () => {
    const s = scripted([500, 502, 200]);
    const statuses: Array<number | 'error'> = [];
    const waits: number[] = [];
    const res = await withRetries(policy, s.send, { onAttempt: (st) => statuses.push(st), sleep: async (ms) => void waits.push(ms), random: () => 0.5 });
    assert.equal(res.statusCode, 200);
    assert.deepEqual(statuses, [500, 502, 200]);
    assert.deepEqual(waits, [50, 100]);
    assert.ok(s.sent[0]!.dumped && s.sent[1]!.dumped && !s.sent[2]!.dumped);
  });

  it('gives up after the bounded number of attempts and returns the last answer', async () => {
    const s = scripted([503]);
    const res = await withRetries(policy, s.send, { sleep: async () => undefined });
    assert.equal(res.statusCode, 503);
    assert.equal(s.calls(), 3);
    const e = scripted([connRefused()]);
    await assert.rejects(withRetries(policy, e.send, { sleep: async () => undefined }), /ECONNREFUSED/);
    assert.equal(e.calls(), 3);
  });

  it('404, 401, 403 and non-retryable errors are answered at once', async () => {
    for (const status of [200, 206, 304, 400, 401, 403, 404]) {
      const s = scripted([status, 200]);
      assert.equal((await withRetries(policy, s.send, { sleep: async () => undefined })).statusCode, status);
      assert.equal(s.calls(), 1);
    }
    const t = scripted([new TypeError('bad'), 200]);
    await assert.rejects(withRetries(policy, t.send, { sleep: async () => undefined }), TypeError);
    assert.equal(t.calls(), 1);
  });

  it('429 honours a Retry-After within maxDelay, and gives up at once on a longer one', async () => {
    const waits: number[] = [];
    const s = scripted([[429, { 'retry-after': '1' }], 200]);
    assert.equal((await withRetries(policy, s.send, { sleep: async (ms) => void waits.push(ms) })).statusCode, 200);
    assert.deepEqual(waits, [1000]);
    const long = scripted([[429, { 'retry-after': '3600' }], 200]);
    assert.equal((await withRetries(policy, long.send, { sleep: async () => assert.fail('must not wait') })).statusCode, 429);
    assert.equal(long.calls(), 1);
  });

  it('mayRetry false ends the retries: checked before the wait and, for a failed connection, after it', async () => {
    // Before the wait: a status is returned as it is, an error thrown.
    const s = scripted([503, 200]);
    assert.equal((await withRetries(policy, s.send, { mayRetry: () => false, sleep: async () => assert.fail('no wait') })).statusCode, 503);
    assert.equal(s.calls(), 1);
    assert.ok(!s.sent[0]!.dumped, 'the answer is handed over undumped');
    const e = scripted([connRefused(), 200]);
    await assert.rejects(withRetries(policy, e.send, { mayRetry: () => false, sleep: async () => assert.fail('no wait') }), /ECONNREFUSED/);
    assert.equal(e.calls(), 1);
    // The breaker opened while this request waited to retry: no further try.
    let open = false;
    const w = scripted([connRefused(), 200]);
    await assert.rejects(withRetries(policy, w.send, { mayRetry: () => !open, sleep: async () => void (open = true) }), /ECONNREFUSED/);
    assert.equal(w.calls(), 1);
  });

  it('attempts: 1 means no retries', async () => {
    const s = scripted([503, 200]);
    assert.equal((await withRetries({ ...policy, attempts: 1 }, s.send)).statusCode, 503);
    assert.equal(s.calls(), 1);
  });
});
