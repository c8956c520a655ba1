// The bench's results: the JSON shape written under bench/results/, the target checks from
// issues 7 and 14, and the Markdown table printed at the end (pasteable into README and
// issues). Every target is checked and printed, met or missed: a miss shows as MISS in the
// table's last column and in the list under it, never left out.

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

/** One server in one cold blob row: medians over BENCH_REPEAT runs, each on fresh caches. */
export interface ColdBlobFigures {
  /** Median wall time, ms: from the first request to the last byte of the last client. */
  ms: number;
  runs: number[];
  /** Median MiB/s of all bytes delivered to the clients (total bytes / wall time). */
  mibps: number;
  /**
   * Median CPU time (user + system) of the serving process, ms: from before the first request
   * until the cache held every blob (distribution stores a cold blob in the background).
   */
  cpuMs: number;
  cpuRuns: number[];
  /** Caches: median ms from the first request until the cache held every blob. */
  settledMs?: number;
  /** Caches: upstream GETs per blob (from the upstream's access log), lowest and highest over blobs and runs. */
  minGetsPerBlob?: number;
  maxGetsPerBlob?: number;
  /** Client requests that failed, highest run (distribution's proxy only: ours and the upstream must not fail). */
  failedRequests?: number;
}

/**
 * A cold blob row: `clients` clients GETting one cold blob at once ("same-blob"), or
 * `blobs` different cold blobs at once, one client each ("different-blobs").
 */
export interface ColdBlobRow {
  /** sameBlob<clients> or manyBlobs<blobs>: the key of its ratios and its RSS phase (blob-cold-<id>). */
  id: string;
  kind: 'same-blob' | 'different-blobs';
  clients: number;
  blobs: number;
  /** Size of each blob (the layer as stored), MiB. */
  blobMiB: number;
  /** Bytes delivered per run when every request succeeds, MiB. */
  totalMiB: number;
  mirror: ColdBlobFigures;
  distribution: ColdBlobFigures;
  direct: ColdBlobFigures;
}

export interface Target {
  name: string;
  /** The issue that set it. */
  issue: number;
  /** Which table row it belongs to (shown in the table's targets column). */
  row: string;
  /** The target in a few words, for the table. */
  short: string;
  value: number;
  target: string;
  pass: boolean;
}

export interface BenchResult {
  /** 2: coldBlobs rows replace blobColdMiBps; targets carry issue, row and short. */
  version: 2;
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
    coldClients: number[];
    manyBlobs: number;
    manyBlobMiB: number;
    pulls: number;
    connections: number;
    seconds: number;
    warmupSeconds: number;
    repeat: number;
    rounds: number;
    client: string;
    /** What estimateSeconds() predicted for this run (bench/params.ts). */
    estimatedSeconds: number;
  };
  /** (1) */
  coldPull: Record<'mirror' | 'distribution' | 'direct', Timed>;
  /** (2) */
  warmPull: Record<'mirror' | 'distribution' | 'direct', Timed>;
  blobWarmMiBps: { one: Record<Role, number>; many: Record<Role, number> };
  /** Upstream requests for the blob while the caches served it warm (should be 0). */
  blobWarmUpstreamRequests: Record<'mirror' | 'distribution', number>;
  /** CPU time of the serving process per GiB served (less noisy than MiB/s on a shared machine). */
  blobWarmCpuMsPerGiB: { one: Record<Role, number>; many: Record<Role, number> };
  /** (1) continued: cold blob rows, one per BENCH_COLD_CLIENTS count, then the many-blobs row. */
  coldBlobs: ColdBlobRow[];
  /** (3) */
  concurrentColdPulls: Record<'mirror' | 'distribution' | 'direct', ConcurrentPulls>;
  /** (4) */
  manifestByTag: Record<'mirror' | 'distribution' | 'direct', ManifestLoad>;
  /** (5) MiB; per phase and overall. */
  rss: Record<string, { peakMiB: number; byPhaseMiB: Record<string, number> }>;
  rssMethod: string;
  /** Mirror peak RSS over the phases that move the big blob (warm, and every cold blob row). */
  mirrorRssMovingBlobMiB: number;
  ratios: Record<string, number>;
  targets: Target[];
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

/** The key of a cold blob row's ratio in `ratios`, e.g. coldSameBlob16CpuMirrorToDistribution. */
export function coldRowKey(row: ColdBlobRow, what: 'WallMirrorToDistribution' | 'CpuMirrorToDistribution' | 'WallMirrorToDirect'): string {
  return `cold${row.id[0]!.toUpperCase()}${row.id.slice(1)}${what}`;
}

export function computeRatios(r: BenchResult): Record<string, number> {
  const out: Record<string, number> = {
    coldMirrorToDirect: ratio(r.coldPull.mirror.ms, r.coldPull.direct.ms),
    coldMirrorToDistribution: ratio(r.coldPull.mirror.ms, r.coldPull.distribution.ms),
    coldCpuMirrorToDistribution: ratio(r.coldPull.mirror.cpuMs, r.coldPull.distribution.cpuMs),
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
  for (const row of r.coldBlobs) {
    out[coldRowKey(row, 'WallMirrorToDistribution')] = ratio(row.mirror.ms, row.distribution.ms);
    out[coldRowKey(row, 'CpuMirrorToDistribution')] = ratio(row.mirror.cpuMs, row.distribution.cpuMs);
    out[coldRowKey(row, 'WallMirrorToDirect')] = ratio(row.mirror.ms, row.direct.ms);
  }
  return out;
}

/** Every target of issues 7 and 14, met or not. A figure that could not be measured (NaN) is a miss. */
export function checkTargets(r: BenchResult): Target[] {
  const q = r.ratios;
  const out: Target[] = [];
  const atMost = (issue: number, row: string, name: string, ref: string, value: number | undefined, limit: number) =>
    out.push({ name, issue, row, short: `<= ${limit.toFixed(1)}x ${ref}`, value: value ?? NaN, target: `<= ${limit.toFixed(1)}`, pass: (value ?? NaN) <= limit });
  const atLeast = (issue: number, row: string, name: string, ref: string, value: number | undefined, limit: number) =>
    out.push({ name, issue, row, short: `>= ${limit.toFixed(1)}x ${ref}`, value: value ?? NaN, target: `>= ${limit.toFixed(1)}`, pass: (value ?? NaN) >= limit });

  // Issue 7 (its warm 1-client >= 1.0x distribution and cold pull <= 1.1x direct were
  // replaced by issue 14's >= 0.9x and <= 1.5x below).
  atLeast(7, 'warmBlobMany', `warm blob throughput, ${r.params.clients} clients, mirror/distribution`, 'dist.', q.blobManyMirrorToDistribution, 1.0);
  atLeast(7, 'warmBlobOne', 'warm blob throughput, 1 client, mirror/static', 'static', q.blobOneMirrorToStatic, 0.7);
  atLeast(7, 'warmBlobMany', `warm blob throughput, ${r.params.clients} clients, mirror/static`, 'static', q.blobManyMirrorToStatic, 0.7);
  const c = r.concurrentColdPulls.mirror;
  out.push({
    name: `${r.params.pulls} concurrent cold pulls, mirror upstream GETs per blob (max)`,
    issue: 7,
    row: 'concurrentGets',
    short: '== 1',
    value: c.maxGetsPerBlob ?? NaN,
    target: '== 1',
    pass: c.maxGetsPerBlob === 1 && c.minGetsPerBlob === 1,
  });
  atLeast(7, 'manifest', 'manifest by tag req/s, mirror/distribution', 'dist.', q.manifestRpsMirrorToDistribution, 2.0);
  out.push({
    name: 'mirror peak RSS moving the blob (MiB)',
    issue: 7,
    row: 'rssBlob',
    short: '<= 150 MiB',
    value: r.mirrorRssMovingBlobMiB,
    target: '<= 150',
    pass: r.mirrorRssMovingBlobMiB <= 150,
  });

  // Issue 14: the cold path at distribution's speed and comparable CPU.
  atMost(14, 'coldPull', 'cold pull, 3 layers, wall mirror/distribution', 'dist.', q.coldMirrorToDistribution, 1.0);
  atMost(14, 'coldPullCpu', 'cold pull, 3 layers, server CPU mirror/distribution', 'dist.', q.coldCpuMirrorToDistribution, 1.3);
  atMost(14, 'coldPull', 'cold pull, 3 layers, wall mirror/direct', 'direct', q.coldMirrorToDirect, 1.5);
  for (const row of r.coldBlobs) {
    atMost(14, `cold:${row.id}`, `${coldRowName(row)}, wall mirror/distribution`, 'dist.', q[coldRowKey(row, 'WallMirrorToDistribution')], 1.0);
    atMost(14, `coldCpu:${row.id}`, `${coldRowName(row)}, server CPU mirror/distribution`, 'dist.', q[coldRowKey(row, 'CpuMirrorToDistribution')], 1.3);
  }
  const gets = r.coldBlobs.map((row) => row.mirror);
  const maxGets = Math.max(...gets.map((g) => g.maxGetsPerBlob ?? NaN));
  out.push({
    name: 'cold blob rows, mirror upstream GETs per blob (max)',
    issue: 14,
    row: 'coldGets',
    short: '== 1',
    value: maxGets,
    target: '== 1',
    pass: gets.length > 0 && gets.every((g) => g.minGetsPerBlob === 1 && g.maxGetsPerBlob === 1),
  });
  atLeast(14, 'warmBlobOne', 'warm blob throughput, 1 client, mirror/distribution', 'dist.', q.blobOneMirrorToDistribution, 0.9);
  return out;
}

/** "cold 1024 MiB blob, 16 clients at once" / "8 cold 128 MiB blobs at once, 1 client each" */
export function coldRowName(row: Pick<ColdBlobRow, 'kind' | 'clients' | 'blobs' | 'blobMiB'>): string {
  const mib = fmt(row.blobMiB, row.blobMiB < 10 ? 1 : 0);
  if (row.kind === 'different-blobs') return `${row.blobs} cold ${mib} MiB blobs at once, 1 client each`;
  return `cold ${mib} MiB blob, ${row.clients === 1 ? '1 client' : `${row.clients} clients at once`}`;
}

/** "1 / 4 / 16 clients / 8 blobs": the cold rows in order, for the compact lines. */
function coldRowsLabel(r: BenchResult): string {
  const same = r.coldBlobs.filter((row) => row.kind === 'same-blob').map((row) => row.clients);
  const many = r.coldBlobs.filter((row) => row.kind === 'different-blobs').map((row) => `${row.blobs} blobs`);
  return [...(same.length ? [`${same.join(' / ')} client${same.length === 1 && same[0] === 1 ? '' : 's'}`] : []), ...many].join(' / ');
}

const dash = '–';

function fmt(v: number | undefined, digits = 1): string {
  if (v === undefined || !Number.isFinite(v)) return dash;
  return v.toFixed(digits);
}

function x(v: number | undefined): string {
  return v === undefined || !Number.isFinite(v) ? dash : `${v.toFixed(2)}x`;
}

function span(c: { minGetsPerBlob?: number; maxGetsPerBlob?: number }): string {
  if (c.minGetsPerBlob === undefined || c.maxGetsPerBlob === undefined) return dash;
  return c.minGetsPerBlob === c.maxGetsPerBlob ? `${c.minGetsPerBlob}` : `${c.minGetsPerBlob}–${c.maxGetsPerBlob}`;
}

/** The results as a Markdown table (last column: the row's targets, MISS when missed) plus the target list. */
export function renderTable(r: BenchResult): string {
  const p = r.params;
  const q = r.ratios;
  const targetsOf = (row: string): string =>
    r.targets
      .filter((t) => t.row === row)
      .map((t) => `${t.pass ? 'ok' : 'MISS'} ${t.short} (#${t.issue})`)
      .join('; ') || dash;
  const rows: string[][] = [
    ['', 'mirror', 'distribution proxy', 'direct (upstream)', 'static file server', 'mirror / distribution', 'mirror / direct', 'mirror / static', 'targets'],
    [`1. cold pull, ${fmt(p.imageMiB, 0)} MiB in 3 layers (s)`, fmt(r.coldPull.mirror.ms / 1000, 2), fmt(r.coldPull.distribution.ms / 1000, 2), fmt(r.coldPull.direct.ms / 1000, 2), dash, x(q.coldMirrorToDistribution), x(q.coldMirrorToDirect), dash, targetsOf('coldPull')],
    ['   server CPU per cold pull (ms)', fmt(r.coldPull.mirror.cpuMs, 0), fmt(r.coldPull.distribution.cpuMs, 0), fmt(r.coldPull.direct.cpuMs, 0), dash, x(q.coldCpuMirrorToDistribution), x(ratioOf(r.coldPull.mirror.cpuMs, r.coldPull.direct.cpuMs)), dash, targetsOf('coldPullCpu')],
  ];
  for (const row of r.coldBlobs) {
    rows.push([`   ${coldRowName(row)} (s)`, fmt(row.mirror.ms / 1000, 2), fmt(row.distribution.ms / 1000, 2), fmt(row.direct.ms / 1000, 2), dash, x(q[coldRowKey(row, 'WallMirrorToDistribution')]), x(q[coldRowKey(row, 'WallMirrorToDirect')]), dash, targetsOf(`cold:${row.id}`)]);
    rows.push(['     server CPU until stored (ms)', fmt(row.mirror.cpuMs, 0), fmt(row.distribution.cpuMs, 0), fmt(row.direct.cpuMs, 0), dash, x(q[coldRowKey(row, 'CpuMirrorToDistribution')]), x(ratioOf(row.mirror.cpuMs, row.direct.cpuMs)), dash, targetsOf(`coldCpu:${row.id}`)]);
  }
  if (r.coldBlobs.length) {
    const label = coldRowsLabel(r);
    const each = (f: (row: ColdBlobRow) => string) => r.coldBlobs.map(f).join(' / ');
    rows.push([`   cold blobs, ${label}: MiB/s delivered`, each((row) => fmt(row.mirror.mibps, 0)), each((row) => fmt(row.distribution.mibps, 0)), each((row) => fmt(row.direct.mibps, 0)), dash, dash, dash, dash, dash]);
    rows.push([`   cold blobs, ${label}: stored after (s)`, each((row) => fmt((row.mirror.settledMs ?? NaN) / 1000, 2)), each((row) => fmt((row.distribution.settledMs ?? NaN) / 1000, 2)), dash, dash, dash, dash, dash, dash]);
    rows.push([`   cold blobs, ${label}: upstream GETs per blob`, each((row) => span(row.mirror)), each((row) => span(row.distribution)), each((row) => `${row.kind === 'same-blob' ? row.clients : 1}`), dash, dash, dash, dash, targetsOf('coldGets')]);
    rows.push([`   cold blobs, ${label}: failed requests`, each(() => '0'), each((row) => `${row.distribution.failedRequests ?? 0}`), each(() => '0'), dash, dash, dash, dash, dash]);
  }
  rows.push(
    ['2. warm pull of the same (s)', fmt(r.warmPull.mirror.ms / 1000, 2), fmt(r.warmPull.distribution.ms / 1000, 2), fmt(r.warmPull.direct.ms / 1000, 2), dash, x(q.warmPullMirrorToDistribution), x(q.warmPullMirrorToDirect), dash, dash],
    [`   warm ${fmt(p.blobMiB, 0)} MiB blob, 1 client (MiB/s)`, fmt(r.blobWarmMiBps.one.mirror, 0), fmt(r.blobWarmMiBps.one.distribution, 0), fmt(r.blobWarmMiBps.one.direct, 0), fmt(r.blobWarmMiBps.one.static, 0), x(q.blobOneMirrorToDistribution), x(ratioOf(r.blobWarmMiBps.one.mirror, r.blobWarmMiBps.one.direct)), x(q.blobOneMirrorToStatic), targetsOf('warmBlobOne')],
    [`   warm ${fmt(p.blobMiB, 0)} MiB blob, ${p.clients} clients (MiB/s, total)`, fmt(r.blobWarmMiBps.many.mirror, 0), fmt(r.blobWarmMiBps.many.distribution, 0), fmt(r.blobWarmMiBps.many.direct, 0), fmt(r.blobWarmMiBps.many.static, 0), x(q.blobManyMirrorToDistribution), x(ratioOf(r.blobWarmMiBps.many.mirror, r.blobWarmMiBps.many.direct)), x(q.blobManyMirrorToStatic), targetsOf('warmBlobMany')],
    [`   server CPU per GiB, 1 / ${p.clients} clients (ms)`, cpuPair(r, 'mirror'), cpuPair(r, 'distribution'), cpuPair(r, 'direct'), cpuPair(r, 'static'), x(ratioOf(r.blobWarmCpuMsPerGiB.many.mirror, r.blobWarmCpuMsPerGiB.many.distribution)), dash, x(ratioOf(r.blobWarmCpuMsPerGiB.many.mirror, r.blobWarmCpuMsPerGiB.many.static)), dash],
    [`3. ${p.pulls} concurrent cold pulls (s)`, fmt(r.concurrentColdPulls.mirror.ms / 1000, 2), fmt(r.concurrentColdPulls.distribution.ms / 1000, 2), fmt(r.concurrentColdPulls.direct.ms / 1000, 2), dash, x(q.concurrentMirrorToDistribution), x(q.concurrentMirrorToDirect), dash, dash],
    ['   upstream GETs per blob', span(r.concurrentColdPulls.mirror), span(r.concurrentColdPulls.distribution), `${p.pulls}`, dash, dash, dash, dash, targetsOf('concurrentGets')],
    ['   failed pulls', '0', `${r.concurrentColdPulls.distribution.failedPulls ?? 0}`, '0', dash, dash, dash, dash, dash],
    [`4. manifest by tag, ${p.connections} connections (req/s)`, fmt(r.manifestByTag.mirror.rps, 0), fmt(r.manifestByTag.distribution.rps, 0), fmt(r.manifestByTag.direct.rps, 0), dash, x(q.manifestRpsMirrorToDistribution), x(ratioOf(r.manifestByTag.mirror.rps, r.manifestByTag.direct.rps)), dash, targetsOf('manifest')],
    ['   latency p50 / p99 (ms)', `${fmt(r.manifestByTag.mirror.p50Ms)} / ${fmt(r.manifestByTag.mirror.p99Ms)}`, `${fmt(r.manifestByTag.distribution.p50Ms)} / ${fmt(r.manifestByTag.distribution.p99Ms)}`, `${fmt(r.manifestByTag.direct.p50Ms)} / ${fmt(r.manifestByTag.direct.p99Ms)}`, dash, dash, dash, dash, dash],
    ['   upstream requests during the run', `${r.manifestByTag.mirror.upstreamRequests}`, `${r.manifestByTag.distribution.upstreamRequests}`, dash, dash, dash, dash, dash, dash],
    ['5. peak RSS over the run (MiB)', fmt(r.rss.mirror?.peakMiB, 0), fmt(r.rss.distribution?.peakMiB, 0), fmt(r.rss.upstream?.peakMiB, 0), fmt(r.rss.static?.peakMiB, 0), x(ratioOf(r.rss.mirror?.peakMiB, r.rss.distribution?.peakMiB)), dash, dash, dash],
    ['   peak RSS moving the blob (MiB)', fmt(r.mirrorRssMovingBlobMiB, 0), fmt(blobPhasesPeak(r, 'distribution'), 0), fmt(blobPhasesPeak(r, 'upstream'), 0), fmt(blobPhasesPeak(r, 'static'), 0), x(ratioOf(r.mirrorRssMovingBlobMiB, blobPhasesPeak(r, 'distribution'))), dash, dash, targetsOf('rssBlob')],
  );
  if (r.coldBlobs.length) {
    const each = (role: string) => r.coldBlobs.map((row) => fmt(r.rss[role]?.byPhaseMiB[coldBlobPhase(row.id)], 0)).join(' / ');
    rows.push([`   peak RSS, cold blobs, ${coldRowsLabel(r)} (MiB)`, each('mirror'), each('distribution'), each('upstream'), dash, dash, dash, dash, dash]);
  }
  const last = rows[0]!.length - 1;
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  const line = (row: string[]) => `| ${row.map((c, i) => (i === 0 || i === last ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  const out = [line(rows[0]!), `|${widths.map((w, i) => (i === 0 || i === last ? ':' + '-'.repeat(w + 1) : '-'.repeat(w + 1) + ':')).join('|')}|`, ...rows.slice(1).map(line)];
  out.push('');
  const missed = r.targets.filter((t) => !t.pass).length;
  out.push(`Targets (issues 7 and 14): ${r.targets.length - missed} met, ${missed} missed`);
  for (const t of r.targets) out.push(`- ${t.pass ? 'PASS' : 'MISS'} [#${t.issue}] ${t.name}: ${fmt(t.value, 2)} (target ${t.target})`);
  return out.join('\n');
}

/** The RSS phase of a cold blob row. */
export function coldBlobPhase(id: string): string {
  return `blob-cold-${id}`;
}

/** Phases that move the big blob(s): the warm blob runs and every cold blob row. */
export function isBlobPhase(phase: string): boolean {
  return phase === 'blob-warm' || phase.startsWith('blob-cold-');
}

export function blobPhasesPeak(r: BenchResult, role: string): number {
  const v = Object.entries(r.rss[role]?.byPhaseMiB ?? {})
    .filter(([p]) => isBlobPhase(p))
    .map(([, n]) => n);
  return v.length ? Math.max(...v) : NaN;
}

function cpuPair(r: BenchResult, role: Role): string {
  return `${fmt(r.blobWarmCpuMsPerGiB.one[role], 0)} / ${fmt(r.blobWarmCpuMsPerGiB.many[role], 0)}`;
}

function ratioOf(a: number | undefined, b: number | undefined): number {
  return a === undefined || b === undefined ? NaN : ratio(a, b);
}
