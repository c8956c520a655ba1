// A real upstream registry: Debian's docker-registry (docker/distribution 2.8.2) on loopback.
//
// Its access log is what tests count requests with ("did the warm pull reach the upstream?").
// distribution writes two request logs and they are not the same thing:
//  - stderr: logrus lines ("response completed"), in the configured formatter (json here);
//    written by the app handler only, so requests rejected before it (e.g. some auth paths)
//    can be missing.
//  - stdout: the access log proper, one Apache "combined" line per request from the outermost
//    handler (gorilla/handlers), whatever `log.formatter` says:
//      127.0.0.1 - - [25/Nov/2026:00:38:11 +0000] "HEAD /v2/x/manifests/v1?ns=docker.io HTTP/1.1" 404 96 "" "curl/7.88.1"
// We parse the combined lines. They are written after the response body has been handed to
// the socket, so a client can see its response before the line exists: count with
// waitForRequestCount(), or after the client is done and a short settle.
import { writeFileSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { stringify } from 'yaml';
import { freePort, tempDir, startProcess, waitForHttp, waitFor, type ProcessHandle } from './proc.js';

/**
 * distribution's `auth.token`: clients get a JWT from `realm` (see token-server.ts) and the
 * registry checks it was signed by a key in `rootCertBundle` (PEM certificates), names
 * `issuer` and has `service` as its audience.
 */
export interface TokenAuthOptions {
  realm: string;
  service: string;
  issuer: string;
  /** Path of a PEM file with the certificate(s) whose keys may sign tokens. */
  rootCertBundle: string;
}

export type RegistryAuth =
  /** Require HTTP basic auth against these users (bcrypt htpasswd). */
  | { htpasswd: { users: Record<string, string> } }
  | { token: TokenAuthOptions };

export interface RegistryOptions {
  auth?: RegistryAuth;
  /** Run as distribution's pull-through cache of this upstream (the benchmark's reference). */
  proxyRemoteUrl?: string;
  /**
   * Credentials for the remote. Beware: distribution 2.8.2's proxy only sends them to a
   * token-auth realm; against an htpasswd (basic) upstream it sends no Authorization at all
   * and answers 404 "manifest unknown" (seen here). Use an anonymous or token upstream.
   */
  proxyUsername?: string;
  proxyPassword?: string;
  /** Listen on this port (e.g. to come back where a previous instance was). */
  port?: number;
  /**
   * Address to listen on (default 127.0.0.1). Pods of the e2e cluster reach the host on the
   * CNI bridge address (10.88.0.1, the cluster rig's cni0), so an upstream for a mirror pod binds
   * there; the node's containerd reaches it there too.
   */
  listenHost?: string;
  /** Reuse this storage directory instead of a fresh temp dir. */
  dataDir?: string;
  /** Store in an S3 bucket with distribution's own s3 driver instead of a directory. */
  s3?: RegistryS3Storage;
}

/**
 * distribution 2.8's `storage.s3` (the s3-aws driver, aws-sdk-go v1), pointed at an
 * S3-compatible service. Facts checked against Debian's 2.8.2 and Ceph RGW 16.2.15:
 *  - 2.8 has no `forcepathstyle` key: a `regionendpoint` alone makes it address the bucket
 *    path-style (http://host/bucket/key), which is what RGW without rgw_dns_name needs.
 *  - aws-sdk-go v1 reads AWS_CA_BUNDLE and with it set panics at start-up ("unable to load
 *    custom CA bundle, HTTPClient's transport unsupported type"): it is unset for the process.
 *  - Objects live under <rootdirectory>/docker/registry/v2/ (blobs/, repositories/, and
 *    _uploads under each repository); a blob at blobs/sha256/<xx>/<hex>/data. A proxy also
 *    writes <rootdirectory>/scheduler-state.json. A stat is a ListObjects (max-keys=1), not a HEAD.
 *  - A blob is uploaded (multipart, `chunksize` parts) under the repository's _uploads/ and
 *    committed by a server-side copy to blobs/ (CopyObject up to multipartcopythresholdsize,
 *    32 MiB by default; above it UploadPartCopy in multipartcopychunksize pieces, 32 MiB),
 *    then the upload is deleted: every blob is written twice.
 *  - `storage.redirect.disable: false` (its default): blob GETs answer 307 to a presigned URL
 *    on `regionendpoint`; true streams them through the registry.
 */
export interface RegistryS3Storage {
  accessKey: string;
  secretKey: string;
  /** What to sign for (RGW takes any region in SigV4; us-east-1 needs no LocationConstraint). */
  region: string;
  /** http(s)://host:port of the service. */
  regionEndpoint: string;
  /** Must exist: distribution does not create it. */
  bucket: string;
  /** Key prefix, e.g. "/round-1" (default: the bucket's root). */
  rootDirectory?: string;
  /** Multipart part size in bytes (>= 5 MiB; distribution's default is 10 MiB). */
  chunkSize?: number;
  /** Answer blob GETs with 307 to a presigned S3 URL (distribution's default: true). */
  redirect?: boolean;
}

export interface AccessEntry {
  method: string;
  /** Path with query string, exactly as requested (e.g. "/v2/library/small/manifests/v1?ns=docker.io"). */
  path: string;
  status: number;
  /** Body bytes as the registry counted them; for HEAD, the Content-Length it announced. */
  bytes: number;
  userAgent: string;
}

export interface RegistryHandle {
  url: string;
  port: number;
  /** "127.0.0.1:PORT", for image references and skopeo. */
  host: string;
  dataDir: string;
  configFile: string;
  logFile: string;
  pid(): number;
  stop(): Promise<void>;
  /** SIGKILL, as a crash would. */
  kill9(): Promise<void>;
  /** Stop, then start again on the same port with the same storage. */
  restart(): Promise<void>;
  /** Every request the registry has logged since it was first started (restarts included). */
  requests(): Promise<AccessEntry[]>;
  countRequests(method: string, pathSubstring: string): Promise<number>;
  /** Waits until at least n matching requests are logged; returns the count. */
  waitForRequestCount(method: string, pathSubstring: string, n: number, timeoutMs?: number): Promise<number>;
  logText(): string;
}

const COMBINED_LINE = /^\S+ \S+ \S+ \[[^\]]+\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-) "[^"]*" "([^"]*)"/;

/** Parses the combined-format access lines out of a registry log; other lines are skipped. */
export function parseAccessLog(text: string): AccessEntry[] {
  const out: AccessEntry[] = [];
  for (const line of text.split('\n')) {
    const m = COMBINED_LINE.exec(line);
    if (!m) continue;
    out.push({ method: m[1]!, path: m[2]!, status: Number(m[3]), bytes: m[4] === '-' ? 0 : Number(m[4]), userAgent: m[5]! });
  }
  return out;
}

/** bcrypt htpasswd lines as distribution accepts them ($2y$/$2a$/$2b$ all verify in Go). */
export function htpasswd(users: Record<string, string>): string {
  // Cost 5: the registry checks the hash on every request; the default 10 makes each one
  // ~50 ms slower on this machine and tests do hundreds.
  return Object.entries(users)
    .map(([name, pw]) => `${name}:${bcrypt.hashSync(pw, 5)}`)
    .join('\n') + '\n';
}

function s3Storage(o: RegistryS3Storage): Record<string, unknown> {
  const endpoint = new URL(o.regionEndpoint);
  const s3: Record<string, unknown> = {
    accesskey: o.accessKey,
    secretkey: o.secretKey,
    region: o.region,
    regionendpoint: o.regionEndpoint.replace(/\/+$/, ''),
    bucket: o.bucket,
    secure: endpoint.protocol === 'https:',
    v4auth: true,
  };
  if (o.rootDirectory) s3.rootdirectory = o.rootDirectory.startsWith('/') ? o.rootDirectory : `/${o.rootDirectory}`;
  if (o.chunkSize !== undefined) s3.chunksize = o.chunkSize;
  return { s3, redirect: { disable: o.redirect === false } };
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<RegistryHandle> {
  const dir = tempDir('registry');
  const dataDir = opts.dataDir ?? join(dir, 'data');
  const port = opts.port ?? (await freePort());
  const host = `${opts.listenHost ?? '127.0.0.1'}:${port}`;
  const configFile = join(dir, 'config.yml');
  const logFile = join(dir, 'registry.log');

  const config: Record<string, unknown> = {
    version: 0.1,
    log: { level: 'info', formatter: 'json', accesslog: { disabled: false } },
    storage: {
      ...(opts.s3 ? s3Storage(opts.s3) : { filesystem: { rootdirectory: dataDir } }),
      delete: { enabled: true },
      // Tests read what they just wrote; no cache means no stale layer info after deletes.
      cache: {},
      maintenance: { uploadpurging: { enabled: false } },
    },
    // A fixed secret silences the "generated random secret" warning and keeps upload state
    // valid across restart().
    http: { addr: host, secret: 'registry-mirror-test-rig' },
  };
  if (opts.auth && 'htpasswd' in opts.auth) {
    const path = join(dir, 'htpasswd');
    writeFileSync(path, htpasswd(opts.auth.htpasswd.users));
    config.auth = { htpasswd: { realm: 'registry-mirror-test', path } };
  } else if (opts.auth && 'token' in opts.auth) {
    const t = opts.auth.token;
    config.auth = { token: { realm: t.realm, service: t.service, issuer: t.issuer, rootcertbundle: t.rootCertBundle } };
  }
  if (opts.proxyRemoteUrl) {
    const proxy: Record<string, string> = { remoteurl: opts.proxyRemoteUrl };
    if (opts.proxyUsername !== undefined) proxy.username = opts.proxyUsername;
    if (opts.proxyPassword !== undefined) proxy.password = opts.proxyPassword;
    config.proxy = proxy;
  }
  writeFileSync(configFile, stringify(config));

  let proc: ProcessHandle | undefined;
  const start = async (): Promise<void> => {
    // aws-sdk-go v1 panics on AWS_CA_BUNDLE (see RegistryS3Storage).
    const env = opts.s3 ? { AWS_CA_BUNDLE: undefined } : undefined;
    proc = startProcess({ cmd: 'docker-registry', args: ['serve', configFile], logFile, env });
    // /v2/ answers 401 when auth is on; any answer means the listener and storage are up.
    await waitForHttp(`http://${host}/v2/`, { timeoutMs: 15000, expectStatus: [200, 401], process: proc });
  };
  await start();

  const requests = async (): Promise<AccessEntry[]> => parseAccessLog(existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');
  const countRequests = async (method: string, pathSubstring: string): Promise<number> =>
    (await requests()).filter((r) => r.method === method.toUpperCase() && r.path.includes(pathSubstring)).length;

  return {
    url: `http://${host}`,
    port,
    host,
    dataDir,
    configFile,
    logFile,
    pid: () => proc?.pid ?? -1,
    async stop() {
      await proc?.stop(5000);
    },
    async kill9() {
      await proc?.kill9();
    },
    async restart() {
      await proc?.stop(5000);
      await start();
    },
    requests,
    countRequests,
    async waitForRequestCount(method, pathSubstring, n, timeoutMs = 5000) {
      let c = 0;
      try {
        await waitFor(async () => (c = await countRequests(method, pathSubstring)) >= n, timeoutMs);
      } catch {
        throw new Error(`registry log has ${c} x ${method} *${pathSubstring}*, wanted at least ${n} within ${timeoutMs} ms`);
      }
      return c;
    },
    logText: () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : ''),
  };
}
