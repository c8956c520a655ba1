// The Docker Registry v2 / OCI distribution pull API. Handlers only translate HTTP to the
// caches and back; everything about caching lives in cache/, every error is a RegistryError.

import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { BlobCache } from '../cache/blob-cache.js';
import type { ManifestAnswer, ManifestCache } from '../cache/manifest-cache.js';
import { Cluster } from '../cluster/forward.js';
import { ociIndexType, referrersCacheLimits, type ReferrersCache } from '../cache/referrers-cache.js';
import { RegistryError } from '../errors.js';
import type { MirrorMetrics } from '../metrics.js';
import { clip, parseDigest, parseManifestReference, type ManifestReference } from '../reference.js';
import type { UpstreamRouter } from '../routing.js';
import type { RepoIndex } from '../store/repo-index.js';
import { sendFileBody } from '../send-file-body.js';
import { FileBody } from '../store/file-body.js';
import { decodePath, parseV2Path } from './path.js';
import { fetchUpstreamTags, lexical, nextPageLink, pageOf } from './tag-list.js';

export interface V2Deps {
  router: UpstreamRouter;
  blobs: BlobCache;
  manifests: ManifestCache;
  repos: RepoIndex;
  metrics: MirrorMetrics;
  referrers: ReferrersCache;
  /** Replicas on one bucket: misses go to their owner (cluster/forward.ts). */
  cluster?: Cluster;
}

const readMethods = new Set(['GET', 'HEAD']);

export function registerV2(app: FastifyInstance, deps: V2Deps): void {
  const handler = async (req: FastifyRequest, reply: FastifyReply) => {
    reply.header('Docker-Distribution-API-Version', 'registry/2.0');
    const path = decodePath(req.url);
    if (path === undefined) throw new RegistryError('NAME_INVALID', 'malformed request path');
    const p = parseV2Path(path);
    // An unknown route is a 404 whatever the method; a known one refuses writes with 405.
    if (p.kind === 'unknown') throw new RegistryError('NAME_UNKNOWN', 'no such registry API route');
    if (!readMethods.has(req.method) || p.kind === 'upload') {
      throw new RegistryError('UNSUPPORTED', 'this registry is a read-only mirror: push and delete are not supported');
    }
    const query = req.query as Record<string, string | string[] | undefined>;
    const ns = single(query.ns);
    switch (p.kind) {
      case 'base':
        return reply.send({});
      case 'catalog':
        return catalog(req, reply, deps, ns, query);
      case 'tags':
        return tagsList(req, reply, deps, p.name, ns, query);
      case 'manifest':
        return manifest(req, reply, deps, p.name, p.reference, ns);
      case 'blob':
        return blob(req, reply, deps, p.name, p.digest, ns);
      case 'referrers':
        // An empty artifactType filters nothing.
        return referrers(req, reply, deps, p.name, p.digest, ns, single(query.artifactType) || undefined);
    }
  };
  app.route({ method: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'], url: '/v2', handler, exposeHeadRoute: false });
  app.route({ method: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'], url: '/v2/*', handler, exposeHeadRoute: false });
}

/**
 * A reference that is neither a valid tag nor a valid digest names no manifest: 404
 * MANIFEST_UNKNOWN, as distribution answers and the OCI spec's clients expect (not 400).
 */
function manifestReference(rawRef: string): ManifestReference {
  try {
    return parseManifestReference(rawRef);
  } catch {
    throw new RegistryError('MANIFEST_UNKNOWN', 'manifest unknown: the reference is neither a valid tag nor a valid digest', { reference: clip(rawRef) });
  }
}

function single(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

async function manifest(req: FastifyRequest, reply: FastifyReply, deps: V2Deps, rawName: string, rawRef: string, ns: string | undefined) {
  const routed = deps.router.route(rawName, ns);
  const ref = manifestReference(rawRef);
  req.mirror = { api: 'v2', kind: 'manifest', upstream: routed.target.upstream.name, repository: routed.target.name };
  if (routed.namespace) reply.header('OCI-Namespace', routed.namespace);
  const accept = typeof req.headers.accept === 'string' ? req.headers.accept : undefined;
  let answer: ManifestAnswer | undefined;
  if (deps.cluster && !Cluster.isHop(req)) {
    // What the bucket answers is served here; a miss or a tag due for revalidation is its owner's.
    answer = await deps.manifests.getLocal(routed.target, ref, accept);
    const reference = ref.kind === 'digest' ? ref.digest.value : ref.tag;
    if (!answer && (await deps.cluster.forward(req, reply, `manifest:${routed.target.upstream.name}/${routed.target.name}:${reference}`))) {
      req.mirror.result = 'forwarded';
      return reply;
    }
  }
  answer ??= await deps.manifests.get(routed.target, ref, accept);
  req.mirror.result = answer.result;
  req.mirror.source = answer.result === 'miss' ? 'upstream' : 'cache';
  const m = answer.manifest;
  reply
    .header('Content-Type', m.mediaType)
    .header('Docker-Content-Digest', m.digest)
    .header('ETag', `"${m.digest}"`)
    .header('Content-Length', m.bytes.length);
  if (req.method === 'HEAD') return reply.send();
  if (matchesEtag(req, m.digest)) return reply.code(304).send();
  return reply.send(m.bytes);
}

async function blob(req: FastifyRequest, reply: FastifyReply, deps: V2Deps, rawName: string, rawDigest: string, ns: string | undefined) {
  const routed = deps.router.route(rawName, ns);
  const digest = parseDigest(rawDigest);
  req.mirror = { api: 'v2', kind: 'blob', upstream: routed.target.upstream.name, repository: routed.target.name };
  if (routed.namespace) reply.header('OCI-Namespace', routed.namespace);
  if (deps.cluster && !Cluster.isHop(req) && !(await deps.blobs.isWarm(routed.target, digest))) {
    // A cold blob is fetched by its owner alone: one upstream GET fleet-wide.
    if (await deps.cluster.forward(req, reply, `blob:${digest.value}`)) {
      req.mirror.result = 'forwarded';
      return reply;
    }
  }
  reply.header('Docker-Content-Digest', digest.value).header('ETag', `"${digest.value}"`).header('Accept-Ranges', 'bytes');
  if (req.method === 'HEAD' || matchesEtag(req, digest.value)) {
    // HEAD, and a conditional GET from a client that already holds these exact bytes
    // (content-addressed ETag), only need to know the blob exists for this repository.
    const head = await deps.blobs.head(routed.target, digest);
    req.mirror.result = head.result;
    reply.header('Content-Type', 'application/octet-stream');
    if (req.method === 'GET') return reply.code(304).send();
    return reply.header('Content-Length', head.size).send();
  }
  const range = typeof req.headers.range === 'string' ? req.headers.range : undefined;
  const body = await deps.blobs.get(routed.target, digest, range);
  req.mirror.result = body.result;
  if (body.status === 307) {
    // The client fetches the bytes from the store itself (S3 `redirect: true`), Range and all.
    req.mirror.source = 'cache';
    return reply.code(307).header('Location', body.location).send();
  }
  req.mirror.source = body.result === 'hit' ? 'cache' : 'upstream';
  reply.code(body.status).header('Content-Type', 'application/octet-stream');
  if (body.length !== undefined) reply.header('Content-Length', body.length);
  if (body.range) reply.header('Content-Range', `bytes ${body.range.start}-${body.range.end}/${body.size}`);
  if (body.stream instanceof FileBody) return sendFileBody(req, reply, body.stream);
  return reply.send(body.stream);
}

/**
 * OCI 1.1 referrers (cache/referrers-cache.ts): always 200 with an image index for a valid
 * request, an empty one when nothing refers to the digest; a digest of invalid syntax is 400
 * DIGEST_INVALID, as the spec requires. HEAD answers alike without the body.
 */
async function referrers(req: FastifyRequest, reply: FastifyReply, deps: V2Deps, rawName: string, rawDigest: string, ns: string | undefined, artifactType: string | undefined) {
  const routed = deps.router.route(rawName, ns);
  const digest = parseDigest(rawDigest);
  req.mirror = { api: 'v2', kind: 'referrers', upstream: routed.target.upstream.name };
  if (routed.namespace) reply.header('OCI-Namespace', routed.namespace);
  if (artifactType !== undefined && (artifactType.length > referrersCacheLimits.artifactTypeLength || /[\s\x00-\x1f\x7f]/.test(artifactType))) {
    throw new RegistryError('UNSUPPORTED', `artifactType must be a media type of at most ${referrersCacheLimits.artifactTypeLength} characters`, { artifactType: clip(artifactType) }, 400);
  }
  const answer = await deps.referrers.get(routed.target, digest, artifactType);
  req.mirror.result = answer.result;
  req.mirror.source = answer.result === 'miss' ? 'upstream' : 'cache';
  reply.header('Content-Type', ociIndexType).header('Content-Length', answer.body.length);
  if (answer.filtered) reply.header('OCI-Filters-Applied', 'artifactType');
  if (req.method === 'HEAD') return reply.send();
  return reply.send(answer.body);
}

async function tagsList(req: FastifyRequest, reply: FastifyReply, deps: V2Deps, rawName: string, ns: string | undefined, query: Record<string, string | string[] | undefined>) {
  const routed = deps.router.route(rawName, ns);
  const t = routed.target;
  req.mirror = { api: 'v2', kind: 'tags', upstream: t.upstream.name };
  if (routed.namespace) reply.header('OCI-Namespace', routed.namespace);
  const rawN = single(query.n);
  const last = single(query.last);
  if (rawN !== undefined && !/^\d{1,6}$/.test(rawN)) throw new RegistryError('PAGINATION_NUMBER_INVALID', 'n must be a non-negative integer');
  const n = rawN === undefined ? undefined : Number(rawN);
  let tags: string[];
  try {
    // The whole list, every upstream page, sorted here: n and last are the mirror's to apply.
    tags = await fetchUpstreamTags(t);
    req.mirror.result = 'pass';
  } catch (err) {
    // The upstream is unreachable: the tags this mirror has cached are better than nothing.
    if ((err as RegistryError).code !== 'UNAVAILABLE') throw err;
    tags = (await deps.repos.listTags(t.upstream.name, t.name)).sort(lexical);
    if (tags.length === 0) throw err;
    req.mirror.result = 'stale';
  }
  const page = pageOf(tags, n, last);
  if (page.nextLast !== undefined) reply.header('Link', nextPageLink(rawName, n!, page.nextLast, ns));
  return reply.header('Content-Type', 'application/json').send({ name: rawName, tags: page.tags });
}

async function catalog(req: FastifyRequest, reply: FastifyReply, deps: V2Deps, ns: string | undefined, query: Record<string, string | string[] | undefined>) {
  const { client, namespace } = deps.router.upstream(ns);
  req.mirror = { api: 'v2', kind: 'catalog', upstream: client.name, result: 'hit' };
  if (namespace) reply.header('OCI-Namespace', namespace);
  const n = single(query.n);
  if (n !== undefined && !/^\d{1,6}$/.test(n)) throw new RegistryError('PAGINATION_NUMBER_INVALID', 'n must be a non-negative integer');
  // Names the upstream's policy refuses stay out of the catalog even if cached before.
  const all = (await deps.repos.listRepositories(client.name)).filter((n) => deps.router.allows(client.name, n));
  const page = paginate(all, n, single(query.last));
  if (n !== undefined && page.length === Number(n) && page.length > 0 && all[all.length - 1] !== page[page.length - 1]) {
    const q = new URLSearchParams({ n, last: page[page.length - 1]! });
    if (ns !== undefined) q.set('ns', ns);
    reply.header('Link', `</v2/_catalog?${q.toString()}>; rel="next"`);
  }
  return reply.send({ repositories: page });
}

function paginate(sorted: string[], n: string | undefined, last: string | undefined): string[] {
  const from = last === undefined ? sorted : sorted.filter((x) => x > last);
  return n === undefined ? from : from.slice(0, Number(n));
}

function matchesEtag(req: FastifyRequest, digest: string): boolean {
  const inm = req.headers['if-none-match'];
  return typeof inm === 'string' && inm.split(',').some((t) => t.trim().replace(/^W\//, '') === `"${digest}"`);
}
