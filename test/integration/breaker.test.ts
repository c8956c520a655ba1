// An upstream that is down costs stale-serving pulls at most one probe per breaker window
// (issue 14, item 7): a real docker-registry behind the fault proxy, a tag cached and then
// stale (short tagTTL), and the upstream made unreachable three ways:
// - the proxy resets every connection it accepts (counted on the upstream side);
// - the upstream process is gone (the kernel refuses connections; counted by the mirror);
// - packets to it are silently dropped (iptables DROP for an address added to lo, root only;
//   counted by the DROP rule), so every try waits out upstreamTimeouts.connect.
// In each: the first `failures` pulls pay their retries, then the breaker opens and every
// stale answer is immediate, the upstream sees at most one connection per window (the probe,
// one try), /metrics and /stats show the state; once the upstream is back the probe closes
// the breaker and the tag's new content is served. A mirror without a breaker
// (failures: 0) pays every request's retries: what the breaker removes.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { run, sleep } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { buildV1Fixture, startV1Source } from '../rig/v1-source.js';
import { getManifestVia, getMetrics, getStats, metricValue, pullImage, pushRandomImage, type RandomImage } from './helpers.js';

const tagTTLMs = 200;
const openForMs = 1500;
/**
 * A stale answer once the breaker is open takes a few ms here (median 3-5 ms on 2 cores);
 * the bounds are generous for a loaded CI machine, where a process can stall for 100 ms.
 * Without the breaker each answer waits out its retries: about 300 ms on average here
 * (backoff random(0, 200) + random(0, 400) ms), a connect timeout per try when packets drop.
 */
const fastMs = 250;
const medianMs = 50;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

interface Timed {
  status: number;
  digest: string;
  ms: number;
  started: number;
}

async function timedGet(base: string, path: string): Promise<Timed> {
  const started = Date.now();
  const r = await getManifestVia(base, path);
  return { status: r.status, digest: r.digest, ms: Date.now() - started, started };
}

const metric = async (m: MirrorHandle, name: string, labels: Record<string, string>) => metricValue(await getMetrics(m.url), name, labels) ?? 0;
const breakerGauge = (m: MirrorHandle, upstream: string) => metric(m, 'registry_mirror_upstream_breaker_state', { upstream });
const breakerStats = async (m: MirrorHandle, upstream: string) => {
  const s = (await getStats(m.url)).upstreams?.[upstream]?.breaker;
  assert.ok(s, `/stats upstreams["${upstream}"].breaker`);
  return s;
};

describe('upstream circuit breaker: a down upstream costs one probe per window', { timeout: 240_000 }, () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let stopped: FaultProxyHandle;
  let mirror: MirrorHandle;
  const images: Record<string, RandomImage> = {};

  before(async () => {
    registry = await startRegistry();
    for (const name of ['refused', 'stopped', 'other', 'off', 'dropped']) {
      images[name] = await pushRandomImage(registry.url, `breaker/${name}`, 'v1', [30_000], `breaker-${name}`);
    }
    proxy = await startFaultProxy(registry.url);
    stopped = await startFaultProxy(registry.url);
    // Default retries (3 tries, 200 ms backoff): what a stale answer costs without the breaker.
    mirror = await startMirror({
      cache: { tagTTL: `${tagTTLMs}ms` },
      upstreams: { 'docker.io': { url: proxy.url }, 'stopped.test': { url: stopped.url } },
      upstreamTimeouts: { connect: '1s', headers: '5s', idle: '5s' },
      upstreamBreaker: { failures: 3, openFor: `${openForMs}ms` },
    });
  });

  after(async () => {
    await mirror?.stop();
    await proxy?.stop();
    await stopped?.stop();
    await registry?.stop();
  });

  it('connections reset by the upstream: fast stale answers, one connection per window, closed again by the probe', async () => {
    const img = images.refused!;
    const path = `/v2/${img.repository}/manifests/${img.tag}`;
    assert.equal((await pullImage(mirror.url, '', img.repository, img.tag)).manifestDigest, img.digest);
    assert.equal(await breakerGauge(mirror, 'docker.io'), 0, 'closed');

    proxy.refuseConnections(true);
    try {
    await sleep(tagTTLMs + 50);
    // Closed: each of the first three stale answers costs its request's three tries.
    const c0 = proxy.connections();
    for (let i = 0; i < 3; i++) {
      const r = await timedGet(mirror.url, path);
      assert.deepEqual([r.status, r.digest], [200, img.digest], 'served stale');
    }
    assert.equal(proxy.connections() - c0, 9, 'three requests, three tries each');
    assert.equal(await breakerGauge(mirror, 'docker.io'), 1, 'open after 3 failed requests');
    const opened = await breakerStats(mirror, 'docker.io');
    assert.equal(opened.state, 'open');
    assert.equal(opened.opens, 1);
    assert.match(opened.lastFailure ?? '', /^(ECONNRESET|UND_ERR_SOCKET|EPIPE)$/);
    const openedAt = Date.parse(opened.openedAt!);
    assert.equal(Date.parse(opened.probeAt!) - openedAt, openForMs);

    // Open: three windows of stale pulls, one every 50 ms.
    const c1 = proxy.connections();
    const retries1 = await metric(mirror, 'registry_mirror_upstream_retries_total', { upstream: 'docker.io' });
    const answers: Timed[] = [];
    while (Date.now() - openedAt < 3 * openForMs + 300) {
      answers.push(await timedGet(mirror.url, path));
      await sleep(50);
    }
    const end = Date.now();
    for (const r of answers) assert.deepEqual([r.status, r.digest], [200, img.digest]);
    const ms = answers.map((r) => r.ms);
    assert.ok(Math.max(...ms) < fastMs && median(ms) < medianMs, `every stale answer fast once open (${answers.length}: ${ms.join(' ')} ms)`);
    const probes = proxy.connections() - c1;
    const windows = Math.floor((end - openedAt) / openForMs);
    assert.ok(probes >= 1 && probes <= windows, `${probes} connections in ${windows} windows: at most one each`);
    assert.equal(await metric(mirror, 'registry_mirror_upstream_retries_total', { upstream: 'docker.io' }), retries1, 'no retries while open: a probe is one try');

    // What /metrics and /stats say: each failed probe opened it again; the rest failed fast.
    const s = await breakerStats(mirror, 'docker.io');
    assert.equal(s.state, 'open');
    assert.equal(s.opens, 1 + probes);
    assert.equal(s.fastFailed, answers.length - probes);
    assert.equal(s.consecutiveFailures, 3 + probes);
    assert.equal(await metric(mirror, 'registry_mirror_upstream_breaker_opens_total', { upstream: 'docker.io' }), s.opens);
    assert.equal(await metric(mirror, 'registry_mirror_upstream_breaker_fast_failures_total', { upstream: 'docker.io' }), s.fastFailed);
    assert.equal((await breakerStats(mirror, 'stopped.test')).state, 'closed', 'per upstream');

    // Back, and the tag moved meanwhile: once the window is over the probe closes the
    // breaker and the new content is served.
    } finally {
      proxy.refuseConnections(false);
    }
    const moved = await pushRandomImage(registry.url, img.repository, img.tag, [40_000], 'breaker-refused-moved');
    await sleep(openForMs + 50);
    const fresh = await getManifestVia(mirror.url, path);
    assert.equal(fresh.status, 200);
    assert.equal(fresh.digest, moved.digest, 'the new manifest, not the stale one');
    assert.equal(await breakerGauge(mirror, 'docker.io'), 0, 'closed by the probe');
    const closed = await breakerStats(mirror, 'docker.io');
    assert.deepEqual({ state: closed.state, consecutiveFailures: closed.consecutiveFailures, openedAt: closed.openedAt, lastFailure: closed.lastFailure }, { state: 'closed', consecutiveFailures: 0, openedAt: undefined, lastFailure: undefined });
    assert.equal((await pullImage(mirror.url, '', img.repository, img.tag)).manifestDigest, moved.digest, 'blobs flow too');
    assert.match(mirror.logText(), /circuit breaker open/);
    assert.match(mirror.logText(), /circuit breaker closed/);
  });

  it('upstream stopped (the kernel refuses connections): the same, counted by the mirror; another upstream unaffected', async () => {
    const img = images.stopped!;
    const prefix = 'stopped.test/';
    const path = `/v2/${prefix}${img.repository}/manifests/${img.tag}`;
    const tries = () => metric(mirror, 'registry_mirror_upstream_requests_total', { upstream: 'stopped.test', status: 'error' });
    assert.equal((await pullImage(mirror.url, prefix, img.repository, img.tag)).manifestDigest, img.digest);
    const port = stopped.port;
    await stopped.stop();
    try {
      await sleep(tagTTLMs + 50);
      const t0 = await tries();
      const paid: number[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await timedGet(mirror.url, path);
        assert.deepEqual([r.status, r.digest], [200, img.digest]);
        paid.push(r.ms);
      }
      assert.equal((await tries()) - t0, 9, 'ECONNREFUSED three times per request');
      const opened = await breakerStats(mirror, 'stopped.test');
      assert.equal(opened.state, 'open', 'open after 3 failed requests');
      const openedAt = Date.parse(opened.openedAt!);
      const t1 = await tries();
      const answers: Timed[] = [];
      while (Date.now() - openedAt < 2 * openForMs + 300) {
        answers.push(await timedGet(mirror.url, path));
        await sleep(50);
      }
      const windows = Math.floor((Date.now() - openedAt) / openForMs);
      for (const r of answers) assert.deepEqual([r.status, r.digest], [200, img.digest]);
      const ms = answers.map((r) => r.ms);
      assert.ok(Math.max(...ms) < fastMs && median(ms) < medianMs, `stale answers once open: ${ms.join(' ')} ms (before it opened: ${paid.join(', ')} ms)`);
      const probes = (await tries()) - t1;
      assert.ok(probes >= 1 && probes <= windows, `${probes} tries in ${windows} windows`);
      assert.equal(await breakerGauge(mirror, 'stopped.test'), 1);
      assert.equal((await breakerStats(mirror, 'stopped.test')).lastFailure, 'ECONNREFUSED');

      // docker.io is another upstream: its breaker is closed and its pulls go on.
      assert.equal(await breakerGauge(mirror, 'docker.io'), 0);
      const other = images.other!;
      assert.equal((await pullImage(mirror.url, '', other.repository, other.tag)).manifestDigest, other.digest);
    } finally {
      stopped = await startFaultProxy(registry.url, { port });
    }
    const moved = await pushRandomImage(registry.url, img.repository, img.tag, [41_000], 'breaker-stopped-moved');
    await sleep(openForMs + 50);
    assert.equal((await getManifestVia(mirror.url, path)).digest, moved.digest);
    assert.equal(await breakerGauge(mirror, 'stopped.test'), 0);
  });

  it('without the breaker (failures: 0) every stale answer pays its retries: what the breaker removes', async () => {
    const off = await startMirror({
      cache: { tagTTL: `${tagTTLMs}ms` },
      upstreams: { 'docker.io': { url: proxy.url, breaker: { failures: 0 } } },
      upstreamTimeouts: { connect: '1s', headers: '5s', idle: '5s' },
    });
    try {
      const img = images.off!;
      const path = `/v2/${img.repository}/manifests/${img.tag}`;
      assert.equal((await pullImage(off.url, '', img.repository, img.tag)).manifestDigest, img.digest);
      proxy.refuseConnections(true);
      await sleep(tagTTLMs + 50);
      const c0 = proxy.connections();
      const answers: Timed[] = [];
      for (let i = 0; i < 8; i++) answers.push(await timedGet(off.url, path));
      for (const r of answers) assert.deepEqual([r.status, r.digest], [200, img.digest]);
      assert.equal(proxy.connections() - c0, 8 * 3, 'every request, every try');
      const total = answers.reduce((n, r) => n + r.ms, 0);
      // Each waits random(0, 200) + random(0, 400) ms of backoff: about 300 ms on average.
      assert.ok(total > 8 * 100 && median(answers.map((r) => r.ms)) > medianMs, `8 stale answers took ${answers.map((r) => r.ms).join(', ')} ms`);
      assert.equal(await breakerGauge(off, 'docker.io'), 0, 'never opens');
      assert.equal((await breakerStats(off, 'docker.io')).opens, 0);
    } finally {
      proxy.refuseConnections(false);
      await off.stop();
    }
  });
});

describe('upstream circuit breaker: the v1 source', { timeout: 120_000 }, () => {
  it('a stopped v1 source: cached tags served stale at once after the breaker opens, fresh again after the probe', async () => {
    const fixture = buildV1Fixture({ 'team/app': [20_000, 10_000] });
    const source = await startV1Source(fixture);
    const m = await startMirror({
      upstreams: { 'docker.io': { url: 'http://127.0.0.1:1' } },
      v1: { enabled: true, source: source.url, tagsCacheTTL: `${tagTTLMs}ms` },
      upstreamBreaker: { failures: 2, openFor: `${openForMs}ms` },
    });
    const name = new URL(source.url).host;
    const path = '/v1/repositories/team/app/tags';
    const tags = async () => {
      const started = Date.now();
      const res = await fetch(m.url + path);
      return { status: res.status, body: (await res.json()) as Record<string, string>, ms: Date.now() - started };
    };
    const tries = () => metric(m, 'registry_mirror_upstream_requests_total', { upstream: name, status: 'error' });
    try {
      const first = await tags();
      assert.equal(first.status, 200);
      const [top, parent] = [first.body.latest!, fixture.images.find((i) => i.id === first.body.latest)!.ancestry[1]!];
      await source.stop();
      await sleep(tagTTLMs + 50);
      for (let i = 0; i < 2; i++) assert.deepEqual((await tags()).body, { latest: top }, 'served stale');
      assert.equal(await tries(), 6, 'two requests, three tries each');
      const opened = await breakerStats(m, name);
      assert.equal(opened.state, 'open');
      assert.equal(opened.lastFailure, 'ECONNREFUSED');
      const openedAt = Date.parse(opened.openedAt!);
      const t1 = await tries();
      const answers: number[] = [];
      while (Date.now() - openedAt < 2 * openForMs + 300) {
        const r = await tags();
        assert.deepEqual([r.status, r.body], [200, { latest: top }]);
        answers.push(r.ms);
        await sleep(50);
      }
      const windows = Math.floor((Date.now() - openedAt) / openForMs);
      assert.ok(Math.max(...answers) < fastMs && median(answers) < medianMs, `stale tags once open: ${answers.join(' ')} ms`);
      const probes = (await tries()) - t1;
      assert.ok(probes >= 1 && probes <= windows, `${probes} tries in ${windows} windows`);
      assert.equal(await breakerGauge(m, name), 1);

      source.setTag('team/app', 'latest', parent);
      await source.start();
      await sleep(openForMs + 50);
      assert.deepEqual((await tags()).body, { latest: parent }, 'the probe got the new list');
      assert.equal(await breakerGauge(m, name), 0);
    } finally {
      await m.stop();
      await source.stop();
    }
  });
});

// --- silently dropped packets: needs root, iptables and ip (CI runs as root) ---------------
//
// The address 10.77.0.9/32 is added to lo (and removed after) and the proxy listens there; an
// INPUT rule drops what is sent to its port, so a connection attempt gets no answer at all.
// Attempts are counted as conntrack entries (one per attempt, whatever SYN retransmits the
// kernel makes: their number depends on its timeouts, undici's connect timer is coarse).

const dropAddress = '10.77.0.9';
const has = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const dropSkip = process.getuid?.() !== 0 ? 'needs root (iptables, ip addr)' : !has('iptables') || !has('ip') ? 'needs iptables and ip' : false;

describe('upstream circuit breaker: an upstream that silently drops packets', { timeout: 180_000, skip: dropSkip }, () => {
  const connectMs = 1000;
  /** undici's connect timer fires up to about half a second late (its coarse timers). */
  const timerSlopMs = 700;
  const dropOpenForMs = 2500;
  const comment = `rm-breaker-test-${process.pid}`;
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  let addedAddress = false;
  let rule: string[] | undefined;
  const undoRule = async () => {
    if (rule) await run('iptables', ['-w', '-D', ...rule], { allowFail: true });
    rule = undefined;
  };
  /** Connection attempts to the proxy that got no answer (conntrack entries in SYN_SENT). */
  const attempts = async () => {
    const table = existsSync('/proc/net/nf_conntrack')
      ? readFileSync('/proc/net/nf_conntrack', 'utf8')
      : (await run('conntrack', ['-L', '-p', 'tcp'], { allowFail: true })).stdout;
    return table.split('\n').filter((l) => l.includes('SYN_SENT') && l.includes(`dst=${dropAddress} `) && l.includes(`dport=${proxy.port} `)).length;
  };

  before(async () => {
    const addrs = (await run('ip', ['-o', 'addr', 'show', 'dev', 'lo'])).stdout;
    if (!addrs.includes(` ${dropAddress}/`)) {
      await run('ip', ['addr', 'add', `${dropAddress}/32`, 'dev', 'lo']);
      addedAddress = true;
    }
    registry = await startRegistry();
    proxy = await startFaultProxy(registry.url, { host: dropAddress });
    mirror = await startMirror({
      cache: { tagTTL: `${tagTTLMs}ms` },
      upstreams: { 'docker.io': { url: proxy.url } },
      upstreamTimeouts: { connect: `${connectMs}ms`, headers: '5s', idle: '5s' },
      upstreamBreaker: { failures: 2, openFor: `${dropOpenForMs}ms` },
    });
  });

  after(async () => {
    await undoRule();
    await mirror?.stop();
    if (proxy && has('conntrack')) await run('conntrack', ['-D', '-p', 'tcp', '--orig-dst', dropAddress, '--dport', String(proxy.port)], { allowFail: true });
    await proxy?.stop();
    await registry?.stop();
    if (addedAddress) await run('ip', ['addr', 'del', `${dropAddress}/32`, 'dev', 'lo'], { allowFail: true });
  });

  it('after the breaker opens: stale answers at once, one connect timeout per window, requests during the probe fail fast', async () => {
    const img = await pushRandomImage(registry.url, 'breaker/dropped', 'v1', [30_000], 'breaker-dropped');
    const path = `/v2/${img.repository}/manifests/${img.tag}`;
    assert.equal((await pullImage(mirror.url, '', img.repository, img.tag)).manifestDigest, img.digest);
    // No keep-alive connection may outlive the drop (it would carry the HEAD past the rule).
    proxy.closeConnections();
    await sleep(100);
    rule = ['INPUT', '-d', `${dropAddress}/32`, '-p', 'tcp', '--dport', String(proxy.port), '-m', 'conntrack', '--ctstate', 'NEW', '-m', 'comment', '--comment', comment, '-j', 'DROP'];
    await run('iptables', ['-w', '-I', ...rule]);
    try {
      await sleep(tagTTLMs + 50);

      // Closed: two requests at once, each three connect timeouts, then open.
      const first = await Promise.all([timedGet(mirror.url, path), timedGet(mirror.url, path)]);
      for (const r of first) {
        assert.deepEqual([r.status, r.digest], [200, img.digest]);
        assert.ok(r.ms >= 3 * connectMs, `paid three connect timeouts (${r.ms} ms)`);
      }
      assert.equal(await attempts(), 6, 'three unanswered attempts per request');
      const opened = await breakerStats(mirror, 'docker.io');
      assert.equal(opened.state, 'open');
      assert.equal(opened.lastFailure, 'UND_ERR_CONNECT_TIMEOUT');
      const openedAt = Date.parse(opened.openedAt!);

      // Open: a pull starts every 100 ms, not waiting for the others, for over two windows.
      const pending: Array<Promise<Timed>> = [];
      while (Date.now() - openedAt < 2 * dropOpenForMs + 400) {
        pending.push(timedGet(mirror.url, path));
        await sleep(100);
      }
      const answers = await Promise.all(pending);
      const windows = Math.floor((Date.now() - openedAt) / dropOpenForMs);
      for (const r of answers) assert.deepEqual([r.status, r.digest], [200, img.digest]);
      const probes = (await attempts()) - 6;
      assert.ok(probes >= 1 && probes <= windows, `${probes} connection attempts in ${windows} windows`);
      // Only the probes wait, one connect timeout each and no retry (two tries would take
      // over 2 x connectMs); whatever started while a probe was out was answered at once.
      const probing = answers.filter((r) => r.ms >= connectMs);
      assert.equal(probing.length, probes, `one slow answer per probe (${answers.map((r) => r.ms).join(' ')} ms)`);
      for (const r of probing) assert.ok(r.ms < connectMs + timerSlopMs, `a probe waits one connect timeout, no retry (${r.ms} ms)`);
      const rest = answers.filter((r) => !probing.includes(r)).map((r) => r.ms);
      assert.ok(Math.max(...rest) < fastMs && median(rest) < medianMs, `the others fast: ${rest.join(' ')} ms`);
      const during = answers.filter((r) => !probing.includes(r) && probing.some((p) => r.started > p.started && r.started < p.started + p.ms));
      assert.ok(during.length >= 3, `${during.length} requests were made while a probe was out, and failed fast`);
      assert.equal(await breakerGauge(mirror, 'docker.io'), 1);
    } finally {
      await undoRule();
    }

    // Packets flow again, and the tag moved meanwhile: the next probe closes the breaker and
    // the new content is served.
    const moved = await pushRandomImage(registry.url, img.repository, img.tag, [42_000], 'breaker-dropped-moved');
    await sleep(dropOpenForMs + 50);
    const fresh = await getManifestVia(mirror.url, path);
    assert.equal(fresh.digest, moved.digest);
    assert.equal(await breakerGauge(mirror, 'docker.io'), 0);
    assert.equal((await pullImage(mirror.url, '', img.repository, img.tag)).manifestDigest, moved.digest);
  });
});
