// The bench's results: the JSON shape written under bench/results/, the target checks from
// issues 7, 14 and 15, and the Markdown table printed at the end (pasteable into README and
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

/** (6) One kind of pull in the S3 section, one cache: medians over the section's rounds. */
export interface S3Pull {
  /** Median wall time of the pull, ms (the client's, as in (1)). */
  ms: number;
  runs: number[];
  /** Median CPU of the cache process: for a cold pull until every blob is at its final key. */
  cpuMs: number;
  /** Median CPU of the S3 service (RGW + OSD) over the same span. */
  serviceCpuMs: number;
  /** S3 requests the cache made, per blob of the image, by method (GET HEAD LIST PUT POST DELETE) and total. */
  requestsPerBlob: Record<string, number>;
  /** The same by RGW's operation name (ops log): get_obj (GET and HEAD), list_bucket, put_obj, copy_obj, ... */
  operationsPerBlob: Record<string, number>;
}

export interface S3Figures {
  cold: S3Pull & {
    /** Median ms from the first request until every blob was at its final key. */
    settledMs: number;
    /** Object bytes written to S3 (uploaded + copied inside the service) / bytes of the image's blobs. */
    bytesWrittenPerBlobByte: number;
    bytesWrittenRuns: number[];
    bytesUploadedPerBlobByte: number;
    bytesCopiedPerBlobByte: number;
  };
  /** Warm pull by a fresh client, blobs streamed by the cache from the bucket. */
  warm: S3Pull;
  /** Warm pull by a fresh client following 307s to presigned RGW URLs. */
  redirect: S3Pull & { clientGetsPerBlob: number };
}

/** (6): registry-mirror and distribution's proxy, each on its own bucket of one Ceph RGW. */
export interface S3Result {
  objectStore: 'memstore' | 'bluestore';
  /** From spawning Ceph to RGW's S3 user ready, ms. */
  cephStartMs: number;
  repeat: number;
  /** Multipart part size of both caches, MiB. */
  partMiB: number;
  /** Blobs of the pulled image (config + layers) and their bytes. */
  blobs: number;
  blobMiB: number;
  requestsMethod: string;
  bytesMethod: string;
  mirror: S3Figures;
  distribution: S3Figures;
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

/** The figures of (1)-(5), absent when only the S3 section ran (BENCH_S3=only). */
export interface MainFigures {
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
  /** Mirror peak RSS over the phases that move the big blob (warm, and every cold blob row). */
  mirrorRssMovingBlobMiB: number;
}

export interface BenchResult extends Partial<MainFigures> {
  /**
   * 3: `sections`; the figures of (1)-(5) are absent when only (6) ran; `s3` (6); targets of
   * issue 15. 2: coldBlobs rows replace blobColdMiBps; targets carry issue, row and short.
   */
  version: 3;
  /** What ran: "main" is (1)-(5), "s3" is (6). */
  sections: Array<'main' | 's3'>;
  startedAt: string;
  finishedAt: string;
  seconds: number;
  machine: { cpus: number; cpuModel: string; memMiB: number; kernel: string; loadavgStart: number[]; loadavgEnd: number[] };
  software: { node: string; distribution: string; mirror: string; autocannon: string; ceph?: string };
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
  /** (6) */
  s3?: S3Result;
  /** (5) MiB; per phase and overall (the S3 section's caches as mirror-s3 / distribution-s3, its rgw and osd). */
  rss: Record<string, { peakMiB: number; byPhaseMiB: Record<string, number> }>;
  rssMethod: string;
  ratios: Record<string, number>;
  targets: Target[];
}

type WithMain = BenchResult & MainFigures;

export function hasMain(r: BenchResult): r is WithMain {
  return r.sections.includes('main') && r.coldPull !== undefined;
}

export function ratio(a: number, b: number): number {
  return b > 0 ? round(a / b, 2) : NaN;
}

export function round(v: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

/** The items starting at index `by` (mod length): the order servers are measured in, per run. */
export function rotate<T>(items: readonly T[], by: number): T[] {
  const k = by % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
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
  const out: Record<string, number> = hasMain(r) ? mainRatios(r) : {};
  const s3 = r.s3;
  if (s3) {
    out.s3ColdMirrorToDistribution = ratio(s3.mirror.cold.ms, s3.distribution.cold.ms);
    out.s3ColdCpuMirrorToDistribution = ratio(s3.mirror.cold.cpuMs, s3.distribution.cold.cpuMs);
    out.s3WarmMirrorToDistribution = ratio(s3.mirror.warm.ms, s3.distribution.warm.ms);
    out.s3RedirectMirrorToDistribution = ratio(s3.mirror.redirect.ms, s3.distribution.redirect.ms);
    out.s3ColdRequestsMirrorToDistribution = ratio(s3.mirror.cold.requestsPerBlob.total!, s3.distribution.cold.requestsPerBlob.total!);
    out.s3WarmRequestsMirrorToDistribution = ratio(s3.mirror.warm.requestsPerBlob.total!, s3.distribution.warm.requestsPerBlob.total!);
    out.s3BytesWrittenMirrorToDistribution = ratio(s3.mirror.cold.bytesWrittenPerBlobByte, s3.distribution.cold.bytesWrittenPerBlobByte);
  }
  return out;
}

function mainRatios(r: WithMain): Record<string, number> {
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

/** Every target of issues 7, 14 and 15, met or not. A figure that could not be measured (NaN) is a miss. */
export function checkTargets(r: BenchResult): Target[] {
  const out: Target[] = hasMain(r) ? mainTargets(r) : [];
  const s3 = r.s3;
  if (s3) {
    const q = r.ratios;
    const t = targetHelpers(out);
    // Issue 15, item 9: written once, warm at least as fast as distribution, cold no slower.
    const written = s3.mirror.cold.bytesWrittenPerBlobByte;
    out.push({
      name: 'S3: bytes written to S3 per byte of cold blob, mirror',
      issue: 15,
      row: 's3Bytes',
      short: '== 1.0x blob',
      value: written,
      target: '== 1.00',
      pass: round(written, 2) === 1,
    });
    t.atMost(15, 's3Warm', 'S3: warm pull, wall mirror/distribution (speed >= 1.0x)', 'dist.', q.s3WarmMirrorToDistribution, 1.0);
    t.atMost(15, 's3Redirect', 'S3: warm pull with redirect, wall mirror/distribution (speed >= 1.0x)', 'dist.', q.s3RedirectMirrorToDistribution, 1.0);
    t.atMost(15, 's3Cold', 'S3: cold pull, wall mirror/distribution', 'dist.', q.s3ColdMirrorToDistribution, 1.0);
  }
  return out;
}

function targetHelpers(out: Target[]) {
  return {
    atMost: (issue: number, row: string, name: string, ref: string, value: number | undefined, limit: number) =>
      out.push({ name, issue, row, short: `<= ${limit.toFixed(1)}x ${ref}`, value: value ?? NaN, target: `<= ${limit.toFixed(1)}`, pass: (value ?? NaN) <= limit }),
    atLeast: (issue: number, row: string, name: string, ref: string, value: number | undefined, limit: number) =>
      out.push({ name, issue, row, short: `>= ${limit.toFixed(1)}x ${ref}`, value: value ?? NaN, target: `>= ${limit.toFixed(1)}`, pass: (value ?? NaN) >= limit }),
  };
}

function mainTargets(r: WithMain): Target[] {
  const q = r.ratios;
  const out: Target[] = [];
  const { atMost, atLeast } = targetHelpers(out);

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
function coldRowsLabel(r: WithMain): string {
  const same = r.coldBlobs.filter((row) => row.kind === 'same-blob').map((row) => row.clients);
  const many = r.coldBlobs.filter((row) => row.kind === 'different-blobs').map((row) => `${row.blobs} blobs`);
  return [...(same.length ? [`${same.join(' / ')} client${same.length === 1 && same[0] === 1 ? '' : 's'}`] : []), ...many].join(' / ');
}

export const dash = '–';

export function fmt(v: number | undefined, digits = 1): string {
  if (v === undefined || !Number.isFinite(v)) return dash;
  return v.toFixed(digits);
}

export function x(v: number | undefined): string {
  return v === undefined || !Number.isFinite(v) ? dash : `${v.toFixed(2)}x`;
}

function span(c: { minGetsPerBlob?: number; maxGetsPerBlob?: number }): string {
  if (c.minGetsPerBlob === undefined || c.maxGetsPerBlob === undefined) return dash;
  return c.minGetsPerBlob === c.maxGetsPerBlob ? `${c.minGetsPerBlob}` : `${c.minGetsPerBlob}–${c.maxGetsPerBlob}`;
}

/** The results as a Markdown table (last column: the row's targets, MISS when missed) plus the target list. */
export function renderTable(r: BenchResult): string {
  const targetsOf = (row: string): string => targetsCell(r.targets, row);
  const rows: string[][] = [
    ['', 'mirror', 'distribution proxy', 'direct (upstream)', 'static file server', 'mirror / distribution', 'mirror / direct', 'mirror / static', 'targets'],
  ];
  if (hasMain(r)) rows.push(...mainRows(r, targetsOf));
  if (r.s3) rows.push(...s3Rows(r.s3, r, targetsOf));
  return [markdownTable(rows), '', targetList(r.targets)].join('\n');
}

/** Rows (the first is the header) as an aligned Markdown table: first and last columns left, the rest right. */
export function markdownTable(rows: string[][]): string {
  const last = rows[0]!.length - 1;
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  const line = (row: string[]) => `| ${row.map((c, i) => (i === 0 || i === last ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  return [line(rows[0]!), `|${widths.map((w, i) => (i === 0 || i === last ? ':' + '-'.repeat(w + 1) : '-'.repeat(w + 1) + ':')).join('|')}|`, ...rows.slice(1).map(line)].join('\n');
}

/** "Targets (issues ...): n met, m missed" and one PASS/MISS line per target. */
export function targetList(targets: Target[]): string {
  const missed = targets.filter((t) => !t.pass).length;
  const issues = [...new Set(targets.map((t) => t.issue))].sort((a, b) => a - b);
  const issueList = issues.length > 1 ? `${issues.slice(0, -1).join(', ')} and ${issues.at(-1)}` : `${issues[0] ?? '–'}`;
  const out = [`Targets (issue${issues.length > 1 ? 's' : ''} ${issueList}): ${targets.length - missed} met, ${missed} missed`];
  for (const t of targets) out.push(`- ${t.pass ? 'PASS' : 'MISS'} [#${t.issue}] ${t.name}: ${fmt(t.value, 2)} (target ${t.target})`);
  return out.join('\n');
}

/** The targets of one table row, for its last column: "ok <= 1 (#16)", "MISS ...", or a dash. */
export function targetsCell(targets: Target[], row: string): string {
  return (
    targets
      .filter((t) => t.row === row)
      .map((t) => `${t.pass ? 'ok' : 'MISS'} ${t.short} (#${t.issue})`)
      .join('; ') || dash
  );
}

function mainRows(r: WithMain, targetsOf: (row: string) => string): string[][] {
  const p = r.params;
  const q = r.ratios;
  const rows: string[][] = [
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
  return rows;
}

/** "GET / HEAD / LIST / PUT / POST / DELETE" counts of one cell. */
function byMethod(c: Record<string, number>): string {
  return S3_COLUMNS.map((m) => fmt(c[m], c[m] !== undefined && Number.isInteger(c[m]) ? 0 : 2)).join(' / ');
}

const S3_COLUMNS = ['GET', 'HEAD', 'LIST', 'PUT', 'POST', 'DELETE'] as const;

function s3Rows(s3: S3Result, r: BenchResult, targetsOf: (row: string) => string): string[][] {
  const q = r.ratios;
  const m = s3.mirror;
  const d = s3.distribution;
  const s = (ms: number) => fmt(ms / 1000, 2);
  const n = (v: number | undefined) => fmt(v, 2);
  const rows: string[][] = [
    [`6. S3 store (Ceph RGW, ${s3.objectStore}): cold pull, ${fmt(s3.blobMiB, 0)} MiB in ${s3.blobs} blobs (s)`, s(m.cold.ms), s(d.cold.ms), dash, dash, x(q.s3ColdMirrorToDistribution), dash, dash, targetsOf('s3Cold')],
    ['   stored in the bucket after (s)', s(m.cold.settledMs), s(d.cold.settledMs), dash, dash, x(ratioOf(m.cold.settledMs, d.cold.settledMs)), dash, dash, dash],
    ['   server CPU until stored (ms)', fmt(m.cold.cpuMs, 0), fmt(d.cold.cpuMs, 0), dash, dash, x(q.s3ColdCpuMirrorToDistribution), dash, dash, dash],
    ['   S3 service CPU, RGW + OSD (ms)', fmt(m.cold.serviceCpuMs, 0), fmt(d.cold.serviceCpuMs, 0), dash, dash, x(ratioOf(m.cold.serviceCpuMs, d.cold.serviceCpuMs)), dash, dash, dash],
    ['   bytes written to S3 per blob byte', n(m.cold.bytesWrittenPerBlobByte), n(d.cold.bytesWrittenPerBlobByte), dash, dash, x(q.s3BytesWrittenMirrorToDistribution), dash, dash, targetsOf('s3Bytes')],
    ['     of which uploaded / copied inside S3', `${n(m.cold.bytesUploadedPerBlobByte)} / ${n(m.cold.bytesCopiedPerBlobByte)}`, `${n(d.cold.bytesUploadedPerBlobByte)} / ${n(d.cold.bytesCopiedPerBlobByte)}`, dash, dash, dash, dash, dash, dash],
    ['   S3 requests per cold blob', n(m.cold.requestsPerBlob.total), n(d.cold.requestsPerBlob.total), dash, dash, x(q.s3ColdRequestsMirrorToDistribution), dash, dash, dash],
    [`     ${S3_COLUMNS.join(' / ')}`, byMethod(m.cold.requestsPerBlob), byMethod(d.cold.requestsPerBlob), dash, dash, dash, dash, dash, dash],
    ['   warm pull, fresh client (s)', s(m.warm.ms), s(d.warm.ms), dash, dash, x(q.s3WarmMirrorToDistribution), dash, dash, targetsOf('s3Warm')],
    ['     server CPU (ms)', fmt(m.warm.cpuMs, 0), fmt(d.warm.cpuMs, 0), dash, dash, x(ratioOf(m.warm.cpuMs, d.warm.cpuMs)), dash, dash, dash],
    ['     S3 requests per warm blob', n(m.warm.requestsPerBlob.total), n(d.warm.requestsPerBlob.total), dash, dash, x(q.s3WarmRequestsMirrorToDistribution), dash, dash, dash],
    [`     ${S3_COLUMNS.join(' / ')}`, byMethod(m.warm.requestsPerBlob), byMethod(d.warm.requestsPerBlob), dash, dash, dash, dash, dash, dash],
    ['   warm pull with redirect, 307 to RGW (s)', s(m.redirect.ms), s(d.redirect.ms), dash, dash, x(q.s3RedirectMirrorToDistribution), dash, dash, targetsOf('s3Redirect')],
    ['     S3 requests per blob by the cache', n(m.redirect.requestsPerBlob.total), n(d.redirect.requestsPerBlob.total), dash, dash, x(ratioOf(m.redirect.requestsPerBlob.total, d.redirect.requestsPerBlob.total)), dash, dash, dash],
    [`     ${S3_COLUMNS.join(' / ')}`, byMethod(m.redirect.requestsPerBlob), byMethod(d.redirect.requestsPerBlob), dash, dash, dash, dash, dash, dash],
    ['     client GETs at RGW per blob', n(m.redirect.clientGetsPerBlob), n(d.redirect.clientGetsPerBlob), dash, dash, dash, dash, dash, dash],
    ['   peak RSS in the S3 section (MiB)', fmt(r.rss['mirror-s3']?.peakMiB, 0), fmt(r.rss['distribution-s3']?.peakMiB, 0), dash, dash, x(ratioOf(r.rss['mirror-s3']?.peakMiB, r.rss['distribution-s3']?.peakMiB)), dash, dash, dash],
  ];
  return rows;
}

/** The RSS phase of a cold blob row. */
export function coldBlobPhase(id: string): string {
  return `blob-cold-${id}`;
}

/** Phases that move the big blob(s): the warm blob runs and every cold blob row. */
export function isBlobPhase(phase: string): boolean {
  return phase === 'blob-warm' || phase.startsWith('blob-cold-');
}

export function blobPhasesPeak(r: Pick<BenchResult, 'rss'>, role: string): number {
  const v = Object.entries(r.rss[role]?.byPhaseMiB ?? {})
    .filter(([p]) => isBlobPhase(p))
    .map(([, n]) => n);
  return v.length ? Math.max(...v) : NaN;
}

function cpuPair(r: WithMain, role: Role): string {
  return `${fmt(r.blobWarmCpuMsPerGiB.one[role], 0)} / ${fmt(r.blobWarmCpuMsPerGiB.many[role], 0)}`;
}

export function ratioOf(a: number | undefined, b: number | undefined): number {
  return a === undefined || b === undefined ? NaN : ratio(a, b);
}
