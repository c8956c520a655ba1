// Client connections against the real mirror process (issue 11, item 4): clientTimeouts.idle
// closes connections that send nothing (or trickle their headers, through Node's
// headersTimeout), clientTimeouts.write cuts a client that stopped reading a warm blob and
// releases the blob (file handle and store pin), while a slow but steady reader and a cold
// request waiting on a slow upstream are left alone; limits.maxConnections answers 503 past
// the cap and the hard ceiling (twice the cap) drops connections at accept.

import assert from 'node:assert/strict';
import { readdirSync, readlinkSync, existsSync } from 'node:fs';
import { Agent, request, type IncomingHttpHeaders } from 'node:http';
import { connect, type Socket } from 'node:net';
import { createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { waitFor } from '../../tools/launch/proc.js';
import { blobPath, downloadsSettled, fetchHashed, getMetrics, metricValue, pullImage, pushRandomImage, type RandomImage } from './helpers.js';

const MiB = 1 << 20;

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  reusedSocket: boolean;
  socket: Socket;
}

/** One GET over `agent` (a keep-alive Agent with one socket is one client connection). */
function get(base: string, path: string, agent: Agent | false = false): Promise<Answer> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    let socket: Socket | undefined;
    const req = request({ host: u.hostname, port: u.port, path, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), reusedSocket: req.reusedSocket, socket: socket! }));
      res.on('error', reject);
    });
    req.on('socket', (s) => (socket = s));
    req.on('error', reject);
    req.end();
  });
}

/** Every raw connection a test opened: after() destroys any a failed test left behind. */
const rawSockets = new Set<Socket>();

/** A raw connection, and when it was closed (by the server: the test never ends it). */
function rawSocket(base: string): Promise<{ socket: Socket; closed: Promise<number> }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(u.port), u.hostname);
    rawSockets.add(socket);
    const closed = new Promise<number>((r) => socket.once('close', () => r(Date.now())));
    socket.on('error', () => undefined);
    socket.once('connect', () => resolve({ socket, closed }));
    socket.once('error', reject);
  });
}

/** Resolves with the ms until `closed`, or with Infinity when it takes longer than limitMs. */
async function closedWithin(closed: Promise<number>, start: number, limitMs: number): Promise<number> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<number>((r) => (timer = setTimeout(() => r(Infinity), limitMs)));
  try {
    return await Promise.race([closed.then((t) => t - start), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** File descriptors of process pid open on path. */
function fdsOn(pid: number, path: string): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`) === path) n++;
    } catch {
      // closed between the listing and the readlink
    }
  }
  return n;
}

describe('client connection timeouts', { timeout: 90_000 }, () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  let big: RandomImage;
  let other: RandomImage;
  let small: RandomImage;
  const idleMs = 2000;
  const writeMs = 2000;

  before(async () => {
    registry = await startRegistry();
    big = await pushRandomImage(registry.url, 'limits/big', 'v1', [16 * MiB], 'limits-big');
    other = await pushRandomImage(registry.url, 'limits/other', 'v1', [12 * MiB], 'limits-other');
    small = await pushRandomImage(registry.url, 'limits/small', 'v1', [100_000], 'limits-small');
    proxy = await startFaultProxy(registry.url);
    mirror = await startMirror({
      // big and other do not fit together: pulling other must evict big once nothing pins it.
      storage: { maxBytes: 25_000_000 },
      upstreams: { 'docker.io': { url: proxy.url } },
      clientTimeouts: { idle: `${idleMs}ms`, write: `${writeMs}ms` },
    });
    const warm = await fetchHashed(`${mirror.url}/v2/limits/big/blobs/${big.layers[0]!.digest}`);
    assert.equal(warm.digest, big.layers[0]!.digest);
  });

  after(async () => {
    for (const s of rawSockets) s.destroy();
    await mirror?.stop();
    await proxy?.stop();
    await registry?.stop();
  });

  it('closes connections that send nothing, trickle their headers, or sit idle after a response', async () => {
    const start = Date.now();
    const silent = await Promise.all(Array.from({ length: 10 }, () => rawSocket(mirror.url)));
    // Header lines every 300 ms: never idle, never done.
    const slow = await rawSocket(mirror.url);
    slow.socket.write('GET /v2/ HTTP/1.1\r\nHost: mirror\r\n');
    const trickle = setInterval(() => slow.socket.write('X-Slow: y\r\n'), 300);
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const first = await get(mirror.url, '/v2/', agent);
      assert.equal(first.status, 200);
      const kept = first.socket;
      assert.ok(!kept.destroyed, 'the keep-alive connection is open after its response');
      const keptClosed = new Promise<number>((r) => kept.once('close', () => r(Date.now())));
      const limit = idleMs + 4000;
      const times = await Promise.all(silent.map((s) => closedWithin(s.closed, start, limit)));
      for (const t of times) {
        assert.ok(t < limit, `a silent connection is closed within ${limit} ms (took ${t})`);
        assert.ok(t >= idleMs - 200, `and not before the idle timeout (took ${t})`);
      }
      const slowT = await closedWithin(slow.closed, start, limit + 1000);
      assert.ok(slowT < limit + 1000, `a client trickling its headers is cut within the header deadline (took ${slowT})`);
      const keptT = await closedWithin(keptClosed, start, limit + 1000);
      assert.ok(keptT < limit + 1000, `an idle keep-alive connection is closed (took ${keptT})`);
    } finally {
      clearInterval(trickle);
      for (const s of [...silent, slow]) s.socket.destroy();
      agent.destroy();
    }
    const metrics = await getMetrics(mirror.url);
    const idle = metricValue(metrics, 'registry_mirror_client_connections_timed_out_total', { reason: 'idle' }) ?? 0;
    const request = metricValue(metrics, 'registry_mirror_client_connections_timed_out_total', { reason: 'request' }) ?? 0;
    assert.ok(idle + request >= 12, `idle ${idle} + request ${request} counts every closed connection`);
    assert.ok(request >= 1, 'the trickling client ran into the header deadline');
  });

  it('does not cut a client that reads slowly but steadily', async () => {
    const layer = big.layers[0]!;
    const u = new URL(mirror.url);
    const rate = 3.5 * MiB; // bytes per second: ~4.6 s for the blob, longer than 2 x write
    const started = Date.now();
    const result = await new Promise<{ status: number; bytes: number; digest: string; error?: string }>((resolve) => {
      const req = request({ host: u.hostname, port: u.port, path: `/v2/limits/big/blobs/${layer.digest}`, agent: false }, (res) => {
        const hash = createHash('sha256');
        let bytes = 0;
        res.on('data', (c: Buffer) => {
          hash.update(c);
          bytes += c.length;
          const due = started + (bytes / rate) * 1000;
          const wait = due - Date.now();
          if (wait > 0) {
            res.pause();
            setTimeout(() => res.resume(), wait);
          }
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes, digest: `sha256:${hash.digest('hex')}` }));
        res.on('error', (err) => resolve({ status: res.statusCode ?? 0, bytes, digest: '', error: err.message }));
        res.on('aborted', () => resolve({ status: res.statusCode ?? 0, bytes, digest: '', error: 'aborted' }));
      });
      req.on('error', (err) => resolve({ status: 0, bytes: 0, digest: '', error: err.message }));
      req.end();
    });
    const took = Date.now() - started;
    assert.equal(result.error, undefined, `the slow reader was cut after ${result.bytes} bytes`);
    assert.equal(result.status, 200);
    assert.equal(result.bytes, layer.size);
    assert.equal(result.digest, layer.digest);
    assert.ok(took > 2 * writeMs, `the transfer (${took} ms) outlasted the write timeout`);
  });

  it('does not cut a cold request waiting on a slow upstream for longer than the timeouts', async () => {
    const layer = small.layers[0]!;
    const wait = 2 * Math.max(idleMs, writeMs) + 500;
    proxy.delay(`/blobs/${layer.digest}`, wait);
    try {
      const started = Date.now();
      const r = await fetchHashed(`${mirror.url}/v2/limits/small/blobs/${layer.digest}`);
      assert.equal(r.error, undefined);
      assert.equal(r.status, 200);
      assert.equal(r.digest, layer.digest);
      assert.ok(Date.now() - started >= wait, 'the upstream was slower than both timeouts');
    } finally {
      proxy.clear();
    }
  });

  it('cuts clients that stop reading a warm blob, and releases the blob', async () => {
    const layer = big.layers[0]!;
    const file = blobPath(mirror.dataDir, layer.digest);
    assert.ok(existsSync(file), 'the blob is warm');
    const before = await getMetrics(mirror.url);
    const cutBefore = metricValue(before, 'registry_mirror_client_connections_timed_out_total', { reason: 'write' }) ?? 0;
    const start = Date.now();
    const stalled = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const s = await rawSocket(mirror.url);
        s.socket.write(`GET /v2/limits/big/blobs/${layer.digest} HTTP/1.1\r\nHost: mirror\r\n\r\n`);
        s.socket.pause(); // and never read
        return s;
      }),
    );
    try {
      await waitFor(() => fdsOn(mirror.pid(), file) === 4, 5000, 'every stalled response holds the blob open');
      // The kernel's buffers take a few MiB; then no byte moves for `write`, checked once per
      // period. The cut shows on the server: the responses' file handles are closed.
      const limit = 2 * writeMs + 5000;
      await waitFor(() => fdsOn(mirror.pid(), file) === 0, limit, `the blob released within ${limit} ms`);
      const took = Date.now() - start;
      assert.ok(took >= writeMs, `not before the write timeout (${took} ms)`);
      // A paused client only sees the cut when it reads again: a short body, then the end.
      for (const s of stalled) {
        let bytes = 0;
        s.socket.on('data', (c: Buffer) => (bytes += c.length));
        s.socket.resume();
        assert.ok((await closedWithin(s.closed, Date.now(), 5000)) < 5000, 'the connection was closed');
        assert.ok(bytes < layer.size, `the cut body is short (${bytes} bytes)`);
      }
    } finally {
      for (const s of stalled) s.socket.destroy();
    }
    const metrics = await getMetrics(mirror.url);
    assert.equal(metricValue(metrics, 'registry_mirror_client_connections_timed_out_total', { reason: 'write' }), cutBefore + 4);
    // No pin is left: making room for another image evicts the blob (pinned content never is).
    const pulled = await pullImage(mirror.url, '', other.repository, other.tag);
    assert.equal(pulled.manifestDigest, other.digest);
    // The eviction runs at the commit, just after the client's last byte.
    await downloadsSettled(mirror.url);
    assert.ok(!existsSync(file), 'the released blob was evicted to make room');
    assert.ok(existsSync(blobPath(mirror.dataDir, other.layers[0]!.digest)));
  });
});

describe('limits.maxConnections', { timeout: 60_000 }, () => {
  let registry: RegistryHandle;
  let mirror: MirrorHandle;
  const agents: Agent[] = [];
  const connection = () => {
    const a = new Agent({ keepAlive: true, maxSockets: 1 });
    agents.push(a);
    return a;
  };

  before(async () => {
    registry = await startRegistry();
    mirror = await startMirror({
      upstreams: { 'docker.io': { url: registry.url } },
      limits: { maxConnections: 3 },
      clientTimeouts: { idle: '5s', write: '5s' },
    });
  });

  after(async () => {
    for (const s of rawSockets) s.destroy();
    for (const a of agents) a.destroy();
    await mirror?.stop();
    await registry?.stop();
  });

  it('answers 503 with OCI error JSON past the limit, keeps serving the admitted connections and probes, and drops past twice the limit', async () => {
    const c1 = connection();
    const gauge = async (state: 'admitted' | 'over_limit') => {
      const r = await get(mirror.url, '/metrics', c1);
      assert.equal(r.status, 200);
      return metricValue(r.body.toString('utf8'), 'registry_mirror_client_connections', { state });
    };
    // The readiness polls of startMirror may still hold a keep-alive connection: wait until c1
    // is alone (a mirror without the gauge goes on, to fail on what matters below).
    await waitFor(async () => ((await gauge('admitted')) ?? 1) === 1, 10_000, 'c1 the only admitted connection');
    const c2 = connection();
    const c3 = connection();
    assert.equal((await get(mirror.url, '/v2/', c2)).status, 200);
    assert.equal((await get(mirror.url, '/v2/', c3)).status, 200);

    const refused = await get(mirror.url, '/v2/library/x/manifests/latest', connection());
    assert.equal(refused.status, 503);
    assert.equal(refused.headers.connection, 'close');
    assert.equal(refused.headers['retry-after'], '1');
    assert.match(String(refused.headers['content-type']), /^application\/json/);
    const body = JSON.parse(refused.body.toString('utf8')) as { errors: Array<{ code: string; message: string }> };
    assert.equal(body.errors[0]!.code, 'UNAVAILABLE');
    assert.equal(await registry.countRequests('GET', '/v2/library/x/'), 0, 'refused before any upstream work');
    assert.equal(await gauge('admitted'), 3);

    const probe = await get(mirror.url, '/healthz', connection());
    assert.equal(probe.status, 200, 'kubelet probes are answered past the limit');
    assert.equal(probe.headers.connection, 'close');

    for (const c of [c1, c2, c3]) {
      const again = await get(mirror.url, '/v2/', c);
      assert.equal(again.status, 200, 'the admitted connections still work');
      assert.ok(again.reusedSocket, 'on their own connection');
    }
    let metrics = (await get(mirror.url, '/metrics', c1)).body.toString('utf8');
    assert.equal(metricValue(metrics, 'registry_mirror_client_connections_refused_total', { how: '503' }), 1);

    // Hard ceiling (2 x 3): with 3 admitted and 3 silent over the limit, a 7th is dropped at accept.
    await waitFor(async () => (await gauge('over_limit')) === 0, 5000, 'the refused connections closed');
    const over = await Promise.all([1, 2, 3].map(() => rawSocket(mirror.url)));
    await waitFor(async () => (await gauge('over_limit')) === 3, 2000, 'three connections over the limit');
    const start = Date.now();
    const seventh = await rawSocket(mirror.url);
    const t = await closedWithin(seventh.closed, start, 1000);
    assert.ok(t < 1000, `a connection past the hard ceiling is dropped at once (took ${t})`);
    for (const s of over) s.socket.destroy();
    metrics = (await get(mirror.url, '/metrics', c1)).body.toString('utf8');
    assert.ok((metricValue(metrics, 'registry_mirror_client_connections_refused_total', { how: 'dropped' }) ?? 0) >= 1);

    // A slot that frees is taken by the next connection.
    agents[2]!.destroy();
    await waitFor(async () => (await gauge('admitted')) === 2, 5000, 'c3 gone');
    assert.equal((await get(mirror.url, '/v2/', connection())).status, 200);
  });
});
