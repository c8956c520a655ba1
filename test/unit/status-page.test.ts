// The status page as a pure function (mirror/status/): every dynamic string escaped, an
// empty mirror renders, the chart's points sit where the samples say, the CSP names the
// stylesheet's real hash, the config summary holds no secret, and the bounded collections
// it reads keep their bounds.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { parseConfig } from '../../mirror/config.js';
import { formatBytes, formatPercent, formatSeconds } from '../../mirror/format.js';
import { chartGeometry, chartSize, trafficChart } from '../../mirror/status/chart.js';
import { configSummary, safeUrl } from '../../mirror/status/config-summary.js';
import { escapeHtml, html } from '../../mirror/status/html.js';
import { InflightDownloads } from '../../mirror/status/inflight-downloads.js';
import { contentSecurityPolicy, renderStatusPage, stylesheet, type StatusPageState } from '../../mirror/status/page.js';
import { RepositoryTraffic } from '../../mirror/status/repository-traffic.js';
import { TrafficHistory, type MinuteSample } from '../../mirror/status/traffic-history.js';

const now = Date.parse('2026-12-02T01:30:30Z');
const minute = (ago: number) => Math.floor(now / 60_000) * 60_000 - ago * 60_000;
const sample = (ago: number, hits: number, misses: number, bytesServed: number): MinuteSample => ({ minute: minute(ago), hits, misses, bytesServed, bytesFromUpstream: 0 });

function emptyState(): StatusPageState {
  return {
    version: '0.1.0',
    now,
    since: '2026-12-02T00:00:00.000Z',
    totals: { hits: 0, misses: 0, staleServed: 0, bytesServed: 0, bytesFromUpstream: 0, upstreamErrors: 0 },
    storage: { storedBytes: 0, blobs: 0, maxBytes: 0 },
    history: [],
    historyMinutes: 60,
    topByBytes: [],
    topByMisses: [],
    downloads: [],
    downloadsRunning: 0,
    upstreams: [],
    config: [],
  };
}

const hostile = `evil"><script>alert(1)</script><img src=x onerror=alert(2)>'&`;

describe('status page rendering', () => {
  it('escapes every dynamic string: repositories, objects, upstream names and errors, config values, version', () => {
    const s = emptyState();
    s.version = hostile;
    s.topByBytes = [{ repository: hostile, bytesServed: 10, misses: 0 }];
    s.topByMisses = [{ repository: hostile, bytesServed: 0, misses: 3 }];
    s.downloads = [{ upstream: hostile, object: hostile, received: 5, size: 10, clients: 1, startedAt: now - 2000, bytesPerSecond: 2.5 }];
    s.downloadsRunning = 1;
    s.upstreams = [
      {
        name: hostile,
        retries: 1,
        errors: 2,
        lastError: { at: now - 5000, message: hostile },
        breaker: { state: 'open', consecutiveFailures: 3, opens: 1, fastFailed: 0, lastFailure: hostile, probeAt: hostile },
        rateLimit: { upstream: hostile, limit: 100, remaining: 5, windowSeconds: 21600, observedAt: hostile },
      },
    ];
    s.config = [[hostile, hostile]];
    const page = renderStatusPage(s);
    // Every tag in the page is one the renderer writes, with attributes it writes.
    const elements = new Set(['!DOCTYPE', 'html', 'head', 'meta', 'title', 'style', 'body', 'header', 'h1', 'h2', 'h3', 'p', 'main', 'section', 'dl', 'dt', 'dd', 'span', 'div', 'table', 'thead', 'tbody', 'tr', 'th', 'td', 'progress', 'details', 'summary', 'svg', 'desc', 'line', 'text', 'rect', 'circle', 'polyline']);
    for (const [, name, attrs] of page.matchAll(/<\/?([!a-zA-Z0-9]+)([^>]*)>/g)) {
      assert.ok(elements.has(name!), `element ${name}`);
      for (const [, attr] of attrs!.matchAll(/\s([^\s=]+)=/g)) assert.ok(!/^on/i.test(attr!) && attr !== 'src' && attr !== 'href', `attribute ${attr} on ${name}`);
    }
    const escaped = escapeHtml(hostile);
    // version, 2 top lists, download upstream + object, upstream name, last error, lastFailure, probeAt, observedAt, config key + value
    assert.ok(page.split(escaped).length - 1 >= 12, `every hostile string is there, escaped (${page.split(escaped).length - 1})`);
  });

  it('the html tag escapes values but keeps nested html, and drops booleans and undefined', () => {
    assert.equal(html`<p>${'<b>'}${html`<i>${'&'}</i>`}${[html`<br>`, '"']}${undefined}${false}${0}</p>`.text, '<p>&lt;b&gt;<i>&amp;</i><br>&quot;0</p>');
    assert.equal(escapeHtml(`<>&"'`), '&lt;&gt;&amp;&quot;&#39;');
  });

  it('an empty mirror renders: lang, title, headings, no tables without rows, an empty chart', () => {
    const page = renderStatusPage(emptyState());
    assert.match(page, /^<!DOCTYPE html>\n<html lang="en">/);
    assert.match(page, /<title>registry-mirror status<\/title>/);
    for (const h of ['Cache', 'Last hour', 'Top repositories', 'Downloads in flight', 'Upstreams', 'Configuration']) assert.match(page, new RegExp(`<h2 id="[a-z-]+">${h}</h2>`));
    assert.match(page, /No traffic in the last hour/);
    assert.match(page, /None running/);
    assert.match(page, /no bound/);
    assert.ok(!page.includes('<circle'), 'no chart points without traffic');
    assert.ok(!page.includes('<th') || page.includes('<th scope="col"'));
  });

  it('tables have column headers; the stored bytes show against the bound', () => {
    const s = emptyState();
    s.storage = { storedBytes: 512 << 20, blobs: 3, maxBytes: 1 << 30 };
    s.topByBytes = [{ repository: 'docker.io/library/a', bytesServed: 2048, misses: 1 }];
    s.upstreams = [{ name: 'docker.io', retries: 0, errors: 0 }];
    const page = renderStatusPage(s);
    assert.match(page, /<progress value="536870912" max="1073741824"/);
    assert.match(page, /512\.0 MiB in 3 blobs of 1\.0 GiB \(50%\)/);
    const ths = page.match(/<th\b[^>]*>/g) ?? [];
    assert.ok(ths.length >= 8);
    for (const th of ths) assert.match(th, /scope="col"/);
    assert.match(page, /<td class="name">docker\.io\/library\/a<\/td><td class="num">2\.0 KiB<\/td>/);
  });

  it('the CSP allows exactly the inline stylesheet, by its hash, and nothing else', () => {
    const hash = createHash('sha256').update(stylesheet).digest('base64');
    assert.equal(contentSecurityPolicy, `default-src 'none'; style-src 'sha256-${hash}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`);
    const page = renderStatusPage(emptyState());
    assert.ok(page.includes(`<style>${stylesheet}</style>`), 'the stylesheet is inlined byte for byte');
    assert.ok(!/ style="/.test(page), 'no style attributes (the hash does not cover them)');
    assert.ok(!/<script|src=|href=/.test(page), 'no script and no external reference');
  });
});

describe('status page chart', () => {
  it('a point per minute with lookups, a bar per minute with bytes, where the samples say', () => {
    const samples = [sample(59, 1, 1, 100), sample(30, 3, 0, 400), sample(0, 0, 2, 0), sample(10, 0, 0, 50), sample(61, 5, 5, 999)];
    const g = chartGeometry(samples, now, 60);
    const { width, left, right, top, bottom, height } = chartSize;
    const slot = (width - left - right) / 60;
    const plotH = height - top - bottom;
    assert.equal(g.maxBytes, 400, 'the sample older than the window is left out');
    assert.deepEqual(
      g.points.map((p) => [p.x, p.y, p.ratio]),
      [
        [Math.round((left + 0.5 * slot) * 10) / 10, Math.round((top + 0.5 * plotH) * 10) / 10, 0.5],
        [Math.round((left + 29.5 * slot) * 10) / 10, top, 1],
        [Math.round((left + 59.5 * slot) * 10) / 10, top + plotH, 0],
      ],
    );
    assert.deepEqual(g.bars.map((b) => b.height), [Math.round((plotH / 4) * 10) / 10, plotH, Math.round((plotH / 8) * 10) / 10]);
    for (const b of g.bars) assert.equal(Math.round((b.y + b.height) * 10) / 10, top + plotH, 'bars stand on the axis');
    const svg = trafficChart(samples, now, 60).text;
    assert.equal((svg.match(/<circle class="point"/g) ?? []).length, 3);
    assert.equal((svg.match(/<rect class="bar"/g) ?? []).length, 3);
    assert.match(svg, /<polyline class="ratio" points="[\d., ]+"\/>/);
    assert.match(svg, /role="img" aria-labelledby="chart-title chart-desc"/);
  });

  it('the history ring keeps one sample per minute, at most an hour of them', () => {
    let t = now;
    const h = new TrafficHistory(() => t);
    h.add({ hits: 1 });
    h.add({ misses: 1, bytesServed: 10 });
    t += 60_000;
    h.add({ bytesFromUpstream: 5 });
    assert.deepEqual(h.samples().map((s) => [s.hits, s.misses, s.bytesServed, s.bytesFromUpstream]), [[1, 1, 10, 0], [0, 0, 0, 5]]);
    for (let i = 0; i < 200; i++) {
      t += 60_000;
      h.add({ hits: 1 });
    }
    assert.equal(h.samples().length, 60);
    assert.equal((h as unknown as { ring: unknown[] }).ring.length, 60, 'the ring holds no more than the window');
    t += 61 * 60_000;
    assert.deepEqual(h.samples(), [], 'an idle hour leaves nothing in the window');
  });
});

describe('status page figures', () => {
  it('top repositories: bounded, ranked, only those with some of the figure', () => {
    const r = new RepositoryTraffic(3);
    r.record('a', { bytesServed: 10 });
    r.record('b', { bytesServed: 30, misses: 1 });
    r.record('c', { misses: 2 });
    r.record('d', { bytesServed: 20 });
    assert.equal(r.size, 3, 'the least recently used name went');
    assert.deepEqual(r.top('bytesServed', 5).map((x) => x.repository), ['b', 'd']);
    assert.deepEqual(r.top('misses', 1).map((x) => x.repository), ['c']);
  });

  it('downloads in flight: progress and average rate, gone when finished', () => {
    let t = 1000;
    const d = new InflightDownloads(() => t);
    const dl = { received: 0, size: 1000 as number | undefined, readerCount: 2 };
    const done = d.track({ upstream: 'docker.io', object: 'x@sha256:1' }, dl);
    t += 2000;
    dl.received = 500;
    assert.deepEqual(d.list(10), [{ upstream: 'docker.io', object: 'x@sha256:1', received: 500, size: 1000, clients: 2, startedAt: 1000, bytesPerSecond: 250 }]);
    done();
    assert.deepEqual(d.list(10), []);
  });

  it('the config summary shows the shape and no secret', () => {
    const secrets = ['hunter2', 'AKIAEXAMPLE', 'wJalrXUtnFEMI', 'tok3n'];
    const c = parseConfig({
      upstreams: {
        'docker.io': { url: 'https://registry-1.docker.io', username: 'alice', password: 'hunter2' },
        'ghcr.io': { url: 'https://ghcr.io', allow: ['org/*'] },
      },
      storage: { maxBytes: '10Gi', s3: { bucket: 'cache', endpoint: 'http://rgw:7480', accessKeyId: 'AKIAEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI' } },
      auth: { htpasswdFile: '/etc/htpasswd', protectMetrics: true },
    });
    const text = configSummary(c).map(([k, v]) => `${k}=${v}`).join('\n');
    for (const s of secrets) assert.ok(!text.includes(s), `no ${s} in:\n${text}`);
    assert.ok(!text.includes('alice'), 'not even the user name');
    assert.match(text, /upstreams\.docker\.io=https:\/\/registry-1\.docker\.io, credentials configured/);
    assert.match(text, /upstreams\.ghcr\.io=https:\/\/ghcr\.io, anonymous, 1 allow patterns/);
    assert.match(text, /storage=S3 bucket cache at http:\/\/rgw:7480, region us-east-1/);
    assert.match(text, /storage\.maxBytes=10\.0 GiB/);
    assert.match(text, /auth=htpasswd, protectMetrics/);
    assert.equal(safeUrl('not a url'), '(not a URL)');
    assert.equal(safeUrl('https://u:tok3n@reg.example/v/?token=tok3n#tok3n'), 'https://reg.example/v/');
  });

  it('formats', () => {
    assert.equal(formatBytes(0), '0 B');
    assert.equal(formatBytes(1536), '1.5 KiB');
    assert.equal(formatSeconds(3725), '1h 02m');
    assert.equal(formatSeconds(65), '1m 05s');
    assert.equal(formatSeconds(undefined), '?');
    assert.equal(formatPercent(1, 3), '33%');
    assert.equal(formatPercent(1, 0), '-');
  });
});
