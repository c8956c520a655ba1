// The status page (GET /) in a real browser: Debian's chromium, headless, driven by
// puppeteer-core. After real pulls through the mirror (a real docker-registry behind the
// fault proxy, which adds Docker Hub's rate-limit headers and slows one blob so a download is
// in flight), the page loads with no console error and no CSP violation, the chart has
// points, headings and column headers are there (also in the accessibility tree with
// JavaScript off: the page needs none), and a screenshot is kept in test-output/. With fetch:
// the CSP header is set, and with auth.protectMetrics the page needs credentials.

import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import bcrypt from 'bcryptjs';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { contentSecurityPolicy } from '../../mirror/status/page.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { repoRoot, startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { tempDir, waitFor } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { fetchHashed, getMetrics, metricValue, pullImage, pushRandomImage, type RandomImage } from './helpers.js';

const chromium = '/usr/bin/chromium';

describe('status page in headless Chromium', { timeout: 180_000 }, () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let mirror: MirrorHandle;
  let guarded: MirrorHandle;
  let browser: Browser;
  let app: RandomImage;
  let slow: RandomImage;
  let slowPull: Promise<unknown> | undefined;
  const stopSlowPull = new AbortController();
  const outDir = join(repoRoot(), 'test-output');

  before(async () => {
    registry = await startRegistry();
    app = await pushRandomImage(registry.url, 'status/app', 'v1', [50_000, 120_000], 'status-app');
    slow = await pushRandomImage(registry.url, 'status/slow', 'v1', [3_000_000], 'status-slow');
    proxy = await startFaultProxy(registry.url);
    proxy.addHeaders('/manifests/', { 'ratelimit-limit': '100;w=21600', 'ratelimit-remaining': '76;w=21600' });
    mirror = await startMirror({ upstreams: { 'docker.io': { url: proxy.url } }, storage: { maxBytes: '64Mi' } });
    const dir = tempDir('status-auth');
    writeFileSync(join(dir, 'htpasswd'), `alice:${bcrypt.hashSync('alice-pw', 5)}\n`);
    guarded = await startMirror({ upstreams: { 'docker.io': { url: registry.url } }, auth: { htpasswdFile: join(dir, 'htpasswd'), protectMetrics: true } });
    browser = await puppeteer.launch({
      executablePath: chromium,
      headless: true,
      userDataDir: tempDir('chromium'),
      args: [...(process.getuid?.() === 0 ? ['--no-sandbox'] : []), '--disable-dev-shm-usage', '--disable-gpu', '--no-first-run'],
    });
  });

  after(async () => {
    await browser?.close();
    stopSlowPull.abort();
    await slowPull?.catch(() => undefined);
    // First the proxy: its slowed transfer ends, so the mirror's download fails at once.
    await proxy?.stop();
    await guarded?.stop();
    await mirror?.stop();
    await registry?.stop();
  });

  /** A page that records console errors, page errors, failed requests and CSP violations. */
  async function watchedPage(): Promise<{ page: Page; problems: string[]; violations: () => Promise<string[]> }> {
    const page = await browser.newPage();
    const problems: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warn') problems.push(`console ${m.type()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${String(e)}`));
    page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`));
    // Added over CDP, so the page's own CSP does not apply to this listener.
    await page.evaluateOnNewDocument(() => {
      const w = window as unknown as { cspViolations: string[] };
      w.cspViolations = [];
      document.addEventListener('securitypolicyviolation', (e) => w.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
    });
    const violations = () => page.evaluate(() => (window as unknown as { cspViolations: string[] }).cspViolations);
    return { page, problems, violations };
  }

  it('the problem detectors work: an inline style under a strict CSP is caught', async () => {
    const { page, problems, violations } = await watchedPage();
    await page.goto(`data:text/html,${encodeURIComponent(`<meta http-equiv="Content-Security-Policy" content="style-src 'none'"><p style="color:red">x</p><style>p{}</style>`)}`);
    await waitFor(async () => (await violations()).length > 0, 5000, 'a CSP violation event');
    assert.ok(problems.some((p) => /Content Security Policy/i.test(p)), `console reports it too: ${problems.join('\n')}`);
    await page.close();
  });

  it('after real pulls: no console error or CSP violation, chart points, tables, a download in flight', async () => {
    // Cold (misses), then warm (hits): the current minute has both.
    await pullImage(mirror.url, '', app.repository, app.tag);
    await pullImage(mirror.url, '', app.repository, app.tag);
    // A slow blob keeps a download in flight while the page is looked at.
    const layer = slow.layers[0]!;
    // About 20 s for the 3 MB: the page is looked at well within that, even on a busy machine.
    proxy.slowBlob(layer.digest, 150_000);
    const m = await fetch(`${mirror.url}/v2/${slow.repository}/manifests/${slow.tag}`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
    assert.equal(m.status, 200);
    await m.arrayBuffer();
    slowPull = fetchHashed(`${mirror.url}/v2/${slow.repository}/blobs/${layer.digest}`, { signal: stopSlowPull.signal }).catch(() => undefined);
    await waitFor(async () => metricValue(await getMetrics(mirror.url), 'registry_mirror_inflight_downloads') === 1, 10_000, 'the slow download in flight');

    const { page, problems, violations } = await watchedPage();
    await page.setViewport({ width: 1200, height: 900 });
    const res = await page.goto(`${mirror.url}/`, { waitUntil: 'load' });
    assert.equal(res?.status(), 200);
    assert.equal(res?.headers()['content-security-policy'], contentSecurityPolicy);

    assert.equal(await page.title(), 'registry-mirror status');
    assert.equal(await page.$eval('html', (e) => e.getAttribute('lang')), 'en');
    const headings = await page.$$eval('h1, h2, h3', (hs) => hs.map((h) => `${h.tagName}:${h.textContent}`));
    for (const h of ['H1:registry-mirror', 'H2:Cache', 'H2:Last hour', 'H2:Top repositories', 'H2:Downloads in flight', 'H2:Upstreams', 'H2:Configuration']) assert.ok(headings.includes(h), `${h} in ${headings.join(', ')}`);
    const ths = await page.$$eval('th', (t) => t.map((e) => e.getAttribute('scope')));
    assert.ok(ths.length >= 10, `column headers: ${ths.length}`);
    assert.ok(ths.every((s) => s === 'col'), 'every header cell has scope="col"');

    const points = await page.$$eval('svg.chart circle.point', (c) => c.map((e) => [Number(e.getAttribute('cx')), Number(e.getAttribute('cy'))]));
    assert.ok(points.length >= 1, 'the chart has a hit-ratio point');
    const bars = await page.$$eval('svg.chart rect.bar', (r) => r.map((e) => Number(e.getAttribute('height'))));
    assert.ok(bars.length >= 1 && bars.every((h) => h > 0), `the chart has traffic bars: ${bars.join(',')}`);
    // The chart is drawn: its box has a size and the stylesheet (allowed by hash) colours it.
    const box = await page.$eval('svg.chart', (s) => s.getBoundingClientRect().width);
    assert.ok(box > 300, `chart width ${box}`);
    const fill = await page.$eval('svg.chart rect.bar', (r) => getComputedStyle(r).fill);
    assert.notEqual(fill, 'rgb(0, 0, 0)', 'the hashed stylesheet applies');

    const text = await page.$eval('body', (b) => b.innerText);
    assert.match(text, /docker\.io\/status\/app/, 'top repositories');
    assert.ok(text.includes(`status/slow@${layer.digest}`), 'the download in flight');
    assert.match(text, /76 of 100 per 6h 00m/, 'the rate limit left');
    assert.match(text, /of 64\.0 MiB/, 'stored bytes against the bound');
    assert.ok(await page.$('progress'), 'progress bars');

    mkdirSync(outDir, { recursive: true });
    const shot = join(outDir, 'status-page.png');
    await page.screenshot({ path: shot, fullPage: true });
    process.stdout.write(`# status page screenshot: ${shot}\n`);

    assert.deepEqual(await violations(), [], 'no CSP violation');
    assert.deepEqual(problems, [], 'no console error, page error or failed request');
    await page.close();
  });

  it('readable without JavaScript: the accessibility tree has the headings and tables', async () => {
    const page = await browser.newPage();
    await page.setJavaScriptEnabled(false);
    const res = await page.goto(`${mirror.url}/`, { waitUntil: 'load' });
    assert.equal(res?.status(), 200);
    const tree = await page.accessibility.snapshot({ interestingOnly: false });
    const nodes: Array<{ role: string; name?: string }> = [];
    const walk = (n: { role: string; name?: string; children?: unknown[] } | null) => {
      if (!n) return;
      nodes.push({ role: n.role, name: n.name });
      for (const c of n.children ?? []) walk(c as typeof n);
    };
    walk(tree as never);
    const headingNames = nodes.filter((n) => n.role === 'heading').map((n) => n.name);
    for (const h of ['Cache', 'Last hour', 'Upstreams']) assert.ok(headingNames.includes(h), `heading ${h} in ${headingNames.join(', ')}`);
    assert.ok(nodes.some((n) => n.role === 'columnheader' && n.name === 'Repository'), `column headers in ${JSON.stringify(nodes.filter((n) => /column|table|row/.test(n.role)).slice(0, 20))}`);
    assert.ok(nodes.some((n) => n.role === 'image' && /Traffic and hit ratio/.test(n.name ?? '')), 'the chart is an image with a name');
    await page.close();
  });

  it('fetch: HTML with the CSP and no-store; with protectMetrics the page needs credentials', async () => {
    const open = await fetch(`${mirror.url}/`);
    assert.equal(open.status, 200);
    assert.equal(open.headers.get('content-security-policy'), contentSecurityPolicy);
    assert.match(open.headers.get('content-type') ?? '', /^text\/html; charset=utf-8/);
    assert.equal(open.headers.get('cache-control'), 'no-store');
    assert.equal(open.headers.get('x-content-type-options'), 'nosniff');
    await open.arrayBuffer();

    const refused = await fetch(`${guarded.url}/`);
    assert.equal(refused.status, 401);
    assert.match(refused.headers.get('www-authenticate') ?? '', /^Basic realm=/);
    assert.ok(!(await refused.text()).includes('<html'), 'no page without credentials');
    const wrong = await fetch(`${guarded.url}/`, { headers: { authorization: `Basic ${Buffer.from('alice:nope').toString('base64')}` } });
    assert.equal(wrong.status, 401);
    await wrong.arrayBuffer();
    const ok = await fetch(`${guarded.url}/`, { headers: { authorization: `Basic ${Buffer.from('alice:alice-pw').toString('base64')}` } });
    assert.equal(ok.status, 200);
    assert.match(await ok.text(), /<title>registry-mirror status<\/title>/);
  });
});
