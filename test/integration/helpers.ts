// Small client-side helpers the mirror's integration tests share: fetch a blob while hashing
// it, and look at the store on disk.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { prngBytes } from '../../tools/oci/layout.js';
import { MANIFEST_ACCEPT, MEDIA } from '../../tools/oci/oci-client.js';

export interface Fetched {
  status: number;
  headers: Headers;
  digest?: string;
  bytes: number;
  /** Set when the body ended abnormally (aborted, reset). */
  error?: string;
}

/** GETs a URL and hashes the body as it streams, never holding it in memory. */
export async function fetchHashed(url: string, init: RequestInit = {}): Promise<Fetched> {
  const res = await fetch(url, init);
  const hash = createHash('sha256');
  let bytes = 0;
  try {
    if (res.body) {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        hash.update(chunk);
        bytes += chunk.length;
      }
    }
  } catch (err) {
    return { status: res.status, headers: res.headers, bytes, error: String((err as Error).cause ?? err) };
  }
  return { status: res.status, headers: res.headers, bytes, digest: `sha256:${hash.digest('hex')}` };
}

export function blobPath(dataDir: string, digest: string): string {
  const [alg, hex] = digest.split(':') as [string, string];
  return join(dataDir, 'blobs', alg, hex.slice(0, 2), hex);
}

export function isCached(dataDir: string, digest: string): boolean {
  return existsSync(blobPath(dataDir, digest));
}

/**
 * Whether the blob gets committed within `ms`: a cold blob is written, fsynced and renamed
 * into the store just after its client got the last byte, not before (store/download.ts).
 */
export async function cachedSoon(dataDir: string, digest: string, ms = 10_000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!isCached(dataDir, digest)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

/** Resolves once no download is in flight: every blob pulled so far is committed (or failed). */
export async function downloadsSettled(mirrorUrl: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (metricValue(await getMetrics(mirrorUrl), 'registry_mirror_inflight_downloads') !== 0) {
    if (Date.now() > deadline) throw new Error(`downloads still in flight after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Pulls an image (tag v1) and waits until it is stored, then 20 ms more: eviction tests pull
 * images one after another and need each in the store, with distinct access times whatever
 * the clock's resolution.
 */
export async function pullStored(mirrorUrl: string, repository: string, digest: string): Promise<void> {
  const r = await pullImage(mirrorUrl, '', repository, 'v1');
  assert.equal(r.manifestDigest, digest);
  await downloadsSettled(mirrorUrl);
  await new Promise((r) => setTimeout(r, 20));
}

export function tempFiles(dataDir: string): string[] {
  const dir = join(dataDir, 'tmp');
  return existsSync(dir) ? readdirSync(dir) : [];
}

export async function ociError(res: Response): Promise<string | undefined> {
  const body = (await res.json().catch(() => undefined)) as { errors?: Array<{ code: string }> } | undefined;
  return body?.errors?.[0]?.code;
}

/** Sends a request with the path exactly as given (fetch would normalize "%2e%2e" away). */
export function rawRequest(base: string, path: string, method = 'GET'): Promise<{ status: number; body: string }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path, method }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

export type { Stats as MirrorStats } from '../../mirror/metrics.js';
import type { Stats as MirrorStats } from '../../mirror/metrics.js';

export async function getStats(mirrorUrl: string): Promise<MirrorStats> {
  return (await (await fetch(`${mirrorUrl}/stats`)).json()) as MirrorStats;
}

export async function getMetrics(mirrorUrl: string): Promise<string> {
  return (await fetch(`${mirrorUrl}/metrics`)).text();
}

/**
 * The value of one sample in Prometheus exposition text: `name` with exactly these labels
 * (order-insensitive). Undefined when the series is absent (a counter never incremented).
 */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).sort().join(',');
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = (m[2] ?? '').split(/,(?=[a-zA-Z_]\w*=")/).filter(Boolean).sort().join(',');
    if (have === want) return Number(m[3]);
  }
  return undefined;
}

/** A manifest GET through the mirror (or any registry): status, digest of the body, bytes. */
export async function getManifestVia(base: string, path: string, accept = MANIFEST_ACCEPT, headers: Record<string, string> = {}) {
  const res = await fetch(`${base}${path}`, { headers: { accept, ...headers } });
  const body = Buffer.from(await res.arrayBuffer());
  return { status: res.status, headers: res.headers, body, digest: `sha256:${createHash('sha256').update(body).digest('hex')}` };
}

export interface PulledImage {
  manifestDigest: string;
  /** Bytes of the manifest plus every blob, as served. */
  bytes: number;
}

/**
 * Pulls a single-platform image the way a client does (manifest by tag, then config and
 * layers), verifying every digest. `prefix` is the path before the repository: "" for the
 * default upstream, "registry.example.test/" for a path-prefixed one; `query` e.g. "?ns=x".
 */
export async function pullImage(base: string, prefix: string, repository: string, tag: string, query = '', headers: Record<string, string> = {}): Promise<PulledImage> {
  const m = await getManifestVia(base, `/v2/${prefix}${repository}/manifests/${tag}${query}`, MANIFEST_ACCEPT, headers);
  if (m.status !== 200) throw new Error(`manifest ${prefix}${repository}:${tag}: ${m.status} ${m.body.toString('utf8').slice(0, 300)}`);
  const json = JSON.parse(m.body.toString('utf8')) as { config: { digest: string }; layers: Array<{ digest: string }> };
  let bytes = m.body.length;
  for (const d of [json.config.digest, ...json.layers.map((l) => l.digest)]) {
    const b = await fetchHashed(`${base}/v2/${prefix}${repository}/blobs/${d}${query}`, { headers });
    if (b.status !== 200 || b.digest !== d) throw new Error(`blob ${d} of ${prefix}${repository}:${tag}: status ${b.status}, got ${b.digest}, ${b.error ?? ''}`);
    bytes += b.bytes;
  }
  return { manifestDigest: m.digest, bytes };
}

export interface RandomImage {
  repository: string;
  tag: string;
  digest: string;
  manifestSize: number;
  config: { digest: string; size: number };
  layers: Array<{ digest: string; size: number }>;
  /** Manifest + config + layers. */
  totalBytes: number;
}

/**
 * Pushes an OCI image made of random layers of the given sizes straight through the
 * registry API (monolithic uploads): exact, known sizes for the size-bound tests.
 */
export async function pushRandomImage(registryUrl: string, repository: string, tag: string, layerSizes: number[], seed: string): Promise<RandomImage> {
  const putBlob = async (bytes: Buffer): Promise<{ digest: string; size: number }> => {
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    const start = await fetch(`${registryUrl}/v2/${repository}/blobs/uploads/`, { method: 'POST' });
    await start.arrayBuffer();
    if (start.status !== 202) throw new Error(`upload start ${repository}: ${start.status}`);
    const loc = new URL(start.headers.get('location')!, registryUrl);
    loc.searchParams.set('digest', digest);
    const put = await fetch(loc, { method: 'PUT', body: new Uint8Array(bytes), headers: { 'content-type': 'application/octet-stream' } });
    await put.arrayBuffer();
    if (put.status !== 201) throw new Error(`upload ${repository}@${digest}: ${put.status}`);
    return { digest, size: bytes.length };
  };
  const layers = [];
  for (const [i, size] of layerSizes.entries()) layers.push(await putBlob(prngBytes(`${seed}-layer-${i}`, size)));
  const config = await putBlob(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) }, seed })));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA.ociManifest,
      config: { mediaType: MEDIA.ociConfig, digest: config.digest, size: config.size },
      layers: layers.map((l) => ({ mediaType: MEDIA.ociLayerTar, digest: l.digest, size: l.size })),
    }),
  );
  const res = await fetch(`${registryUrl}/v2/${repository}/manifests/${tag}`, { method: 'PUT', body: new Uint8Array(manifest), headers: { 'content-type': MEDIA.ociManifest } });
  await res.arrayBuffer();
  if (res.status !== 201) throw new Error(`manifest ${repository}:${tag}: ${res.status}`);
  const digest = `sha256:${createHash('sha256').update(manifest).digest('hex')}`;
  const totalBytes = manifest.length + config.size + layers.reduce((n, l) => n + l.size, 0);
  return { repository, tag, digest, manifestSize: manifest.length, config, layers, totalBytes };
}

export function manifestPath(dataDir: string, digest: string): string {
  const [alg, hex] = digest.split(':') as [string, string];
  return join(dataDir, 'manifests', alg, hex.slice(0, 2), hex);
}

/** Every file under blobs/ and manifests/ (relative paths), to check nothing stray is left. */
export function storeFiles(dataDir: string): string[] {
  const out: string[] = [];
  const walk = (dir: string, rel: string) => {
    if (!existsSync(dir)) return;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(dir, e.name), `${rel}${e.name}/`);
      else out.push(`${rel}${e.name}`);
    }
  };
  walk(join(dataDir, 'blobs'), 'blobs/');
  walk(join(dataDir, 'manifests'), 'manifests/');
  return out.sort();
}
