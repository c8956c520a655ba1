// (6) The S3 section: registry-mirror with `storage.s3` side by side with docker/distribution's
// pull-through proxy on its own s3 storage driver, both on buckets of one Ceph RADOS Gateway
// (tools/launch/ceph.ts: Ceph 16.2 from Debian, started once per bench run, stopped at the end).
//
// Per round (BENCH_S3_REPEAT, each on a fresh prefix of each side's own bucket):
//   1. fresh caches (mirror redirect off, distribution `redirect.disable: true`), the warm-up
//      image pulled through each (untimed);
//   2. cold pull of the bench image through each, in a rotated order; the cache's CPU and the S3
//      service's (RGW + OSD) until every blob is at its final key;
//   3. warm pull through each, from a fresh client (new connections), the cache warm in the bucket;
//   4. both caches stopped and started again on the same prefixes with redirect on (the mirror's
//      `redirect: true`, distribution's default): the warm-up image pulled again (untimed, already
//      warm), then a warm pull by a fresh client that follows the 307s to RGW.
//
// What the S3 service did comes from RGW itself, never from the caches:
//   - requests: RGW's access log (beast), counted by method, ListObjects apart ("LIST"); the
//     bench's own requests (its admin client's user agent) and the client's presigned GETs (the
//     bench client's user agent) are told apart by User-Agent;
//   - bytes written: RGW's ops log (rgw_enable_ops_log, to a file), which records per operation
//     the object bytes stored: PutObject and UploadPart bodies, and for UploadPartCopy the range
//     copied; a CopyObject is logged with size 0, so its size is the destination object's, read
//     back with HeadObject once the pull has settled. Bytes written = uploaded + copied inside
//     the service; divided by the bytes of the image's blobs (manifests and records add a few
//     KiB, counted too).
import { CreateBucketCommand, HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { interceptors, type Dispatcher } from 'undici';
import type { BenchParams } from './params.js';
import { BENCH_USER_AGENT, benchAgent, pullImage } from './pull.js';
import { cpuMs, type RssTracker } from './rss.js';
import { median, rotate, round, type S3Figures, type S3Pull, type S3Result } from './report.js';
import { rgwClient, startCeph, type CephHandle, type RgwOp, type RgwRequest } from '../tools/launch/ceph.js';
import { startMirror, type MirrorHandle } from '../tools/launch/mirror.js';
import { startRegistry, type RegistryHandle } from '../tools/launch/registry.js';
import { sleep, waitFor } from '../tools/launch/proc.js';
import type { PushedImage } from '../tools/oci/oci-client.js';

const MiB = 1 << 20;
const GiB = 1 << 30;
/** The bench's own S3 requests (buckets, HEADs while settling) carry this in their User-Agent. */
const ADMIN_AGENT = 'registry-mirror-bench-admin';
export const S3_METHODS = ['GET', 'HEAD', 'LIST', 'PUT', 'POST', 'DELETE'] as const;

type Side = 'mirror' | 'distribution';

export interface S3SectionInput {
  params: BenchParams;
  upstreamUrl: string;
  imageRepo: string;
  warmupRepo: string;
  tag: string;
  /** The bench image: config + layers (blobs), and its manifest digest. */
  image: PushedImage;
  /** The warm-up image's blobs. */
  warmupDigests: string[];
  rss: RssTracker;
  log(msg: string): void;
}

interface S3Cache {
  side: Side;
  url: string;
  pid: number;
  stop(): Promise<void>;
  /** The key of a blob as this cache stores it. */
  blobKey(digest: string): string;
}

interface Window {
  access: number;
  ops: number;
}

/** What one measured pull cost in one round. */
interface Sample {
  ms: number;
  cpuMs: number;
  serviceCpuMs: number;
  settledMs?: number;
  requests: Record<string, number>;
  operations: Record<string, number>;
  clientGets: number;
  uploaded: number;
  copied: number;
}

export class S3Section {
  private ceph!: CephHandle;
  private admin!: S3Client;
  private readonly p: BenchParams;
  private readonly buckets: Record<Side, string> = { mirror: 'bench-mirror', distribution: 'bench-distribution' };
  private readonly live = new Set<S3Cache>();
  private readonly blobBytes: number;

  constructor(private readonly input: S3SectionInput) {
    this.p = input.params;
    this.blobBytes = input.image.blobs.reduce((n, b) => n + b.size, 0);
  }

  async run(): Promise<S3Result> {
    const { log } = this.input;
    const t0 = Date.now();
    // Room for every round's writes (distribution writes each blob twice; memstore keeps
    // deleted multipart tails until RGW's garbage collection, hours later).
    const need = (this.p.s3Repeat + 1) * 4 * this.blobBytes + GiB;
    this.ceph = await startCeph({
      mgr: false,
      objectStore: this.p.s3Store,
      storeBytes: Math.max(this.p.s3Store === 'memstore' ? 4 * GiB : 10 * GiB, need),
      opsLog: true,
    });
    const startMs = Date.now() - t0;
    try {
      const pids = this.ceph.pids();
      log(`S3: Ceph RGW ${this.ceph.endpoint} on ${this.p.s3Store} (rgw pid ${pids.rgw}, osd pid ${pids.osd}) up in ${(startMs / 1000).toFixed(1)} s`);
      this.admin = rgwClient(this.ceph, { customUserAgent: ADMIN_AGENT });
      for (const b of Object.values(this.buckets)) await this.admin.send(new CreateBucketCommand({ Bucket: b }));
      return await this.rounds(startMs);
    } finally {
      await this.stopCaches().catch((err: unknown) => log(`S3: stopping caches: ${String(err)}`));
      this.admin?.destroy();
      await this.ceph.stop();
    }
  }

  private async rounds(startMs: number): Promise<S3Result> {
    const { log, rss } = this.input;
    const acc = {
      cold: { mirror: [] as Sample[], distribution: [] as Sample[] },
      warm: { mirror: [] as Sample[], distribution: [] as Sample[] },
      redirect: { mirror: [] as Sample[], distribution: [] as Sample[] },
    };
    const pids = this.ceph.pids();
    rss.watch('rgw', pids.rgw!);
    rss.watch('osd', pids.osd!);
    rss.beginPhase('s3');
    try {
      for (let i = 0; i < this.p.s3Repeat; i++) {
        const prefix = `round-${i + 1}`;
        const order = rotate<Side>(['mirror', 'distribution'], i);
        let caches = await this.startCaches(prefix, false);
        for (const side of order) {
          const s = await this.measure(caches[side], 'cold');
          acc.cold[side].push(s);
          log(
            `S3 cold pull ${i + 1}/${this.p.s3Repeat} ${side}: ${(s.ms / 1000).toFixed(2)} s, stored after ${((s.settledMs ?? NaN) / 1000).toFixed(2)} s, ` +
              `CPU ${s.cpuMs.toFixed(0)} ms (S3 service ${s.serviceCpuMs.toFixed(0)} ms), ${s.requests.total} S3 requests (${fmtCounts(s.requests)}), ` +
              `written ${((s.uploaded + s.copied) / this.blobBytes).toFixed(3)}x the blob bytes (uploaded ${(s.uploaded / MiB).toFixed(1)} MiB, copied ${(s.copied / MiB).toFixed(1)} MiB)`,
          );
        }
        for (const side of order) {
          const s = await this.measure(caches[side], 'warm');
          acc.warm[side].push(s);
          log(`S3 warm pull ${i + 1}/${this.p.s3Repeat} ${side}: ${(s.ms / 1000).toFixed(2)} s, CPU ${s.cpuMs.toFixed(0)} ms, ${s.requests.total} S3 requests (${fmtCounts(s.requests)})`);
        }
        await this.stopCaches();
        caches = await this.startCaches(prefix, true);
        for (const side of order) {
          const s = await this.measure(caches[side], 'redirect');
          acc.redirect[side].push(s);
          log(
            `S3 warm pull with redirect ${i + 1}/${this.p.s3Repeat} ${side}: ${(s.ms / 1000).toFixed(2)} s, CPU ${s.cpuMs.toFixed(0)} ms, ` +
              `${s.requests.total} S3 requests by the cache (${fmtCounts(s.requests)}), ${s.clientGets} presigned GETs by the client`,
          );
        }
        await this.stopCaches();
      }
    } finally {
      rss.endPhase();
      rss.unwatch(pids.rgw!);
      rss.unwatch(pids.osd!);
    }
    const blobs = this.input.image.blobs.length;
    const figures = (side: Side): S3Figures => ({
      cold: {
        ...pullFigures(acc.cold[side], blobs),
        settledMs: round(median(acc.cold[side].map((s) => s.settledMs ?? NaN))),
        bytesWrittenPerBlobByte: round(median(acc.cold[side].map((s) => (s.uploaded + s.copied) / this.blobBytes)), 3),
        bytesWrittenRuns: acc.cold[side].map((s) => round((s.uploaded + s.copied) / this.blobBytes, 3)),
        bytesUploadedPerBlobByte: round(median(acc.cold[side].map((s) => s.uploaded / this.blobBytes)), 3),
        bytesCopiedPerBlobByte: round(median(acc.cold[side].map((s) => s.copied / this.blobBytes)), 3),
      },
      warm: pullFigures(acc.warm[side], blobs),
      redirect: { ...pullFigures(acc.redirect[side], blobs), clientGetsPerBlob: round(median(acc.redirect[side].map((s) => s.clientGets / blobs)), 2) },
    });
    return {
      objectStore: this.p.s3Store,
      cephStartMs: startMs,
      repeat: this.p.s3Repeat,
      partMiB: round(this.p.s3PartBytes / MiB, 2),
      blobs,
      blobMiB: round(this.blobBytes / MiB, 2),
      requestsMethod:
        "RGW's access log (beast), per method, ListObjects as LIST; the bench's own requests and the client's presigned GETs told apart by User-Agent; divided by the image's blobs (config + layers), so manifest and tag handling count too",
      bytesMethod:
        "RGW's ops log: object bytes stored by PutObject/UploadPart (body) and UploadPartCopy (range), plus each CopyObject's destination size (HeadObject after the pull); divided by the bytes of the image's blobs",
      mirror: figures('mirror'),
      distribution: figures('distribution'),
    };
  }

  // ---- caches ---------------------------------------------------------------------------

  private async startCaches(prefix: string, redirect: boolean): Promise<Record<Side, S3Cache>> {
    const { log, rss } = this.input;
    const ceph = this.ceph;
    const m: MirrorHandle = await startMirror({
      logLevel: 'info',
      defaultUpstream: 'docker.io',
      upstreams: { 'docker.io': { url: this.input.upstreamUrl } },
      cache: { tagTTL: '5m' },
      v1: { enabled: false },
      storage: {
        s3: {
          bucket: this.buckets.mirror,
          endpoint: ceph.endpoint,
          region: ceph.region,
          forcePathStyle: true,
          prefix,
          accessKeyId: ceph.accessKeyId,
          secretAccessKey: ceph.secretAccessKey,
          partSize: this.p.s3PartBytes,
          redirect,
        },
      },
    });
    const mirror: S3Cache = {
      side: 'mirror',
      url: m.url,
      pid: m.pid(),
      stop: async () => void (await m.stop()),
      blobKey: (d) => `${prefix}/blobs/sha256/${d.slice(7, 9)}/${d.slice(7)}`,
    };
    this.live.add(mirror);
    const d: RegistryHandle = await startRegistry({
      proxyRemoteUrl: this.input.upstreamUrl,
      s3: {
        accessKey: ceph.accessKeyId,
        secretKey: ceph.secretAccessKey,
        region: ceph.region,
        regionEndpoint: ceph.endpoint,
        bucket: this.buckets.distribution,
        rootDirectory: `/${prefix}`,
        chunkSize: this.p.s3PartBytes,
        redirect,
      },
    });
    const distribution: S3Cache = {
      side: 'distribution',
      url: d.url,
      pid: d.pid(),
      stop: () => d.stop(),
      blobKey: (dg) => `${prefix}/docker/registry/v2/blobs/sha256/${dg.slice(7, 9)}/${dg.slice(7)}/data`,
    };
    this.live.add(distribution);
    for (const c of [mirror, distribution]) {
      // Untimed: the small warm-up image (cold the first time, warm after the restart).
      const from = this.mark();
      await this.pull(c, this.input.warmupRepo, redirect);
      await this.settled(c, this.input.warmupDigests);
      // distribution deletes its upload after the copy: let RGW fall quiet before measuring.
      await this.since(from);
      rss.watch(`${c.side}-s3`, c.pid);
    }
    log(`S3: fresh caches on prefix ${prefix}${redirect ? ', redirect on' : ''}: mirror ${m.url} (pid ${m.pid()}), distribution ${d.url} (pid ${d.pid()})`);
    return { mirror, distribution };
  }

  private async stopCaches(): Promise<void> {
    for (const c of [...this.live]) {
      this.live.delete(c);
      this.input.rss.unwatch(c.pid);
      await c.stop();
    }
  }

  /** A pull by a fresh client (its own connections); with redirect, one that follows 307s. */
  private async pull(c: S3Cache, repo: string, followRedirects: boolean): Promise<number> {
    const agent = benchAgent();
    const dispatcher: Dispatcher = followRedirects ? agent.compose(interceptors.redirect({ maxRedirections: 3 })) : agent;
    try {
      const s = await pullImage(c.url, repo, this.input.tag, { dispatcher, verify: true });
      return s.ms;
    } finally {
      await agent.close();
    }
  }

  /** Resolves when every blob is at its final key in the cache's bucket. */
  private async settled(c: S3Cache, digests: string[]): Promise<void> {
    const bucket = this.buckets[c.side];
    const pending = new Set(digests);
    await waitFor(
      async () => {
        for (const dg of [...pending]) if (await this.exists(bucket, c.blobKey(dg))) pending.delete(dg);
        if (pending.size) await sleep(50);
        return pending.size === 0;
      },
      300_000,
      `${c.side} to store the blobs in its bucket`,
    );
  }

  private async exists(bucket: string, key: string): Promise<boolean> {
    return (await this.objectSize(bucket, key)) !== undefined;
  }

  private async objectSize(bucket: string, key: string): Promise<number | undefined> {
    try {
      const h = await this.admin.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
      return h.ContentLength ?? 0;
    } catch (err) {
      const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (status === 404) return undefined;
      throw err;
    }
  }

  // ---- one measured pull ------------------------------------------------------------------

  private mark(): Window {
    return { access: this.ceph.rgwRequests().length, ops: this.ceph.rgwOps().length };
  }

  /** RGW's logs since `from`, once both have stopped growing (RGW writes a line after the answer). */
  private async since(from: Window): Promise<{ access: RgwRequest[]; ops: RgwOp[] }> {
    let last = '';
    let access: RgwRequest[] = [];
    let ops: RgwOp[] = [];
    let stableFor = 0;
    await waitFor(
      async () => {
        await sleep(250);
        access = this.ceph.rgwRequests();
        ops = this.ceph.rgwOps();
        const now = `${access.length}/${ops.length}`;
        stableFor = now === last ? stableFor + 1 : 0;
        last = now;
        // Quiet for 1 s, and the ops log has caught up with the access log (or quiet for 3 s).
        return stableFor >= 12 || (stableFor >= 4 && ops.length - from.ops >= access.length - from.access);
      },
      120_000,
      "RGW's logs to settle",
    );
    return { access: access.slice(from.access), ops: ops.slice(from.ops) };
  }

  private async measure(c: S3Cache, kind: 'cold' | 'warm' | 'redirect'): Promise<Sample> {
    const service = Object.values(this.ceph.pids());
    const serviceCpu = () => service.reduce((n, pid) => n + cpuMs(pid), 0);
    const from = this.mark();
    const cpu0 = cpuMs(c.pid);
    const svc0 = serviceCpu();
    const t0 = performance.now();
    const ms = await this.pull(c, this.input.imageRepo, kind === 'redirect');
    let settledMs: number | undefined;
    if (kind === 'cold') {
      await this.settled(c, this.input.image.blobs.map((b) => b.digest));
      settledMs = performance.now() - t0;
    }
    const cpu = cpuMs(c.pid) - cpu0;
    const serviceCpuMs = serviceCpu() - svc0;
    const logs = await this.since(from);
    // This cache's own requests: in its bucket, not the bench's (admin, or the client's
    // presigned GETs). The other cache is idle, but this keeps a late request of its out.
    const bucket = this.buckets[c.side];
    const mine = (r: { path: string }) => r.path.startsWith(`/${bucket}/`) || r.path.startsWith(`/${bucket}?`) || r.path === `/${bucket}`;
    const byCache = (r: { path: string; userAgent: string }) => mine(r) && !r.userAgent.includes(ADMIN_AGENT) && r.userAgent !== BENCH_USER_AGENT;
    const cacheRequests = logs.access.filter(byCache);
    const clientGets = logs.access.filter((r) => mine(r) && r.userAgent === BENCH_USER_AGENT).length;
    if (kind === 'redirect' && clientGets < this.input.image.blobs.length) {
      throw new Error(`S3 warm pull with redirect through ${c.side}: the client made ${clientGets} GETs at RGW for ${this.input.image.blobs.length} blobs (no redirect?)`);
    }
    const requests: Record<string, number> = Object.fromEntries(S3_METHODS.map((m) => [m, 0]));
    for (const r of cacheRequests) requests[methodOf(r)] = (requests[methodOf(r)] ?? 0) + 1;
    requests.total = cacheRequests.length;
    const cacheOps = logs.ops.filter(byCache);
    const operations: Record<string, number> = {};
    for (const o of cacheOps) operations[o.operation] = (operations[o.operation] ?? 0) + 1;
    let uploaded = 0;
    let copied = 0;
    for (const o of cacheOps) {
      if (o.status < 200 || o.status > 299) continue;
      if (o.operation === 'put_obj') {
        // PutObject and UploadPart: the body; UploadPartCopy: the range copied (no body).
        if (o.bytesReceived > 0) uploaded += o.objectSize;
        else copied += o.objectSize;
      } else if (o.operation === 'copy_obj') {
        const size = await this.copiedSize(o.path);
        copied += size;
      }
    }
    // Every write the access log shows must be in the ops log, or the bytes are not all counted
    // (seen: a streamed GET the cache stopped reading can be missing from the ops log; writes
    // never were). A shortfall makes the figure NaN, a visible miss, rather than a low count.
    const writes = (xs: Array<{ method: string }>) => xs.filter((x) => x.method === 'PUT' || x.method === 'POST').length;
    if (writes(cacheOps) !== writes(cacheRequests)) {
      this.input.log(`S3: ${c.side}: ${writes(cacheRequests)} writes in RGW's access log but ${writes(cacheOps)} in its ops log: bytes written not counted`);
      uploaded = copied = NaN;
    }
    return { ms, cpuMs: cpu, serviceCpuMs, settledMs, requests, operations, clientGets, uploaded, copied };
  }

  /** A CopyObject's size: its destination's, read back (RGW logs a copy with size 0). */
  private async copiedSize(path: string): Promise<number> {
    const [bucket, ...rest] = decodeURIComponent(path.split('?')[0]!.slice(1)).split('/');
    const size = await this.objectSize(bucket!, rest.join('/'));
    if (size === undefined) throw new Error(`S3: the destination of a CopyObject is gone (${path}): its size cannot be counted`);
    return size;
  }
}

/** GET/HEAD/PUT/POST/DELETE, and LIST for a GET of the bucket itself (ListObjects). */
export function methodOf(r: RgwRequest): string {
  const path = r.path.split('?')[0]!;
  if (r.method === 'GET' && /^\/[^/]+\/?$/.test(path)) return 'LIST';
  return r.method;
}

function fmtCounts(c: Record<string, number>): string {
  return S3_METHODS.filter((m) => c[m]).map((m) => `${m} ${c[m]}`).join(', ');
}

function pullFigures(samples: Sample[], blobs: number): S3Pull {
  const perBlob: Record<string, number> = {};
  for (const key of [...S3_METHODS, 'total']) perBlob[key] = round(median(samples.map((s) => (s.requests[key] ?? 0) / blobs)), 2);
  const operations: Record<string, number> = {};
  for (const op of new Set(samples.flatMap((s) => Object.keys(s.operations)))) {
    operations[op] = round(median(samples.map((s) => (s.operations[op] ?? 0) / blobs)), 2);
  }
  return {
    ms: round(median(samples.map((s) => s.ms))),
    runs: samples.map((s) => round(s.ms)),
    cpuMs: Math.round(median(samples.map((s) => s.cpuMs))),
    serviceCpuMs: Math.round(median(samples.map((s) => s.serviceCpuMs))),
    requestsPerBlob: perBlob,
    operationsPerBlob: operations,
  };
}
