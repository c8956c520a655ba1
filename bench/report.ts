// The bench's results: the JSON shape written under bench/results/, the target checks from
// issue 7, and the Markdown table printed at the end (pasteable into README and issues).

export type Role = 'mirror' | 'distribution' | 'direct' | 'static';

export interface Timed {
  /** Median over the runs, ms. */
  ms: number;
  runs: number[];
  /** Median CPU time (user + system) the serving process spent on one pull, until it held the image. */
  cpuMs: number;
}

export interface ManifestLoad {
  rps: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  non2xx: number;
  errors: number;
  /** Requests the upstream registry received from this server during the run. */
  upstreamRequests: number;
}

export interface ConcurrentPulls {
  /** Median wall time over the rounds, ms. */
  ms: number;
  runs: number[];
  /** Upstream GETs per blob digest (config and layers); the highest of the rounds. */
  upstreamGetsPerBlob?: Record<string, number>;
  minGetsPerBlob?: number;
  maxGetsPerBlob?: number;
  /** Manifest requests (HEAD + GET) the upstream received from this cache (highest round). */
  upstreamManifestRequests?: number;
  /** Pulls that failed (distribution's proxy only; ours must not fail), highest round. */
  failedPulls?: number;
}

export interface BenchResult {
  version: 1;
  startedAt: string;
  finishedAt: string;
  seconds: number;
  machine: { cpus: number; cpuModel: string; memMiB: number; kernel: string; loadavgStart: number[]; loadavgEnd: number[] };
  software: { node: string; distribution: string; mirror: string; autocannon: string };
  params: {
    imageMiB: number;
    imageLayersMiB: number[];
    blobMiB: number;
    clients: number;
    pulls: number;
    connections: number;
    seconds: number;
    warmupSeconds: number;
    repeat: number;
    rounds: number;
    client: string;
  };
  /** (1) */
  coldPull: Record<'mirror' | 'distribution' | 'direct', Timed>;
  /** (2) */
  warmPull: Record<'mirror' | 'distribution' | 'direct', Timed>;
  blobColdMiBps: Record<'mirror' | 'distribution', number>;
  blobWarmMiBps: { one: Record<Role, number>; many: Record<Role, number> };
  /** Upstream requests for the blob while the caches served it warm (should be 0). */
  blobWarmUpstreamRequests: Record<'mirror' | 'distribution', number>;
  /** CPU time of the serving process per GiB served (less noisy than MiB/s on a shared machine). */
  blobWarmCpuMsPerGiB: { one: Record<Role, number>; many: Record<Role, number> };
  /** (3) */
  concurrentColdPulls: Record<'mirror' | 'distribution' | 'direct', ConcurrentPulls>;
  /** (4) */
  manifestByTag: Record<'mirror' | 'distribution' | 'direct', ManifestLoad>;
  /** (5) MiB; per phase and overall. */
  rss: Record<string, { peakMiB: number; byPhaseMiB: Record<string, number> }>;
  rssMethod: string;
  /** Mirror peak RSS over the phases that move the big blob. */
  mirrorRssMovingBlobMiB: number;
  ratios: Record<string, number>;
  targets: Array<{ name: string; value: number; target: string; pass: boolean }>;
}

export function ratio(a: number, b: number): number {
  return b > 0 ? round(a / b, 2) : NaN;
}

export function round(v: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function computeRatios(r: BenchResult): Record<string, number> {
  return {
    coldMirrorToDirect: ratio(r.coldPull.mirror.ms, r.coldPull.direct.ms),
    coldMirrorToDistribution: ratio(r.coldPull.mirror.ms, r.coldPull.distribution.ms),
    warmPullMirrorToDistribution: ratio(r.warmPull.mirror.ms, r.warmPull.distribution.ms),
    warmPullMirrorToDirect: ratio(r.warmPull.mirror.ms, r.warmPull.direct.ms),
    blobOneMirrorToDistribution: ratio(r.blobWarmMiBps.one.mirror, r.blobWarmMiBps.one.distribution),
    blobOneMirrorToStatic: ratio(r.blobWarmMiBps.one.mirror, r.blobWarmMiBps.one.static),
    blobManyMirrorToDistribution: ratio(r.blobWarmMiBps.many.mirror, r.blobWarmMiBps.many.distribution),
    blobManyMirrorToStatic: ratio(r.blobWarmMiBps.many.mirror, r.blobWarmMiBps.many.static),
    concurrentMirrorToDistribution: ratio(r.concurrentColdPulls.mirror.ms, r.concurrentColdPulls.distribution.ms),
    concurrentMirrorToDirect: ratio(r.concurrentColdPulls.mirror.ms, r.concurrentColdPulls.direct.ms),
    manifestRpsMirrorToDistribution: ratio(r.manifestByTag.mirror.rps, r.manifestByTag.distribution.rps),
  };
}

export function checkTargets(r: BenchResult): BenchResult['targets'] {
  const q = r.ratios;
  const t = (name: string, value: number, target: string, pass: boolean) => ({ name, value, target, pass });
  return [
    t('warm blob throughput, 1 client, mirror/distribution', q.blobOneMirrorToDistribution!, '>= 1.0', q.blobOneMirrorToDistribution! >= 1.0),
    t(`warm blob throughput, ${r.params.clients} clients, mirror/distribution`, q.blobManyMirrorToDistribution!, '>= 1.0', q.blobManyMirrorToDistribution! >= 1.0),
    t('warm blob throughput, 1 client, mirror/static', q.blobOneMirrorToStatic!, '>= 0.7', q.blobOneMirrorToStatic! >= 0.7),
    t(`warm blob throughput, ${r.params.clients} clients, mirror/static`, q.blobManyMirrorToStatic!, '>= 0.7', q.blobManyMirrorToStatic! >= 0.7),
    t('cold pull, mirror/direct', q.coldMirrorToDirect!, '<= 1.1', q.coldMirrorToDirect! <= 1.1),
    t(`${r.params.pulls} concurrent cold pulls, mirror upstream GETs per blob (max)`, r.concurrentColdPulls.mirror.maxGetsPerBlob!, '== 1', r.concurrentColdPulls.mirror.maxGetsPerBlob === 1 && r.concurrentColdPulls.mirror.minGetsPerBlob === 1),
    t('manifest by tag req/s, mirror/distribution', q.manifestRpsMirrorToDistribution!, '>= 2.0', q.manifestRpsMirrorToDistribution! >= 2.0),
    t('mirror peak RSS moving the blob (MiB)', r.mirrorRssMovingBlobMiB, '<= 150', r.mirrorRssMovingBlobMiB <= 150),
  ];
}

const dash = '–';

function fmt(v: number | undefined, digits = 1): string {
  if (v === undefined || !Number.isFinite(v)) return dash;
  return v.toFixed(digits);
}

function x(v: number | undefined): string {
  return v === undefined || !Number.isFinite(v) ? dash : `${v.toFixed(2)}x`;
}

function span(c: ConcurrentPulls): string {
  if (c.minGetsPerBlob === undefined) return dash;
  return c.minGetsPerBlob === c.maxGetsPerBlob ? `${c.minGetsPerBlob}` : `${c.minGetsPerBlob}–${c.maxGetsPerBlob}`;
}

/** The results as a Markdown table plus the target checks. */
export function renderTable(r: BenchResult): string {
  const p = r.params;
  const q = r.ratios;
  const rows: string[][] = [
    ['', 'mirror', 'distribution proxy', 'direct (upstream)', 'static file server', 'mirror / distribution', 'mirror / direct', 'mirror / static'],
    [`1. cold pull, ${fmt(p.imageMiB, 0)} MiB in 3 layers (s)`, fmt(r.coldPull.mirror.ms / 1000, 2), fmt(r.coldPull.distribution.ms / 1000, 2), fmt(r.coldPull.direct.ms / 1000, 2), dash, x(q.coldMirrorToDistribution), x(q.coldMirrorToDirect), dash],
    ['   server CPU per cold pull (ms)', fmt(r.coldPull.mirror.cpuMs, 0), fmt(r.coldPull.distribution.cpuMs, 0), fmt(r.coldPull.direct.cpuMs, 0), dash, x(ratioOf(r.coldPull.mirror.cpuMs, r.coldPull.distribution.cpuMs)), x(ratioOf(r.coldPull.mirror.cpuMs, r.coldPull.direct.cpuMs)), dash],
    ['2. warm pull of the same (s)', fmt(r.warmPull.mirror.ms / 1000, 2), fmt(r.warmPull.distribution.ms / 1000, 2), fmt(r.warmPull.direct.ms / 1000, 2), dash, x(q.warmPullMirrorToDistribution), x(q.warmPullMirrorToDirect), dash],
    [`   warm ${fmt(p.blobMiB, 0)} MiB blob, 1 client (MiB/s)`, fmt(r.blobWarmMiBps.one.mirror, 0), fmt(r.blobWarmMiBps.one.distribution, 0), fmt(r.blobWarmMiBps.one.direct, 0), fmt(r.blobWarmMiBps.one.static, 0), x(q.blobOneMirrorToDistribution), x(ratioOf(r.blobWarmMiBps.one.mirror, r.blobWarmMiBps.one.direct)), x(q.blobOneMirrorToStatic)],
    [`   warm ${fmt(p.blobMiB, 0)} MiB blob, ${p.clients} clients (MiB/s, total)`, fmt(r.blobWarmMiBps.many.mirror, 0), fmt(r.blobWarmMiBps.many.distribution, 0), fmt(r.blobWarmMiBps.many.direct, 0), fmt(r.blobWarmMiBps.many.static, 0), x(q.blobManyMirrorToDistribution), x(ratioOf(r.blobWarmMiBps.many.mirror, r.blobWarmMiBps.many.direct)), x(q.blobManyMirrorToStatic)],
    [`   server CPU per GiB, 1 / ${p.clients} clients (ms)`, cpuPair(r, 'mirror'), cpuPair(r, 'distribution'), cpuPair(r, 'direct'), cpuPair(r, 'static'), x(ratioOf(r.blobWarmCpuMsPerGiB.many.mirror, r.blobWarmCpuMsPerGiB.many.distribution)), dash, x(ratioOf(r.blobWarmCpuMsPerGiB.many.mirror, r.blobWarmCpuMsPerGiB.many.static))],
    [`   (cold ${fmt(p.blobMiB, 0)} MiB blob, 1 client (MiB/s))`, fmt(r.blobColdMiBps.mirror, 0), fmt(r.blobColdMiBps.distribution, 0), dash, dash, x(ratioOf(r.blobColdMiBps.mirror, r.blobColdMiBps.distribution)), dash, dash],
    [`3. ${p.pulls} concurrent cold pulls (s)`, fmt(r.concurrentColdPulls.mirror.ms / 1000, 2), fmt(r.concurrentColdPulls.distribution.ms / 1000, 2), fmt(r.concurrentColdPulls.direct.ms / 1000, 2), dash, x(q.concurrentMirrorToDistribution), x(q.concurrentMirrorToDirect), dash],
    ['   upstream GETs per blob', span(r.concurrentColdPulls.mirror), span(r.concurrentColdPulls.distribution), `${p.pulls}`, dash, dash, dash, dash],
    ['   failed pulls', '0', `${r.concurrentColdPulls.distribution.failedPulls ?? 0}`, '0', dash, dash, dash, dash],
    [`4. manifest by tag, ${p.connections} connections (req/s)`, fmt(r.manifestByTag.mirror.rps, 0), fmt(r.manifestByTag.distribution.rps, 0), fmt(r.manifestByTag.direct.rps, 0), dash, x(q.manifestRpsMirrorToDistribution), x(ratioOf(r.manifestByTag.mirror.rps, r.manifestByTag.direct.rps)), dash],
    ['   latency p50 / p99 (ms)', `${fmt(r.manifestByTag.mirror.p50Ms)} / ${fmt(r.manifestByTag.mirror.p99Ms)}`, `${fmt(r.manifestByTag.distribution.p50Ms)} / ${fmt(r.manifestByTag.distribution.p99Ms)}`, `${fmt(r.manifestByTag.direct.p50Ms)} / ${fmt(r.manifestByTag.direct.p99Ms)}`, dash, dash, dash, dash],
    ['   upstream requests during the run', `${r.manifestByTag.mirror.upstreamRequests}`, `${r.manifestByTag.distribution.upstreamRequests}`, dash, dash, dash, dash, dash],
    ['5. peak RSS over the run (MiB)', fmt(r.rss.mirror?.peakMiB, 0), fmt(r.rss.distribution?.peakMiB, 0), fmt(r.rss.upstream?.peakMiB, 0), fmt(r.rss.static?.peakMiB, 0), x(ratioOf(r.rss.mirror?.peakMiB, r.rss.distribution?.peakMiB)), dash, dash],
    ['   peak RSS moving the blob (MiB)', fmt(r.mirrorRssMovingBlobMiB, 0), fmt(blobPhasesPeak(r, 'distribution'), 0), fmt(blobPhasesPeak(r, 'upstream'), 0), fmt(blobPhasesPeak(r, 'static'), 0), x(ratioOf(r.mirrorRssMovingBlobMiB, blobPhasesPeak(r, 'distribution'))), dash, dash],
  ];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  const line = (row: string[]) => `| ${row.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  const out = [line(rows[0]!), `|${widths.map((w, i) => (i === 0 ? ':' + '-'.repeat(w + 1) : '-'.repeat(w + 1) + ':')).join('|')}|`, ...rows.slice(1).map(line)];
  out.push('');
  out.push('Targets (issue 7):');
  for (const t of r.targets) out.push(`- ${t.pass ? 'PASS' : 'MISS'} ${t.name}: ${fmt(t.value, 2)} (target ${t.target})`);
  return out.join('\n');
}

export const BLOB_PHASES = ['blob-cold', 'blob-warm'];

export function blobPhasesPeak(r: BenchResult, role: string): number {
  const by = r.rss[role]?.byPhaseMiB ?? {};
  const v = BLOB_PHASES.map((p) => by[p]).filter((n): n is number => n !== undefined);
  return v.length ? Math.max(...v) : NaN;
}

function cpuPair(r: BenchResult, role: Role): string {
  return `${fmt(r.blobWarmCpuMsPerGiB.one[role], 0)} / ${fmt(r.blobWarmCpuMsPerGiB.many[role], 0)}`;
}

function ratioOf(a: number | undefined, b: number | undefined): number {
  return a === undefined || b === undefined ? NaN : ratio(a, b);
}
