// Upstream credentials never leave the mirror: after credentialed pulls through a token-auth
// registry (inline password, username/password files, a docker config.json), and after the
// failing cases (wrong password, refused anonymous access, unknown names), every output
// channel is searched for every secret: the mirror's log at trace level, /stats, /metrics,
// every response the clients got (bodies and headers) and skopeo's error output. The secrets
// are the passwords, base64(user:password) as a Basic header or config.json `auth` carries
// it, the config.json file's bytes, and every token the token server issued (whole and its
// signature alone, in case one were logged cut short).

import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildFixtures } from '../fixtures/images.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { tempDir } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { skopeoCopy, skopeoCopyToDir } from '../../tools/launch/skopeo.js';
import { startTokenServer, type TokenServerHandle } from '../rig/token-server.js';

const USER = 'robot';
const PASSWORD = 'upstream-Pa55-9f2c71';
const WRONG = 'wrong-Pa55-c0ffee42';
const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('no upstream credential leaks into any output channel', { timeout: 300_000 }, () => {
  let tokens: TokenServerHandle;
  let registry: RegistryHandle;
  let mirror: MirrorHandle;
  let credentialsFile: string;
  /** Everything clients saw: status lines, headers, bodies, client error messages. */
  const seen: string[] = [];

  const get = async (path: string, init: RequestInit = {}) => {
    const res = await fetch(`${mirror.url}${path}`, init);
    const body = Buffer.from(await res.arrayBuffer());
    seen.push(`${res.status} ${JSON.stringify([...res.headers])} ${body.toString('latin1')}`);
    return { status: res.status, body };
  };

  before(async () => {
    const fixtures = await buildFixtures();
    tokens = await startTokenServer({ users: { [USER]: PASSWORD }, expiresIn: 300 });
    registry = await startRegistry({ auth: { token: { realm: tokens.realm, service: tokens.service, issuer: tokens.issuer, rootCertBundle: tokens.rootCertBundle } } });
    for (const repository of ['team/app', 'team/other']) {
      const s = fixtures.images.small;
      await skopeoCopy(`oci:${s.layoutDir}:${s.layoutTag}`, `docker://${registry.host}/${repository}:v1`, { destCreds: `${USER}:${PASSWORD}` });
    }
    const dir = tempDir('no-leaks');
    credentialsFile = join(dir, 'config.json');
    writeFileSync(credentialsFile, JSON.stringify({ auths: { 'files.test': { auth: b64(`${USER}:${PASSWORD}`) } } }));
    writeFileSync(join(dir, 'username'), `${USER}\n`);
    writeFileSync(join(dir, 'password'), `${PASSWORD}\n`);
    writeFileSync(join(dir, 'wrong.json'), JSON.stringify({ auths: { 'wrong-file.test': { username: USER, password: WRONG } } }));
    mirror = await startMirror({
      logLevel: 'trace',
      upstreams: {
        'docker.io': { url: registry.url, username: USER, password: PASSWORD },
        'files.test': { url: registry.url, credentialsFile },
        'userfiles.test': { url: registry.url, usernameFile: join(dir, 'username'), passwordFile: join(dir, 'password') },
        'wrong.test': { url: registry.url, username: USER, password: WRONG },
        'wrong-file.test': { url: registry.url, credentialsFile: join(dir, 'wrong.json') },
        'anonymous.test': { url: registry.url },
      },
    });
  });

  after(async () => {
    await mirror?.stop();
    await registry?.stop();
    await tokens?.stop();
  });

  it('credentialed pulls work, with every way of configuring credentials', async () => {
    const out = tempDir('no-leaks-pull');
    for (const prefix of ['', 'files.test/', 'userfiles.test/']) {
      const pulled = await skopeoCopyToDir(`${mirror.host}/${prefix}team/app:v1`, join(out, prefix.replace('/', '') || 'inline'));
      assert.match(pulled.manifestDigest, /^sha256:/);
      assert.equal((await get(`/v2/${prefix}team/other/manifests/v1`)).status, 200);
      assert.equal((await get(`/v2/${prefix}team/other/tags/list`)).status, 200);
    }
    assert.ok(tokens.issuedTokens().length >= 3, 'tokens were issued');
  });

  it('failing cases answer clearly without repeating a secret', async () => {
    for (const prefix of ['wrong.test/', 'wrong-file.test/', 'anonymous.test/']) {
      const r = await get(`/v2/${prefix}team/app/manifests/v1`);
      assert.equal(r.status, 401, prefix);
      assert.equal((await get(`/v2/${prefix}team/app/tags/list`)).status, 401);
      const err = await skopeoCopy(`docker://${mirror.host}/${prefix}team/app:v1`, `dir:${tempDir('no-leaks-fail')}`).then(
        () => assert.fail('skopeo should fail'),
        (e: Error) => e.message,
      );
      seen.push(err);
    }
    for (const path of ['/v2/team/missing/manifests/v1', '/v2/team/app/manifests/nope', `/v2/team/app/blobs/sha256:${'0'.repeat(64)}`, '/v2/team/app/tags/list?n=x', '/v2/_catalog']) {
      await get(path);
    }
    // Client credentials of its own are ignored and not echoed either.
    await get('/v2/team/app/manifests/v1', { headers: { authorization: `Basic ${b64(`${USER}:${PASSWORD}`)}` } });
    await get('/stats');
    await get('/metrics');
  });

  it('no output channel holds a password, a base64 credential, the config.json or a token', async () => {
    const issued = tokens.issuedTokens();
    const secrets: Array<[string, string]> = [
      ['password', PASSWORD],
      ['wrong password', WRONG],
      ['base64 user:password', b64(`${USER}:${PASSWORD}`)],
      ['base64 user:wrong', b64(`${USER}:${WRONG}`)],
      ['config.json', readFileSync(credentialsFile, 'utf8')],
      ...issued.map((t, i): [string, string] => [`token ${i}`, t]),
      ...issued.map((t, i): [string, string] => [`signature of token ${i}`, t.split('.')[2]!]),
    ];
    const log = mirror.logText();
    assert.match(log, /"level":10/, 'trace lines were written');
    const channels: Array<[string, string]> = [
      ['mirror log (trace)', log],
      ['/stats', JSON.stringify(await (await fetch(`${mirror.url}/stats`)).json())],
      ['/metrics', await (await fetch(`${mirror.url}/metrics`)).text()],
      ['responses and client errors', seen.join('\n')],
    ];
    for (const [channel, text] of channels) {
      assert.ok(text.length > 0, channel);
      for (const [what, secret] of secrets) assert.ok(!text.includes(secret), `${channel} holds the ${what}`);
    }
    // The messages still say what went wrong.
    assert.match(seen.join('\n'), /token service of wrong\.test refused the credentials/);
    assert.match(seen.join('\n'), /upstream anonymous\.test refused anonymous access/);
  });
});
