// The status page (GET /): one server-rendered HTML document, readable without JavaScript,
// with no external asset (an air-gapped cluster shows it as well) and nothing inline but one
// stylesheet whose hash the Content-Security-Policy names (route.ts). A pure function of
// StatusPageState; every string in it goes through the escaping `html` tag.

import { createHash } from 'node:crypto';
import type { RateLimitStatus, UpstreamStatus } from '../metrics.js';
import { formatBytes, formatPercent, formatSeconds } from '../format.js';
import { trafficChart } from './chart.js';
import type { ConfigRow } from './config-summary.js';
import { Html, html } from './html.js';
import type { DownloadProgress } from './inflight-downloads.js';
import type { RepositoryFigures } from './repository-traffic.js';
import type { MinuteSample } from './traffic-history.js';

export interface UpstreamHealth {
  name: string;
  breaker?: UpstreamStatus['breaker'];
  retries: number;
  errors: number;
  lastError?: { at: number; message?: string };
  rateLimit?: RateLimitStatus;
}

export interface StatusPageState {
  version: string;
  /** When the page is rendered (ms since the epoch). */
  now: number;
  /** When the figures started (the process start), ISO 8601. */
  since: string;
  totals: { hits: number; misses: number; staleServed: number; bytesServed: number; bytesFromUpstream: number; upstreamErrors: number };
  storage: { storedBytes: number; blobs: number; maxBytes: number };
  history: MinuteSample[];
  historyMinutes: number;
  topByBytes: RepositoryFigures[];
  topByMisses: RepositoryFigures[];
  downloads: DownloadProgress[];
  /** Downloads running, listed or not. */
  downloadsRunning: number;
  upstreams: UpstreamHealth[];
  config: ConfigRow[];
}

export const stylesheet = `
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#5b6470;--bg:#fff;--line:#d0d7de;--bar:#4c8bd6;--ratio:#d9822b;--bad:#b42318;--ok:#1a7f37}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9aa4ae;--bg:#0d1117;--line:#30363d;--bar:#5a9be6;--ratio:#f0a35c;--bad:#ff7b72;--ok:#3fb950}}
body{font:15px/1.45 system-ui,sans-serif;color:var(--fg);background:var(--bg);margin:0 auto;padding:1rem 1.5rem 3rem;max-width:1100px}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.15rem;margin:2rem 0 .5rem;border-bottom:1px solid var(--line)}h3{font-size:1rem;margin:1rem 0 .3rem}
.muted,.label{color:var(--muted)}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:.25rem .6rem .25rem 0;border-bottom:1px solid var(--line);vertical-align:top}
td.num,th.num{text-align:right}
td.name{word-break:break-all}
dl.figures{display:grid;grid-template-columns:max-content auto;gap:.2rem 1.2rem;margin:0}
dl.figures dt{color:var(--muted)}dl.figures dd{margin:0}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:1.5rem}
progress{width:10rem;vertical-align:middle}
.bad{color:var(--bad)}.ok{color:var(--ok)}
svg.chart{max-width:100%;height:auto}
svg .bar{fill:var(--bar)}svg .ratio{fill:none;stroke:var(--ratio);stroke-width:2}svg .point{fill:var(--ratio)}
svg .axis{stroke:var(--muted)}svg .grid{stroke:var(--line);stroke-dasharray:4 4}svg .label{fill:var(--muted);font-size:12px}
.legend-bar{color:var(--bar)}.legend-ratio{color:var(--ratio)}
`;

/** The CSP source for the inline stylesheet: the only inline content the page has. */
export const stylesheetHash = `'sha256-${createHash('sha256').update(stylesheet).digest('base64')}'`;

export const contentSecurityPolicy = `default-src 'none'; style-src ${stylesheetHash}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`;

/** Seconds between the page's own reloads (meta refresh: no script). */
export const refreshSeconds = 60;

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

export function renderStatusPage(s: StatusPageState): string {
  const t = s.totals;
  const lookups = t.hits + t.misses;
  const doc = html`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="${refreshSeconds}">
<title>registry-mirror status</title>
<style>${new Html(stylesheet)}</style>
</head>
<body>
<header>
<h1>registry-mirror</h1>
<p class="muted">Version ${s.version} · as of ${iso(s.now)} · figures since ${s.since} · this page reloads every ${refreshSeconds} s</p>
</header>
<main>
<section aria-labelledby="cache">
<h2 id="cache">Cache</h2>
<dl class="figures">
<dt>Hit ratio</dt><dd>${formatPercent(t.hits, lookups)} <span class="muted">(${t.hits} hits, ${t.misses} misses, ${t.staleServed} served stale)</span></dd>
<dt>Served</dt><dd>${formatBytes(t.bytesServed)}</dd>
<dt>From upstreams</dt><dd>${formatBytes(t.bytesFromUpstream)}</dd>
<dt>Upstream errors</dt><dd>${t.upstreamErrors}</dd>
<dt>Stored</dt><dd>${storedLine(s.storage)}</dd>
</dl>
</section>
<section aria-labelledby="traffic">
<h2 id="traffic">Last hour</h2>
<p class="muted"><span class="legend-bar">■</span> bytes served per minute · <span class="legend-ratio">●</span> hit ratio per minute</p>
${trafficChart(s.history, s.now, s.historyMinutes)}
${samplesTable(s.history)}
</section>
<section aria-labelledby="repositories">
<h2 id="repositories">Top repositories</h2>
<div class="cols">
<div>
<h3 id="top-bytes">By bytes served</h3>
${repoTable(s.topByBytes, 'top-bytes', 'Bytes served', (r) => formatBytes(r.bytesServed))}
</div>
<div>
<h3 id="top-misses">By misses</h3>
${repoTable(s.topByMisses, 'top-misses', 'Misses', (r) => String(r.misses))}
</div>
</div>
</section>
<section aria-labelledby="downloads">
<h2 id="downloads">Downloads in flight</h2>
${downloadsTable(s.downloads, s.downloadsRunning, s.now)}
</section>
<section aria-labelledby="upstreams">
<h2 id="upstreams">Upstreams</h2>
${upstreamsTable(s.upstreams, s.now)}
</section>
<section aria-labelledby="configuration">
<h2 id="configuration">Configuration</h2>
<dl class="figures">
${s.config.map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>
`)}</dl>
</section>
</main>
</body>
</html>
`;
  return doc.text;
}

function storedLine(st: StatusPageState['storage']): Html {
  const what = html`${formatBytes(st.storedBytes)} in ${st.blobs} blobs`;
  if (!(st.maxBytes > 0)) return html`${what} <span class="muted">(no bound)</span>`;
  return html`<progress value="${Math.min(st.storedBytes, st.maxBytes)}" max="${st.maxBytes}" aria-label="stored bytes of the bound">${formatPercent(st.storedBytes, st.maxBytes)}</progress> ${what} of ${formatBytes(st.maxBytes)} (${formatPercent(st.storedBytes, st.maxBytes)})`;
}

function samplesTable(samples: MinuteSample[]): Html {
  if (samples.length === 0) return html`<p>No traffic in the last hour.</p>`;
  return html`<details>
<summary>Per-minute figures</summary>
<table aria-label="per-minute traffic">
<thead><tr><th scope="col">Minute (UTC)</th><th scope="col" class="num">Hits</th><th scope="col" class="num">Misses</th><th scope="col" class="num">Hit ratio</th><th scope="col" class="num">Served</th><th scope="col" class="num">From upstreams</th></tr></thead>
<tbody>
${samples.map((m) => html`<tr><td>${iso(m.minute).slice(11, 16)}</td><td class="num">${m.hits}</td><td class="num">${m.misses}</td><td class="num">${formatPercent(m.hits, m.hits + m.misses)}</td><td class="num">${formatBytes(m.bytesServed)}</td><td class="num">${formatBytes(m.bytesFromUpstream)}</td></tr>
`)}</tbody>
</table>
</details>`;
}

function repoTable(rows: RepositoryFigures[], labelledBy: string, figure: string, value: (r: RepositoryFigures) => string): Html {
  if (rows.length === 0) return html`<p>None yet.</p>`;
  return html`<table aria-labelledby="${labelledBy}">
<thead><tr><th scope="col">Repository</th><th scope="col" class="num">${figure}</th></tr></thead>
<tbody>
${rows.map((r) => html`<tr><td class="name">${r.repository}</td><td class="num">${value(r)}</td></tr>
`)}</tbody>
</table>`;
}

function downloadsTable(rows: DownloadProgress[], running: number, now: number): Html {
  if (rows.length === 0) return html`<p>None running.</p>`;
  const more = running > rows.length ? html`<p class="muted">${running - rows.length} more not listed.</p>` : '';
  return html`<table aria-labelledby="downloads">
<thead><tr><th scope="col">Upstream</th><th scope="col">Object</th><th scope="col">Progress</th><th scope="col" class="num">Rate</th><th scope="col" class="num">ETA</th><th scope="col" class="num">Clients</th><th scope="col" class="num">Running for</th></tr></thead>
<tbody>
${rows.map((d) => {
  const eta = d.size !== undefined && d.bytesPerSecond > 0 ? (d.size - d.received) / d.bytesPerSecond : undefined;
  const progress =
    d.size !== undefined && d.size > 0
      ? html`<progress value="${d.received}" max="${d.size}">${formatPercent(d.received, d.size)}</progress> ${formatBytes(d.received)} of ${formatBytes(d.size)} (${formatPercent(d.received, d.size)})`
      : html`${formatBytes(d.received)} <span class="muted">(size unknown)</span>`;
  return html`<tr><td>${d.upstream}</td><td class="name">${d.object}</td><td>${progress}</td><td class="num">${formatBytes(d.bytesPerSecond)}/s</td><td class="num">${formatSeconds(eta)}</td><td class="num">${d.clients}</td><td class="num">${formatSeconds((now - d.startedAt) / 1000)}</td></tr>
`;
})}</tbody>
</table>
${more}`;
}

function upstreamsTable(rows: UpstreamHealth[], now: number): Html {
  if (rows.length === 0) return html`<p>None.</p>`;
  return html`<table aria-labelledby="upstreams">
<thead><tr><th scope="col">Upstream</th><th scope="col">Circuit breaker</th><th scope="col" class="num">Retries</th><th scope="col" class="num">Errors</th><th scope="col">Last error</th><th scope="col">Rate limit left</th></tr></thead>
<tbody>
${rows.map((u) => html`<tr><td>${u.name}</td><td>${breakerCell(u.breaker)}</td><td class="num">${u.retries}</td><td class="num">${u.errors}</td><td class="name">${u.lastError ? html`${formatSeconds((now - u.lastError.at) / 1000)} ago${u.lastError.message ? html`: ${u.lastError.message}` : ''}` : html`<span class="muted">none</span>`}</td><td>${rateLimitCell(u.rateLimit)}</td></tr>
`)}</tbody>
</table>`;
}

function breakerCell(b: UpstreamStatus['breaker'] | undefined): Html {
  if (!b) return html`<span class="muted">-</span>`;
  const cls = b.state === 'closed' ? 'ok' : 'bad';
  const detail = b.state === 'closed' ? '' : html` <span class="muted">(${b.consecutiveFailures} failures in a row${b.lastFailure ? html`: ${b.lastFailure}` : ''}${b.probeAt ? html`; next probe ${b.probeAt}` : ''})</span>`;
  return html`<span class="${cls}">${b.state}</span>${detail}${b.opens > 0 ? html` <span class="muted">opened ${b.opens}×</span>` : ''}`;
}

function rateLimitCell(r: RateLimitStatus | undefined): Html {
  if (!r) return html`<span class="muted">not stated</span>`;
  const window = r.windowSeconds !== undefined ? ` per ${formatSeconds(r.windowSeconds)}` : '';
  if (r.remaining === undefined) return html`limit ${r.limit ?? '?'}${window}`;
  const low = r.limit !== undefined && r.remaining < r.limit * 0.1;
  return html`<span class="${low ? 'bad' : ''}">${r.remaining}</span> of ${r.limit ?? '?'}${window} <span class="muted">(${r.observedAt})</span>`;
}
