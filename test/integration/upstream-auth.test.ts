// Upstream authentication against real docker-registry instances: htpasswd (bcrypt) Basic
// auth with every way of configuring credentials, and distribution's token auth with a
// hand-written token server, including tokens that expire in the middle of a session.
// A fault proxy between mirror and registry records the Authorization header of every
// upstream request, so "the client's own credentials never reach the upstream" is checked on
// the wire, not inferred.

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildFixtures, pushImage, type FixtureSet } from '../fixtures/images.js';
import { describePushed, type PushedImage } from '../../tools/oci/oci-client.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { sleep, tempDir } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { skopeoCopy, skopeoCopyToDir } from '../../tools/launch/skopeo.js';
import { startTokenServer, type TokenServerHandle } from '../rig/token-server.js';
import { getManifestVia, getStats, ociError, pullImage } from './helpers.js';

const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

describe('htpasswd (bcrypt) Basic auth upstream', { timeout: 300_000 }, () => {
  let fixtures: FixtureSet;
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  let small: PushedImage;
  const good = basic('alice', 's3cret');
  const clientAuth = basic('mallory', 'client-secret');

  before(async () => {
    fixtures = await buildFixtures();
    registry = await startRegistry({ auth: { htpasswd: { users: { alice: 's3cret' } } } });
    small = await pushImage(fixtures.images.small, registry.host, { creds: 'alice:s3cret' });
    proxy = await startFaultProxy(registry.url);
    const dir = tempDir('auth-files');
    // A kubernetes.io/dockerconfigjson Secret as mounted: the registry is keyed by host:port,
    // next to an entry for another registry that must not be picked.
    const credentialsFile = join(dir, 'config.json');
    writeFileSync(
      credentialsFile,
      JSON.stringify({
        auths: {
          'other.example.com': { auth: Buffer.from('alice:wrong').toString('base64') },
          [proxy.host]: { auth: Buffer.from('alice:s3cret').toString('base64') },
        },
      }),
    );
    // Secret keys mounted as files usually end with a newline; it is not part of the value.
    writeFileSync(join(dir, 'username'), 'alice\n');
    writeFileSync(join(dir, 'password'), 's3cret\n');
    mirror = await startMirror({
      upstreams: {
        'docker.io': { url: proxy.url, username: 'alice', password: 's3cret' },
        'creds-file.test': { url: proxy.url, credentialsFile },
        'user-files.test': { url: proxy.url, usernameFile: join(dir, 'username'), passwordFile: join(dir, 'password') },
        'wrong.test': { url: proxy.url, username: 'alice', password: 'not-the-password' },
        'anonymous.test': { url: proxy.url },
      },
    });
  });

  after(async () => {
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it('pulls with inline credentials (skopeo), credentialsFile and username/password files', async () => {
    const out = tempDir('auth-pull');
    const viaSkopeo = await skopeoCopyToDir(`${mirror.host}/${small.repository}:${small.tag}`, join(out, 'inline'));
    assert.equal(viaSkopeo.manifestDigest, small.digest);
    for (const prefix of ['creds-file.test/', 'user-files.test/']) {
      const pulled = await pullImage(mirror.url, prefix, small.repository, small.tag);
      assert.equal(pulled.manifestDigest, small.digest, prefix);
    }
    // Every upstream request after the first challenge carried alice's credentials.
    const sent = proxy.requests().filter((r) => r.path.startsWith('/v2/library/small/'));
    assert.ok(sent.length > 0);
    assert.ok(sent.every((r) => r.authorization === good || r.status === 401), JSON.stringify(sent.map((r) => [r.path, r.status, r.authorization?.slice(0, 12)])));
    assert.ok(sent.filter((r) => r.status === 200).length >= 2 + small.blobs.length);
  });

  it('wrong or missing credentials give a clear 401 UNAUTHORIZED', async () => {
    const wrong = await getManifestVia(mirror.url, `/v2/wrong.test/${small.repository}/manifests/${small.tag}`);
    assert.equal(wrong.status, 401);
    const body = JSON.parse(wrong.body.toString('utf8')) as { errors: Array<{ code: string; message: string }> };
    assert.equal(body.errors[0]!.code, 'UNAUTHORIZED');
    assert.match(body.errors[0]!.message, /upstream wrong\.test refused the credentials/);

    const blob = await fetch(`${mirror.url}/v2/wrong.test/${small.repository}/blobs/${small.blobs[0]!.digest}`);
    assert.equal(blob.status, 401, 'a blob already cached for another upstream is not served without its own auth');
    assert.equal(await ociError(blob), 'UNAUTHORIZED');

    const none = await getManifestVia(mirror.url, `/v2/anonymous.test/${small.repository}/manifests/${small.tag}`);
    assert.equal(none.status, 401);
    assert.match(none.body.toString('utf8'), /"code":"UNAUTHORIZED".*cannot provide/);

    // skopeo shows the user what went wrong.
    await assert.rejects(
      skopeoCopy(`docker://${mirror.host}/wrong.test/${small.repository}:${small.tag}`, `dir:${tempDir('wrong')}`),
      /unauthorized|authentication required|refused the credentials/i,
    );
  });

  it('an upstream 403 becomes DENIED', async () => {
    proxy.failNext('/manifests/', 403, 1);
    const r = await getManifestVia(mirror.url, `/v2/user-files.test/${small.repository}/manifests/${small.digest}`);
    // By digest and already linked for this upstream: served from cache without asking.
    assert.equal(r.status, 200);
    const denied = await getManifestVia(mirror.url, `/v2/user-files.test/${small.repository}/manifests/other-tag`);
    assert.equal(denied.status, 403);
    assert.equal(JSON.parse(denied.body.toString('utf8')).errors[0].code, 'DENIED');
    proxy.clear();
  });

  it("the client's own Authorization header is never forwarded upstream", async () => {
    proxy.clearLog();
    const headers = { authorization: clientAuth };
    for (const prefix of ['', 'creds-file.test/', 'wrong.test/', 'anonymous.test/']) {
      await getManifestVia(mirror.url, `/v2/${prefix}${small.repository}/manifests/${small.tag}`, undefined, headers);
      await getManifestVia(mirror.url, `/v2/${prefix}${small.repository}/manifests/not-there`, undefined, headers);
      await fetch(`${mirror.url}/v2/${prefix}${small.repository}/blobs/${small.blobs[1]!.digest}`, { headers }).then((r) => r.arrayBuffer());
      await fetch(`${mirror.url}/v2/${prefix}${small.repository}/tags/list`, { headers: { authorization: 'Bearer client-token' } }).then((r) => r.arrayBuffer());
    }
    const seen = new Set(proxy.requests().map((r) => r.authorization ?? '(none)'));
    assert.ok(proxy.requests().length >= 8);
    assert.ok(!seen.has(clientAuth) && !seen.has('Bearer client-token'), [...seen].join(' | '));
    for (const a of seen) assert.ok([good, basic('alice', 'not-the-password'), '(none)'].includes(a), a);
    // And nothing of the client's secret reached the mirror's log.
    assert.doesNotMatch(mirror.logText(), /client-secret|client-token|bWFsbG9yeTpjbGllbnQtc2VjcmV0/);
  });
});

describe('token-auth upstream (distribution auth.token)', { timeout: 300_000 }, () => {
  let fixtures: FixtureSet;
  let tokens: TokenServerHandle;
  let registry: RegistryHandle;
  let mirror: MirrorHandle;
  const pushed: Record<string, PushedImage> = {};

  before(async () => {
    fixtures = await buildFixtures();
    tokens = await startTokenServer({ users: { bob: 'tok3n-pw' }, expiresIn: 300, anonymousPull: ['public/app'] });
    registry = await startRegistry({ auth: { token: { realm: tokens.realm, service: tokens.service, issuer: tokens.issuer, rootCertBundle: tokens.rootCertBundle } } });
    for (const [repository, tag, image] of [
      ['team/app', 'v1', fixtures.images.small],
      ['team/app', 'v2', fixtures.images['docker-v2']],
      ['team/other', 'v1', fixtures.images.small],
      ['team/x5c', 'v1', fixtures.images.small],
      ['team/refused', 'v1', fixtures.images.small],
      ['public/app', 'v1', fixtures.images.small],
    ] as const) {
      await skopeoCopy(`oci:${image.layoutDir}:${image.layoutTag}`, `docker://${registry.host}/${repository}:${tag}`, {
        destCreds: 'bob:tok3n-pw',
        format: image.format === 'v2s2' ? 'v2s2' : undefined,
      });
      const t = await (await fetch(`${tokens.realm}?service=${tokens.service}&scope=repository:${repository}:pull`, { headers: { authorization: basic('bob', 'tok3n-pw') } })).json();
      pushed[`${repository}:${tag}`] = await describePushed(registry.host, repository, tag, { headers: { authorization: `Bearer ${(t as { token: string }).token}` } });
    }
    mirror = await startMirror({
      cache: { tagTTL: '1s' },
      upstreams: {
        'docker.io': { url: registry.url, username: 'bob', password: 'tok3n-pw' },
        'wrong.test': { url: registry.url, username: 'bob', password: 'nope' },
        'anonymous.test': { url: registry.url },
      },
    });
  });

  after(async () => {
    await mirror?.stop();
    await registry?.stop();
    await tokens?.stop();
  });

  it('pulls with a token (kid = libtrust key id); one token per repository scope, cached', async () => {
    assert.match(tokens.keyId, /^([A-Z2-7]{4}:){11}[A-Z2-7]{4}$/);
    const before = tokens.countTokens('repository:team/app:');
    for (const tag of ['v1', 'v2']) {
      const p = pushed[`team/app:${tag}`]!;
      assert.equal((await pullImage(mirror.url, '', 'team/app', tag)).manifestDigest, p.digest);
    }
    // Two manifests and 6 distinct blobs went upstream with a single token for the scope.
    assert.equal(tokens.countTokens('repository:team/app:') - before, 1);
    const last = tokens.requests().at(-1)!;
    assert.equal(last.user, 'bob');
    assert.equal(last.service, tokens.service);
    assert.deepEqual(last.scopes, ['repository:team/app:pull']);
  });

  it('x5c-signed tokens work too', async () => {
    tokens.options.keyHeader = 'x5c';
    try {
      assert.equal((await pullImage(mirror.url, '', 'team/x5c', 'v1')).manifestDigest, pushed['team/x5c:v1']!.digest);
    } finally {
      tokens.options.keyHeader = 'kid';
    }
  });

  it('a token that expires mid-session (expires_in 3 s) is renewed before use: the pull goes on', async () => {
    // Short-lived tokens that the registry really refuses once 3 s are over (exp is moved
    // back by distribution's 60 s leeway).
    Object.assign(tokens.options, { expiresIn: 3, lifetimeSeconds: 3, backdateExp: true });
    try {
      const first = tokens.countTokens('repository:team/other:');
      const p = pushed['team/other:v1']!;
      assert.equal((await pullImage(mirror.url, '', 'team/other', 'v1')).manifestDigest, p.digest);
      assert.equal(tokens.countTokens('repository:team/other:'), first + 1);
      await sleep(3500);
      const refusedBefore = (await registry.requests()).filter((r) => r.status === 401).length;
      // Past tagTTL the tag is revalidated upstream (a HEAD), which needs a fresh token.
      const again = await getManifestVia(mirror.url, `/v2/team/other/manifests/v1`);
      assert.equal(again.status, 200);
      assert.equal(again.digest, p.digest);
      assert.equal(tokens.countTokens('repository:team/other:'), first + 2, 'the expired token was replaced');
      await sleep(300);
      const refusedAfter = (await registry.requests()).filter((r) => r.status === 401).length;
      assert.equal(refusedAfter, refusedBefore, 'renewed from expires_in, before the registry had to refuse it');
    } finally {
      Object.assign(tokens.options, { expiresIn: 300, lifetimeSeconds: undefined, backdateExp: false });
    }
  });

  it('a token the registry refuses before its expires_in (401) is renewed and the request retried', async () => {
    // The token server says 300 s but the registry stops accepting after 3 s (2 to 3 s
    // after issue: exp has whole seconds): only the registry's 401 tells the mirror.
    Object.assign(tokens.options, { expiresIn: 300, lifetimeSeconds: 3, backdateExp: true });
    try {
      const p = pushed['team/refused:v1']!;
      const first = tokens.countTokens('repository:team/refused:');
      assert.equal((await pullImage(mirror.url, '', 'team/refused', 'v1')).manifestDigest, p.digest);
      assert.equal(tokens.countTokens('repository:team/refused:'), first + 1);
      await sleep(3600);
      const headsBefore = await registry.countRequests('HEAD', '/v2/team/refused/manifests/v1');
      const r = await getManifestVia(mirror.url, `/v2/team/refused/manifests/v1`);
      assert.equal(r.status, 200);
      assert.equal(r.digest, p.digest);
      await registry.waitForRequestCount('HEAD', '/v2/team/refused/manifests/v1', headsBefore + 2);
      const heads = (await registry.requests()).filter((e) => e.method === 'HEAD' && e.path === '/v2/team/refused/manifests/v1').slice(headsBefore);
      assert.deepEqual(heads.map((e) => e.status), [401, 200], 'refused with the old token, accepted with the new one');
      assert.equal(tokens.countTokens('repository:team/refused:'), first + 2);
    } finally {
      Object.assign(tokens.options, { expiresIn: 300, lifetimeSeconds: undefined, backdateExp: false });
    }
  });

  it('anonymous token flow: an upstream without credentials pulls what anonymous users may', async () => {
    const before = tokens.requests().length;
    assert.equal((await pullImage(mirror.url, 'anonymous.test/', 'public/app', 'v1')).manifestDigest, pushed['public/app:v1']!.digest);
    const asked = tokens.requests().slice(before);
    assert.equal(asked.length, 1, 'one anonymous token for the scope');
    assert.equal(asked[0]!.user, undefined);
    assert.equal(asked[0]!.status, 200);
  });

  it('wrong credentials, or none where the registry wants them, give 401 UNAUTHORIZED', async () => {
    for (const [prefix, pattern] of [
      ['wrong.test/', /token service of wrong\.test refused the credentials/],
      ['anonymous.test/', /upstream anonymous\.test refused anonymous access; configure credentials/],
    ] as const) {
      const r = await getManifestVia(mirror.url, `/v2/${prefix}team/app/manifests/v1`);
      assert.equal(r.status, 401, prefix);
      const e = JSON.parse(r.body.toString('utf8')).errors[0];
      assert.equal(e.code, 'UNAUTHORIZED');
      assert.match(e.message, pattern);
    }
    const stats = await getStats(mirror.url);
    assert.ok(stats.hits + stats.misses > 0);
  });
});
