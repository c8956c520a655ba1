// The circuit breaker inside UpstreamClient, against real loopback sockets: a port nobody
// listens on refuses connections. What the breaker counts (the upstream's own origin, one
// failure per request whatever its retries), that an open breaker fails requests without a
// connection attempt, the single one-try probe, and what is not the upstream's fault (a
// token service or a redirect target on another host).

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { after, describe, it } from 'node:test';
import { Agent } from 'undici';
import { RegistryError } from '../../mirror/errors.js';
import type { BreakerEvent } from '../../mirror/upstream/circuit-breaker.js';
import { UpstreamClient } from '../../mirror/upstream/client.js';
import { bearerChallenge, startHostileUpstream } from '../rig/hostile-upstream.js';
import { freePort, sleep } from '../../tools/launch/proc.js';

const openForMs = 300;
const dispatcher = new Agent({ connect: { timeout: 2000 } });
after(() => dispatcher.close());

function client(url: string, failures = 2) {
  const attempts: Array<number | 'error'> = [];
  const events: BreakerEvent['kind'][] = [];
  const c = new UpstreamClient({ name: 'up.example.test', url }, undefined, dispatcher, (_u, status) => attempts.push(status), {
    retry: { attempts: 3, backoffMs: 5, maxDelayMs: 20 },
    breaker: { failures, openForMs },
    onBreaker: (_u, e) => events.push(e.kind),
  });
  const get = () => c.send({ method: 'GET', path: 'team/app/manifests/v1', repository: 'team/app' });
  return { c, attempts, events, get };
}

/** A registry at a fixed port that can go away (connections refused) and come back. */
async function switchable(port: number) {
  let server: Server | undefined;
  const seen: string[] = [];
  return {
    seen,
    async up() {
      server = createServer((req, res) => {
        seen.push(`${req.method} ${req.url}`);
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{}');
      });
      server.listen(port, '127.0.0.1');
      await once(server, 'listening');
    },
    async down() {
      const s = server;
      server = undefined;
      if (!s) return;
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    },
  };
}

const unavailable = (pattern: RegExp) => (err: unknown) => err instanceof RegistryError && err.code === 'UNAVAILABLE' && pattern.test(err.message);

describe('UpstreamClient circuit breaker', () => {
  it('refused: two requests (three tries each) open it; then no connection attempt until the probe', async () => {
    const port = await freePort();
    const up = await switchable(port);
    const { c, attempts, events, get } = client(`http://127.0.0.1:${port}`);
    await assert.rejects(get(), unavailable(/unreachable: ECONNREFUSED/));
    assert.equal(attempts.length, 3, 'a request makes its tries');
    assert.equal(c.breakerState().state, 'closed', 'one request, one failure');
    await assert.rejects(get(), unavailable(/ECONNREFUSED/));
    assert.equal(attempts.length, 6);
    assert.deepEqual(c.breakerState(), { ...c.breakerState(), state: 'open', consecutiveFailures: 2, lastFailure: 'ECONNREFUSED' });

    // Open: 20 requests at once, not one try, and the message says why and until when.
    const t0 = Date.now();
    const results = await Promise.allSettled(Array.from({ length: 20 }, get));
    assert.ok(Date.now() - t0 < 100, `failed at once (${Date.now() - t0} ms)`);
    for (const r of results) assert.ok(r.status === 'rejected' && unavailable(/circuit breaker open, next try in 1s/)(r.reason));
    assert.equal(attempts.length, 6, 'no connection attempt while open');
    assert.deepEqual(events, ['open', ...Array(20).fill('fast-fail')]);

    // Window over, upstream still down: the probe is one try (no retries), then open again.
    await sleep(openForMs + 20);
    await assert.rejects(get(), unavailable(/ECONNREFUSED/));
    assert.equal(attempts.length, 7, 'the probe made one try');
    assert.equal(c.breakerState().state, 'open');
    assert.deepEqual(events.slice(21), ['probe', 'open']);

    // Upstream back: of 10 concurrent requests after the window, one is the probe and goes;
    // the others fail at once while it is out. Then everything goes.
    await up.up();
    try {
      await sleep(openForMs + 20);
      const burst = await Promise.allSettled(Array.from({ length: 10 }, get));
      const ok = burst.filter((r) => r.status === 'fulfilled');
      assert.equal(ok.length, 1, 'exactly one probe');
      for (const r of ok) await (r as PromiseFulfilledResult<Awaited<ReturnType<typeof get>>>).value.body.dump();
      assert.equal(up.seen.length, 1);
      assert.equal(c.breakerState().state, 'closed');
      assert.deepEqual(events.slice(23), ['probe', ...Array(9).fill('fast-fail'), 'close']);
      const res = await get();
      assert.equal(res.status, 200);
      await res.body.dump();
      assert.equal(up.seen.length, 2);
    } finally {
      await up.down();
    }
  });

  it('a request in flight makes no more tries once the breaker opens', async () => {
    const up = await startHostileUpstream();
    try {
      // Both cut the connection before any answer (a connection-level failure): /fast at
      // once, /slow after 300 ms.
      up.route('GET', /fast/, (_req, res) => void res.socket?.destroy());
      up.route('GET', /slow/, async (_req, res) => {
        await sleep(300);
        res.socket?.destroy();
      });
      const { c } = client(up.url, 1);
      const slow = c.send({ method: 'GET', path: 'slow/manifests/v1', repository: 'slow' });
      await assert.rejects(c.send({ method: 'GET', path: 'fast/manifests/v1', repository: 'fast' }), unavailable(/unreachable/));
      assert.equal(c.breakerState().state, 'open', 'the fast request gave up first and opened it');
      await assert.rejects(slow, unavailable(/unreachable/));
      const tries = (p: string) => up.requests().filter((r) => r.path.includes(p)).length;
      assert.equal(tries('/fast/'), 3);
      assert.equal(tries('/slow/'), 1, 'its first try failed after the breaker opened: no retry');
    } finally {
      await up.stop();
    }
  });

  it('an answer of any status is no failure: 503s and 404s never open it', async () => {
    const up = await startHostileUpstream();
    try {
      up.route('GET', /manifests/, (_req, res) => {
        res.writeHead(503, { 'content-type': 'application/json' });
        res.end('{}');
      });
      const { c, get } = client(up.url, 1);
      for (let i = 0; i < 5; i++) {
        const res = await get();
        assert.equal(res.status, 503);
        await res.body.dump();
      }
      assert.equal(c.breakerState().state, 'closed');
      assert.equal(up.requests().length, 15, 'each 503 retried as before');
    } finally {
      await up.stop();
    }
  });

  it('a token service or redirect target on another host that is down is not the upstream down', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const up = await startHostileUpstream();
    try {
      up.route('GET', /manifests/, (_req, res) => bearerChallenge(res, `${dead}/token`));
      up.route('GET', /blobs/, (_req, res) => {
        res.writeHead(307, { location: `${dead}/storage/blob`, 'content-length': '0' });
        res.end();
      });
      const { c, get } = client(up.url, 1);
      for (let i = 0; i < 3; i++) await assert.rejects(get(), unavailable(/token service of up\.example\.test unreachable: ECONNREFUSED/));
      for (let i = 0; i < 3; i++) {
        await assert.rejects(c.send({ method: 'GET', path: `team/app/blobs/sha256:${'a'.repeat(64)}`, repository: 'team/app' }), unavailable(/unreachable: ECONNREFUSED/));
      }
      assert.equal(c.breakerState().state, 'closed', 'the upstream itself answered every time');
    } finally {
      await up.stop();
    }
  });

  it('without a breaker policy (or failures 0) every request makes all its tries', async () => {
    const port = await freePort();
    const attempts: Array<number | 'error'> = [];
    const c = new UpstreamClient({ name: 'off', url: `http://127.0.0.1:${port}` }, undefined, dispatcher, (_u, s) => attempts.push(s), {
      retry: { attempts: 3, backoffMs: 1, maxDelayMs: 5 },
    });
    for (let i = 0; i < 5; i++) await assert.rejects(c.send({ method: 'GET', path: '' }), unavailable(/ECONNREFUSED/));
    assert.equal(attempts.length, 15);
    assert.equal(c.breakerState().state, 'closed');
  });
});
