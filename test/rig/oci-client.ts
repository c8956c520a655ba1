// Just enough of a registry client for tests to ask a registry (or the mirror) what it holds:
// manifests with the right Accept headers, blobs, digests. Real clients (skopeo, containerd)
// do the pulling that matters; this is for assertions.
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
