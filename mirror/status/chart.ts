// The status page's chart of the last hour as inline SVG (no script, no external asset):
// bars for bytes served per minute, a line with a point per minute for the hit ratio
// (minutes without hits or misses have no point). Geometry and drawing are pure.

import { formatBytes, formatPercent } from '../format.js';
import { html, type Html } from './html.js';
import type { MinuteSample } from './traffic-history.js';

export const chartSize = { width: 720, height: 240, left: 64, right: 48, top: 16, bottom: 28 } as const;

export interface Bar {
  x: number;
  y: number;
  width: number;
  height: number;
  sample: MinuteSample;
}

export interface RatioPoint {
  x: number;
  y: number;
  ratio: number;
  sample: MinuteSample;
}

export interface ChartGeometry {
  bars: Bar[];
  points: RatioPoint[];
  /** Bytes served in the busiest minute (the bars' scale). */
  maxBytes: number;
}

const minuteMs = 60_000;
const round = (n: number) => Math.round(n * 10) / 10;

/** Where each sample of the window ending at `now` (`minutes` long) is drawn. */
export function chartGeometry(samples: readonly MinuteSample[], now: number, minutes: number): ChartGeometry {
  const { width, height, left, right, top, bottom } = chartSize;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const first = Math.floor(now / minuteMs) * minuteMs - (minutes - 1) * minuteMs;
  const slot = plotW / minutes;
  const inWindow = samples.filter((s) => s.minute >= first && s.minute < first + minutes * minuteMs);
  const maxBytes = Math.max(0, ...inWindow.map((s) => s.bytesServed));
  const bars: Bar[] = [];
  const points: RatioPoint[] = [];
  for (const s of inWindow) {
    const i = Math.round((s.minute - first) / minuteMs);
    const cx = left + (i + 0.5) * slot;
    if (s.bytesServed > 0 && maxBytes > 0) {
      const h = Math.max(1, (s.bytesServed / maxBytes) * plotH);
      bars.push({ x: round(cx - slot * 0.35), y: round(top + plotH - h), width: round(slot * 0.7), height: round(h), sample: s });
    }
    const lookups = s.hits + s.misses;
    if (lookups > 0) {
      const ratio = s.hits / lookups;
      points.push({ x: round(cx), y: round(top + (1 - ratio) * plotH), ratio, sample: s });
    }
  }
  return { bars, points, maxBytes };
}

function clock(ms: number): string {
  return new Date(ms).toISOString().slice(11, 16);
}

/** The chart as an <svg> element with a title and description for assistive technology. */
export function trafficChart(samples: readonly MinuteSample[], now: number, minutes: number): Html {
  const { width, height, left, right, top, bottom } = chartSize;
  const g = chartGeometry(samples, now, minutes);
  const plotH = height - top - bottom;
  const xEnd = width - right;
  const yEnd = top + plotH;
  const line = g.points.map((p) => `${p.x},${p.y}`).join(' ');
  const desc = g.points.length === 0 && g.bars.length === 0 ? 'No traffic in the last hour.' : `${g.bars.length} minutes with bytes served, ${g.points.length} with cache lookups; busiest minute ${formatBytes(g.maxBytes)}.`;
  return html`<svg class="chart" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" aria-labelledby="chart-title chart-desc" xmlns="http://www.w3.org/2000/svg">
<title id="chart-title">Traffic and hit ratio, last ${minutes} minutes</title>
<desc id="chart-desc">${desc}</desc>
<line class="axis" x1="${left}" y1="${yEnd}" x2="${xEnd}" y2="${yEnd}"/>
<line class="grid" x1="${left}" y1="${top}" x2="${xEnd}" y2="${top}"/>
<line class="grid" x1="${left}" y1="${top + plotH / 2}" x2="${xEnd}" y2="${top + plotH / 2}"/>
<text class="label" x="${left - 6}" y="${top + 4}" text-anchor="end">${formatBytes(g.maxBytes)}</text>
<text class="label" x="${left - 6}" y="${yEnd}" text-anchor="end">0</text>
<text class="label ratio-label" x="${xEnd + 6}" y="${top + 4}">100%</text>
<text class="label ratio-label" x="${xEnd + 6}" y="${yEnd}">0%</text>
<text class="label" x="${left}" y="${height - 8}">${minutes} min ago</text>
<text class="label" x="${xEnd}" y="${height - 8}" text-anchor="end">now (${clock(now)} UTC)</text>
${g.bars.map((b) => html`<rect class="bar" x="${b.x}" y="${b.y}" width="${b.width}" height="${b.height}"><title>${clock(b.sample.minute)}: ${formatBytes(b.sample.bytesServed)} served, ${formatBytes(b.sample.bytesFromUpstream)} from upstreams</title></rect>
`)}${g.points.length > 1 ? html`<polyline class="ratio" points="${line}"/>
` : ''}${g.points.map((p) => html`<circle class="point" cx="${p.x}" cy="${p.y}" r="3"><title>${clock(p.sample.minute)}: hit ratio ${formatPercent(p.sample.hits, p.sample.hits + p.sample.misses)} (${p.sample.hits} hits, ${p.sample.misses} misses)</title></circle>
`)}</svg>`;
}
