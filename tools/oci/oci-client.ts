// Just enough of a registry client for the tests and the bench to ask a registry (or the
// mirror) what it holds: manifests with the right Accept headers, blobs, digests, and what an
// image pushed under a tag consists of (describePushed). Real clients (skopeo, containerd) do
// the pulling that matters; this is for assertions and bookkeeping.
import { createHash } from 'node:crypto';

export const MEDIA = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerTar: 'application/vnd.oci.image.layer.v1.tar',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

/** What containerd sends (every type it can use), so a registry never converts or 404s on us. */
export const MANIFEST_ACCEPT = [MEDIA.ociIndex, MEDIA.dockerList, MEDIA.ociManifest, MEDIA.dockerManifest, '*/*'].join(', ');

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { architecture: string; os: string; variant?: string };
  annotations?: Record<string, string>;
}

export interface ManifestJson {
  schemaVersion: number;
  mediaType?: string;
  config?: Descriptor;
  layers?: Descriptor[];
  manifests?: Descriptor[];
}

export interface ClientOptions {
  /** "user:password" for basic auth. */
  creds?: string;
  headers?: Record<string, string>;
}

export function sha256(data: Buffer | string): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

function headersFor(opts: ClientOptions, extra: Record<string, string> = {}): Record<string, string> {
  const h: Record<string, string> = { ...extra, ...opts.headers };
  if (opts.creds) h.authorization = 'Basic ' + Buffer.from(opts.creds).toString('base64');
  return h;
}

/** baseUrl like "http://127.0.0.1:5000". */
function manifestUrl(baseUrl: string, repo: string, ref: string): string {
  return `${baseUrl.replace(/\/$/, '')}/v2/${repo}/manifests/${ref}`;
}

export interface ManifestHead {
  status: number;
  digest: string | null;
  mediaType: string | null;
  size: number | null;
}

export async function headManifest(baseUrl: string, repo: string, ref: string, opts: ClientOptions = {}): Promise<ManifestHead> {
  const res = await fetch(manifestUrl(baseUrl, repo, ref), { method: 'HEAD', headers: headersFor(opts, { accept: MANIFEST_ACCEPT }) });
  const len = res.headers.get('content-length');
  return {
    status: res.status,
    digest: res.headers.get('docker-content-digest'),
    mediaType: res.headers.get('content-type'),
    size: len === null ? null : Number(len),
  };
}

export interface FetchedManifest {
  digest: string;
  mediaType: string;
  bytes: Buffer;
  json: ManifestJson;
  /** Docker-Content-Digest as the server sent it (may be null on some servers). */
  headerDigest: string | null;
}

/** GET a manifest; throws with the body on a non-200 answer. digest is sha256 of the bytes. */
export async function getManifest(baseUrl: string, repo: string, ref: string, opts: ClientOptions = {}): Promise<FetchedManifest> {
  const url = manifestUrl(baseUrl, repo, ref);
  const res = await fetch(url, { headers: headersFor(opts, { accept: MANIFEST_ACCEPT }) });
  const bytes = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200) throw new Error(`GET ${url}: ${res.status} ${bytes.toString('utf8').slice(0, 500)}`);
  const json = JSON.parse(bytes.toString('utf8')) as ManifestJson;
  return {
    digest: sha256(bytes),
    mediaType: res.headers.get('content-type') ?? json.mediaType ?? '',
    bytes,
    json,
    headerDigest: res.headers.get('docker-content-digest'),
  };
}

/** GET a whole blob into memory (fine for configs and small layers; stream big ones yourself). */
export async function getBlob(baseUrl: string, repo: string, digest: string, opts: ClientOptions = {}): Promise<Buffer> {
  const url = `${baseUrl.replace(/\/$/, '')}/v2/${repo}/blobs/${digest}`;
  const res = await fetch(url, { headers: headersFor(opts) });
  const bytes = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200) throw new Error(`GET ${url}: ${res.status} ${bytes.toString('utf8').slice(0, 500)}`);
  return bytes;
}

export function isIndex(mediaType: string): boolean {
  return mediaType === MEDIA.ociIndex || mediaType === MEDIA.dockerList;
}

export interface PlatformManifest {
  /** "linux/amd64" or "linux/arm64/v8". */
  platform: string;
  digest: string;
  mediaType: string;
  size: number;
  config: Descriptor;
  layers: Descriptor[];
}

export interface PushedImage {
  /** A label for messages: the fixture's name, or the repository. */
  name: string;
  repository: string;
  tag: string;
  /** "HOST/REPO:TAG" for skopeo and ctr. */
  ref: string;
  /** The tag's manifest digest as the registry reports it (Docker-Content-Digest). */
  digest: string;
  /** Content-Type the registry serves the tag's manifest with. */
  mediaType: string;
  size: number;
  /** One entry per platform; for a single image, the image itself (digest === this.digest). */
  manifests: PlatformManifest[];
  /** Every config and layer referenced, each digest once. */
  blobs: Descriptor[];
  /** The layer whose digest was given as bigLayerDigest, when the image has it. */
  bigLayer?: Descriptor;
}

/** Reads an image's manifests back from the registry and lists everything it references. */
export async function describePushed(
  registryHost: string,
  repository: string,
  tag: string,
  opts: { creds?: string; name?: string; bigLayerDigest?: string; headers?: Record<string, string> } = {},
): Promise<PushedImage> {
  const base = `http://${registryHost}`;
  // headers: e.g. a Bearer token for a token-auth registry (creds only does Basic).
  const client = { creds: opts.creds, headers: opts.headers };
  const head = await headManifest(base, repository, tag, client);
  if (head.status !== 200 || !head.digest || !head.mediaType) {
    throw new Error(`HEAD ${base}/v2/${repository}/manifests/${tag} (Accept: ${MANIFEST_ACCEPT}) gave ${head.status}`);
  }
  const top = await getManifest(base, repository, tag, client);
  if (top.digest !== head.digest) throw new Error(`registry HEAD digest ${head.digest} != sha256 of GET body ${top.digest}`);

  const manifests: PlatformManifest[] = [];
  const children = isIndex(top.mediaType)
    ? (top.json.manifests ?? [])
    : [{ digest: top.digest, mediaType: top.mediaType, size: top.bytes.length, platform: { os: 'linux', architecture: 'amd64' } }];
  for (const child of children) {
    const m = child.digest === top.digest ? top : await getManifest(base, repository, child.digest, client);
    const p = child.platform;
    manifests.push({
      platform: p ? [p.os, p.architecture, p.variant].filter(Boolean).join('/') : 'unknown',
      digest: child.digest,
      mediaType: m.mediaType,
      size: m.bytes.length,
      config: m.json.config!,
      layers: m.json.layers ?? [],
    });
  }
  const seen = new Map<string, Descriptor>();
  for (const m of manifests) for (const d of [m.config, ...m.layers]) if (!seen.has(d.digest)) seen.set(d.digest, { mediaType: d.mediaType, digest: d.digest, size: d.size });
  const blobs = [...seen.values()];
  const bigLayer = opts.bigLayerDigest ? blobs.find((b) => b.digest === opts.bigLayerDigest) : undefined;
  return {
    name: opts.name ?? repository,
    repository,
    tag,
    ref: `${registryHost}/${repository}:${tag}`,
    digest: head.digest,
    mediaType: head.mediaType,
    size: top.bytes.length,
    manifests,
    blobs,
    ...(bigLayer ? { bigLayer } : {}),
  };
}
