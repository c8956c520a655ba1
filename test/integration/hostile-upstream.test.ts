// A hostile upstream next to a real one (issue 11): credentials must not leave for a realm a
// redirect target names, a forged manifest must never land under another upstream's digest,
// tokens and documents an upstream sends are held within stated bounds.
//
// The mirror is a real process with two upstreams: docker.io is a real docker-registry
// holding a fixture image, hostile.example.test is the scripted server of
// test/rig/hostile-upstream.ts (configured with credentials, as a private registry would be),
// and a second scripted server plays the foreign origin its redirects lead to.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { after, before, beforeEach, describe, it } from 'node:test';
import { buildFixtures, pushImage } from '../fixtures/images.js';
import type { PushedImage } from '../../tools/oci/oci-client.js';
import { bearerChallenge, startHostileUpstream, type HostileUpstream } from '../rig/hostile-upstream.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { sleep, waitFor } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { getManifestVia, getMetrics, manifestPath, metricValue, ociError } from './helpers.js';

const hostileHost = 'hostile.example.test';
const password = 'hostile-secret-pw-4711';
const schema1Signed = 'application/vnd.docker.distribution.manifest.v1+prettyjws';
const sha = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

describe('a hostile upstream', { timeout: 300_000 }, () => {
  let real: RegistryHandle;
  let hostile: HostileUpstream;
  let foreign: HostileUpstream;
  let mirror: MirrorHandle;
  let small: PushedImage;
  /** What hostile's token service hands out. */
  let token = { bytes: 32, expiresIn: 300 };

  before(async () => {
    const fixtures = await buildFixtures();
    [real, hostile, foreign] = await Promise.all([startRegistry(), startHostileUpstream(), startHostileUpstream()]);
    small = await pushImage(fixtures.images.small, real.host);
    mirror = await startMirror({
      upstreams: {
        'docker.io': { url: real.url },
        [hostileHost]: { url: hostile.url, username: 'mirror-user', password },
      },
    });
  });

  after(async () => {
    await mirror?.stop();
    await Promise.all([real?.stop(), hostile?.stop(), foreign?.stop()]);
  });

  beforeEach(() => {
    hostile.reset();
    foreign.reset();
    token = { bytes: 32, expiresIn: 300 };
  });

  /** hostile's own token service: Basic credentials in, a token of token.bytes out. */
  function tokenService(): void {
    hostile.route('GET', /^\/token$/, (_req, res, url) => {
      const value = `${url.searchParams.get('scope') ?? ''}:`.padEnd(token.bytes, 't');
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token: value, expires_in: token.expiresIn }));
    });
  }

  /** Every /v2/ request without a Bearer token is challenged, as a private registry does. Added last: it runs first. */
  function requireToken(): void {
    hostile.route('GET', /^\/v2\//, (req, res) => {
      if (req.headers.authorization?.startsWith('Bearer ')) return false;
      bearerChallenge(res, `${hostile.url}/token`);
    });
    hostile.route('HEAD', /^\/v2\//, (req, res) => {
      if (req.headers.authorization?.startsWith('Bearer ')) return false;
      bearerChallenge(res, `${hostile.url}/token`);
    });
  }

  const via = (path: string) => `${mirror.url}/v2/${hostileHost}/${path}`;

  it('credentials never reach a realm named by a redirect target, then or later', async () => {
    const blob = sha('layer');
    tokenService();
    hostile.route('GET', /\/blobs\//, (_req, res) => {
      res.writeHead(307, { location: `${foreign.url}/storage/blob?sig=abc` });
      res.end();
    });
    hostile.route('GET', /\/manifests\//, (_req, res) => {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}');
    });
    requireToken();
    foreign.route('GET', /^\/storage\//, (_req, res) => bearerChallenge(res, `${foreign.url}/steal`, 'evil'));
    foreign.route('GET', /^\/steal$/, (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"token":"stolen"}');
    });

    const res = await fetch(via(`team/app/blobs/${blob}`));
    assert.equal(res.status, 503, await res.clone().text());
    assert.equal(await ociError(res), 'UNAVAILABLE');
    // Other repositories afterwards: the upstream's own challenge still rules.
    for (const repo of ['team/other', 'team/third']) {
      assert.equal((await fetch(via(`${repo}/manifests/v1`))).status, 404);
    }

    const toForeign = foreign.requests();
    assert.ok(toForeign.some((r) => r.path.startsWith('/storage/')), 'the redirect was followed');
    assert.deepEqual(toForeign.filter((r) => r.authorization !== undefined), [], 'no Authorization reached the foreign origin');
    assert.ok(!toForeign.some((r) => r.path.startsWith('/steal')), 'the foreign realm was never asked for a token');
    const tokenRequests = hostile.requests().filter((r) => r.path.startsWith('/token'));
    assert.ok(tokenRequests.length >= 3);
    const basic = `Basic ${Buffer.from(`mirror-user:${password}`).toString('base64')}`;
    assert.ok(tokenRequests.every((r) => r.authorization === basic), 'the upstream\'s own realm got the credentials');
    assert.ok(!mirror.logText().includes(password) && !mirror.logText().includes(basic.slice(6)), 'nothing secret in the log');
  });

  it('a forged schema1 manifest is refused and never served for another upstream\'s digest', async () => {
    tokenService();
    const forged = Buffer.from('{"schemaVersion":1,"name":"library/small","tag":"v1","fsLayers":[{"blobSum":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}],"signatures":[]}');
    hostile.route('GET', /^\/v2\/library\/small\/manifests\//, (_req, res) => {
      res.writeHead(200, { 'content-type': schema1Signed, 'docker-content-digest': small.digest, 'content-length': forged.length });
      res.end(forged);
    });
    hostile.route('HEAD', /^\/v2\/library\/small\/manifests\//, (_req, res) => {
      res.writeHead(200, { 'content-type': schema1Signed, 'docker-content-digest': small.digest, 'content-length': forged.length });
      res.end();
    });
    requireToken();

    for (const ref of ['v1', small.digest]) {
      const poisoned = await getManifestVia(mirror.url, `/v2/${hostileHost}/library/small/manifests/${ref}`, schema1Signed);
      assert.equal(poisoned.status, 502, `${ref}: ${poisoned.body.toString()}`);
      assert.equal(JSON.parse(poisoned.body.toString()).errors[0].code, 'MANIFEST_INVALID');
    }
    assert.ok(!existsSync(manifestPath(mirror.dataDir, small.digest)), 'nothing stored under the victim digest');

    // The real upstream's manifest, by digest and by tag: its own bytes.
    const genuine = await getManifestVia(mirror.url, `/v2/library/small/manifests/${small.digest}`);
    assert.equal(genuine.status, 200);
    assert.equal(genuine.digest, small.digest);
    // Now cached: the hostile upstream asking for it gets the proven bytes, never its forgery.
    const again = await getManifestVia(mirror.url, `/v2/${hostileHost}/library/small/manifests/${small.digest}`, schema1Signed);
    assert.equal(again.digest, small.digest);
    assert.equal(sha(readFileSync(manifestPath(mirror.dataDir, small.digest))), small.digest);
  });

  it('a genuine signed schema1 manifest is stored under its payload digest', async () => {
    tokenService();
    const payload = '{\n   "schemaVersion": 1,\n   "name": "legacy/app",\n   "tag": "s1",\n   "architecture": "amd64",\n   "fsLayers": [],\n   "history": []\n}';
    const formatLength = payload.length - 2;
    const prot = Buffer.from(JSON.stringify({ formatLength, formatTail: Buffer.from(payload.slice(formatLength)).toString('base64url'), time: '2020-01-01T00:00:00Z' })).toString('base64url');
    const body = Buffer.from(`${payload.slice(0, formatLength)},\n   "signatures": [{"header": {"alg": "ES256"}, "signature": "c2ln", "protected": "${prot}"}]\n}`);
    const digest = sha(payload);
    hostile.route('GET', /^\/v2\/legacy\/app\/manifests\//, (_req, res) => {
      res.writeHead(200, { 'content-type': schema1Signed, 'docker-content-digest': digest, 'content-length': body.length });
      res.end(body);
    });
    requireToken();
    const got = await getManifestVia(mirror.url, `/v2/${hostileHost}/legacy/app/manifests/s1`, schema1Signed);
    assert.equal(got.status, 200, got.body.toString());
    assert.equal(got.headers.get('docker-content-digest'), digest);
    assert.ok(got.body.equals(body));
    assert.ok(readFileSync(manifestPath(mirror.dataDir, digest)).equals(body));
  });

  it('the token cache is bounded in entries and bytes, and expired tokens are dropped', async () => {
    tokenService();
    hostile.route('GET', /\/manifests\//, (_req, res) => {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}');
    });
    requireToken();
    const labels = { upstream: hostileHost };
    const cache = async () => {
      const text = await getMetrics(mirror.url);
      return {
        entries: metricValue(text, 'registry_mirror_upstream_token_cache_entries', labels) ?? -1,
        bytes: metricValue(text, 'registry_mirror_upstream_token_cache_bytes', labels) ?? -1,
      };
    };
    const ask = async (prefix: string, count: number) => {
      const names = Array.from({ length: count }, (_, i) => `${prefix}/repo${i}`);
      for (let i = 0; i < names.length; i += 20) {
        const statuses = await Promise.all(names.slice(i, i + 20).map(async (n) => (await fetch(via(`${n}/manifests/v1`))).status));
        assert.deepEqual([...new Set(statuses)], [404]);
      }
    };

    // Short-lived tokens (2 s) leave the cache when they expire, asked for again or not;
    // the long-lived ones of earlier tests stay.
    const earlier = await cache();
    token = { bytes: 1024, expiresIn: 2 };
    await ask('short', 100);
    assert.ok((await cache()).bytes >= earlier.bytes + 100 * 1024);
    await waitFor(async () => (await cache()).entries === earlier.entries, 10_000, 'expired tokens dropped');
    assert.equal((await cache()).bytes, earlier.bytes);

    // One token per repository name a client invents: at most 1000 are kept...
    token = { bytes: 64, expiresIn: 300 };
    await ask('many', 1100);
    assert.ok(hostile.requests().filter((r) => r.path.startsWith('/token')).length >= 1200, 'one token per repository');
    assert.equal((await cache()).entries, 1000);
    // ...and at most 4 MiB of them: 300 tokens of 16 KiB do not fit.
    token = { bytes: 16 << 10, expiresIn: 300 };
    await ask('big', 300);
    const { entries, bytes } = await cache();
    assert.ok(bytes > 3 << 20 && bytes <= 4 << 20, `bytes ${bytes}`);
    assert.ok(entries < 300, `entries ${entries}`);
  });

  it('a tag list past the document limit is cut off, streamed or declared', async () => {
    tokenService();
    const huge = 300 << 20;
    const stream = (res: ServerResponse, declared: boolean) => {
      res.writeHead(200, { 'content-type': 'application/json', ...(declared ? { 'content-length': huge } : {}) });
      void hostile.streamBytes(res, huge);
    };
    hostile.route('GET', /^\/v2\/big\/chunked\/tags\/list$/, (_req, res) => stream(res, false));
    hostile.route('GET', /^\/v2\/big\/declared\/tags\/list$/, (_req, res) => stream(res, true));
    requireToken();
    const before = peakRss(mirror.pid());
    for (const name of ['chunked', 'declared']) {
      const res = await fetch(via(`big/${name}/tags/list`));
      assert.equal(res.status, 503, name);
      assert.equal(await ociError(res), 'UNAVAILABLE');
    }
    await sleep(200);
    // 8 MiB limit; socket buffers on both sides account for the rest.
    assert.ok(hostile.streamed() < 32 << 20, `streamed ${hostile.streamed()} bytes`);
    assert.ok(peakRss(mirror.pid()) - before < 100 << 20, 'peak RSS did not grow by the list');
  });

  it('a token response past its limit is refused', async () => {
    hostile.route('GET', /^\/token$/, (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      void hostile.streamBytes(res, 64 << 20);
    });
    requireToken();
    const res = await fetch(via('big/token/manifests/v1'));
    assert.equal(res.status, 503);
    await sleep(200);
    assert.ok(hostile.streamed() < 16 << 20, `streamed ${hostile.streamed()} bytes`);
  });
});

/** VmHWM of a process, in bytes. */
function peakRss(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}
