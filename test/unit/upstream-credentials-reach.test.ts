// Where an upstream's credentials may go (issue 11): the upstream's own origin and the
// token realm it names, never a realm a redirect target names, and never in clear text to
// an http realm when the upstream itself is https. In-process servers: the https upstream
// uses a throwaway self-signed certificate made with openssl.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Agent } from 'undici';
import { RegistryError } from '../../mirror/errors.js';
import { UpstreamClient } from '../../mirror/upstream/client.js';
import { bearerChallenge, startHostileUpstream, type HostileUpstream } from '../rig/hostile-upstream.js';

const credentials = { username: 'u', password: 'secret-pw' };

describe('whom upstream credentials reach', () => {
  const dir = mkdtempSync(join(tmpdir(), 'creds-reach-'));
  let realm: HostileUpstream;
  let httpsUrl = '';
  let httpsServer: ReturnType<typeof createHttpsServer>;
  let realmUrl = '';
  const dispatcher = new Agent({ connect: { rejectUnauthorized: false } });

  before(async () => {
    realm = await startHostileUpstream();
    realm.route('GET', /^\/token$/, (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"token":"t"}');
    });
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
    httpsServer = createHttpsServer({ key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) }, (req, res) => {
      if (req.headers.authorization === 'Bearer t') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{}');
        return;
      }
      bearerChallenge(res, realmUrl);
    });
    httpsServer.listen(0, '127.0.0.1');
    await once(httpsServer, 'listening');
    httpsUrl = `https://127.0.0.1:${(httpsServer.address() as AddressInfo).port}`;
  });

  after(async () => {
    await realm.stop();
    httpsServer.closeAllConnections();
    httpsServer.close();
    await dispatcher.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const client = (withCredentials: boolean) =>
    new UpstreamClient({ name: 'private.example.test', url: httpsUrl }, withCredentials ? credentials : undefined, dispatcher, undefined, { retry: { attempts: 1, backoffMs: 1, maxDelayMs: 1 } });

  it('an https upstream\'s credentials are not sent to an http token realm', async () => {
    realmUrl = `${realm.url}/token`;
    realm.reset();
    realm.route('GET', /^\/token$/, (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"token":"t"}');
    });
    await assert.rejects(client(true).send({ method: 'GET', path: '', repository: 'a/b' }), (err: unknown) => {
      assert.ok(err instanceof RegistryError);
      assert.equal(err.code, 'UNAUTHORIZED');
      assert.match(err.message, /only sent over https/);
      return true;
    });
    assert.deepEqual(realm.requests(), [], 'the http realm was never asked');
    // Anonymous tokens carry no secret: an http realm may issue them.
    const res = await client(false).send({ method: 'GET', path: '', repository: 'a/b' });
    assert.equal(res.status, 200);
    await res.body.dump();
    assert.deepEqual(realm.requests().map((r) => r.authorization), [undefined]);
  });
});
