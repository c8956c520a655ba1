// `npm run bench`: registry-mirror side by side with docker/distribution's pull-through cache
// (Debian docker-registry 2.8.2 with proxy.remoteurl), on one upstream, one fixture set and
// one client, with the upstream itself ("direct") and a static file server as baselines.
// Issues 7, 14 and 15 (item 9) have the what and the targets; bench/params.ts lists the
// knobs. Everything runs on 127.0.0.1 and every process is stopped by pid at the end, also on
// failure.
//
//   1. cold pull of a 3-layer image (fresh caches per run; median of BENCH_REPEAT); cold
//      blob rows: one cold blob with each of BENCH_COLD_CLIENTS clients on it at once, and
//      BENCH_MANY_BLOBS different cold blobs at once, one client each (fresh caches per row
//      and run; wall time, server CPU until the cache holds the blobs, upstream GETs per
//      blob; median of BENCH_REPEAT; run last, after (4) and (3))
//   2. warm pull of it; the big blob warm with 1 client and with BENCH_CLIENTS clients
//      (median of BENCH_ROUNDS)
//   3. BENCH_PULLS concurrent cold pulls (fresh caches per round): wall time, upstream GETs
//      per blob from the upstream's access log
//   4. manifest by tag within tagTTL: autocannon, BENCH_CONNECTIONS connections
//   5. peak RSS of every server in every phase
//   6. the S3 store (bench/s3.ts; issue 15): the mirror with storage.s3 and distribution's
//      proxy on its own s3 driver, each on a bucket of one Ceph RGW started for the run: cold
//      pull, warm pull, warm pull with redirect (307 to RGW), S3 requests per blob and bytes
//      written to S3 per cold blob, from RGW's own logs (median of BENCH_S3_REPEAT rounds,
//      fresh prefixes each). BENCH_S3=0 skips it, BENCH_S3=only runs it alone.
// Servers are measured one after the other, in an order rotated per run, and the CPU time
// each server spends is recorded next to the wall times: on a shared machine it varies far
// less. Output: a Markdown table on stdout, the figures in BENCH_RESULTS_DIR/<timestamp>.json.
//
// `npm run bench -- fleet` runs instead the fleet sections of issue 16 (items 8 and 9: replicas on
// one bucket against distribution's proxy, then a rollout to simulated nodes), and `-- rollout`
// the rollout alone: bench/fleet.ts, knobs in bench/params.ts; BENCH_RESULTS_DIR/<timestamp>-<scenario>.json.
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import autocannon from 'autocannon';
import type { Agent } from 'undici';
import { buildBenchFixtures, splitImage, BENCH_TAG, type BenchFixtures } from './fixtures.js';
import { estimateSeconds, fleetParamsFromEnv, paramsFromEnv, type BenchParams } from './params.js';
import { FleetBench } from './fleet.js';
import { renderFleetTables } from './fleet-report.js';
import { BENCH_USER_AGENT, benchAgent, blobThroughput, fetchBlob, pullImage, BLOB_CONCURRENCY } from './pull.js';
import { cpuMs, RssTracker } from './rss.js';
import {
  blobPhasesPeak,
  checkTargets,
  coldBlobPhase,
  coldRowName,
  computeRatios,
  median,
  renderTable,
  rotate,
  round,
  type BenchResult,
  type ColdBlobFigures,
  type ColdBlobRow,
  type ConcurrentPulls,
  type MainFigures,
  type ManifestLoad,
  type S3Result,
  type Timed,
} from './report.js';
import { S3Section } from './s3.js';
import { upstreamRequestsSince } from './upstream-log.js';
import { startRegistry, type AccessEntry, type RegistryHandle } from '../tools/launch/registry.js';
import { repoRoot, startMirror, type MirrorHandle } from '../tools/launch/mirror.js';
import { freePort, run, sleep, startProcess, tempDir, waitFor, waitForHttp, type ProcessHandle } from '../tools/launch/proc.js';
import { skopeoCopy } from '../tools/launch/skopeo.js';
import type { LayerInfo } from '../tools/oci/layout.js';
import { MANIFEST_ACCEPT, describePushed, type PushedImage } from '../tools/oci/oci-client.js';
import { stepsCollectingErrors } from './shutdown.js';

const MiB = 1 << 20;
const IMAGE_REPO = 'bench/image';
const BLOB_REPO = 'bench/blob';
const MANY_REPO = 'bench/many';
const WARMUP_REPO = 'bench/warmup';
const CLIENT_DESCRIPTION =
  'in-process containerd-like HTTP client (undici): HEAD manifest by tag, GET by digest, config + layers 3 at a time; sha256-verified in the pulls of (1) and (2), size-checked in (3); the cold blob rows and blob throughput count bytes only';

type CacheRole = 'mirror' | 'distribution';
type PullRole = CacheRole | 'direct';

interface Cache {
  role: CacheRole;
  url: string;
  pid: number;
  dataDir: string;
  stop(): Promise<void>;
  /** Resolves when the cache holds every digest (distribution stores in the background). */
  settled(digests: string[]): Promise<void>;
}

function log(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

class Bench {
  private readonly agent: Agent = benchAgent();
  private readonly rss = new RssTracker();
  private upstream!: RegistryHandle;
  private staticServer: ProcessHandle | undefined;
  private staticUrl = '';
  private readonly live = new Set<Cache>();
  private fixtures!: BenchFixtures;
  private image!: PushedImage;
  private blobDigest = '';

  constructor(private readonly p: BenchParams) {}

  async run(): Promise<BenchResult> {
    const started = new Date();
    const loadStart = loadavg();
    this.rss.start();
    try {
      await this.setup();
      let main: MainFigures | undefined;
      if (this.p.main) {
        const coldPull = await this.coldPulls();
        const warmPull = await this.warmPulls();
        const blob = await this.blobThroughput();
        const manifestByTag = await this.manifestLoad();
        const concurrentColdPulls = await this.concurrentColdPulls();
        const coldBlobs = await this.coldBlobs();
        main = {
          coldPull,
          warmPull,
          blobWarmMiBps: { one: blob.one, many: blob.many },
          blobWarmUpstreamRequests: blob.upstreamDuringWarm,
          blobWarmCpuMsPerGiB: blob.cpuPerGiB,
          coldBlobs,
          concurrentColdPulls,
          manifestByTag,
          mirrorRssMovingBlobMiB: NaN,
        };
      }
      const s3 = this.p.s3 ? await this.s3Section() : undefined;
      this.rss.stop();
      const finished = new Date();
      const rss: BenchResult['rss'] = {};
      for (const [role, byPhase] of Object.entries(this.rss.peaks)) {
        const byPhaseMiB = Object.fromEntries(Object.entries(byPhase).map(([k, v]) => [k, round(v / 1024)]));
        rss[role] = { peakMiB: round(this.rss.peakMiB(role)), byPhaseMiB };
      }
      const result: BenchResult = {
        version: 3,
        sections: [...(main ? (['main'] as const) : []), ...(s3 ? (['s3'] as const) : [])],
        startedAt: started.toISOString(),
        finishedAt: finished.toISOString(),
        seconds: round((finished.getTime() - started.getTime()) / 1000),
        machine: {
          cpus: cpus().length,
          cpuModel: cpus()[0]?.model ?? 'unknown',
          memMiB: Math.round(totalmem() / MiB),
          kernel: release(),
          loadavgStart: loadStart.map((v) => round(v, 2)),
          loadavgEnd: loadavg().map((v) => round(v, 2)),
        },
        software: await this.versions(s3 !== undefined),
        params: {
          imageMiB: round(this.p.imageBytes / MiB, 2),
          imageLayersMiB: splitImage(this.p.imageBytes).map((b) => round(b / MiB, 2)),
          blobMiB: round(this.p.blobBytes / MiB, 2),
          clients: this.p.clients,
          coldClients: this.p.coldClients,
          manyBlobs: this.p.manyBlobs,
          manyBlobMiB: round(this.p.manyBlobBytes / MiB, 2),
          pulls: this.p.pulls,
          connections: this.p.connections,
          seconds: this.p.seconds,
          warmupSeconds: this.p.warmupSeconds,
          repeat: this.p.repeat,
          rounds: this.p.rounds,
          client: CLIENT_DESCRIPTION,
          estimatedSeconds: estimateSeconds(this.p).total,
        },
        ...main,
        s3,
        rss,
        rssMethod: this.rss.hwmResetWorked
          ? 'VmHWM per phase (reset through /proc/<pid>/clear_refs), cross-checked with VmRSS sampled every 100 ms'
          : 'VmRSS sampled every 100 ms (VmHWM reset not permitted)',
        ratios: {},
        targets: [],
      };
      if (main) result.mirrorRssMovingBlobMiB = round(blobPhasesPeak(result, 'mirror'));
      result.ratios = computeRatios(result);
      result.targets = checkTargets(result);
      return result;
    } finally {
      this.rss.stop();
      await this.shutdown();
    }
  }

  // ---- setup -------------------------------------------------------------------------

  private async setup(): Promise<void> {
    const layers = splitImage(this.p.imageBytes);
    log(
      `fixtures: image ${layers.map((b) => (b / MiB).toFixed(1)).join('+')} MiB, blob ${(this.p.blobBytes / MiB).toFixed(1)} MiB, ` +
        `${this.p.manyBlobs} blobs of ${(this.p.manyBlobBytes / MiB).toFixed(1)} MiB`,
    );
    this.fixtures = await buildBenchFixtures(
      { imageLayerBytes: layers, blobBytes: this.p.blobBytes, manyBlobBytes: Array.from({ length: this.p.manyBlobs }, () => this.p.manyBlobBytes) },
      this.p.fixturesDir,
    );
    this.upstream = await startRegistry();
    this.rss.watch('upstream', this.upstream.pid());
    log(`upstream ${this.upstream.url} (pid ${this.upstream.pid()}); pushing`);
    const push = async (layoutDir: string, repo: string) =>
      skopeoCopy(`oci:${layoutDir}:${BENCH_TAG}`, `docker://${this.upstream.host}/${repo}:${BENCH_TAG}`, { timeoutMs: 900_000 });
    await push(this.fixtures.image.layoutDir, IMAGE_REPO);
    if (this.p.main) {
      await push(this.fixtures.blob.layoutDir, BLOB_REPO);
      await push(this.fixtures.many.layoutDir, MANY_REPO);
    }
    await push(this.fixtures.warmup.layoutDir, WARMUP_REPO);
    this.image = await describePushed(this.upstream.host, IMAGE_REPO, BENCH_TAG);
    if (this.image.digest !== this.fixtures.image.manifestDigest) throw new Error('the pushed image manifest differs from the layout');
    this.blobDigest = this.fixtures.blob.layers[0]!.digest;
    if (!this.p.main) {
      // (6) alone: the upstream's files are read once before timing, as (1) does.
      await pullImage(this.upstream.url, IMAGE_REPO, BENCH_TAG, { dispatcher: this.agent, verify: false });
      return;
    }

    const port = await freePort();
    const dir = tempDir('bench-static');
    this.staticServer = startProcess({
      cmd: process.execPath,
      args: [join(repoRoot(), 'dist', 'bench', 'static-server.js'), this.fixtures.dir, String(port)],
      logFile: join(dir, 'static.log'),
    });
    this.staticUrl = `http://127.0.0.1:${port}`;
    await waitForHttp(`${this.staticUrl}/`, { process: this.staticServer });
    this.rss.watch('static', this.staticServer.pid);
  }

  private async startCaches(): Promise<Record<CacheRole, Cache>> {
    const m: MirrorHandle = await startMirror({
      logLevel: 'info',
      defaultUpstream: 'docker.io',
      upstreams: { 'docker.io': { url: this.upstream.url } },
      cache: { tagTTL: '5m' },
      v1: { enabled: false },
    });
    const d: RegistryHandle = await startRegistry({ proxyRemoteUrl: this.upstream.url });
    const mirror: Cache = {
      role: 'mirror',
      url: m.url,
      pid: m.pid(),
      dataDir: m.dataDir,
      stop: async () => void (await m.stop()),
      // Today the mirror commits a blob before it lets go of the last byte, so this returns at
      // once; should it ever finish storing after the client is served (fsync, rename), that
      // work is still counted as its CPU. Blobs live at <storage>/blobs/sha256/<xx>/<hex>.
      settled: (digests) =>
        waitFor(
          () => digests.every((dg) => existsSync(join(m.dataDir, 'blobs/sha256', dg.slice(7, 9), dg.slice(7)))),
          120_000,
          'the mirror to store the blobs',
        ).then(() => undefined),
    };
    const distribution: Cache = {
      role: 'distribution',
      url: d.url,
      pid: d.pid(),
      dataDir: d.dataDir,
      stop: () => d.stop(),
      // distribution 2.8 serves a cold blob from one upstream GET and stores it from a second
      // one in a goroutine; it is warm when that copy has been committed.
      settled: (digests) =>
        waitFor(
          () => digests.every((dg) => existsSync(join(d.dataDir, 'docker/registry/v2/blobs/sha256', dg.slice(7, 9), dg.slice(7), 'data'))),
          600_000,
          'distribution to store the blobs',
        ).then(() => undefined),
    };
    for (const c of [mirror, distribution]) {
      this.live.add(c);
      // Untimed: a small unrelated image through the fresh cache (see fixtures.ts, warmup).
      await pullImage(c.url, WARMUP_REPO, BENCH_TAG, { dispatcher: this.agent, verify: true });
      await c.settled(this.fixtures.warmup.layers.map((l) => l.digest));
      this.rss.watch(c.role, c.pid);
    }
    log(`fresh caches: mirror ${m.url} (pid ${m.pid()}), distribution ${d.url} (pid ${d.pid()})`);
    return { mirror, distribution };
  }

  private async stopCache(c: Cache): Promise<void> {
    if (!this.live.delete(c)) return;
    this.rss.unwatch(c.pid);
    await c.stop();
    rmSync(c.dataDir, { recursive: true, force: true });
  }

  private async stopCaches(): Promise<void> {
    for (const c of [...this.live]) await this.stopCache(c);
  }

  private async shutdown(): Promise<void> {
    const { attempt, errors } = stepsCollectingErrors();
    await attempt(() => this.stopCaches());
    if (this.staticServer) await attempt(() => this.staticServer!.stop(5000));
    if (this.upstream) await attempt(() => this.upstream.stop());
    await attempt(() => this.agent.close());
    if (errors.length) log(`shutdown: ${errors.map(String).join('; ')}`);
  }

  // ---- upstream access log -----------------------------------------------------------

  private async mark(): Promise<number> {
    return (await this.upstream.requests()).length;
  }

  /** Requests the upstream logged since `from`, from the caches only (not the bench's own). */
  private upstreamSince(from: number): Promise<AccessEntry[]> {
    return upstreamRequestsSince(this.upstream, from);
  }

  // ---- (1) and (2): single pulls ---------------------------------------------------------

  private urlOf(role: PullRole, caches: Record<CacheRole, Cache> | undefined): string {
    return role === 'direct' ? this.upstream.url : caches![role].url;
  }

  private pidOf(role: PullRole | 'static', caches: Record<CacheRole, Cache> | undefined): number {
    if (role === 'direct') return this.upstream.pid();
    if (role === 'static') return this.staticServer!.pid;
    return caches![role].pid;
  }

  /** One timed pull; with caches, also waits until the cache holds the image (untimed). */
  private async pullOnce(role: PullRole, caches: Record<CacheRole, Cache> | undefined): Promise<{ ms: number; cpuMs: number }> {
    const pid = this.pidOf(role, caches);
    const cpu0 = cpuMs(pid);
    const s = await pullImage(this.urlOf(role, caches), IMAGE_REPO, BENCH_TAG, { dispatcher: this.agent, verify: true });
    if (s.blobs !== this.image.blobs.length) throw new Error(`${role}: pulled ${s.blobs} blobs, expected ${this.image.blobs.length}`);
    // distribution keeps storing in the background after the client is served: wait, so
    // that work is counted as its CPU and does not slow down the next server's pull.
    if (role !== 'direct') await caches![role].settled(this.image.blobs.map((b) => b.digest));
    return { ms: s.ms, cpuMs: cpuMs(pid) - cpu0 };
  }

  private caches: Record<CacheRole, Cache> | undefined;

  private async coldPulls(): Promise<Record<PullRole, Timed>> {
    this.rss.beginPhase('cold-pull');
    const runs: Record<PullRole, number[]> = { mirror: [], distribution: [], direct: [] };
    const cpu: Record<PullRole, number[]> = { mirror: [], distribution: [], direct: [] };
    // The upstream's files are read once before timing, as every later pull finds them in
    // the page cache.
    await this.pullOnce('direct', undefined);
    for (let i = 0; i < this.p.repeat; i++) {
      if (this.caches) for (const c of Object.values(this.caches)) await this.stopCache(c);
      this.caches = await this.startCaches();
      // Rotate the order so drift in the machine's load does not always hit the same server.
      for (const role of rotate<PullRole>(['direct', 'mirror', 'distribution'], i)) {
        const r = await this.pullOnce(role, this.caches);
        runs[role].push(r.ms);
        cpu[role].push(r.cpuMs);
        log(`cold pull ${i + 1}/${this.p.repeat} ${role}: ${(r.ms / 1000).toFixed(2)} s, server CPU ${r.cpuMs.toFixed(0)} ms`);
      }
    }
    this.rss.endPhase();
    return timed(runs, cpu);
  }

  private async warmPulls(): Promise<Record<PullRole, Timed>> {
    const caches = this.caches!;
    const digests = this.image.blobs.map((b) => b.digest);
    for (const c of Object.values(caches)) await c.settled(digests);
    this.rss.beginPhase('warm-pull');
    const runs: Record<PullRole, number[]> = { mirror: [], distribution: [], direct: [] };
    const cpu: Record<PullRole, number[]> = { mirror: [], distribution: [], direct: [] };
    for (let i = 0; i < this.p.repeat; i++) {
      for (const role of rotate<PullRole>(['direct', 'mirror', 'distribution'], i)) {
        const r = await this.pullOnce(role, caches);
        runs[role].push(r.ms);
        cpu[role].push(r.cpuMs);
        log(`warm pull ${i + 1}/${this.p.repeat} ${role}: ${(r.ms / 1000).toFixed(2)} s, server CPU ${r.cpuMs.toFixed(0)} ms`);
      }
    }
    this.rss.endPhase();
    return timed(runs, cpu);
  }

  // ---- (2): the big blob ---------------------------------------------------------------

  private async blobThroughput(): Promise<{
    one: Record<'mirror' | 'distribution' | 'direct' | 'static', number>;
    many: Record<'mirror' | 'distribution' | 'direct' | 'static', number>;
    upstreamDuringWarm: Record<CacheRole, number>;
    cpuPerGiB: { one: Record<'mirror' | 'distribution' | 'direct' | 'static', number>; many: Record<'mirror' | 'distribution' | 'direct' | 'static', number> };
  }> {
    const caches = this.caches!;
    const size = this.fixtures.blob.layers[0]!.size;
    const hex = this.blobDigest.slice(7);
    const urls = {
      mirror: `${caches.mirror.url}/v2/${BLOB_REPO}/blobs/${this.blobDigest}`,
      distribution: `${caches.distribution.url}/v2/${BLOB_REPO}/blobs/${this.blobDigest}`,
      direct: `${this.upstream.url}/v2/${BLOB_REPO}/blobs/${this.blobDigest}`,
      static: `${this.staticUrl}/blob/blobs/sha256/${hex}`,
    };
    if (statSync(join(this.fixtures.blob.layoutDir, 'blobs/sha256', hex)).size !== size) throw new Error('static file size mismatch');

    // Each cache fetches the blob once, untimed (the cold blob rows measure that, on fresh
    // caches); direct and static are read once too, so all four then serve from the page cache.
    for (const role of ['mirror', 'distribution'] as const) {
      await fetchBlob(this.agent, urls[role], { size, verify: false });
      await caches[role].settled([this.blobDigest]);
    }
    await fetchBlob(this.agent, urls.direct, { size, verify: false });
    await fetchBlob(this.agent, urls.static, { size, verify: false });

    this.rss.beginPhase('blob-warm');
    type Row = Record<'mirror' | 'distribution' | 'direct' | 'static', number[]>;
    const row = (): Row => ({ static: [], direct: [], mirror: [], distribution: [] });
    const one = row();
    const many = row();
    const cpuOne = row();
    const cpuMany = row();
    const upstreamDuringWarm = { mirror: 0, distribution: 0 };
    const GiB = 1 << 30;
    const measure = async (role: keyof Row, clients: number, speed: Row, cpu: Row): Promise<void> => {
      const pid = this.pidOf(role, caches);
      const c0 = cpuMs(pid);
      const r = await blobThroughput(this.agent, urls[role], clients, size);
      speed[role].push(r.mibps);
      cpu[role].push((cpuMs(pid) - c0) / (r.bytes / GiB));
      log(`warm blob, ${clients} client(s), ${role}: ${r.mibps.toFixed(0)} MiB/s, server CPU ${cpu[role].at(-1)!.toFixed(0)} ms/GiB`);
    };
    // BENCH_ROUNDS rounds, each server in a rotated order per round; medians are reported.
    for (let i = 0; i < this.p.rounds; i++) {
      for (const role of rotate(['static', 'direct', 'mirror', 'distribution'] as const, i)) {
        const from = await this.mark();
        await measure(role, 1, one, cpuOne);
        await measure(role, this.p.clients, many, cpuMany);
        if (role === 'mirror' || role === 'distribution') {
          // A warm cache must not go upstream for the blob at all.
          upstreamDuringWarm[role] += (await this.upstreamSince(from)).filter((e) => e.path.includes(`/blobs/${this.blobDigest}`)).length;
        }
      }
    }
    this.rss.endPhase();
    const med = (r: Row, digits: number) =>
      Object.fromEntries(Object.entries(r).map(([k, v]) => [k, round(median(v), digits)])) as Record<keyof Row, number>;
    return {
      one: med(one, 1),
      many: med(many, 1),
      upstreamDuringWarm,
      cpuPerGiB: { one: med(cpuOne, 0), many: med(cpuMany, 0) },
    };
  }

  // ---- (4): manifest by tag ------------------------------------------------------------

  private async manifestLoad(): Promise<Record<PullRole, ManifestLoad>> {
    const caches = this.caches!;
    this.rss.beginPhase('manifest');
    const out = {} as Record<PullRole, ManifestLoad>;
    for (const role of ['mirror', 'distribution', 'direct'] as const) {
      const url = `${this.urlOf(role, caches)}/v2/${IMAGE_REPO}/manifests/${BENCH_TAG}`;
      const opts: autocannon.Options = {
        url,
        connections: this.p.connections,
        headers: { accept: MANIFEST_ACCEPT, 'user-agent': BENCH_USER_AGENT },
      };
      if (this.p.warmupSeconds > 0) await autocannon({ ...opts, duration: this.p.warmupSeconds });
      const from = await this.mark();
      const r = await autocannon({ ...opts, duration: this.p.seconds });
      const upstreamRequests = role === 'direct' ? 0 : (await this.upstreamSince(from)).length;
      out[role] = {
        rps: round(r.requests.average),
        p50Ms: r.latency.p50,
        p99Ms: r.latency.p99,
        requests: r.requests.total,
        non2xx: r.non2xx,
        errors: r.errors,
        upstreamRequests,
      };
      log(`manifest by tag ${role}: ${out[role].rps} req/s, p50 ${out[role].p50Ms} ms, p99 ${out[role].p99Ms} ms, upstream requests ${upstreamRequests}`);
      if (r.non2xx > 0 || r.errors > 0) throw new Error(`manifest load on ${role}: ${r.non2xx} non-2xx answers, ${r.errors} errors`);
    }
    this.rss.endPhase();
    return out;
  }

  // ---- (3): many cold pulls at once ----------------------------------------------------

  private async concurrentColdPulls(): Promise<Record<PullRole, ConcurrentPulls>> {
    const digests = this.image.blobs.map((b) => b.digest);
    const ms: Record<PullRole, number[]> = { mirror: [], distribution: [], direct: [] };
    const gets: Record<CacheRole, Record<string, number[]>> = { mirror: {}, distribution: {} };
    const manifestRequests: Record<CacheRole, number[]> = { mirror: [], distribution: [] };
    const failedPulls: number[] = [];
    this.rss.beginPhase('concurrent-cold');
    for (let i = 0; i < this.p.rounds; i++) {
      await this.stopCaches();
      const caches = await this.startCaches();
      this.caches = caches;
      for (const role of rotate(['direct', 'mirror', 'distribution'] as const, i)) {
        const from = await this.mark();
        const base = this.urlOf(role, caches);
        const t0 = performance.now();
        let failed = 0;
        await Promise.all(
          Array.from({ length: this.p.pulls }, () =>
            pullImage(base, IMAGE_REPO, BENCH_TAG, { dispatcher: this.agent, verify: false, concurrency: BLOB_CONCURRENCY }).catch((err: unknown) => {
              // The reference proxy answers some concurrent cold requests with 500 (seen with
              // distribution 2.8.2): that is a figure to report, not a reason to stop the bench.
              // Our mirror and the upstream itself must not fail.
              if (role !== 'distribution') throw err;
              failed++;
            }),
          ),
        );
        ms[role].push(performance.now() - t0);
        if (role === 'distribution') failedPulls.push(failed);
        log(`${this.p.pulls} concurrent cold pulls ${role}: ${(ms[role].at(-1)! / 1000).toFixed(2)} s${failed ? `, ${failed} failed` : ''}`);
        if (role === 'direct') continue;
        // Let distribution's background stores finish: their GETs count, and they must not
        // run into the next server's turn. After failed pulls some blobs may never be stored.
        await (failed > 0 ? Promise.race([caches[role].settled(digests).catch(() => undefined), sleep(30_000)]) : caches[role].settled(digests));
        const upstream = await this.upstreamSince(from);
        for (const d of digests) (gets[role][d] ??= []).push(upstream.filter((e) => e.method === 'GET' && e.path.includes(`/blobs/${d}`)).length);
        manifestRequests[role].push(upstream.filter((e) => e.path.includes('/manifests/')).length);
        log(`  upstream GETs per blob via ${role}: ${digests.map((d) => gets[role][d]!.at(-1)).join(', ')}`);
      }
    }
    this.rss.endPhase();
    const out = { direct: { ms: round(median(ms.direct)), runs: ms.direct.map((v) => round(v)) } } as Record<PullRole, ConcurrentPulls>;
    for (const role of ['mirror', 'distribution'] as const) {
      const all = Object.values(gets[role]).flat();
      out[role] = {
        ms: round(median(ms[role])),
        runs: ms[role].map((v) => round(v)),
        // Per blob, the most any round needed.
        upstreamGetsPerBlob: Object.fromEntries(Object.entries(gets[role]).map(([d, v]) => [d, Math.max(...v)])),
        minGetsPerBlob: Math.min(...all),
        maxGetsPerBlob: Math.max(...all),
        upstreamManifestRequests: Math.max(...manifestRequests[role]),
      };
    }
    out.distribution.failedPulls = Math.max(0, ...failedPulls);
    return out;
  }

  // ---- (1) continued: cold blob rows -----------------------------------------------------

  /**
   * The cold blob rows, last in the run: for each run and row, fresh caches, then direct, the
   * mirror and distribution in a rotated order, each with every client starting at once.
   */
  private async coldBlobs(): Promise<ColdBlobRow[]> {
    await this.stopCaches();
    this.caches = undefined;
    const big = this.fixtures.blob.layers[0]!;
    const many = this.fixtures.many.layers;
    const specs: ColdSpec[] = [
      ...this.p.coldClients.map((n): ColdSpec => ({ id: `sameBlob${n}`, kind: 'same-blob', repo: BLOB_REPO, blobs: [big], requests: Array.from({ length: n }, () => big) })),
      { id: `manyBlobs${many.length}`, kind: 'different-blobs', repo: MANY_REPO, blobs: many, requests: many },
    ];
    // The upstream serves from the page cache in every run, as it does the big blob by now.
    for (const b of many) await fetchBlob(this.agent, `${this.upstream.url}/v2/${MANY_REPO}/blobs/${b.digest}`, { size: b.size, verify: false });

    type Acc = { ms: number[]; mibps: number[]; cpu: number[]; settled: number[]; gets: number[]; failed: number[] };
    const acc = specs.map(() => {
      const a = (): Acc => ({ ms: [], mibps: [], cpu: [], settled: [], gets: [], failed: [] });
      return { mirror: a(), distribution: a(), direct: a() } as Record<PullRole, Acc>;
    });
    for (let i = 0; i < this.p.repeat; i++) {
      for (const [k, spec] of specs.entries()) {
        this.rss.beginPhase(coldBlobPhase(spec.id));
        const caches = await this.startCaches();
        try {
          for (const role of rotate<PullRole>(['direct', 'mirror', 'distribution'], i + k)) {
            const r = await this.coldBlobOnce(role, caches, spec);
            const a = acc[k]![role];
            a.ms.push(r.ms);
            a.mibps.push(r.mibps);
            a.cpu.push(r.cpuMs);
            if (r.settledMs !== undefined) a.settled.push(r.settledMs);
            a.gets.push(...r.gets);
            a.failed.push(r.failed);
            log(
              `${coldRowName(rowShape(spec))} ${i + 1}/${this.p.repeat} ${role}: ${(r.ms / 1000).toFixed(2)} s, ${r.mibps.toFixed(0)} MiB/s, ` +
                `server CPU ${r.cpuMs.toFixed(0)} ms` +
                (r.settledMs !== undefined ? `, stored after ${(r.settledMs / 1000).toFixed(2)} s` : '') +
                (r.gets.length ? `, upstream GETs per blob ${r.gets.join(',')}` : '') +
                (r.failed ? `, ${r.failed} failed` : ''),
            );
          }
        } finally {
          await this.stopCaches();
          this.rss.endPhase();
        }
      }
    }
    return specs.map((spec, k): ColdBlobRow => {
      const figures = (role: PullRole): ColdBlobFigures => {
        const a = acc[k]![role];
        const f: ColdBlobFigures = {
          ms: round(median(a.ms)),
          runs: a.ms.map((v) => round(v)),
          mibps: round(median(a.mibps)),
          cpuMs: Math.round(median(a.cpu)),
          cpuRuns: a.cpu.map((v) => Math.round(v)),
        };
        if (role === 'direct') return f;
        if (a.settled.length) f.settledMs = round(median(a.settled));
        f.minGetsPerBlob = Math.min(...a.gets);
        f.maxGetsPerBlob = Math.max(...a.gets);
        f.failedRequests = Math.max(...a.failed);
        return f;
      };
      return { ...rowShape(spec), mirror: figures('mirror'), distribution: figures('distribution'), direct: figures('direct') };
    });
  }

  /**
   * One cold blob run against one server: every request starts at once; wall time until the
   * last byte of the last client; CPU of the server from before the first request until the
   * cache holds every blob (distribution finishes storing in the background).
   */
  private async coldBlobOnce(
    role: PullRole,
    caches: Record<CacheRole, Cache>,
    spec: ColdSpec,
  ): Promise<{ ms: number; mibps: number; cpuMs: number; settledMs?: number; gets: number[]; failed: number }> {
    const base = this.urlOf(role, caches);
    const pid = this.pidOf(role, caches);
    const from = role === 'direct' ? 0 : await this.mark();
    let bytes = 0;
    let failed = 0;
    const cpu0 = cpuMs(pid);
    const t0 = performance.now();
    await Promise.all(
      spec.requests.map((b) =>
        fetchBlob(this.agent, `${base}/v2/${spec.repo}/blobs/${b.digest}`, { size: b.size, verify: false }).then(
          (n) => void (bytes += n),
          (err: unknown) => {
            // As in (3): distribution's proxy may fail some concurrent cold requests, a figure
            // to report; the mirror and the upstream itself must not fail.
            if (role !== 'distribution') throw err;
            failed++;
          },
        ),
      ),
    );
    const ms = performance.now() - t0;
    let settledMs: number | undefined;
    if (role !== 'direct') {
      const settled = caches[role].settled(spec.blobs.map((b) => b.digest)).then(() => true);
      // After failed requests some blobs may never be stored: wait a while, not forever.
      const ok = await (failed > 0 ? Promise.race([settled.catch(() => false), sleep(30_000).then(() => false)]) : settled);
      if (ok) settledMs = performance.now() - t0;
    }
    const cpu = cpuMs(pid) - cpu0;
    let gets: number[] = [];
    if (role !== 'direct') {
      const upstream = await this.upstreamSince(from);
      gets = spec.blobs.map((b) => upstream.filter((e) => e.method === 'GET' && e.path.includes(`/blobs/${b.digest}`)).length);
    }
    return { ms, mibps: bytes / MiB / (ms / 1000), cpuMs: cpu, settledMs, gets, failed };
  }

  // ---- (6): the S3 store ------------------------------------------------------------------

  private async s3Section(): Promise<S3Result> {
    // The caches of (1)-(5) are stopped by now; the upstream and the fixtures stay.
    await this.stopCaches();
    return new S3Section({
      params: this.p,
      upstreamUrl: this.upstream.url,
      imageRepo: IMAGE_REPO,
      warmupRepo: WARMUP_REPO,
      tag: BENCH_TAG,
      image: this.image,
      warmupDigests: this.fixtures.warmup.layers.map((l) => l.digest),
      rss: this.rss,
      log,
    }).run();
  }

  private async versions(withCeph: boolean): Promise<BenchResult['software']> {
    const require = createRequire(import.meta.url);
    const pkg = JSON.parse(readFileSync(join(repoRoot(), 'package.json'), 'utf8')) as { version: string };
    let ac = 'unknown';
    try {
      ac = (JSON.parse(readFileSync(require.resolve('autocannon/package.json'), 'utf8')) as { version: string }).version;
    } catch {
      /* keep unknown */
    }
    const dist = await run('docker-registry', ['--version'], { allowFail: true }).catch(() => undefined);
    const software: BenchResult['software'] = { node: process.version, distribution: dist?.stdout.trim().split(' ').pop() ?? 'unknown', mirror: pkg.version, autocannon: ac };
    if (withCeph) {
      // "ceph version 16.2.15 (618f...) pacific (stable)"
      const ceph = await run('radosgw', ['--version'], { allowFail: true }).catch(() => undefined);
      software.ceph = /ceph version (\S+)/.exec(ceph?.stdout ?? '')?.[1] ?? 'unknown';
    }
    return software;
  }
}

/** A cold blob row to measure: which blobs, and one request per entry of `requests`. */
interface ColdSpec {
  id: string;
  kind: ColdBlobRow['kind'];
  repo: string;
  blobs: LayerInfo[];
  requests: LayerInfo[];
}

function rowShape(spec: ColdSpec): Pick<ColdBlobRow, 'id' | 'kind' | 'clients' | 'blobs' | 'blobMiB' | 'totalMiB'> {
  return {
    id: spec.id,
    kind: spec.kind,
    clients: spec.requests.length,
    blobs: spec.blobs.length,
    blobMiB: round(Math.max(...spec.blobs.map((b) => b.size)) / MiB, 2),
    totalMiB: round(spec.requests.reduce((n, b) => n + b.size, 0) / MiB, 2),
  };
}

function timed(runs: Record<PullRole, number[]>, cpu: Record<PullRole, number[]>): Record<PullRole, Timed> {
  const t = (v: number[], c: number[]): Timed => ({ ms: round(median(v)), runs: v.map((n) => round(n)), cpuMs: Math.round(median(c)) });
  return { mirror: t(runs.mirror, cpu.mirror), distribution: t(runs.distribution, cpu.distribution), direct: t(runs.direct, cpu.direct) };
}

/** `npm run bench -- fleet` (items 8 and 9 of issue 16) or `-- rollout` (item 9 alone): bench/fleet.ts. */
async function fleetMain(scenario: 'fleet' | 'rollout'): Promise<void> {
  const params = fleetParamsFromEnv(scenario);
  const started = loadavg();
  const result = await new FleetBench(params, log).run();
  const machine = { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', loadavgStart: started.map((v) => round(v, 2)), loadavgEnd: loadavg().map((v) => round(v, 2)) };
  mkdirSync(params.resultsDir, { recursive: true });
  const file = join(params.resultsDir, `${result.startedAt.replace(/[:.]/g, '-')}-${scenario}.json`);
  writeFileSync(file, JSON.stringify({ ...result, machine, node: process.version }, null, 2) + '\n');
  process.stdout.write(`\nregistry-mirror fleet bench (${result.sections.join(' + ')}) — ${result.startedAt}\n`);
  process.stdout.write(`${machine.cpus} × ${machine.cpuModel}, node ${process.version}, load average ${machine.loadavgStart[0]} at start, ${machine.loadavgEnd[0]} at end; took ${result.seconds} s\n`);
  process.stdout.write(`image: ${result.params.layersMiB.join(' + ')} MiB layers; parts of ${result.params.partMiB} MiB; client: ${result.params.client}\n\n`);
  process.stdout.write(renderFleetTables(result) + '\n');
  process.stdout.write(`\nresults: ${file}\n`);
}

async function main(): Promise<void> {
  const scenario = process.argv[2];
  if (scenario === 'fleet' || scenario === 'rollout') return fleetMain(scenario);
  if (scenario !== undefined) throw new Error(`unknown scenario ${scenario}: want none (the main bench), fleet or rollout`);
  const params = paramsFromEnv();
  const est = estimateSeconds(params);
  const parts = Object.entries(est)
    .filter(([k]) => k !== 'total')
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  log(`estimated duration on a 2-core machine: ~${Math.max(1, Math.round(est.total / 60))} min, ${est.total} s (${parts}); longer on a busy machine or when the fixtures are built first`);
  const result = await new Bench(params).run();
  mkdirSync(params.resultsDir, { recursive: true });
  const file = join(params.resultsDir, `${result.startedAt.replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  process.stdout.write(`\nregistry-mirror ${result.software.mirror} vs docker/distribution ${result.software.distribution} proxy — ${result.startedAt}\n`);
  process.stdout.write(
    `${result.machine.cpus} × ${result.machine.cpuModel}, node ${result.software.node}, load average ${result.machine.loadavgStart[0]} at start, ${result.machine.loadavgEnd[0]} at end; took ${result.seconds} s (estimated ${result.params.estimatedSeconds} s)\n`,
  );
  process.stdout.write(`client: ${result.params.client}\n`);
  const medians: string[] = [];
  if (result.sections.includes('main')) {
    medians.push(`of ${result.params.repeat} runs in (1) (cold pulls and cold blob rows, fresh caches each run) and (2), of ${result.params.rounds} round(s) for the warm blob throughput and (3)`);
  }
  if (result.s3) {
    medians.push(
      `of ${result.s3.repeat} round(s) in (6) (Ceph ${result.software.ceph} RGW on ${result.s3.objectStore}, up in ${(result.s3.cephStartMs / 1000).toFixed(1)} s; fresh prefixes each round; parts of ${result.s3.partMiB} MiB for both)`,
    );
  }
  process.stdout.write(`medians ${medians.join('; ')}\n\n`);
  process.stdout.write(renderTable(result) + '\n');
  process.stdout.write(`\nresults: ${file}\n`);
}

main().catch((err) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
