// `npm run bench -- fleet` and `npm run bench -- rollout` (issue 16, items 8 and 9): a fleet of
// replicas on one bucket, ours against distribution's proxy, and a rollout to many nodes.
//
// One run starts a real docker-registry upstream (its access log counts what it was asked) and
// one Ceph RGW (memstore OSD; tools/launch/ceph.ts) with a bucket per side. Each side runs
// BENCH_FLEET_REPLICAS processes on its bucket: ours with `storage.s3` and `cluster.peers.static`
// listing every replica; distribution 2.8's proxy with its `s3` driver on one rootdirectory
// (it has no notion of peers). Redirect is off on both sides, so every byte a client gets
// comes through a replica. The sides are measured one after the other, never at once.
//
//   fleet (item 8), per round on fresh prefixes, sides in a rotated order:
//     1. BENCH_FLEET_PULLS cold pulls of a 5-layer image at once, pull i through replica
//        i mod N: wall time, upstream GETs per blob (from the upstream's access log, after
//        distribution's background stores settled), S3 requests per pull (RGW's access log);
//     2. warm aggregate throughput: BENCH_FLEET_WARM_CLIENTS clients pulling the warm image in a
//        loop for BENCH_FLEET_WARM_SECONDS, spread over all replicas, then all on replica 1.
//        N processes on this machine's cores cannot give N times the throughput: the ratio
//        is reported as measured.
//   rollout (item 9), ours only: BENCH_ROLLOUT_NODES simulated nodes pull a new 5-layer image
//     through the replicas. A node is containerd's fetcher (bench/pull.ts: HEAD the tag, GET
//     the manifest, config and layers BENCH_ROLLOUT_NODE_CONCURRENCY at a time, sizes checked)
//     over its own connections, through replica (node mod N), retrying a failed pull after 1 s
//     up to 3 times as the kubelet would. Start times are uniform over BENCH_ROLLOUT_SPREAD_S
//     (seeded), and at most BENCH_ROLLOUT_SURGE nodes pull at once (a rollout's surge: the next
//     node starts when one finishes). Figures: time until the last node has the image, node
//     pull times, upstream GETs per blob, S3 requests per node pull, per replica the peak
//     bytes/s served (its /stats bytesServed sampled every second) and peak RSS (VmHWM).
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { CreateBucketCommand, HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { Agent, request } from 'undici';
import type { FleetParams } from './params.js';
import { writeLayout, BENCH_TAG } from './fixtures.js';
import { BENCH_USER_AGENT, benchAgent, pullImage } from './pull.js';
import { cpuMs, RssTracker } from './rss.js';
import { median, rotate, round, type Target } from './report.js';
import { methodOf, S3_METHODS } from './s3.js';
import { blobGets, upstreamRequestsSince } from './upstream-log.js';
import { rgwClient, startCeph, type CephHandle, type RgwRequest } from '../tools/launch/ceph.js';
import { startMirror } from '../tools/launch/mirror.js';
import { startRegistry, type RegistryHandle } from '../tools/launch/registry.js';
import { freePort, sleep, tempDir, waitFor } from '../tools/launch/proc.js';
import { skopeoCopy } from '../tools/launch/skopeo.js';
import { describePushed, type PushedImage } from '../tools/oci/oci-client.js';
import { stepsCollectingErrors } from './shutdown.js';

const MiB = 1 << 20;
const GiB = 1 << 30;
const ADMIN_AGENT = 'registry-mirror-bench-admin';
const REPOS = { image: 'fleet/app', rollout: 'fleet/rollout', warmup: 'fleet/warmup' } as const;
const NODE_ATTEMPTS = 3;
/** Peaks of the served bytes/s: over 1 s samples, and over a sliding 5 s window (smoother). */
const WINDOW_S = 5;

export type Side = 'mirror' | 'distribution';

export interface FleetCold {
  ms: number;
  runs: number[];
  /** Per blob (config + layers), the most GETs any round cost the upstream. */
  upstreamGetsPerBlob: Record<string, number>;
  minGetsPerBlob: number;
  maxGetsPerBlob: number;
  upstreamManifestRequests: number;
  failedPulls: number;
  /** The replicas' S3 requests per pull, by method and total (median of the rounds). */
  s3RequestsPerPull: Record<string, number>;
}

export interface WarmThroughput {
  /** Aggregate MiB/s delivered to all clients (median of the rounds). */
  mibps: number;
  runs: number[];
  /** CPU of the replicas and of RGW + OSD per GiB delivered, ms (median). */
  cpuMsPerGiB: number;
  serviceCpuMsPerGiB: number;
}

export interface FleetSection {
  replicas: number;
  pulls: number;
  rounds: number;
  warmClients: number;
  warmSeconds: number;
  cold: Record<Side, FleetCold>;
  /** Warm pulls spread over all replicas ("all") and all on one ("one"); ratio all / one. */
  warm: Record<Side, { all: WarmThroughput; one: WarmThroughput; ratio: number; upstreamRequests: number }>;
  note: string;
}

export interface ReplicaFigures {
  id: string;
  pulls: number;
  servedMiB: number;
  peakMiBps: number;
  peak5sMiBps: number;
  peakRssMiB: number;
  cpuMs: number;
}

export interface RolloutSection {
  nodes: number;
  replicas: number;
  surge: number;
  spreadSeconds: number;
  nodeConcurrency: number;
  /** From the first node's start to the last node having the image, ms. */
  lastNodeMs: number;
  nodeMs: { p50: number; p90: number; p99: number; max: number };
  maxNodesPulling: number;
  failedNodes: number;
  retries: number;
  upstreamGetsPerBlob: Record<string, number>;
  minGetsPerBlob: number;
  maxGetsPerBlob: number;
  upstreamManifestRequests: number;
  deliveredMiB: number;
  /** The peak of the replicas' summed bytes/s, over 1 s and over 5 s. */
  fleetPeakMiBps: number;
  fleetPeak5sMiBps: number;
  s3Requests: Record<string, number>;
  /** S3 requests per node pull, and per node and blob (config + layers; manifest reads count too). */
  s3RequestsPerNode: Record<string, number>;
  s3RequestsPerNodeBlob: Record<string, number>;
  replicaFigures: ReplicaFigures[];
  service: { cpuMs: number; rgwPeakRssMiB: number; osdPeakRssMiB: number };
  bandwidthMethod: string;
}

export interface FleetResult {
  version: 1;
  kind: 'fleet';
  sections: Array<'fleet' | 'rollout'>;
  startedAt: string;
  finishedAt: string;
  seconds: number;
  params: { replicas: number; layersMiB: number[]; imageMiB: number; blobs: number; partMiB: number; client: string };
  fleet?: FleetSection;
  rollout?: RolloutSection;
  targets: Target[];
}

interface Replica {
  id: string;
  url: string;
  pid: number;
  stop(): Promise<void>;
}

interface Fleet {
  side: Side;
  replicas: Replica[];
  bucket: string;
  blobKey(digest: string): string;
}

export class FleetBench {
  private upstream!: RegistryHandle;
  private ceph!: CephHandle;
  private admin!: S3Client;
  private readonly live = new Set<Replica>();
  private readonly images = {} as Record<keyof typeof REPOS, PushedImage>;
  private readonly buckets: Record<Side, string> = { mirror: 'fleet-mirror', distribution: 'fleet-distribution' };
  private readonly rss = new RssTracker();

  constructor(
    private readonly p: FleetParams,
    private readonly log: (msg: string) => void,
  ) {}

  async run(): Promise<FleetResult> {
    const started = new Date();
    this.rss.start();
    const fixtures = tempDir('bench-fleet-fixtures');
    try {
      await this.setup(fixtures);
      const fleet = this.p.fleet ? await this.fleetSection() : undefined;
      const rollout = this.p.rollout ? await this.rolloutSection() : undefined;
      const finished = new Date();
      const blobs = this.images.image.blobs.length;
      const result: FleetResult = {
        version: 1,
        kind: 'fleet',
        sections: [...(fleet ? (['fleet'] as const) : []), ...(rollout ? (['rollout'] as const) : [])],
        startedAt: started.toISOString(),
        finishedAt: finished.toISOString(),
        seconds: round((finished.getTime() - started.getTime()) / 1000),
        params: {
          replicas: this.p.replicas,
          layersMiB: this.p.layerBytes.map((b) => round(b / MiB, 2)),
          imageMiB: round(this.images.image.blobs.reduce((n, b) => n + b.size, 0) / MiB, 2),
          blobs,
          partMiB: round(this.p.partBytes / MiB, 2),
          client:
            'in-process containerd-like client (bench/pull.ts): HEAD manifest by tag, GET by digest, config + layers 3 at a time, sizes checked (not hashed: the servers are measured, and 2 cores are shared with them)',
        },
        fleet,
        rollout,
        targets: fleetTargets(fleet, rollout),
      };
      return result;
    } finally {
      this.rss.stop();
      await this.shutdown();
      rmSync(fixtures, { recursive: true, force: true });
    }
  }

  // ---- setup -------------------------------------------------------------------------

  private async setup(fixtures: string): Promise<void> {
    this.upstream = await startRegistry();
    this.log(`fleet: upstream ${this.upstream.url}; images of ${this.p.layerBytes.map((b) => (b / MiB).toFixed(1)).join('+')} MiB`);
    const layouts = {
      image: await writeLayout(join(fixtures, 'image'), 'fleet-image', this.p.layerBytes),
      rollout: await writeLayout(join(fixtures, 'rollout'), 'fleet-rollout', this.p.layerBytes),
      warmup: await writeLayout(join(fixtures, 'warmup'), 'fleet-warmup', [64 * 1024]),
    };
    const agent = benchAgent();
    try {
      for (const key of Object.keys(REPOS) as Array<keyof typeof REPOS>) {
        await skopeoCopy(`oci:${join(fixtures, key)}:${BENCH_TAG}`, `docker://${this.upstream.host}/${REPOS[key]}:${BENCH_TAG}`, { timeoutMs: 300_000 });
        this.images[key] = await describePushed(this.upstream.host, REPOS[key], BENCH_TAG);
        if (this.images[key].digest !== layouts[key].manifestDigest) throw new Error(`the pushed ${key} manifest differs from the layout`);
        // The upstream serves from the page cache from the first timed pull on.
        await pullImage(this.upstream.url, REPOS[key], BENCH_TAG, { dispatcher: agent, verify: false });
      }
    } finally {
      await agent.close();
    }
    const t0 = Date.now();
    // Room for every round's writes (distribution writes each blob twice) and the rollout.
    const imageBytes = this.images.image.blobs.reduce((n, b) => n + b.size, 0);
    this.ceph = await startCeph({ mgr: false, objectStore: 'memstore', storeBytes: Math.max(4 * GiB, (this.p.rounds * 4 + 2) * imageBytes + GiB) });
    this.admin = rgwClient(this.ceph, { customUserAgent: ADMIN_AGENT });
    for (const b of Object.values(this.buckets)) await this.admin.send(new CreateBucketCommand({ Bucket: b }));
    const pids = this.ceph.pids();
    this.log(`fleet: Ceph RGW ${this.ceph.endpoint} up in ${((Date.now() - t0) / 1000).toFixed(1)} s (rgw pid ${pids.rgw}, osd pid ${pids.osd})`);
  }

  private async shutdown(): Promise<void> {
    const { attempt, errors } = stepsCollectingErrors();
    await attempt(() => this.stopReplicas());
    this.admin?.destroy();
    if (this.ceph) await attempt(() => this.ceph.stop());
    if (this.upstream) await attempt(() => this.upstream.stop());
    if (errors.length) this.log(`fleet: shutdown: ${errors.map(String).join('; ')}`);
  }

  // ---- fleets --------------------------------------------------------------------------

  private async startFleet(side: Side, prefix: string): Promise<Fleet> {
    const ceph = this.ceph;
    const bucket = this.buckets[side];
    const replicas: Replica[] = [];
    if (side === 'mirror') {
      const addresses: string[] = [];
      for (let i = 0; i < this.p.replicas; i++) addresses.push(`127.0.0.1:${await freePort()}`);
      for (const [i, self] of addresses.entries()) {
        const m = await startMirror(
          {
            logLevel: 'info',
            defaultUpstream: 'docker.io',
            upstreams: { 'docker.io': { url: this.upstream.url } },
            cache: { tagTTL: '5m' },
            v1: { enabled: false },
            storage: {
              s3: {
                bucket,
                endpoint: ceph.endpoint,
                region: ceph.region,
                forcePathStyle: true,
                prefix,
                accessKeyId: ceph.accessKeyId,
                secretAccessKey: ceph.secretAccessKey,
                partSize: this.p.partBytes,
                redirect: false,
              },
            },
            cluster: { peers: { static: addresses }, self, refresh: '1s' },
          },
          { port: Number(self.split(':')[1]) },
        );
        const r: Replica = { id: `mirror-${i + 1}`, url: m.url, pid: m.pid(), stop: async () => void (await m.stop()) };
        replicas.push(r);
        this.live.add(r);
      }
      // Every replica sees every other one (a replica started before its peers marks them
      // down until they answer).
      await waitFor(
        async () => {
          for (const r of replicas) {
            const st = (await getJson(`${r.url}/stats`)) as { cluster?: { members: string[]; down: string[] } };
            if (!st.cluster || st.cluster.down.length > 0 || st.cluster.members.length !== addresses.length) return false;
          }
          return true;
        },
        30_000,
        'the replicas to see each other',
      );
    } else {
      for (let i = 0; i < this.p.replicas; i++) {
        const d = await startRegistry({
          proxyRemoteUrl: this.upstream.url,
          s3: {
            accessKey: ceph.accessKeyId,
            secretKey: ceph.secretAccessKey,
            region: ceph.region,
            regionEndpoint: ceph.endpoint,
            bucket,
            rootDirectory: `/${prefix}`,
            chunkSize: this.p.partBytes,
            redirect: false,
          },
        });
        const r: Replica = { id: `distribution-${i + 1}`, url: d.url, pid: d.pid(), stop: () => d.stop() };
        replicas.push(r);
        this.live.add(r);
      }
    }
    const fleet: Fleet = {
      side,
      replicas,
      bucket,
      blobKey:
        side === 'mirror'
          ? (dg) => `${prefix}/blobs/sha256/${dg.slice(7, 9)}/${dg.slice(7)}`
          : (dg) => `${prefix}/docker/registry/v2/blobs/sha256/${dg.slice(7, 9)}/${dg.slice(7)}/data`,
    };
    // Untimed: a small unrelated image through every replica, so "cold" is the cold path and
    // not a fresh process.
    const agent = benchAgent();
    try {
      for (const r of replicas) await pullImage(r.url, REPOS.warmup, BENCH_TAG, { dispatcher: agent, verify: true });
    } finally {
      await agent.close();
    }
    await this.settled(fleet, this.images.warmup.blobs.map((b) => b.digest), 120_000);
    this.log(`fleet: ${side} x${replicas.length} on ${bucket}/${prefix}: ${replicas.map((r) => `${r.url} (pid ${r.pid})`).join(', ')}`);
    return fleet;
  }

  private async stopReplicas(): Promise<void> {
    for (const r of [...this.live]) {
      this.live.delete(r);
      this.rss.unwatch(r.pid);
      await r.stop();
    }
  }

  /** Resolves when every blob is at its final key in the fleet's bucket; false on timeout. */
  private async settled(fleet: Fleet, digests: string[], timeoutMs: number): Promise<boolean> {
    const pending = new Set(digests);
    const deadline = Date.now() + timeoutMs;
    while (pending.size && Date.now() < deadline) {
      for (const dg of [...pending]) {
        const there = await this.admin.send(new HeadObjectCommand({ Bucket: fleet.bucket, Key: fleet.blobKey(dg) })).then(
          () => true,
          (err: { $metadata?: { httpStatusCode?: number } }) => {
            if (err.$metadata?.httpStatusCode === 404) return false;
            throw err;
          },
        );
        if (there) pending.delete(dg);
      }
      if (pending.size) await sleep(100);
    }
    return pending.size === 0;
  }

  /** The fleet's own S3 requests in RGW's access log since entry `from`, once the log is quiet for 1 s. */
  private async s3Since(fleet: Fleet, from: number): Promise<RgwRequest[]> {
    let last = -1;
    let stableFor = 0;
    let all: RgwRequest[] = [];
    await waitFor(
      async () => {
        await sleep(250);
        all = this.ceph.rgwRequests();
        stableFor = all.length === last ? stableFor + 1 : 0;
        last = all.length;
        return stableFor >= 4;
      },
      120_000,
      "RGW's access log to settle",
    );
    const b = fleet.bucket;
    return all.slice(from).filter((r) => (r.path.startsWith(`/${b}/`) || r.path.startsWith(`/${b}?`) || r.path === `/${b}`) && !r.userAgent.includes(ADMIN_AGENT));
  }

  // ---- item 8: cold pulls and warm throughput ------------------------------------------

  private async fleetSection(): Promise<FleetSection> {
    const digests = this.images.image.blobs.map((b) => b.digest);
    const acc = {
      mirror: { ms: [] as number[], gets: {} as Record<string, number[]>, manifests: [] as number[], failed: [] as number[], s3: [] as Record<string, number>[], warm: { all: [] as Warm[], one: [] as Warm[] }, warmUpstream: 0 },
      distribution: { ms: [] as number[], gets: {} as Record<string, number[]>, manifests: [] as number[], failed: [] as number[], s3: [] as Record<string, number>[], warm: { all: [] as Warm[], one: [] as Warm[] }, warmUpstream: 0 },
    };
    for (let i = 0; i < this.p.rounds; i++) {
      for (const side of rotate<Side>(['mirror', 'distribution'], i)) {
        const a = acc[side];
        const fleet = await this.startFleet(side, `round-${i + 1}`);
        try {
          const from = (await this.upstream.requests()).length;
          const s3From = this.ceph.rgwRequests().length;
          const agent = benchAgent();
          let failed = 0;
          const t0 = performance.now();
          try {
            await Promise.all(
              Array.from({ length: this.p.pulls }, (_, k) =>
                pullImage(fleet.replicas[k % fleet.replicas.length]!.url, REPOS.image, BENCH_TAG, { dispatcher: agent, verify: false }).catch((err: unknown) => {
                  // distribution's proxy may fail concurrent cold requests: a figure to report.
                  // Ours must not fail.
                  if (side === 'mirror') throw err;
                  failed++;
                }),
              ),
            );
          } finally {
            await agent.close();
          }
          const ms = performance.now() - t0;
          a.ms.push(ms);
          a.failed.push(failed);
          // distribution stores in the background: its GETs count, so wait for the stores.
          await this.settled(fleet, digests, failed > 0 ? 30_000 : 300_000);
          const upstream = await upstreamRequestsSince(this.upstream, from);
          const gets = blobGets(upstream, digests);
          for (const [k, d] of digests.entries()) (a.gets[d] ??= []).push(gets[k]!);
          a.manifests.push(upstream.filter((e) => e.path.includes('/manifests/')).length);
          const s3 = countMethods(await this.s3Since(fleet, s3From));
          a.s3.push(s3);
          this.log(
            `fleet: ${this.p.pulls} cold pulls over ${fleet.replicas.length} ${side} replicas ${i + 1}/${this.p.rounds}: ${(ms / 1000).toFixed(2)} s` +
              `${failed ? `, ${failed} failed` : ''}; upstream GETs per blob ${gets.join(', ')}; S3 requests ${s3.total} (${fmtMethods(s3)})`,
          );
          for (const mode of rotate<'all' | 'one'>(['all', 'one'], i)) {
            const upFrom = (await this.upstream.requests()).length;
            const w = await this.warm(fleet, mode);
            a.warm[mode].push(w);
            a.warmUpstream = Math.max(a.warmUpstream, blobGets(await upstreamRequestsSince(this.upstream, upFrom), digests).reduce((x, y) => x + y, 0));
            this.log(
              `fleet: warm ${side}, ${this.p.warmClients} clients on ${mode === 'all' ? `all ${fleet.replicas.length} replicas` : 'one replica'}: ${w.mibps.toFixed(0)} MiB/s, ` +
                `replica CPU ${w.cpuMsPerGiB.toFixed(0)} ms/GiB, RGW + OSD ${w.serviceCpuMsPerGiB.toFixed(0)} ms/GiB${w.failed ? `, ${w.failed} failed pulls` : ''}`,
            );
          }
        } finally {
          await this.stopReplicas();
        }
      }
    }
    const cold = (side: Side): FleetCold => {
      const a = acc[side];
      const all = Object.values(a.gets).flat();
      return {
        ms: round(median(a.ms)),
        runs: a.ms.map((v) => round(v)),
        upstreamGetsPerBlob: Object.fromEntries(Object.entries(a.gets).map(([d, v]) => [d, Math.max(...v)])),
        minGetsPerBlob: Math.min(...all),
        maxGetsPerBlob: Math.max(...all),
        upstreamManifestRequests: Math.max(...a.manifests),
        failedPulls: Math.max(...a.failed),
        s3RequestsPerPull: Object.fromEntries(['total', ...S3_METHODS].map((m) => [m, round(median(a.s3.map((c) => (c[m] ?? 0) / this.p.pulls)), 2)])),
      };
    };
    const warm = (side: Side) => {
      const f = (ws: Warm[]): WarmThroughput => ({
        mibps: round(median(ws.map((w) => w.mibps))),
        runs: ws.map((w) => round(w.mibps)),
        cpuMsPerGiB: Math.round(median(ws.map((w) => w.cpuMsPerGiB))),
        serviceCpuMsPerGiB: Math.round(median(ws.map((w) => w.serviceCpuMsPerGiB))),
      });
      const all = f(acc[side].warm.all);
      const one = f(acc[side].warm.one);
      return { all, one, ratio: round(all.mibps / one.mibps, 2), upstreamRequests: acc[side].warmUpstream };
    };
    return {
      replicas: this.p.replicas,
      pulls: this.p.pulls,
      rounds: this.p.rounds,
      warmClients: this.p.warmClients,
      warmSeconds: this.p.warmSeconds,
      cold: { mirror: cold('mirror'), distribution: cold('distribution') },
      warm: { mirror: warm('mirror'), distribution: warm('distribution') },
      note: `all replicas, the RGW and OSD, the upstream and the clients share this machine's cores: ${this.p.replicas} replicas cannot give ${this.p.replicas}x the warm throughput of one here; the ratio is as measured`,
    };
  }

  /** Warm pulls in a loop for warmSeconds: spread round-robin over the replicas, or all on the first. */
  private async warm(fleet: Fleet, mode: 'all' | 'one'): Promise<Warm> {
    const agent = benchAgent();
    const service = Object.values(this.ceph.pids());
    const sum = (ps: number[]) => ps.reduce((n, pid) => n + cpuMs(pid), 0);
    const cpu0 = sum(fleet.replicas.map((r) => r.pid));
    const svc0 = sum(service);
    let bytes = 0;
    let failed = 0;
    const t0 = performance.now();
    const deadline = t0 + this.p.warmSeconds * 1000;
    try {
      await Promise.all(
        Array.from({ length: this.p.warmClients }, async (_, k) => {
          const url = fleet.replicas[mode === 'all' ? k % fleet.replicas.length : 0]!.url;
          while (performance.now() < deadline) {
            try {
              const got = await pullImage(url, REPOS.image, BENCH_TAG, { dispatcher: agent, verify: false });
              bytes += got.bytes;
            } catch (err) {
              if (fleet.side === 'mirror') throw err;
              failed++;
            }
          }
        }),
      );
    } finally {
      await agent.close();
    }
    const ms = performance.now() - t0;
    const gib = bytes / GiB;
    return { mibps: bytes / MiB / (ms / 1000), cpuMsPerGiB: (sum(fleet.replicas.map((r) => r.pid)) - cpu0) / gib, serviceCpuMsPerGiB: (sum(service) - svc0) / gib, failed };
  }

  // ---- item 9: the rollout ------------------------------------------------------------

  private async rolloutSection(): Promise<RolloutSection> {
    const p = this.p;
    const image = this.images.rollout;
    const digests = image.blobs.map((b) => b.digest);
    const fleet = await this.startFleet('mirror', 'rollout');
    try {
      const svc = this.ceph.pids();
      for (const r of fleet.replicas) this.rss.watch(r.id, r.pid);
      this.rss.watch('rgw', svc.rgw!);
      this.rss.watch('osd', svc.osd!);
      this.rss.beginPhase('rollout');
      const upFrom = (await this.upstream.requests()).length;
      const s3From = this.ceph.rgwRequests().length;
      const cpu0 = fleet.replicas.map((r) => cpuMs(r.pid));
      const svcCpu = () => Object.values(svc).reduce((n, pid) => n + cpuMs(pid), 0);
      const svc0 = svcCpu();
      const sampler = new ServedSampler(fleet.replicas);
      await sampler.start();

      const rand = mulberry32(p.seed);
      const starts = Array.from({ length: p.nodes }, () => rand() * p.spreadSeconds * 1000).sort((a, b) => a - b);
      let slots = p.surge;
      const waiting: Array<() => void> = [];
      const acquire = async () => {
        if (slots > 0) slots--;
        else await new Promise<void>((resolve) => waiting.push(resolve));
      };
      const release = () => {
        const next = waiting.shift();
        if (next) next();
        else slots++;
      };
      let pulling = 0;
      let maxPulling = 0;
      let retries = 0;
      let failedNodes = 0;
      let delivered = 0;
      const nodeMs: number[] = [];
      const perReplicaPulls = fleet.replicas.map(() => 0);
      const t0 = performance.now();
      let lastDone = t0;
      await Promise.all(
        starts.map(async (at, node) => {
          await sleep(Math.max(0, t0 + at - performance.now()));
          await acquire();
          pulling++;
          maxPulling = Math.max(maxPulling, pulling);
          const replica = node % fleet.replicas.length;
          const n0 = performance.now();
          try {
            for (let attempt = 1; ; attempt++) {
              // A node is its own containerd: its own connections, closed when it is done.
              const agent = new Agent({ connections: p.nodeConcurrency + 1, keepAliveTimeout: 10_000, headersTimeout: 120_000, bodyTimeout: 120_000 });
              try {
                const s = await pullImage(fleet.replicas[replica]!.url, REPOS.rollout, BENCH_TAG, { dispatcher: agent, verify: false, concurrency: p.nodeConcurrency });
                delivered += s.bytes;
                perReplicaPulls[replica]!++;
                break;
              } catch (err) {
                if (attempt >= NODE_ATTEMPTS) {
                  failedNodes++;
                  this.log(`rollout: node ${node} failed ${attempt} times: ${(err as Error).message}`);
                  break;
                }
                retries++;
                await sleep(1000);
              } finally {
                await agent.close();
              }
            }
          } finally {
            const done = performance.now();
            nodeMs.push(done - n0);
            lastDone = Math.max(lastDone, done);
            pulling--;
            release();
          }
        }),
      );
      const lastNodeMs = lastDone - t0 - starts[0]!;
      await sampler.stop();
      this.rss.endPhase();
      const cpu = fleet.replicas.map((r, k) => cpuMs(r.pid) - cpu0[k]!);
      const serviceCpu = svcCpu() - svc0;
      const upstream = await upstreamRequestsSince(this.upstream, upFrom);
      const gets = blobGets(upstream, digests);
      const s3 = countMethods(await this.s3Since(fleet, s3From));
      const peak = (role: string) => round((this.rss.peaks[role]?.rollout ?? NaN) / 1024);
      const replicaFigures: ReplicaFigures[] = fleet.replicas.map((r, k) => ({
        id: r.id,
        pulls: perReplicaPulls[k]!,
        servedMiB: round(sampler.servedBytes(k) / MiB),
        peakMiBps: round(sampler.peakBytesPerSecond(1, k) / MiB),
        peak5sMiBps: round(sampler.peakBytesPerSecond(WINDOW_S, k) / MiB),
        peakRssMiB: peak(r.id),
        cpuMs: Math.round(cpu[k]!),
      }));
      const sorted = [...nodeMs].sort((a, b) => a - b);
      const pct = (q: number) => round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!);
      const perNode = (c: Record<string, number>, div: number) => Object.fromEntries(['total', ...S3_METHODS].map((m) => [m, round((c[m] ?? 0) / div, 3)]));
      const out: RolloutSection = {
        nodes: p.nodes,
        replicas: fleet.replicas.length,
        surge: p.surge,
        spreadSeconds: p.spreadSeconds,
        nodeConcurrency: p.nodeConcurrency,
        lastNodeMs: round(lastNodeMs),
        nodeMs: { p50: pct(0.5), p90: pct(0.9), p99: pct(0.99), max: round(sorted.at(-1)!) },
        maxNodesPulling: maxPulling,
        failedNodes,
        retries,
        upstreamGetsPerBlob: Object.fromEntries(digests.map((d, k) => [d, gets[k]!])),
        minGetsPerBlob: Math.min(...gets),
        maxGetsPerBlob: Math.max(...gets),
        upstreamManifestRequests: upstream.filter((e) => e.path.includes('/manifests/')).length,
        deliveredMiB: round(delivered / MiB),
        fleetPeakMiBps: round(sampler.peakBytesPerSecond(1) / MiB),
        fleetPeak5sMiBps: round(sampler.peakBytesPerSecond(WINDOW_S) / MiB),
        s3Requests: s3,
        s3RequestsPerNode: perNode(s3, p.nodes),
        s3RequestsPerNodeBlob: perNode(s3, p.nodes * digests.length),
        replicaFigures,
        service: { cpuMs: Math.round(serviceCpu), rgwPeakRssMiB: peak('rgw'), osdPeakRssMiB: peak('osd') },
        bandwidthMethod:
          "each replica's /stats bytesServed (blobs and manifests sent, peer hops included: an owner serving a forwarded miss counts it, and so does the replica that passed it on), sampled every second; a response counts when it completes",
      };
      this.log(
        `rollout: ${p.nodes} nodes through ${fleet.replicas.length} replicas: last node done after ${(lastNodeMs / 1000).toFixed(1)} s; node pull p50 ${(out.nodeMs.p50 / 1000).toFixed(2)} s, ` +
          `p99 ${(out.nodeMs.p99 / 1000).toFixed(2)} s; ${failedNodes} failed, ${retries} retries; upstream GETs per blob ${gets.join(', ')}; ` +
          `S3 ${s3.total} requests (${fmtMethods(s3)}); peak MiB/s per replica ${replicaFigures.map((r) => r.peakMiBps).join(' / ')}; peak RSS ${replicaFigures.map((r) => r.peakRssMiB).join(' / ')} MiB`,
      );
      for (const pid of [svc.rgw!, svc.osd!]) this.rss.unwatch(pid);
      return out;
    } finally {
      await this.stopReplicas();
    }
  }
}

interface Warm {
  mibps: number;
  cpuMsPerGiB: number;
  serviceCpuMsPerGiB: number;
  failed: number;
}

/** Samples each replica's /stats bytesServed every second until stopped. */
class ServedSampler {
  private readonly agent = new Agent({ connections: 2, keepAliveTimeout: 10_000 });
  /**
   * One round a second: ms since start (when the round began) and each replica's bytesServed.
   * Bounded by the run's length (one entry a second).
   */
  private readonly rounds: Array<{ t: number; bytes: number[] }> = [];
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<void> = Promise.resolve();
  private t0 = 0;

  constructor(private readonly replicas: Replica[]) {}

  async start(): Promise<void> {
    this.t0 = performance.now();
    await this.sample();
    this.timer = setInterval(() => {
      this.inFlight = this.inFlight.then(() => this.sample());
    }, 1000);
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.inFlight;
    await this.sample();
    await this.agent.close();
  }

  private async sample(): Promise<void> {
    const t = performance.now() - this.t0;
    const bytes = await Promise.all(this.replicas.map(async (r) => ((await getJson(`${r.url}/stats`, this.agent)) as { bytesServed: number }).bytesServed));
    this.rounds.push({ t, bytes });
  }

  /** Bytes replica k (or all, summed) served between the first and the last sample. */
  servedBytes(k?: number): number {
    return this.rounds.length ? this.bytesAt(this.rounds.length - 1, k) - this.bytesAt(0, k) : 0;
  }

  /**
   * The highest bytes/s of replica k (or of all, summed) over any stretch of at least `seconds`
   * between samples (a run shorter than that: over all of it). A late sample (the replicas were
   * slow to answer) makes the next interval short: the window rule keeps such a short interval,
   * which may end on a big response's completion, from reading as a burst.
   */
  peakBytesPerSecond(seconds: number, k?: number): number {
    const s = this.rounds;
    if (s.length < 2) return 0;
    const rate = (i: number, j: number) => (this.bytesAt(j, k) - this.bytesAt(i, k)) / ((s[j]!.t - s[i]!.t) / 1000);
    const span = seconds * 1000 - 100;
    let best = -1;
    for (let i = 0, j = 1; j < s.length; j++) {
      while (i + 1 < j && s[j]!.t - s[i + 1]!.t >= span) i++;
      if (s[j]!.t - s[i]!.t >= span) best = Math.max(best, rate(i, j));
    }
    return best < 0 ? rate(0, s.length - 1) : best;
  }

  private bytesAt(i: number, k?: number): number {
    const b = this.rounds[i]!.bytes;
    return k === undefined ? b.reduce((x, y) => x + y, 0) : b[k]!;
  }
}

async function getJson(url: string, dispatcher?: Agent): Promise<unknown> {
  const res = await request(url, { dispatcher, headers: { 'user-agent': BENCH_USER_AGENT } });
  if (res.statusCode !== 200) throw new Error(`GET ${url}: HTTP ${res.statusCode}`);
  return res.body.json();
}

/** RGW requests by method (a GET of the bucket itself is LIST), and total. */
function countMethods(rs: RgwRequest[]): Record<string, number> {
  const c: Record<string, number> = Object.fromEntries([...S3_METHODS, 'total'].map((m) => [m, 0]));
  for (const r of rs) c[methodOf(r)] = (c[methodOf(r)] ?? 0) + 1;
  c.total = rs.length;
  return c;
}

function fmtMethods(c: Record<string, number>): string {
  return S3_METHODS.filter((m) => c[m]).map((m) => `${m} ${c[m]}`).join(', ');
}

/** Issue 16's targets: one upstream GET per blob fleet-wide, and no failed pull of ours. */
export function fleetTargets(fleet: FleetSection | undefined, rollout: RolloutSection | undefined): Target[] {
  const t: Target[] = [];
  if (fleet) {
    const m = fleet.cold.mirror;
    t.push({ name: `${fleet.pulls} cold pulls over ${fleet.replicas} replicas: upstream GETs per blob (mirror)`, issue: 16, row: 'fleetCold', short: '== 1', value: m.maxGetsPerBlob, target: '== 1', pass: m.minGetsPerBlob === 1 && m.maxGetsPerBlob === 1 });
    t.push({ name: `${fleet.pulls} cold pulls over ${fleet.replicas} replicas: failed pulls (mirror)`, issue: 16, row: 'fleetFailed', short: '== 0', value: m.failedPulls, target: '== 0', pass: m.failedPulls === 0 });
  }
  if (rollout) {
    t.push({ name: `rollout to ${rollout.nodes} nodes: upstream GETs per blob`, issue: 16, row: 'rolloutGets', short: '== 1', value: rollout.maxGetsPerBlob, target: '== 1', pass: rollout.minGetsPerBlob === 1 && rollout.maxGetsPerBlob === 1 });
    t.push({ name: `rollout to ${rollout.nodes} nodes: nodes without the image`, issue: 16, row: 'rolloutFailed', short: '== 0', value: rollout.failedNodes, target: '== 0', pass: rollout.failedNodes === 0 });
  }
  return t;
}

/** A small seeded PRNG (mulberry32), so two runs schedule their nodes alike. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
