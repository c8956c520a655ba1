// A real Ceph cluster with a RADOS Gateway (S3 API) on loopback, from Debian's packages
// (Ceph 16.2 "Pacific": ceph-mon, ceph-mgr, ceph-osd, radosgw, ceph-common; installed by
// test/rig/install-deps.sh, whose policy keeps every ceph systemd unit from starting).
//
// One throwaway single-node cluster per startCeph(): one mon (msgr v2 only, on a free
// 127.0.0.1 port), one mgr (optional), one OSD on memstore (RAM, the default) or BlueStore on
// a sparse file, and radosgw with the beast frontend on another free 127.0.0.1 port. Every
// process runs in the foreground (-f) as a child of the test process and is stopped by pid.
// Conf, keyrings, mon/osd/mgr/rgw data, admin sockets, pid files, logs and crash dumps all live
// in one temp dir; nothing reads or writes /etc/ceph, /var/lib/ceph or /var/run/ceph (every
// command gets -c CONF and CEPH_CONF, and the conf points every path into the temp dir).
//
// Facts this module relies on, checked against Debian's 16.2.15:
//  - paxos_propose_interval (default 1 s) paces every mon change. RGW creates its pools one by
//    one at first start and the OSD sends two crush commands at boot: with the default RGW
//    answered 11.5 s after the daemons were spawned, with 0.01 s it answers in about 1 s.
//  - osd_pool_default_pg_num is 32 and mon_max_pg_per_osd 250: RGW's 7 pools (the last,
//    default.rgw.buckets.non-ec, comes with the first multipart upload) make 224 PGs on the
//    one OSD (that works), 26 short of the limit: one more pool of 32 would be refused. 8 each.
//  - mgr_initial_modules defaults to "restful iostat nfs"; restful would want a certificate
//    and a port. Only iostat here (the always-on modules do not listen).
//  - The mon writes its cluster and audit logs to /var/log/ceph whatever log_file says:
//    mon_cluster_log_file moves them.
//  - mon_data_avail_crit (5 %): a mon refuses to start when the temp dir's disk has less
//    free space than that; set to 0 so a nearly full test disk does not look like a Ceph bug.
//  - BlueStore's bluestore_block_path is where the OSD's `block` symlink points: a path inside
//    osd_data named `block` makes the symlink point at itself (mkfs: ELOOP).
//  - osd_fast_shutdown (default on): SIGTERM ends an OSD at once, memstore is not dumped to disk.
//  - RGW's bucket lifecycle workers sleep 5 s between lock attempts and held a SIGTERM up for
//    5-8 s; with rgw_enable_lc_threads off RGW exits in ~0.1-0.2 s, and the whole cluster stops
//    in ~0.5 s (the mgr sometimes ends by re-raising SIGTERM: an exit "by a signal").
//  - After RGW is killed with SIGKILL, its watches stay for osd_client_watch_timeout (30 s):
//    the next CreateBucket (a metadata change notifies every watcher) waited 29.6 s.
//  - RGW has no rgw_dns_name here: path-style addressing only (forcePathStyle). Its zonegroup
//    is "default"; SigV4 signed for region us-east-1 is accepted, and clients that sign for
//    us-east-1 send no LocationConstraint with CreateBucket.
//  - curl --aws-sigv4 (7.88) needs `x-amz-content-sha256` sent as a header (RGW answers
//    SignatureDoesNotMatch without it) and signs a query parameter without a value (`?uploads`)
//    differently from RGW: write `?uploads=`.
import { mkdirSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes, randomUUID } from 'node:crypto';
import { S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { freePort, removeTempDir, run, sleep, startProcess, tail, tempDir, type ProcessHandle, type RunResult } from './proc.js';

export type CephObjectStore = 'memstore' | 'bluestore';

export interface CephOptions {
  /**
   * memstore (default): objects in the OSD's RAM; about 1 s from spawn to RGW answering; the
   * OSD's RSS grows with the data written (about 2x: 200 MB written, +390 MB).
   * bluestore: a sparse file in the temp dir, real disk I/O and a bounded RSS
   * (osd_memory_target 1 GiB); about 10 s to RGW answering (mkfs and rocksdb).
   */
  objectStore?: CephObjectStore;
  /** memstore_device_bytes or the BlueStore file's size (sparse). Default 4 GiB / 10 GiB. */
  storeBytes?: number;
  /** Run a ceph-mgr (default true). RGW does not need one; it costs about 300 MB of RSS. */
  mgr?: boolean;
  /** RGW's port (default: a free one). */
  rgwPort?: number;
  /**
   * The address RGW listens on (default 127.0.0.1). The e2e cluster's pods reach the host on
   * its bridge address (test/rig/cluster.ts BRIDGE_IP), never on loopback. Everything else
   * (mon, OSD, mgr) stays on loopback.
   */
  rgwHost?: string;
  /** The S3 user's keys (default: random). */
  accessKeyId?: string;
  secretAccessKey?: string;
  /** How long to wait for RGW to answer HTTP (default 90 s). */
  timeoutMs?: number;
  /** Write RGW's ops log (one JSON record per S3 operation) to a file: rgwOps(). */
  opsLog?: boolean;
}

export type CephDaemon = 'mon' | 'mgr' | 'osd' | 'rgw';

export interface RgwRequest {
  method: string;
  /** Path and query as requested, e.g. "/bucket/key?uploadId=..." */
  path: string;
  status: number;
  /** Response bytes RGW sent. */
  bytes: number;
  /** The authenticated user id, or "anonymous". */
  user: string;
  /** The User-Agent header as RGW logged it ("" when the line has none). */
  userAgent: string;
}

/**
 * One record of RGW's ops log (startCeph({ opsLog: true })): what RGW did per S3 operation.
 * Unlike the access log it has the request body bytes RGW received and the object size an
 * operation wrote. Seen on 16.2.15: `put_obj` covers PutObject, UploadPart and
 * UploadPartCopy (objectSize: the bytes stored, the copied range for a part copy, whose
 * bytesReceived is 0); `copy_obj` (CopyObject) records objectSize 0 whatever it copied.
 */
export interface RgwOp {
  /** RGW's name for it: put_obj, copy_obj, get_obj (GET and HEAD), list_bucket, init_multipart, ... */
  operation: string;
  method: string;
  /** Path and query, e.g. "/bucket/key?partNumber=1&uploadId=..." (RGW logs the query twice; once here). */
  path: string;
  status: number;
  bytesReceived: number;
  bytesSent: number;
  objectSize: number;
  user: string;
  userAgent: string;
}

export interface CephHandle {
  /** http://RGWHOST:PORT (127.0.0.1 unless rgwHost), path-style. */
  endpoint: string;
  host: string;
  port: number;
  /** What to sign with (RGW's zonegroup is "default"; it takes any region in SigV4). */
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** The S3 user's uid (radosgw-admin). */
  userId: string;
  fsid: string;
  objectStore: CephObjectStore;
  /** The temp dir holding everything; removed by stop(). */
  dataDir: string;
  confFile: string;
  /** Live processes' pids (a stopped RGW is absent). */
  pids(): Partial<Record<CephDaemon, number>>;
  /** Milliseconds since startCeph() was called. */
  timings: {
    /** keys, monmap, mon mkfs, mon up, `osd new`, OSD mkfs: up to the spawning of OSD/mgr/RGW. */
    setupMs: number;
    /** RGW's first HTTP answer. */
    rgwAnswerMs: number;
    /** The S3 user exists: the cluster is ready for clients. */
    readyMs: number;
  };
  /** VmRSS in bytes of each live daemon. */
  rss(): Partial<Record<CephDaemon, number>>;
  /** Runs the ceph CLI against this cluster. */
  ceph(args: string[], opts?: { timeoutMs?: number; allowFail?: boolean }): Promise<RunResult>;
  /** Runs radosgw-admin against this cluster. */
  radosgwAdmin(args: string[], opts?: { timeoutMs?: number; allowFail?: boolean }): Promise<RunResult>;
  /** Another S3 user (e.g. one without access to a bucket). */
  createUser(uid: string): Promise<{ accessKeyId: string; secretAccessKey: string }>;
  /** Stops RGW only (SIGTERM, then SIGKILL), as an S3 outage; the cluster stays up. */
  stopRgw(): Promise<void>;
  /**
   * SIGKILL to RGW only. Its watches on the control objects outlive it until the OSD times them
   * out (osd_client_watch_timeout, 30 s): meanwhile object reads and writes work, but a change
   * that notifies them (CreateBucket, a user created) waits for that (seen: 29.6 s).
   */
  kill9Rgw(): Promise<void>;
  /** Starts RGW again on the same port; resolves when it answers. */
  startRgw(): Promise<void>;
  /** Every request RGW has logged (beast's access lines), restarts included. */
  rgwRequests(): RgwRequest[];
  /** Every record of RGW's ops log so far (empty unless started with opsLog). */
  rgwOps(): RgwOp[];
  /** A daemon's log file and its stdout/stderr, tailed. */
  logTail(daemon: CephDaemon, lines?: number): string;
  /** Stops rgw, then mgr and osd, then mon, by pid (SIGTERM, SIGKILL after 10 s); removes dataDir. */
  stop(): Promise<void>;
  /** After stop(): how long each daemon took to exit, and how it ended. */
  stopReport: Partial<Record<CephDaemon, string>>;
}

const GiB = 1024 ** 3;
const STOP_GRACE_MS = 10000;
const NAMES: Record<CephDaemon, string> = { mon: 'mon.a', mgr: 'mgr.x', osd: 'osd.0', rgw: 'client.rgw' };

// beast's access line, in the daemon log at debug_rgw 1 (the default):
// ... beast: 0x7f..: 127.0.0.1 - testuser [01/Dec/2026:02:50:30.860 +0000] "GET /b/k HTTP/1.1" 200 231 - "curl/7.88.1" - latency=0.003999999s
const BEAST_LINE = / beast: \S+ \S+ - (\S+) \[[^\]]+\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)(?: \S+ "([^"]*)")?/;

export function parseRgwAccessLog(text: string): RgwRequest[] {
  const out: RgwRequest[] = [];
  for (const line of text.split('\n')) {
    const m = BEAST_LINE.exec(line);
    if (!m) continue;
    out.push({ user: m[1]!, method: m[2]!, path: m[3]!, status: Number(m[4]), bytes: m[5] === '-' ? 0 : Number(m[5]), userAgent: m[6] ?? '' });
  }
  return out;
}

/**
 * Parses RGW's ops log file. 16.2.15 writes one JSON object per record but, with requests
 * completing at once, some records follow each other on one line with no newline between
 * them (`...}{"bucket":...`): the text is split into top-level objects by scanning braces
 * outside strings, not by lines. An object still being written at the end is left out.
 */
export function parseRgwOpsLog(text: string): RgwOp[] {
  const out: RgwOp[] = [];
  let depth = 0;
  let inString = false;
  let escaped = false;
  let start = -1;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    if (inString) {
      if (escaped) escaped = false;
      else if (ch === 0x5c /* \ */) escaped = true;
      else if (ch === 0x22 /* " */) inString = false;
      continue;
    }
    if (ch === 0x22) inString = true;
    else if (ch === 0x7b /* { */) {
      if (depth++ === 0) start = i;
    } else if (ch === 0x7d /* } */ && depth > 0 && --depth === 0) {
      const op = opFromJson(text.slice(start, i + 1));
      if (op) out.push(op);
    }
  }
  return out;
}

function opFromJson(json: string): RgwOp | undefined {
  let r: Record<string, unknown>;
  try {
    r = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  // "uri": "PUT /b/k?partNumber=1&uploadId=x?partNumber=1&uploadId=x HTTP/1.1"
  const [method = '', target = ''] = String(r.uri ?? '').split(' ');
  const q = target.indexOf('?');
  const path = q < 0 ? target : target.slice(0, q) + '?' + target.slice(q + 1).split('?')[0];
  return {
    operation: String(r.operation ?? ''),
    method,
    path,
    status: Number(r.http_status),
    bytesReceived: Number(r.bytes_received ?? 0),
    bytesSent: Number(r.bytes_sent ?? 0),
    objectSize: Number(r.object_size ?? 0),
    user: String(r.user ?? ''),
    userAgent: String(r.user_agent ?? ''),
  };
}

function cephConf(o: {
  dir: string;
  fsid: string;
  monPort: number;
  rgwPort: number;
  rgwHost: string;
  objectStore: CephObjectStore;
  storeBytes: number;
  opsLog: boolean;
}): string {
  const d = o.dir;
  const store =
    o.objectStore === 'memstore'
      ? [`osd_objectstore = memstore`, `memstore_device_bytes = ${o.storeBytes}`]
      : [
          `osd_objectstore = bluestore`,
          // Outside osd_data: mkfs makes osd_data/block a symlink to this path.
          `bluestore_block_path = ${d}/osd/block-0.img`,
          `bluestore_block_create = true`,
          `bluestore_block_size = ${o.storeBytes}`,
          `bluestore_block_db_create = false`,
          `bluestore_block_wal_create = false`,
          `bluestore_fsck_on_mount = false`,
          `osd_memory_target = ${GiB}`,
        ];
  return [
    '[global]',
    `fsid = ${o.fsid}`,
    `mon_host = v2:127.0.0.1:${o.monPort}`,
    'mon_initial_members = a',
    // Loopback only, msgr v2 only: the OSD and mgr bind 127.0.0.1 ports from 6800 up.
    'public_addr = 127.0.0.1',
    'cluster_addr = 127.0.0.1',
    'ms_bind_msgr1 = false',
    'ms_bind_msgr2 = true',
    'auth_cluster_required = cephx',
    'auth_service_required = cephx',
    'auth_client_required = cephx',
    `keyring = ${d}/keyring`,
    `run_dir = ${d}/run`,
    `admin_socket = ${d}/run/$cluster-$name.asok`,
    `pid_file = ${d}/run/$cluster-$name.pid`,
    `log_file = ${d}/log/$cluster-$name.log`,
    // The mon's cluster and audit logs default to /var/log/ceph/ceph.log and ceph.audit.log.
    `mon_cluster_log_file = default=${d}/log/$cluster.$channel.log cluster=${d}/log/$cluster.log`,
    `crash_dir = ${d}/crash`,
    `mon_data = ${d}/mon/$cluster-$id`,
    `osd_data = ${d}/osd/$cluster-$id`,
    `mgr_data = ${d}/mgr/$cluster-$id`,
    `rgw_data = ${d}/rgw/$cluster-$id`,
    ...store,
    'osd_pool_default_size = 1',
    'osd_pool_default_min_size = 1',
    'osd_pool_default_pg_num = 8',
    'osd_pool_default_pgp_num = 8',
    'osd_pool_default_pg_autoscale_mode = off',
    'osd_crush_chooseleaf_type = 0',
    'osd_crush_initial_weight = 1',
    'mon_allow_pool_size_one = true',
    'mon_allow_pool_delete = true',
    'mon_warn_on_pool_no_redundancy = false',
    'mon_data_avail_crit = 0',
    'mon_data_avail_warn = 0',
    'mgr_initial_modules = iostat',
    'paxos_propose_interval = 0.01',
    'auth_allow_insecure_global_id_reclaim = false',
    '',
    '[client.rgw]',
    `rgw_frontends = beast endpoint=${o.rgwHost}:${o.rgwPort}`,
    // Bucket lifecycle workers sleep 5 s between lock attempts and hold up a SIGTERM by up to
    // ~8 s; the mirror expires its own objects and sweeps its own uploads, so they are off.
    'rgw_enable_lc_threads = false',
    ...(o.opsLog ? ['rgw_enable_ops_log = true', 'rgw_ops_log_rados = false', `rgw_ops_log_file_path = ${d}/log/rgw-ops.log`] : []),
    '',
  ].join('\n');
}

/**
 * An S3 client of the cluster's user, path-style, for tests and the bench to create buckets and
 * look inside them. RGW 16 refuses the SDK's default aws-chunked checksum trailers (411), so
 * checksums are sent only where an operation requires them.
 */
export function rgwClient(c: CephHandle, extra: Partial<S3ClientConfig> = {}): S3Client {
  return new S3Client({
    endpoint: c.endpoint,
    region: c.region,
    forcePathStyle: true,
    credentials: { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    ...extra,
  });
}

export async function startCeph(opts: CephOptions = {}): Promise<CephHandle> {
  const t0 = Date.now();
  const objectStore = opts.objectStore ?? 'memstore';
  const storeBytes = opts.storeBytes ?? (objectStore === 'memstore' ? 4 * GiB : 10 * GiB);
  const withMgr = opts.mgr ?? true;
  const dir = tempDir('ceph');
  for (const sub of ['run', 'log', 'crash', 'mon/ceph-a', 'osd/ceph-0', 'mgr/ceph-x', 'rgw/ceph-rgw']) {
    mkdirSync(join(dir, sub), { recursive: true });
  }
  const [monPort, rgwPort] = [await freePort(), opts.rgwPort ?? (await freePort())];
  const fsid = randomUUID();
  const confFile = join(dir, 'ceph.conf');
  const keyring = join(dir, 'keyring');
  const rgwHost = opts.rgwHost ?? '127.0.0.1';
  writeFileSync(confFile, cephConf({ dir, fsid, monPort, rgwPort, rgwHost, objectStore, storeBytes, opsLog: opts.opsLog ?? false }));
  const env = { CEPH_CONF: confFile, CEPH_ARGS: undefined };
  const tool = (cmd: string, args: string[], o: { timeoutMs?: number; allowFail?: boolean } = {}): Promise<RunResult> =>
    run(cmd, ['-c', confFile, ...args], { env, timeoutMs: o.timeoutMs ?? 60000, allowFail: o.allowFail });

  const procs: Partial<Record<CephDaemon, ProcessHandle>> = {};
  const spawnDaemon = (daemon: CephDaemon): ProcessHandle => {
    const [cmd, args]: [string, string[]] =
      daemon === 'rgw' ? ['radosgw', ['-n', NAMES.rgw]] : [`ceph-${daemon}`, ['-i', NAMES[daemon].split('.')[1]!]];
    const p = startProcess({ cmd, args: ['-c', confFile, '-f', ...args], env, logFile: join(dir, 'log', `${daemon}.out`) });
    procs[daemon] = p;
    return p;
  };
  const logTail = (daemon: CephDaemon, lines = 25): string => {
    const log = join(dir, 'log', `ceph-${NAMES[daemon]}.log`);
    const out = join(dir, 'log', `${daemon}.out`);
    const read = (f: string): string => (existsSync(f) ? readFileSync(f, 'utf8') : '');
    return `--- ${daemon} log\n${tail(read(log), lines)}\n--- ${daemon} stdout/stderr\n${tail(read(out), lines)}`;
  };
  let stopped = false;
  const stopReport: Partial<Record<CephDaemon, string>> = {};
  const stopAll = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    try {
      // RGW first (a client of the cluster), then the OSD and mgr, which tell the mon they go,
      // then the mon. Every one by its pid.
      const timed = async (name: CephDaemon): Promise<void> => {
        const p = procs[name];
        if (!p) return;
        const t = Date.now();
        const code = await p.stop(STOP_GRACE_MS);
        stopReport[name] = `${Date.now() - t} ms, ${code === null ? 'ended by a signal' : `exit ${code}`}`;
      };
      await timed('rgw');
      await Promise.all([timed('osd'), timed('mgr')]);
      await timed('mon');
    } finally {
      removeTempDir(dir);
    }
  };

  try {
    // Keys: mon., client.admin and one per daemon, with their caps, in one keyring. The mon's
    // mkfs imports them all into its auth database, so no `ceph auth` call is needed later.
    const keys: Array<[string, string[]]> = [
      ['mon.', ['mon', 'allow *']],
      ['client.admin', ['mon', 'allow *', 'osd', 'allow *', 'mgr', 'allow *', 'mds', 'allow *']],
      ['osd.0', ['mon', 'allow profile osd', 'mgr', 'allow profile osd', 'osd', 'allow *']],
      ['mgr.x', ['mon', 'allow profile mgr', 'osd', 'allow *', 'mds', 'allow *']],
      ['client.rgw', ['mon', 'allow rw', 'osd', 'allow rwx', 'mgr', 'allow rw']],
    ];
    for (const [i, [name, caps]] of keys.entries()) {
      const capArgs: string[] = [];
      for (let c = 0; c < caps.length; c += 2) capArgs.push('--cap', caps[c]!, caps[c + 1]!);
      await run('ceph-authtool', [...(i === 0 ? ['--create-keyring'] : []), keyring, '--gen-key', '-n', name, ...capArgs], { env });
    }
    const monmap = join(dir, 'monmap');
    await run('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', `[v2:127.0.0.1:${monPort}]`, monmap], { env });
    await tool('ceph-mon', ['--mkfs', '-i', 'a', '--monmap', monmap, '--keyring', keyring]);
    const mon = spawnDaemon('mon');

    // The OSD's id must exist in the osdmap before it boots (`osd new` waits for the mon);
    // its mkfs is local and runs meanwhile (2.5 s for BlueStore, 30 ms for memstore).
    const osdUuid = randomUUID();
    await Promise.all([
      tool('ceph', ['osd', 'new', osdUuid, '0']).catch((err: Error) => {
        throw new Error(`${err.message}\n${logTail('mon')}`);
      }),
      tool('ceph-osd', ['--mkfs', '-i', '0', '--osd-uuid', osdUuid]).catch((err: Error) => {
        throw new Error(`${err.message}\n${logTail('osd')}`);
      }),
    ]);
    const setupMs = Date.now() - t0;
    const osd = spawnDaemon('osd');
    const mgr = withMgr ? spawnDaemon('mgr') : undefined;
    // RGW creates its realm/zonegroup/zone and pools at first start; it blocks until the OSD
    // is up, so it is started at once and its HTTP answer is the readiness signal for all.
    const endpoint = `http://${rgwHost}:${rgwPort}`;
    const timeoutMs = opts.timeoutMs ?? 90000;
    const waitRgw = async (watch: Array<[CephDaemon, ProcessHandle | undefined]>): Promise<void> => {
      const deadline = Date.now() + timeoutMs;
      let last = 'no answer yet';
      for (;;) {
        for (const [name, p] of watch) {
          if (p && !p.alive()) throw new Error(`ceph ${name} (pid ${p.pid}) exited during bring-up\n${logTail(name)}`);
        }
        try {
          const res = await fetch(`${endpoint}/`, { signal: AbortSignal.timeout(3000) });
          await res.arrayBuffer();
          if (res.status === 200) return;
          last = `status ${res.status}`;
        } catch (err) {
          last = (err as Error).message;
        }
        if (Date.now() > deadline) {
          throw new Error(`RGW did not answer ${endpoint} within ${timeoutMs} ms (${last})\n${logTail('rgw')}\n${logTail('osd')}`);
        }
        await sleep(100);
      }
    };
    spawnDaemon('rgw');
    await waitRgw([['mon', mon], ['osd', osd], ['mgr', mgr], ['rgw', procs.rgw]]);
    const rgwAnswerMs = Date.now() - t0;

    const createUser = async (uid: string, ak?: string, sk?: string) => {
      const accessKeyId = ak ?? randomBytes(10).toString('hex').toUpperCase();
      const secretAccessKey = sk ?? randomBytes(20).toString('base64url');
      const r = await tool('radosgw-admin', [
        'user', 'create', '--uid', uid, '--display-name', uid, '--access-key', accessKeyId, '--secret-key', secretAccessKey,
      ]);
      const info = JSON.parse(r.stdout) as { keys: Array<{ access_key: string; secret_key: string }> };
      if (!info.keys.some((k) => k.access_key === accessKeyId && k.secret_key === secretAccessKey)) {
        throw new Error(`radosgw-admin user create ${uid} did not keep the given keys: ${r.stdout}`);
      }
      return { accessKeyId, secretAccessKey };
    };
    const userId = 'rig';
    const user = await createUser(userId, opts.accessKeyId, opts.secretAccessKey);
    const readyMs = Date.now() - t0;

    return {
      endpoint,
      host: `${rgwHost}:${rgwPort}`,
      port: rgwPort,
      region: 'us-east-1',
      ...user,
      userId,
      fsid,
      objectStore,
      dataDir: dir,
      confFile,
      pids() {
        const out: Partial<Record<CephDaemon, number>> = {};
        for (const [name, p] of Object.entries(procs) as Array<[CephDaemon, ProcessHandle]>) if (p.alive()) out[name] = p.pid;
        return out;
      },
      timings: { setupMs, rgwAnswerMs, readyMs },
      rss() {
        const out: Partial<Record<CephDaemon, number>> = {};
        for (const [name, p] of Object.entries(procs) as Array<[CephDaemon, ProcessHandle]>) {
          if (!p.alive()) continue;
          try {
            const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p.pid}/status`, 'utf8'));
            if (m) out[name] = Number(m[1]) * 1024;
          } catch {
            /* exited meanwhile */
          }
        }
        return out;
      },
      ceph: (args, o) => tool('ceph', args, o),
      radosgwAdmin: (args, o) => tool('radosgw-admin', args, o),
      createUser: (uid) => createUser(uid),
      async stopRgw() {
        await procs.rgw?.stop(10000);
      },
      async kill9Rgw() {
        await procs.rgw?.kill9();
      },
      async startRgw() {
        if (procs.rgw?.alive()) return;
        spawnDaemon('rgw');
        await waitRgw([['rgw', procs.rgw]]);
      },
      rgwRequests() {
        const f = join(dir, 'log', `ceph-${NAMES.rgw}.log`);
        return parseRgwAccessLog(existsSync(f) ? readFileSync(f, 'utf8') : '');
      },
      rgwOps() {
        const f = join(dir, 'log', 'rgw-ops.log');
        return parseRgwOpsLog(existsSync(f) ? readFileSync(f, 'utf8') : '');
      },
      logTail,
      stop: stopAll,
      stopReport,
    };
  } catch (err) {
    await stopAll().catch(() => undefined);
    throw err;
  }
}
