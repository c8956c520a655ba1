import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { byteRange } from '../../mirror/store/byte-range.js';

describe('byteRange', () => {
  it('whole object without a header, malformed headers and multiple ranges', () => {
    const whole = { start: 0, end: 99, partial: false };
    assert.deepEqual(byteRange(100, undefined), whole);
    assert.deepEqual(byteRange(100, 'bytes=abc'), whole);
    assert.deepEqual(byteRange(100, 'bytes=0-1,50-60'), whole);
    assert.deepEqual(byteRange(100, 'items=0-5'), whole);
  });
  it('one range, suffix and open-ended ranges', () => {
    assert.deepEqual(byteRange(100, 'bytes=2-9'), { start: 2, end: 9, partial: true });
    assert.deepEqual(byteRange(100, 'bytes=-3'), { start: 97, end: 99, partial: true });
    assert.deepEqual(byteRange(100, 'bytes=90-'), { start: 90, end: 99, partial: true });
    assert.deepEqual(byteRange(100, 'bytes=90-500'), { start: 90, end: 99, partial: true });
  });
  it('unsatisfiable past the end', () => {
    assert.equal(byteRange(100, 'bytes=100-'), 'unsatisfiable');
  });
});
