// Tag listing and discovery as the OCI distribution spec has them, whatever the upstream does
// (issue 13, item 3): docker-registry 2.8 neither sorts nor honours n/last; a scripted upstream
// paginates an unsorted list with Link headers (relative, absolute, hostile). The mirror
// joins the pages, sorts, applies n/last itself and links to its own URL, keeping the path
// prefix or the ?ns= that chose the upstream, so skopeo list-tags works through a prefix. A
// manifest reference that is neither a tag nor a digest is 404 MANIFEST_UNKNOWN, and every
// unknown route is a 404 with OCI error JSON.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { after, before, beforeEach, describe, it } from 'node:test';
import { buildFixtures, pushImage } from '../fixtures/images.js';
import type { PushedImage } from '../../tools/oci/oci-client.js';
import { startHostileUpstream, type HostileUpstream } from '../rig/hostile-upstream.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { run } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { ociError } from './helpers.js';

const hostileHost = 'tags.hostile.test';
/** Pushed in this order; distribution 2.8 lists them in its own (directory) order. */
const extraTags = ['v1', 'b', 'a10', 'a2', 'Z', '_x', 'a-1', 'z9', '0.1', 'A', 'latest'];

interface TagList {
  name: string;
  tags: string[];
}

function byteOrder(tags: string[]): string[] {
  return [...tags].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** The URL in a `Link: <url>; rel="next"` header, or undefined. */
function next(res: Response): string | undefined {
  const link = res.headers.get('link');
  if (link === null) return undefined;
  const m = /^<([^>]+)>;\s*rel="next"$/.exec(link);
  assert.ok(m, `Link ${link}`);
  return m[1];
}

/** Follows the mirror's Links from path to the end, as a client does; returns every page. */
async function walk(base: string, path: string): Promise<{ pages: string[][]; links: string[] }> {
  const pages: string[][] = [];
  const links: string[] = [];
  let url: string | undefined = path;
  while (url !== undefined) {
    assert.ok(pages.length < 50, 'too many pages');
    const res: Response = await fetch(new URL(url, base));
    assert.equal(res.status, 200, url);
    pages.push(((await res.json()) as TagList).tags);
    url = next(res);
    if (url !== undefined) links.push(url);
  }
  return { pages, links };
}

describe('tag listing follows the spec whatever the upstream does', { timeout: 300_000 }, () => {
  let registry: RegistryHandle;
  let hostile: HostileUpstream;
  let foreign: HostileUpstream;
  let mirror: MirrorHandle;
  let small: PushedImage;
  let allTags: string[];

  before(async () => {
    const fixtures = await buildFixtures();
    [registry, hostile, foreign] = await Promise.all([startRegistry(), startHostileUpstream(), startHostileUpstream()]);
    small = await pushImage(fixtures.images['docker-v2'], registry.host, { repository: 'library/small', tag: 's2' });
    const m = await fetch(`${registry.url}/v2/library/small/manifests/s2`, { headers: { accept: small.mediaType } });
    const bytes = Buffer.from(await m.arrayBuffer());
    for (const tag of extraTags) {
      const r = await fetch(`${registry.url}/v2/library/small/manifests/${tag}`, { method: 'PUT', body: bytes, headers: { 'content-type': small.mediaType } });
      assert.equal(r.status, 201, await r.text());
    }
    allTags = byteOrder(['s2', ...extraTags]);
    mirror = await startMirror({
      upstreams: { 'docker.io': { url: registry.url }, [hostileHost]: { url: hostile.url } },
      // One attempt: an upstream 5xx is UNAVAILABLE at once (the cached-tags fallback).
      upstreamRetries: { attempts: 1 },
    });
  });

  after(async () => {
    await mirror?.stop();
    await Promise.all([registry?.stop(), hostile?.stop(), foreign?.stop()]);
  });

  beforeEach(() => {
    hostile.reset();
    foreign.reset();
  });

  it('docker-registry 2.8 itself neither sorts nor honours n/last (the premise)', async () => {
    const res = await fetch(`${registry.url}/v2/library/small/tags/list?n=3&last=b`);
    const body = (await res.json()) as TagList;
    assert.equal(res.headers.get('link'), null);
    assert.equal(body.tags.length, allTags.length, 'n and last ignored');
    assert.notDeepEqual(body.tags, allTags, 'not in lexical order');
  });

  it('against docker-registry 2.8: sorted, n and last applied by the mirror, Link at the mirror', async () => {
    const all = await fetch(`${mirror.url}/v2/library/small/tags/list`);
    assert.equal(all.status, 200);
    assert.equal(all.headers.get('link'), null, 'no n: everything, no Link');
    assert.deepEqual((await all.json()) as TagList, { name: 'library/small', tags: allTags });

    const { pages, links } = await walk(mirror.url, '/v2/library/small/tags/list?n=5');
    assert.deepEqual(pages, [allTags.slice(0, 5), allTags.slice(5, 10), allTags.slice(10)]);
    assert.deepEqual(links, [
      `/v2/library/small/tags/list?n=5&last=${encodeURIComponent(allTags[4]!)}`,
      `/v2/library/small/tags/list?n=5&last=${encodeURIComponent(allTags[9]!)}`,
    ]);

    const after = async (q: string) => ((await (await fetch(`${mirror.url}/v2/library/small/tags/list?${q}`)).json()) as TagList).tags;
    assert.deepEqual(await after('last=b'), allTags.filter((t) => t > 'b'));
    assert.deepEqual(await after('last=a&n=2'), allTags.filter((t) => t > 'a').slice(0, 2));
    assert.deepEqual(await after('last=zzz'), []);
    assert.deepEqual(await after('n=0'), []);
    const exact = await fetch(`${mirror.url}/v2/library/small/tags/list?n=${allTags.length}`);
    assert.equal(exact.headers.get('link'), null, 'a page that ends the list has no Link');
    assert.deepEqual(((await exact.json()) as TagList).tags, allTags);
    const bad = await fetch(`${mirror.url}/v2/library/small/tags/list?n=-1`);
    assert.equal(bad.status, 400);
    assert.equal(await ociError(bad), 'PAGINATION_NUMBER_INVALID');
  });

  it('the Link keeps the path prefix and the ns= that chose the upstream', async () => {
    const viaPrefix = await walk(mirror.url, '/v2/docker.io/library/small/tags/list?n=4');
    assert.deepEqual(viaPrefix.pages.flat(), allTags);
    for (const l of viaPrefix.links) assert.match(l, /^\/v2\/docker\.io\/library\/small\/tags\/list\?n=4&last=[^&]+$/);

    const viaNs = await walk(mirror.url, '/v2/library/small/tags/list?n=4&ns=docker.io');
    assert.deepEqual(viaNs.pages.flat(), allTags);
    for (const l of viaNs.links) assert.match(l, /^\/v2\/library\/small\/tags\/list\?n=4&last=[^&]+&ns=docker\.io$/);
    const first = await fetch(`${mirror.url}/v2/library/small/tags/list?n=4&ns=docker.io`);
    assert.equal(first.headers.get('oci-namespace'), 'docker.io');
    await first.arrayBuffer();
  });

  /** hostile paginates org/app in three unsorted pages: relative Link, then an absolute one to its own origin. */
  function paginatingUpstream(): string[] {
    const pages: Record<string, { tags: string[]; link?: string }> = {
      '': { tags: ['zeta', 'alpha', 'mid'], link: '</v2/org/app/tags/list?last=mid&n=3>; rel="next"' },
      mid: { tags: ['omega', 'Beta', 'mid'], link: `<${hostile.origin}/v2/org/app/tags/list?last=omega&n=3>; rel="next"` },
      omega: { tags: ['gamma', '1.0'] },
    };
    hostile.route('GET', /^\/v2\/org\/app\/tags\/list$/, (_req, res, url) => {
      const page = pages[url.searchParams.get('last') ?? ''];
      if (!page) return false;
      res.writeHead(200, { 'content-type': 'application/json', ...(page.link ? { link: page.link } : {}) });
      res.end(JSON.stringify({ name: 'org/app', tags: page.tags }));
    });
    return byteOrder(['zeta', 'alpha', 'mid', 'omega', 'Beta', 'gamma', '1.0']);
  }

  it('an upstream that paginates an unsorted list: the mirror joins its pages and sorts', async () => {
    const want = paginatingUpstream();
    const all = await fetch(`${mirror.url}/v2/${hostileHost}/org/app/tags/list`);
    assert.equal(all.status, 200);
    assert.equal(all.headers.get('link'), null, "the upstream's Link is not passed on");
    assert.deepEqual(((await all.json()) as TagList).tags, want);
    assert.deepEqual(
      hostile.requests().map((r) => r.path),
      ['/v2/org/app/tags/list', '/v2/org/app/tags/list?last=mid&n=3', '/v2/org/app/tags/list?last=omega&n=3'],
      'the upstream was asked for the whole list (no n/last of the client), page by page',
    );

    const viaPrefix = await walk(mirror.url, `/v2/${hostileHost}/org/app/tags/list?n=2`);
    assert.deepEqual(viaPrefix.pages, [want.slice(0, 2), want.slice(2, 4), want.slice(4, 6), want.slice(6)]);
    for (const l of viaPrefix.links) assert.ok(l.startsWith(`/v2/${hostileHost}/org/app/tags/list?n=2&last=`), l);
    const viaNs = await walk(mirror.url, `/v2/org/app/tags/list?ns=${hostileHost}&n=3`);
    assert.deepEqual(viaNs.pages.flat(), want);
    for (const l of viaNs.links) assert.ok(l.endsWith(`&ns=${hostileHost}`), l);
  });

  it('skopeo list-tags through a path prefix gets the whole sorted list', async () => {
    const want = paginatingUpstream();
    const r = await run('skopeo', ['--insecure-policy', 'list-tags', '--tls-verify=false', `docker://${mirror.host}/${hostileHost}/org/app`], { timeoutMs: 60_000 });
    assert.deepEqual((JSON.parse(r.stdout) as { Tags: string[] }).Tags, want);
    // The same against docker-registry 2.8, by prefix and by the default upstream.
    for (const ref of [`${mirror.host}/docker.io/library/small`, `${mirror.host}/library/small`]) {
      const s = await run('skopeo', ['--insecure-policy', 'list-tags', '--tls-verify=false', `docker://${ref}`], { timeoutMs: 60_000 });
      assert.deepEqual((JSON.parse(s.stdout) as { Tags: string[] }).Tags, allTags, ref);
    }
  });

  it('a Link off the upstream origin or its tag list path is never followed', async () => {
    const links = [
      `<${foreign.origin}/v2/org/app/tags/list?last=x>; rel="next"`,
      '</v2/org/other/tags/list?last=x>; rel="next"',
      '</v2/org/app/manifests/latest>; rel="next"',
      '<http://[::1/v2/>; rel="next"',
    ];
    for (const link of links) {
      hostile.reset();
      hostile.route('GET', /^\/v2\/org\/app\/tags\/list$/, (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json', link });
        res.end(JSON.stringify({ name: 'org/app', tags: ['a'] }));
      });
      const res = await fetch(`${mirror.url}/v2/${hostileHost}/org/app/tags/list`);
      assert.equal(res.status, 503, link);
      assert.equal(await ociError(res), 'UNAVAILABLE');
      assert.equal(hostile.requests().length, 1, `only the first page was asked for: ${link}`);
    }
    assert.equal(foreign.requests().length, 0, 'nothing went to the foreign origin');
  });

  it('an upstream whose Links never end is cut off after a bounded number of pages', async () => {
    let served = 0;
    hostile.route('GET', /^\/v2\/org\/app\/tags\/list$/, (_req, res) => {
      served++;
      res.writeHead(200, { 'content-type': 'application/json', link: `</v2/org/app/tags/list?last=t${served}>; rel="next"` });
      res.end(JSON.stringify({ name: 'org/app', tags: [`t${served}`] }));
    });
    const res = await fetch(`${mirror.url}/v2/${hostileHost}/org/app/tags/list`);
    assert.equal(res.status, 503);
    assert.equal(await ociError(res), 'UNAVAILABLE');
    assert.equal(served, 100);
  });

  it('the cached tags, served when the upstream fails, paginate the same way', async () => {
    const manifest = (tag: string) => Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${'0'.repeat(64)}`, size: 2 }, layers: [], annotations: { tag } }));
    const answer = (res: ServerResponse, tag: string, body: boolean) => {
      const bytes = manifest(tag);
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'content-length': bytes.length, 'docker-content-digest': `sha256:${createHash('sha256').update(bytes).digest('hex')}` });
      res.end(body ? bytes : undefined);
    };
    hostile.route('GET', /^\/v2\/org\/cached\/manifests\/[^/]+$/, (_req, res, url) => answer(res, url.pathname.split('/').pop()!, true));
    hostile.route('HEAD', /^\/v2\/org\/cached\/manifests\/[^/]+$/, (_req, res, url) => answer(res, url.pathname.split('/').pop()!, false));
    const cached = ['t3', 'T1', 't2', '_t'];
    for (const tag of cached) {
      const r = await fetch(`${mirror.url}/v2/${hostileHost}/org/cached/manifests/${tag}`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
      assert.equal(r.status, 200, tag);
      await r.arrayBuffer();
    }
    hostile.route('GET', /^\/v2\/org\/cached\/tags\/list$/, (_req, res) => {
      res.writeHead(503, { 'content-type': 'application/json' });
      res.end('{"errors":[{"code":"UNAVAILABLE","message":"down"}]}');
    });
    const want = byteOrder(cached);
    const viaPrefix = await walk(mirror.url, `/v2/${hostileHost}/org/cached/tags/list?n=3`);
    assert.deepEqual(viaPrefix.pages, [want.slice(0, 3), want.slice(3)]);
    assert.deepEqual(viaPrefix.links, [`/v2/${hostileHost}/org/cached/tags/list?n=3&last=${want[2]}`]);
    const viaNs = await walk(mirror.url, `/v2/org/cached/tags/list?n=1&ns=${hostileHost}&last=${want[0]}`);
    assert.deepEqual(viaNs.pages.flat(), want.slice(1));
    for (const l of viaNs.links) assert.ok(l.endsWith(`&ns=${hostileHost}`), l);
    assert.match(mirror.logText(), /"url":"\/v2\/tags\.hostile\.test\/org\/cached\/tags\/list\?n=3","status":200,"cache":"stale"/);
  });

  it('a manifest reference that is neither a tag nor a digest is 404 MANIFEST_UNKNOWN (GET and HEAD)', async () => {
    const refs = ['-notatag', '.x', 'a'.repeat(129), 'sha256:xyz', `sha256:${'A'.repeat(64)}`, `md5:${'a'.repeat(32)}`, 'sha256:', 'a:b'];
    for (const ref of refs) {
      for (const path of [`/v2/library/small/manifests/${ref}`, `/v2/${hostileHost}/org/app/manifests/${ref}`]) {
        const get = await fetch(mirror.url + path);
        assert.equal(get.status, 404, path);
        assert.equal(await ociError(get), 'MANIFEST_UNKNOWN', path);
        const head = await fetch(mirror.url + path, { method: 'HEAD' });
        assert.equal(head.status, 404, `HEAD ${path}`);
        assert.match(head.headers.get('content-type') ?? '', /^application\/json/);
      }
    }
    assert.equal(hostile.requests().length, 0, 'nothing reached the upstream');
    // Blob digests keep their 400 DIGEST_INVALID: distribution answers so, and no client falls back on it.
    const blob = await fetch(`${mirror.url}/v2/library/small/blobs/sha256:xyz`);
    assert.equal(blob.status, 400);
    assert.equal(await ociError(blob), 'DIGEST_INVALID');
  });

  it('every unknown route is a 404 with OCI error JSON, whatever the method', async () => {
    const paths = ['/v2/library/small/other', '/v2/library/small/manifests/', '/v2/library/small/manifests/a/b', '/v2/library/small/blobs/', '/v2/library/small/tags', '/v2/library/small/tags/list/x', '/nothing', '/v3/', '/v2x'];
    for (const path of paths) {
      for (const method of ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
        const res = await fetch(mirror.url + path, { method });
        assert.equal(res.status, 404, `${method} ${path}`);
        assert.match(res.headers.get('content-type') ?? '', /^application\/json/, `${method} ${path}`);
        if (method !== 'HEAD') assert.equal(await ociError(res), 'NAME_UNKNOWN', `${method} ${path}`);
        else await res.arrayBuffer();
        if (path.startsWith('/v2/')) assert.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0', `${method} ${path}`);
      }
    }
    // Known routes still refuse writes with 405.
    const put = await fetch(`${mirror.url}/v2/library/small/manifests/v1`, { method: 'PUT', body: '{}' });
    assert.equal(put.status, 405);
    assert.equal(await ociError(put), 'UNSUPPORTED');
  });
});
