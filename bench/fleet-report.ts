// The Markdown tables of `npm run bench -- fleet` / `-- rollout` (bench/fleet.ts): items 8 and 9
// of issue 16, every target shown met or missed.
import type { FleetResult } from './fleet.js';
import { S3_METHODS } from './s3.js';
import { dash, fmt, markdownTable, ratioOf, targetList, targetsCell, x } from './report.js';

export function renderFleetTables(r: FleetResult): string {
  const out: string[] = [];
  const cell = (row: string) => targetsCell(r.targets, row);
  const s = (ms: number) => fmt(ms / 1000, 2);
  const span = (c: { minGetsPerBlob: number; maxGetsPerBlob: number }) => (c.minGetsPerBlob === c.maxGetsPerBlob ? `${c.minGetsPerBlob}` : `${c.minGetsPerBlob}–${c.maxGetsPerBlob}`);
  if (r.fleet) {
    const f = r.fleet;
    const m = f.cold.mirror;
    const d = f.cold.distribution;
    const n = f.replicas;
    out.push(
      markdownTable([
        ['', `mirror x${n}`, `distribution proxy x${n}`, 'mirror / distribution', 'targets'],
        [`7. ${f.pulls} cold pulls, ${fmt(r.params.imageMiB, 1)} MiB in ${r.params.blobs} blobs, round-robin over ${n} replicas (s)`, s(m.ms), s(d.ms), x(ratioOf(m.ms, d.ms)), dash],
        ['   upstream GETs per blob', span(m), span(d), dash, cell('fleetCold')],
        ['   upstream manifest requests', `${m.upstreamManifestRequests}`, `${d.upstreamManifestRequests}`, dash, dash],
        ['   failed pulls', `${m.failedPulls}`, `${d.failedPulls}`, dash, cell('fleetFailed')],
        ['   S3 requests per pull', fmt(m.s3RequestsPerPull.total, 2), fmt(d.s3RequestsPerPull.total, 2), x(ratioOf(m.s3RequestsPerPull.total, d.s3RequestsPerPull.total)), dash],
        [`     ${S3_METHODS.join(' / ')}`, methods(m.s3RequestsPerPull), methods(d.s3RequestsPerPull), dash, dash],
        [`   warm, ${f.warmClients} clients on ${n} replicas (MiB/s, total)`, fmt(f.warm.mirror.all.mibps, 0), fmt(f.warm.distribution.all.mibps, 0), x(ratioOf(f.warm.mirror.all.mibps, f.warm.distribution.all.mibps)), dash],
        [`   warm, ${f.warmClients} clients on 1 replica (MiB/s)`, fmt(f.warm.mirror.one.mibps, 0), fmt(f.warm.distribution.one.mibps, 0), x(ratioOf(f.warm.mirror.one.mibps, f.warm.distribution.one.mibps)), dash],
        [`   warm, ${n} replicas / 1`, x(f.warm.mirror.ratio), x(f.warm.distribution.ratio), dash, dash],
        [`   replica CPU per GiB, ${n} / 1 replicas (ms)`, `${fmt(f.warm.mirror.all.cpuMsPerGiB, 0)} / ${fmt(f.warm.mirror.one.cpuMsPerGiB, 0)}`, `${fmt(f.warm.distribution.all.cpuMsPerGiB, 0)} / ${fmt(f.warm.distribution.one.cpuMsPerGiB, 0)}`, dash, dash],
        [`   RGW + OSD CPU per GiB, ${n} / 1 replicas (ms)`, `${fmt(f.warm.mirror.all.serviceCpuMsPerGiB, 0)} / ${fmt(f.warm.mirror.one.serviceCpuMsPerGiB, 0)}`, `${fmt(f.warm.distribution.all.serviceCpuMsPerGiB, 0)} / ${fmt(f.warm.distribution.one.serviceCpuMsPerGiB, 0)}`, dash, dash],
        ['   upstream blob GETs while warm', `${f.warm.mirror.upstreamRequests}`, `${f.warm.distribution.upstreamRequests}`, dash, dash],
      ]),
    );
    out.push('', `Note: ${f.note}.`, '');
  }
  if (r.rollout) {
    const o = r.rollout;
    const rows: string[][] = [
      ['', 'mirror', 'targets'],
      [`8. rollout: ${o.nodes} nodes, ${fmt(r.params.imageMiB, 1)} MiB new image, ${o.replicas} replicas; last node done after (s)`, s(o.lastNodeMs), dash],
      [`   start times over ${o.spreadSeconds} s, at most ${o.surge} nodes at once (reached), ${o.nodeConcurrency} blobs at once per node`, `${o.maxNodesPulling}`, dash],
      ['   node pull time p50 / p90 / p99 / max (s)', `${s(o.nodeMs.p50)} / ${s(o.nodeMs.p90)} / ${s(o.nodeMs.p99)} / ${s(o.nodeMs.max)}`, dash],
      ['   upstream GETs per blob', span(o), cell('rolloutGets')],
      ['   upstream manifest requests', `${o.upstreamManifestRequests}`, dash],
      ['   nodes without the image / retries', `${o.failedNodes} / ${o.retries}`, cell('rolloutFailed')],
      ['   delivered (MiB); all replicas\' peak MiB/s (1 s / 5 s)', `${fmt(o.deliveredMiB, 0)}; ${fmt(o.fleetPeakMiBps, 0)} / ${fmt(o.fleetPeak5sMiBps, 0)}`, dash],
      ['   S3 requests per node pull (GET / HEAD / other)', `${fmt(o.s3RequestsPerNode.GET, 2)} / ${fmt(o.s3RequestsPerNode.HEAD, 2)} / ${fmt(o.s3RequestsPerNode.total - o.s3RequestsPerNode.GET - o.s3RequestsPerNode.HEAD, 2)}`, dash],
      ['   S3 requests per node and blob', fmt(o.s3RequestsPerNodeBlob.total, 3), dash],
    ];
    for (const rep of o.replicaFigures) {
      rows.push([`   ${rep.id}: pulls; served MiB; peak MiB/s (1 s / 5 s); peak RSS MiB; CPU s`, `${rep.pulls}; ${fmt(rep.servedMiB, 0)}; ${fmt(rep.peakMiBps, 0)} / ${fmt(rep.peak5sMiBps, 0)}; ${fmt(rep.peakRssMiB, 0)}; ${fmt(rep.cpuMs / 1000, 1)}`, dash]);
    }
    rows.push(['   RGW + OSD: CPU s; peak RSS RGW / OSD MiB', `${fmt(o.service.cpuMs / 1000, 1)}; ${fmt(o.service.rgwPeakRssMiB, 0)} / ${fmt(o.service.osdPeakRssMiB, 0)}`, dash]);
    out.push(markdownTable(rows), '', `Bandwidth: ${o.bandwidthMethod}.`, '');
  }
  out.push(targetList(r.targets));
  return out.join('\n');
}

function methods(c: Record<string, number>): string {
  return S3_METHODS.map((m) => fmt(c[m], 2)).join(' / ');
}
