// Docker Hub's ratelimit-* headers read liberally and bounded (mirror/upstream/rate-limit.ts).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseElement, parseRateLimit } from '../../mirror/upstream/rate-limit.js';

describe('rate limit headers', () => {
  it("Docker Hub's form: count and window", () => {
    assert.deepEqual(parseRateLimit({ 'ratelimit-limit': '100;w=21600', 'ratelimit-remaining': '76;w=21600' }), { limit: 100, remaining: 76, windowSeconds: 21600 });
  });

  it('liberal: spaces, no window, a list (first element that parses), array values, one header alone', () => {
    assert.deepEqual(parseRateLimit({ 'ratelimit-limit': ' 200 ; w = 3600 ', 'ratelimit-remaining': '0' }), { limit: 200, remaining: 0, windowSeconds: 3600 });
    assert.deepEqual(parseElement('10, 10;w=1, 50;w=60'), { value: 10 });
    assert.deepEqual(parseElement('x, 50;w=60'), { value: 50, windowSeconds: 60 });
    assert.deepEqual(parseRateLimit({ 'ratelimit-limit': ['100;w=21600', '5'] }), { limit: 100, windowSeconds: 21600 });
    assert.deepEqual(parseRateLimit({ 'ratelimit-remaining': '7' }), { remaining: 7 });
  });

  it('garbage is ignored: none, not numbers, negative, fractions, too large, too long, remaining above limit', () => {
    assert.equal(parseRateLimit({}), undefined);
    assert.equal(parseRateLimit({ 'ratelimit-limit': 'lots', 'ratelimit-remaining': '' }), undefined);
    assert.equal(parseRateLimit({ 'ratelimit-limit': '-1', 'ratelimit-remaining': '1.5' }), undefined);
    assert.equal(parseRateLimit({ 'ratelimit-limit': '99999999999999999999' }), undefined);
    assert.equal(parseRateLimit({ 'ratelimit-limit': `${'1'.repeat(300)}` }), undefined);
    assert.equal(parseRateLimit({ 'ratelimit-limit': `100;w=${'9'.repeat(20)}`, 'ratelimit-remaining': '<script>' })?.windowSeconds, undefined);
    assert.equal(parseRateLimit({ 'ratelimit-limit': '10', 'ratelimit-remaining': '11' }), undefined);
    assert.deepEqual(parseRateLimit({ 'ratelimit-limit': '100;w=abc' }), { limit: 100 });
  });
});
