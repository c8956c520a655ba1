import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { nextLink } from '../../mirror/upstream/next-page.js';
import { lexical, nextPageLink, pageOf } from '../../mirror/v2/tag-list.js';

describe('tag list pagination (OCI distribution spec)', () => {
  const sorted = ['0.1', 'A', 'Z', '_x', 'a', 'a-1', 'a10', 'a2', 'b'];

  it('sorts in byte order, as distribution does', () => {
    assert.deepEqual(['b', 'a2', 'a10', '_x', 'Z', 'A', '0.1', 'a-1', 'a'].sort(lexical), sorted);
  });

  it('applies last (strictly after) and n, and names the next page only when there is one', () => {
    assert.deepEqual(pageOf(sorted, undefined, undefined), { tags: sorted });
    assert.deepEqual(pageOf(sorted, 3, undefined), { tags: ['0.1', 'A', 'Z'], nextLast: 'Z' });
    assert.deepEqual(pageOf(sorted, 3, 'Z'), { tags: ['_x', 'a', 'a-1'], nextLast: 'a-1' });
    assert.deepEqual(pageOf(sorted, 3, 'a-1'), { tags: ['a10', 'a2', 'b'] });
    assert.deepEqual(pageOf(sorted, undefined, 'a2'), { tags: ['b'] });
    assert.deepEqual(pageOf(sorted, undefined, 'a1'), { tags: ['a10', 'a2', 'b'] }, 'last need not be a tag');
    assert.deepEqual(pageOf(sorted, 0, undefined), { tags: [] });
    assert.deepEqual(pageOf(sorted, 100, undefined), { tags: sorted });
    assert.deepEqual(pageOf([], 2, undefined), { tags: [] });
  });

  it("links to the mirror's own URL with the client's name and ns", () => {
    assert.equal(nextPageLink('ghcr.io/org/app', 2, 'v1.0', undefined), '</v2/ghcr.io/org/app/tags/list?n=2&last=v1.0>; rel="next"');
    assert.equal(nextPageLink('library/x', 5, 'a', 'docker.io'), '</v2/library/x/tags/list?n=5&last=a&ns=docker.io>; rel="next"');
  });

  it("finds the upstream's rel=next link in the forms registries write", () => {
    assert.equal(nextLink('</v2/a/tags/list?last=b&n=2>; rel="next"'), '/v2/a/tags/list?last=b&n=2');
    assert.equal(nextLink('<https://r.example/v2/a/tags/list?last=b>;rel=next'), 'https://r.example/v2/a/tags/list?last=b');
    assert.equal(nextLink('</p>; rel="prev", </n>; rel="next"'), '/n');
    assert.equal(nextLink('</x>; title="a"; REL="Next"'), '/x');
    assert.equal(nextLink(['</p>; rel="prev"', '</n>; rel="next"']), '/n');
    assert.equal(nextLink('</p>; rel="prev"'), undefined);
    assert.equal(nextLink(undefined), undefined);
    assert.equal(nextLink('garbage'), undefined);
  });
});
