// Client access to the mirror with real clients: htpasswd (bcrypt) Basic auth for skopeo
// (--src-creds) and containerd (ctr pull --user), read-only bearer tokens for plain HTTP
// clients, open health endpoints, protected /metrics and /stats; and per-upstream repository
// allow/deny patterns that refuse a name before the store or the upstream is touched, for v2
// manifests, blobs and tags and for the v1 API. A fault proxy in front of the upstream
// records every request the mirror makes, so "nothing went upstream" is checked on the wire.

import assert from 'node:assert/strict';
import { readdirSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import bcrypt from 'bcryptjs';
import { tokenHash } from '../../mirror/access/credential-files.js';
import { buildFixtures, pushImage } from '../fixtures/images.js';
import type { PushedImage } from '../../tools/oci/oci-client.js';
import { startContainerd, writeHostsToml, type ContainerdHandle } from '../rig/containerd.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { tempDir } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { skopeoCopy, skopeoCopyToDir } from '../../tools/launch/skopeo.js';
import { pullV1 } from '../rig/v1-client.js';
import { buildV1Fixture, startV1Source, type V1SourceHandle } from '../rig/v1-source.js';
import { getManifestVia, pullImage } from './helpers.js';

const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const TOKEN = 'ci-read-only-token-7f3a9c2e1b';
const HASHED_TOKEN = 'second-token-stored-as-hash-0042';

describe('client authentication and repository policy', { timeout: 300_000 }, () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let v1source: V1SourceHandle;
  let mirror: MirrorHandle;
  let containerd: ContainerdHandle;
  const pushed: Record<string, PushedImage> = {};
  const alice = basic('alice', 'alice-pw-1');
  const bearer = { authorization: `Bearer ${TOKEN}` };
  const v1fixture = buildV1Fixture({ 'library/busybox': [300, 500], 'evil/app': [200] });

  before(async () => {
    const fixtures = await buildFixtures();
    registry = await startRegistry();
    for (const repository of ['library/small', 'library/forbidden', 'myorg/team/app', 'evil/app']) {
      pushed[repository] = await pushImage(fixtures.images.small, registry.host, { repository });
    }
    proxy = await startFaultProxy(registry.url);
    v1source = await startV1Source(v1fixture);
    const dir = tempDir('client-auth');
    // htpasswd -B writes $2y$ hashes; bcryptjs writes $2b$: both are accepted.
    writeFileSync(join(dir, 'htpasswd'), `# mirror users\nalice:${bcrypt.hashSync('alice-pw-1', 5).replace(/^\$2b\$/, '$2y$')}\nbob:${bcrypt.hashSync('bob-pw-2', 5)}\n`);
    writeFileSync(join(dir, 'tokens'), `${TOKEN}\nsha256:${tokenHash(HASHED_TOKEN)}\n`);
    mirror = await startMirror({
      logLevel: 'debug',
      auth: { htpasswdFile: join(dir, 'htpasswd'), tokensFile: join(dir, 'tokens'), protectMetrics: true },
      upstreams: {
        'docker.io': { url: proxy.url, allow: ['library/*', 'myorg/**'], deny: ['library/forbidden'] },
      },
      v1: { enabled: true, source: v1source.url },
    });
    containerd = await startContainerd();
  });

  after(async () => {
    await containerd?.stop();
    await mirror?.stop();
    await v1source?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it('/healthz and /readyz stay open; /metrics and /stats need credentials', async () => {
    for (const path of ['/healthz', '/readyz']) assert.equal((await fetch(`${mirror.url}${path}`)).status, 200, path);
    for (const path of ['/metrics', '/stats']) {
      const open = await fetch(`${mirror.url}${path}`);
      assert.equal(open.status, 401, path);
      assert.equal(open.headers.get('www-authenticate'), 'Basic realm="registry-mirror"');
      assert.equal((await fetch(`${mirror.url}${path}`, { headers: bearer })).status, 200, `${path} with a token`);
      assert.equal((await fetch(`${mirror.url}${path}`, { headers: { authorization: alice } })).status, 200, `${path} as alice`);
    }
  });

  it('no or wrong credentials: 401 UNAUTHORIZED with a Basic challenge (v2: OCI errors, v1: {"error"})', async () => {
    proxy.clearLog();
    const cases: Array<[string, Record<string, string>]> = [
      ['/v2/', {}],
      ['/v2/library/small/manifests/v1', {}],
      ['/v2/library/small/manifests/v1', { authorization: basic('alice', 'wrong') }],
      ['/v2/library/small/manifests/v1', { authorization: basic('mallory', 'alice-pw-1') }],
      ['/v2/library/small/manifests/v1', { authorization: 'Bearer wrong-token-wrong-token' }],
      ['/v2/library/small/manifests/v1', { authorization: 'Negotiate abc' }],
      ['/v2/library/small/blobs/' + pushed['library/small']!.blobs[0]!.digest, {}],
      ['/v2/library/small/tags/list', {}],
      ['/v2/_catalog', {}],
      ['/no/such/route', {}],
    ];
    for (const [path, headers] of cases) {
      const res = await fetch(`${mirror.url}${path}`, { headers });
      assert.equal(res.status, 401, `${path} ${JSON.stringify(headers)}`);
      assert.equal(res.headers.get('www-authenticate'), 'Basic realm="registry-mirror"');
      const body = (await res.json()) as { errors: Array<{ code: string }> };
      assert.equal(body.errors[0]!.code, 'UNAUTHORIZED');
      if (path.startsWith('/v2')) assert.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0');
    }
    const v1 = await fetch(`${mirror.url}/v1/repositories/library/busybox/tags`);
    assert.equal(v1.status, 401);
    assert.deepEqual(await v1.json(), { error: 'authentication required' });
    assert.equal((await fetch(`${mirror.url}/v1/_ping`)).status, 200, 'v1 discovery stays open');
    assert.equal(proxy.requests().length, 0, 'nothing reached the upstream');
    assert.equal(v1source.count('/tags'), 0);
  });

  it('skopeo pulls with --src-creds; without or with wrong credentials it is refused', async () => {
    const out = tempDir('client-auth-skopeo');
    const p = pushed['library/small']!;
    const pulled = await skopeoCopyToDir(`${mirror.host}/library/small:v1`, join(out, 'ok'), { srcCreds: 'alice:alice-pw-1' });
    assert.equal(pulled.manifestDigest, p.digest);
    await assert.rejects(skopeoCopy(`docker://${mirror.host}/library/small:v1`, `dir:${join(out, 'none')}`), /unauthorized|authentication required/i);
    await assert.rejects(
      skopeoCopy(`docker://${mirror.host}/library/small:v1`, `dir:${join(out, 'wrong')}`, { srcCreds: 'alice:nope' }),
      /unauthorized|authentication/i,
    );
  });

  it('containerd pulls with ctr --user through hosts.toml; without credentials the pull fails', async () => {
    const hostsDir = tempDir('client-auth-hosts');
    // The fallback refuses connections: what succeeds went through the mirror.
    writeHostsToml(hostsDir, 'docker.io', mirror.url, { server: 'http://127.0.0.1:9' });
    await assert.rejects(containerd.pull('docker.io/myorg/team/app:v1', { hostsDir, timeoutMs: 60_000 }), new RegExp(`pulling from host ${mirror.host} failed with status code \\[manifests v1\\]: 401 Unauthorized`));
    await containerd.pull('docker.io/myorg/team/app:v1', { hostsDir, user: 'bob:bob-pw-2' });
    const have = new Set(await containerd.contentDigests());
    for (const b of pushed['myorg/team/app']!.blobs) assert.ok(have.has(b.digest), b.digest);
    assert.match(mirror.logText(), /"principal":"bob"/, 'the request log names the user');
  });

  it('a bearer token (raw or stored as sha256) pulls over plain HTTP; it is read-only', async () => {
    const p = pushed['library/small']!;
    assert.equal((await pullImage(mirror.url, '', 'library/small', 'v1', '', bearer)).manifestDigest, p.digest);
    const hashed = { authorization: `Bearer ${HASHED_TOKEN}` };
    assert.equal((await pullImage(mirror.url, '', 'library/small', 'v1', '', hashed)).manifestDigest, p.digest);
    for (const method of ['PUT', 'POST', 'DELETE', 'PATCH']) {
      const res = await fetch(`${mirror.url}/v2/library/small/manifests/v1`, { method, headers: bearer });
      assert.equal(res.status, 403, method);
      assert.equal(((await res.json()) as { errors: Array<{ code: string }> }).errors[0]!.code, 'DENIED');
    }
    // A user's push is not a permission question: the mirror is read-only for everyone.
    const push = await fetch(`${mirror.url}/v2/library/small/blobs/uploads/`, { method: 'POST', headers: { authorization: alice } });
    assert.equal(push.status, 405);
  });

  it("the client's Authorization header never reaches the upstream", () => {
    const sent = proxy.requests();
    assert.ok(sent.length > 0);
    assert.deepEqual(new Set(sent.map((r) => r.authorization ?? '(none)')), new Set(['(none)']));
    const log = mirror.logText();
    for (const secret of ['alice-pw-1', 'bob-pw-2', TOKEN, HASHED_TOKEN, alice.slice(6), Buffer.from('bob:bob-pw-2').toString('base64')]) {
      assert.ok(!log.includes(secret), `the mirror log holds ${secret.slice(0, 6)}…`);
    }
  });

  it('denied and not-allowed repositories: 403 DENIED for manifests, blobs and tags, before any upstream or disk access', async () => {
    proxy.clearLog();
    const digest = pushed['evil/app']!.blobs[0]!.digest;
    for (const [repo, why] of [
      ['library/forbidden', /"library\/forbidden" is denied by this mirror's policy for docker\.io/],
      ['forbidden', /"library\/forbidden" is denied/],
      ['evil/app', /"evil\/app" is not in this mirror's allow list for docker\.io/],
      ['myorgx/app', /"myorgx\/app" is not in this mirror's allow list/],
    ] as const) {
      for (const path of [`/v2/${repo}/manifests/v1`, `/v2/${repo}/blobs/${digest}`, `/v2/${repo}/tags/list`, `/v2/${repo}/manifests/v1?ns=docker.io`]) {
        for (const method of ['GET', 'HEAD']) {
          const res = await fetch(`${mirror.url}${path}`, { method, headers: bearer });
          assert.equal(res.status, 403, `${method} ${path}`);
          if (method === 'GET') {
            const e = ((await res.json()) as { errors: Array<{ code: string; message: string }> }).errors[0]!;
            assert.equal(e.code, 'DENIED');
            assert.match(e.message, why);
          }
        }
      }
    }
    assert.deepEqual(proxy.requests(), [], 'no request went upstream');
    // Nothing was recorded for the refused names (their blobs may exist: the same fixture was
    // pulled under allowed names; what matters is that no link or tag was made for them).
    const repos = join(mirror.dataDir, 'repos');
    const listed = existsSync(repos) ? readdirSync(repos, { recursive: true }).map(String) : [];
    assert.ok(!listed.some((p) => p.includes('evil') || p.includes('forbidden')), listed.join(', '));
    // Allowed names still pull, under both patterns.
    assert.equal((await getManifestVia(mirror.url, '/v2/myorg/team/app/manifests/v1', undefined, bearer)).status, 200);
    assert.equal((await getManifestVia(mirror.url, '/v2/small/manifests/v1', undefined, bearer)).status, 200, 'small = library/small');
    const catalog = (await (await fetch(`${mirror.url}/v2/_catalog`, { headers: bearer })).json()) as { repositories: string[] };
    assert.ok(catalog.repositories.includes('library/small'));
    assert.ok(!catalog.repositories.some((r) => r.startsWith('evil') || r.includes('forbidden')));
  });

  it('v1: repositories by the same patterns; image ids only once seen in an allowed repository', async () => {
    const withToken = async (path: string) => fetch(`${mirror.url}${path}`, { headers: bearer });
    const denied = await withToken('/v1/repositories/evil/app/tags');
    assert.equal(denied.status, 403);
    assert.match(((await denied.json()) as { error: string }).error, /"evil\/app" is not in this mirror's allow list for v1/);
    const evilId = v1fixture.repos['evil/app']!.latest!;
    for (const what of ['json', 'ancestry', 'layer']) {
      const res = await withToken(`/v1/images/${evilId}/${what}`);
      assert.equal(res.status, 403, what);
      assert.match(((await res.json()) as { error: string }).error, /has not been seen in a repository this mirror allows/);
    }
    assert.equal(v1source.count('/v1/repositories/evil/app/tags'), 0);
    assert.equal(v1source.count(`/v1/images/${evilId}/layer`), 0);
    // An allowed pull works from _ping to the last layer (pullV1 sends no credentials, so
    // go through a token-carrying fetch wrapper).
    const original = globalThis.fetch;
    globalThis.fetch = ((input: Parameters<typeof fetch>[0], init: RequestInit = {}) =>
      original(input, { ...init, headers: { ...(init.headers as Record<string, string>), ...bearer } })) as typeof fetch;
    try {
      const pulled = await pullV1(mirror.url, 'library/busybox', 'latest');
      assert.equal(pulled.ancestry.length, 2);
    } finally {
      globalThis.fetch = original;
    }
  });
});
