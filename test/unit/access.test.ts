// Client authentication and repository policy, as pure parts: the glob matcher, the htpasswd
// and tokens parsers, the Authenticator (with its cache) and the config keys that drive them.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import bcrypt from 'bcryptjs';
import { Authenticator } from '../../mirror/access/authenticator.js';
import { parseHtpasswd, parseTokens, tokenHash } from '../../mirror/access/credential-files.js';
import { compilePattern, patternListProblems, patternProblem, RepositoryPolicy } from '../../mirror/access/patterns.js';
import { V1Access } from '../../mirror/access/v1-access.js';
import { V1Error } from '../../mirror/v1/errors.js';
import { ConfigError, parseConfig } from '../../mirror/config.js';
import Fastify from 'fastify';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { registerClientAuth } from '../../mirror/access/client-auth.js';

describe('repository patterns', () => {
  const m = (p: string, name: string, hub = false) => compilePattern(p, hub).test(name);

  it('* stays within one path component, ** crosses them', () => {
    assert.ok(m('library/*', 'library/alpine'));
    assert.ok(!m('library/*', 'library/a/b'));
    assert.ok(!m('library/*', 'library'));
    assert.ok(!m('library/*', 'xlibrary/alpine'), 'anchored at the start');
    assert.ok(m('myorg/**', 'myorg/a'));
    assert.ok(m('myorg/**', 'myorg/team/app'));
    assert.ok(!m('myorg/**', 'myorg'));
    assert.ok(m('*/app', 'team/app'));
    assert.ok(!m('*/app', 'a/team/app'));
    assert.ok(m('**/app', 'a/team/app'));
    assert.ok(m('team/app-*', 'team/app-web'));
    assert.ok(!m('team/app-*', 'team/app'), 'literal "-" must be there');
    assert.ok(m('**', 'anything/at/all'));
  });

  it('"." and other regex characters are literal', () => {
    assert.ok(m('a.b/c', 'a.b/c'));
    assert.ok(!m('a.b/c', 'axb/c'));
  });

  it('Docker Hub completes slash-less patterns as it completes names', () => {
    assert.ok(m('alpine', 'library/alpine', true));
    assert.ok(m('*', 'library/busybox', true));
    assert.ok(!m('*', 'someone/busybox', true));
    assert.ok(m('**', 'someone/busybox', true));
    assert.ok(!m('alpine', 'library/alpine', false), 'only on Docker Hub');
  });

  it('deny wins over allow; no allow list allows everything', () => {
    const p = new RepositoryPolicy('docker.io', ['library/*', 'myorg/**'], ['library/forbidden', 'myorg/secret/**']);
    assert.deepEqual(p.check('library/alpine'), { ok: true });
    assert.ok(p.allows('myorg/team/app'));
    const denied = p.check('library/forbidden');
    assert.equal(denied.ok, false);
    assert.equal(!denied.ok && denied.reason, 'denied');
    assert.match(!denied.ok ? denied.message : '', /"library\/forbidden" is denied by this mirror's policy for docker\.io/);
    assert.equal(p.allows('myorg/secret/x'), false);
    const other = p.check('evil/app');
    assert.equal(!other.ok && other.reason, 'not-allowed');
    assert.match(!other.ok ? other.message : '', /not in this mirror's allow list for docker\.io/);

    const denyOnly = RepositoryPolicy.from('x', undefined, ['bad/*'])!;
    assert.ok(denyOnly.allows('good/app'));
    assert.ok(!denyOnly.allows('bad/app'));
    assert.equal(RepositoryPolicy.from('x', [], []), undefined, 'empty lists: no policy');
  });

  it('refuses patterns that could never match or are ambiguous', () => {
    for (const bad of ['', 'Library/*', 'a b', '/x', 'x/', 'a//b', '***', 'a/\u0000', 'x'.repeat(256), 'a?b', '[ab]']) {
      assert.ok(patternProblem(bad), JSON.stringify(bad));
    }
    for (const good of ['*', '**', 'library/*', 'a.b_c-d/**/e']) assert.equal(patternProblem(good), undefined, good);
    assert.deepEqual(patternListProblems(['ok/*', 'Bad'], 'upstreams.docker.io.allow').map((p) => p.key), ['upstreams.docker.io.allow[1]']);
    assert.equal(patternListProblems('library/*', 'k')[0]!.problem, 'must be a list of patterns');
  });
});

describe('htpasswd and tokens files', () => {
  const hash = bcrypt.hashSync('pw', 4);

  it('htpasswd: bcrypt entries only; problems name the line, never the hash', () => {
    const { entries, problems } = parseHtpasswd(`# users\nalice:${hash}\n\nbob:${hash.replace('$2a$', '$2y$')}\n`);
    assert.deepEqual([...entries.keys()], ['alice', 'bob']);
    assert.deepEqual(problems, []);
    const bad = parseHtpasswd(`carol:$apr1$abc$def\ndave:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\nnocolon\nalice:${hash}\nalice:${hash}\n`);
    assert.equal(bad.problems.length, 4);
    assert.match(bad.problems[0]!, /^line 1: only bcrypt hashes are supported/);
    assert.match(bad.problems[2]!, /^line 3: expected user:bcrypt-hash/);
    assert.match(bad.problems[3]!, /^line 5: the user of line 4 again/);
    for (const s of ['apr1', 'W6ph5', 'carol', 'nocolon']) assert.ok(!bad.problems.join().includes(s), s);
  });

  it('tokens: raw tokens or sha256:<hex>, at least 16 printable characters', () => {
    const t = 'abcdefghijklmnop-0123';
    const { entries, problems } = parseTokens(`# ci\n${t}\nsha256:${tokenHash('another-token-0123456')}\n`);
    assert.deepEqual(problems, []);
    assert.ok(entries.has(tokenHash(t)) && entries.has(tokenHash('another-token-0123456')));
    const bad = parseTokens('short\nwith space in it long enough\n');
    assert.equal(bad.problems.length, 2);
    assert.ok(!bad.problems.join().includes('short'), 'the token is not echoed');
  });
});

describe('Authenticator', () => {
  const basic = (u: string, p: string) => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;
  const users = new Map([['alice', bcrypt.hashSync('s3cret', 4)]]);
  const token = 'read-only-token-0123456789';

  it('Basic with htpasswd, Bearer with a token; everything else refused with a reason', async () => {
    const a = new Authenticator(users, new Set([tokenHash(token)]));
    assert.deepEqual(await a.authenticate(basic('alice', 's3cret')), { ok: true, principal: { kind: 'user', name: 'alice' } });
    const bearer = await a.authenticate(`Bearer ${token}`);
    assert.ok(bearer.ok && bearer.principal.kind === 'token' && /^token:[0-9a-f]{8}$/.test(bearer.principal.name));
    assert.ok(bearer.ok && !bearer.principal.name.includes(token));
    const reasons = async (h: string | undefined) => {
      const r = await a.authenticate(h);
      return r.ok ? 'ok' : r.reason;
    };
    assert.equal(await reasons(undefined), 'missing');
    assert.equal(await reasons(basic('alice', 'wrong')), 'bad-credentials');
    assert.equal(await reasons(basic('nobody', 's3cret')), 'bad-credentials');
    assert.equal(await reasons('Bearer not-a-token'), 'bad-credentials');
    assert.equal(await reasons(`Basic ${Buffer.from('no-colon').toString('base64')}`), 'malformed');
    assert.equal(await reasons('Digest x=y'), 'malformed');
    assert.equal(await reasons(`Bearer ${'x'.repeat(10_000)}`), 'malformed');
    assert.equal(await reasons(basic('alice', `s3cret`).replace('Basic', 'basic')), 'ok', 'scheme is case-insensitive');
  });

  it('caches a success (one bcrypt per minute per credentials) and bounds concurrent checks', async () => {
    let compares = 0;
    const original = bcrypt.compare;
    (bcrypt as { compare: unknown }).compare = async (p: string, h: string) => {
      compares++;
      return original(p, h);
    };
    try {
      const a = new Authenticator(users, new Set(), { maxPendingChecks: 2 });
      for (let i = 0; i < 5; i++) assert.ok((await a.authenticate(basic('alice', 's3cret'))).ok);
      assert.equal(compares, 1, 'one bcrypt for five requests');
      for (let i = 0; i < 3; i++) assert.equal((await a.authenticate(basic('alice', 'nope'))).ok, false);
      assert.equal(compares, 2, 'a repeated wrong password is remembered briefly too');
      const burst = await Promise.all([1, 2, 3, 4].map((i) => a.authenticate(basic('alice', `guess-${i}`))));
      assert.ok(burst.some((r) => !r.ok && r.reason === 'busy'), 'beyond maxPendingChecks clients are told to retry');
    } finally {
      (bcrypt as { compare: unknown }).compare = original;
    }
  });
});

describe('v1 access', () => {
  const id = (c: string) => c.repeat(64);
  it('repository paths by pattern; image paths only once learned from an allowed repository', () => {
    const v = new V1Access(new RepositoryPolicy('v1', ['library/*'], [], true));
    const repo = (namespace: string, repository: string) => ({ namespace, repository });
    assert.doesNotThrow(() => v.check({ kind: 'tags', repo: repo('library', 'busybox') }));
    assert.throws(() => v.check({ kind: 'tags', repo: repo('evil', 'app') }), (e: unknown) => e instanceof V1Error && e.status === 403);
    assert.throws(() => v.check({ kind: 'layer', id: id('a') }), (e: unknown) => e instanceof V1Error && e.status === 403 && /has not been seen/.test(e.message));
    v.learn({ kind: 'tags', repo: repo('library', 'busybox') }, Buffer.from(JSON.stringify({ latest: id('a') })));
    assert.doesNotThrow(() => v.check({ kind: 'ancestry', id: id('a') }));
    v.learn({ kind: 'ancestry', id: id('a') }, Buffer.from(JSON.stringify([id('a'), id('b')])));
    assert.doesNotThrow(() => v.check({ kind: 'layer', id: id('b') }));
    v.learn({ kind: 'images', repo: repo('library', 'busybox') }, Buffer.from(JSON.stringify([{ id: id('c') }])));
    v.learn({ kind: 'tag', repo: repo('library', 'busybox'), tag: 'x' }, Buffer.from(JSON.stringify(id('d'))));
    assert.doesNotThrow(() => v.check({ kind: 'image-json', id: id('c') }));
    assert.doesNotThrow(() => v.check({ kind: 'image-json', id: id('d') }));
    assert.throws(() => v.check({ kind: 'image-json', id: id('e') }));
  });
});

describe('config: auth and allow/deny keys', () => {
  it('parses them; v1 follows the default upstream unless it has lists of its own', () => {
    const c = parseConfig({
      auth: { htpasswdFile: '/a/htpasswd', tokensFile: '/a/tokens', protectMetrics: true },
      upstreams: { 'docker.io': { url: 'https://registry-1.docker.io', allow: ['library/*'], deny: ['library/bad'] } },
    });
    assert.deepEqual(c.auth, { htpasswdFile: '/a/htpasswd', tokensFile: '/a/tokens', protectMetrics: true });
    assert.deepEqual(c.upstreams['docker.io']!.allow, ['library/*']);
    assert.deepEqual(c.v1.allow, ['library/*']);
    assert.deepEqual(c.v1.deny, ['library/bad']);
    const own = parseConfig({ upstreams: { 'docker.io': { url: 'https://x', allow: ['a/*'] } }, v1: { deny: ['b/*'] } });
    assert.equal(own.v1.allow, undefined);
    assert.deepEqual(own.v1.deny, ['b/*']);
    assert.equal(parseConfig({}).auth, undefined, 'off by default');
    assert.equal(parseConfig({ auth: { tokensFile: '/t' } }).auth!.protectMetrics, false);
  });

  const bad: Array<[unknown, string]> = [
    [{ auth: {} }, 'auth'],
    [{ auth: { htpasswdFile: '' } }, 'auth.htpasswdFile'],
    [{ auth: { tokensFile: '/t', protectMetrics: 'yes' } }, 'auth.protectMetrics'],
    [{ auth: { tokensFile: '/t', realm: 'x' } }, 'auth.realm'],
    [{ upstreams: { 'docker.io': { url: 'https://x', allow: 'library/*' } } }, 'upstreams.docker.io.allow'],
    [{ upstreams: { 'docker.io': { url: 'https://x', deny: ['ok/*', 'Bad/*'] } } }, 'upstreams.docker.io.deny[1]'],
    [{ v1: { allow: [''] } }, 'v1.allow[0]'],
  ];
  for (const [doc, key] of bad) {
    it(`rejects ${JSON.stringify(doc)} naming ${key}`, () => {
      assert.throws(() => parseConfig(doc), (err: unknown) => err instanceof ConfigError && err.key === key);
    });
  }
});

describe('the onRequest hook', () => {
  const token = 'hook-test-token-0123456789';
  async function app(protectMetrics: boolean, users = new Map<string, string>()) {
    const a = Fastify();
    registerClientAuth(a, { tokensFile: '/t', protectMetrics }, new Authenticator(users, new Set([tokenHash(token)])), new Registry(), pino({ level: 'silent' }));
    for (const path of ['/healthz', '/readyz', '/metrics', '/stats', '/v2/*', '/v1/*']) a.get(path, async () => ({ ok: true }));
    await a.ready();
    return a;
  }

  it('tokens only: a Bearer challenge; metrics open unless protected; ping open, other v1 not', async () => {
    const a = await app(false);
    const r = await a.inject({ url: '/v2/x/manifests/1' });
    assert.equal(r.statusCode, 401);
    assert.equal(r.headers['www-authenticate'], 'Bearer realm="registry-mirror"');
    assert.equal(r.headers['docker-distribution-api-version'], 'registry/2.0');
    // Open is decided by the route reached (an escaped /%68ealthz still reaches the probe).
    for (const url of ['/healthz', '/readyz', '/metrics', '/stats?x=1', '/v1/_ping', '/healthz?probe=1', '/%68ealthz']) {
      assert.equal((await a.inject({ url })).statusCode, 200, url);
    }
    for (const url of ['/v1/repositories/a/b/tags', '/v1/_ping/../repositories/a/b/tags', '/v1/_ping%2f..%2frepositories/a/b/tags', '/healthz/', '/nothing']) {
      assert.equal((await a.inject({ url })).statusCode, 401, url);
    }
    assert.equal((await a.inject({ url: '/v2/x/manifests/1', headers: { authorization: `Bearer ${token}` } })).statusCode, 200);
    assert.equal((await a.inject({ url: '/v2/x/manifests/1', method: 'DELETE', headers: { authorization: `Bearer ${token}` } })).statusCode, 403);
    const p = await app(true);
    assert.equal((await p.inject({ url: '/metrics' })).statusCode, 401);
    assert.equal((await p.inject({ url: '/stats' })).statusCode, 401);
    assert.equal((await p.inject({ url: '/readyz' })).statusCode, 200);
  });

  it('busy: 429 TOOMANYREQUESTS with Retry-After', async () => {
    const users = new Map([['u', bcrypt.hashSync('p', 8)]]);
    const a = Fastify();
    registerClientAuth(a, { htpasswdFile: '/h', protectMetrics: false }, new Authenticator(users, new Set(), { maxPendingChecks: 1 }), new Registry(), pino({ level: 'silent' }));
    a.get('/v2/*', async () => ({}));
    await a.ready();
    const hdr = (p: string) => ({ authorization: `Basic ${Buffer.from(`u:${p}`).toString('base64')}` });
    const [one, two] = await Promise.all([a.inject({ url: '/v2/', headers: hdr('a') }), a.inject({ url: '/v2/', headers: hdr('b') })]);
    assert.deepEqual([one.statusCode, two.statusCode].sort(), [401, 429]);
    const busy = one.statusCode === 429 ? one : two;
    assert.equal(busy.headers['retry-after'], '1');
    assert.equal(JSON.parse(busy.body).errors[0].code, 'TOOMANYREQUESTS');
  });
});
