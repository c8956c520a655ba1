// The benchmark's client: pulls an image the way containerd does, in-process over undici,
// so the same client measures the mirror, distribution's proxy and the upstream itself.
//
// Why not skopeo or ctr: each pull would start a Go process and write the image to disk,
// and 50 of them at once on 2 cores measure mostly the clients. This one does what
// containerd's fetcher does on the wire and nothing else:
//   HEAD manifests/<tag> (resolve) -> GET manifests/<digest> -> (index: the linux/amd64
//   child) -> config and layers with 3 blob GETs at a time (containerd's default
//   max_concurrent_downloads), each body checked for size and, with verify, sha256.
// Every request carries BENCH_USER_AGENT so the upstream's access log can tell the bench's
// own direct requests from those the caches make.
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Agent, request, type Dispatcher } from 'undici';
import { MANIFEST_ACCEPT, isIndex, sha256, type Descriptor, type ManifestJson } from '../tools/oci/oci-client.js';

export const BENCH_USER_AGENT = 'registry-mirror-bench/1';
export const BLOB_CONCURRENCY = 3;

/** One pool for the whole run: keep-alive like a real client, no cap on sockets per host. */
export function benchAgent(): Agent {
  return new Agent({ keepAliveTimeout: 10_000, headersTimeout: 300_000, bodyTimeout: 300_000 });
}

export interface PullOptions {
  dispatcher: Dispatcher;
  /** sha256 every blob body (as containerd does); off: sizes only. */
  verify: boolean;
  concurrency?: number;
}

export interface PullStats {
  ms: number;
  /** Blob bytes received (manifests not counted). */
  bytes: number;
  blobs: number;
}

async function send(
  dispatcher: Dispatcher,
  method: 'GET' | 'HEAD',
  url: string,
  headers: Record<string, string> = {},
): Promise<Dispatcher.ResponseData> {
  return request(url, { method, dispatcher, headers: { 'user-agent': BENCH_USER_AGENT, ...headers } });
}

async function failure(res: Dispatcher.ResponseData, what: string): Promise<Error> {
  const text = await res.body.text().catch(() => '');
  return new Error(`${what}: HTTP ${res.statusCode} ${text.slice(0, 300)}`);
}

async function getManifest(dispatcher: Dispatcher, base: string, repo: string, ref: string): Promise<{ bytes: Buffer; json: ManifestJson; mediaType: string }> {
  const url = `${base}/v2/${repo}/manifests/${ref}`;
  const res = await send(dispatcher, 'GET', url, { accept: MANIFEST_ACCEPT });
  if (res.statusCode !== 200) throw await failure(res, `GET ${url}`);
  const bytes = Buffer.from(await res.body.arrayBuffer());
  if (ref.startsWith('sha256:') && sha256(bytes) !== ref) throw new Error(`GET ${url}: body does not match the digest`);
  const json = JSON.parse(bytes.toString('utf8')) as ManifestJson;
  const ct = res.headers['content-type'];
  return { bytes, json, mediaType: (typeof ct === 'string' ? ct : undefined) ?? json.mediaType ?? '' };
}

/** GETs one blob to the end, counting (and with verify, hashing) the bytes; returns the byte count. */
export async function fetchBlob(dispatcher: Dispatcher, url: string, expect: { digest?: string; size?: number; verify: boolean }): Promise<number> {
  const res = await send(dispatcher, 'GET', url);
  if (res.statusCode !== 200) throw await failure(res, `GET ${url}`);
  const hash = expect.verify ? createHash('sha256') : undefined;
  let n = 0;
  for await (const chunk of res.body as AsyncIterable<Buffer>) {
    n += chunk.length;
    hash?.update(chunk);
  }
  if (expect.size !== undefined && n !== expect.size) throw new Error(`GET ${url}: got ${n} bytes, expected ${expect.size}`);
  if (hash && expect.digest && `sha256:${hash.digest('hex')}` !== expect.digest) throw new Error(`GET ${url}: body does not match ${expect.digest}`);
  return n;
}

async function eachLimit<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Pulls base/v2/repo:ref like containerd; throws on any error, wrong size or wrong digest. */
export async function pullImage(base: string, repo: string, ref: string, opts: PullOptions): Promise<PullStats> {
  const { dispatcher } = opts;
  const t0 = performance.now();
  const headUrl = `${base}/v2/${repo}/manifests/${ref}`;
  const head = await send(dispatcher, 'HEAD', headUrl, { accept: MANIFEST_ACCEPT });
  await head.body.dump();
  if (head.statusCode !== 200) throw new Error(`HEAD ${headUrl}: HTTP ${head.statusCode}`);
  const digest = head.headers['docker-content-digest'];
  let m = await getManifest(dispatcher, base, repo, typeof digest === 'string' ? digest : ref);
  if (isIndex(m.mediaType)) {
    const child = (m.json.manifests ?? []).find((d) => d.platform?.os === 'linux' && d.platform.architecture === 'amd64');
    if (!child) throw new Error(`${headUrl}: index has no linux/amd64 manifest`);
    m = await getManifest(dispatcher, base, repo, child.digest);
  }
  const blobs: Descriptor[] = [m.json.config!, ...(m.json.layers ?? [])];
  let bytes = 0;
  await eachLimit(blobs, opts.concurrency ?? BLOB_CONCURRENCY, async (d) => {
    // Not `bytes += await ...`: that reads `bytes` before the await and loses the other
    // transfers' additions made meanwhile.
    const n = await fetchBlob(dispatcher, `${base}/v2/${repo}/blobs/${d.digest}`, { digest: d.digest, size: d.size, verify: opts.verify });
    bytes += n;
  });
  return { ms: performance.now() - t0, bytes, blobs: blobs.length };
}

export interface ThroughputStats {
  ms: number;
  bytes: number;
  /** Aggregate MiB/s over all clients (total bytes / wall time). */
  mibps: number;
}

/** `clients` concurrent GETs of one blob URL, bytes counted (not hashed: the server is measured). */
export async function blobThroughput(dispatcher: Dispatcher, url: string, clients: number, size: number): Promise<ThroughputStats> {
  const t0 = performance.now();
  const got = await Promise.all(Array.from({ length: clients }, () => fetchBlob(dispatcher, url, { size, verify: false })));
  const ms = performance.now() - t0;
  const bytes = got.reduce((a, b) => a + b, 0);
  return { ms, bytes, mibps: bytes / (1 << 20) / (ms / 1000) };
}
