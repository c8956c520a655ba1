// The legacy Docker Registry v1 pull API (what docker 1.x clients call), as a caching mirror
// of `v1.source`. Handlers translate HTTP to the V1Cache and back; every error is rendered
// here as v1 JSON ({"error": "..."}), never as the v2/OCI error list.
//
// The pull sequence of a docker 1.x client: GET /v1/_ping, /v1/repositories/<ns>/<repo>/images
// (index), .../tags (or .../tags/<tag>), then for the image /v1/images/<id>/ancestry and for
// each ancestor /v1/images/<id>/json and /v1/images/<id>/layer.

import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { V1Access } from '../access/v1-access.js';
import { V1Cache, type DocAnswer } from '../cache/v1-cache.js';
import type { MirrorConfig } from '../config.js';
import { RegistryError } from '../errors.js';
import type { MirrorMetrics } from '../metrics.js';
import { sendFileBody } from '../send-file-body.js';
import type { ContentStore } from '../store/content-store.js';
import { FileBody } from '../store/file-body.js';
import { V1Index } from '../store/v1-index.js';
import { decodePath } from '../v2/path.js';
import { toV1Error, V1Error } from './errors.js';
import { parseV1Path } from './path.js';
import { V1Source, type V1SourceOptions } from './source.js';

export interface V1Options {
  config: MirrorConfig['v1'];
  store: ContentStore;
  metrics: MirrorMetrics;
  log: Logger;
  /** storage.maxBytes: layers larger than this stream through uncached; 0 = no bound. */
  maxBytes: number;
  /** Makes room under storage.maxBytes before content is committed. */
  makeRoom: (bytes: number) => Promise<void>;
  /** How often records of expired content are swept (default 10 minutes). */
  sweepIntervalMs?: number;
  /** The v1 repository policy (access/v1-access.ts); undefined = every name. */
  access?: V1Access;
  /** upstreamTimeouts and upstreamRetries, as for the v2 upstreams. */
  source?: V1SourceOptions;
}

/** The v1 protocol version announced; docker 1.x clients only log it. */
export const registryVersion = '0.9.1';
const readMethods = new Set(['GET', 'HEAD']);
/** Image json, ancestry and layers never change for an id (the seed sent the same). */
const immutable = 'public, max-age=31536000';

export function registerV1(app: FastifyInstance, o: V1Options): V1Cache {
  const source = new V1Source(o.config.source, o.config.sourceIndex ?? o.config.source, (name, status) => o.metrics.upstreamRequest(name, status), o.source);
  const cache = new V1Cache(o.store, new V1Index(o.store.driver), source, o.metrics, o.log, {
    tagsTTLMs: o.config.tagsCacheTTLMs,
    maxBytes: o.maxBytes,
    makeRoom: o.makeRoom,
  });

  const handler = async (req: FastifyRequest, reply: FastifyReply) => {
    reply.header('X-Docker-Registry-Version', registryVersion).header('X-Docker-Registry-Config', 'mirror');
    return route(req, reply, cache, o.access);
  };
  const methods = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'];
  // An encapsulated scope so that its error handler, v1 JSON, also catches what fails after
  // the handler returned: a layer download failing before its first byte went out.
  void app.register(async (scope) => {
    scope.setErrorHandler((err, req, reply) => sendError(req, reply, err));
    scope.route({ method: methods, url: '/v1', handler, exposeHeadRoute: false });
    scope.route({ method: methods, url: '/v1/*', handler, exposeHeadRoute: false });
  });

  let timer: NodeJS.Timeout | undefined;
  const sweep = () => cache.sweep().catch((err) => o.log.warn({ err: (err as Error).message }, 'v1 record sweep failed'));
  app.addHook('onReady', async () => {
    await sweep();
    timer = setInterval(() => void sweep(), o.sweepIntervalMs ?? 600_000);
    timer.unref();
  });
  app.addHook('onClose', async () => {
    if (timer) clearInterval(timer);
    await source.close();
  });
  return cache;
}

async function route(req: FastifyRequest, reply: FastifyReply, cache: V1Cache, access: V1Access | undefined) {
  if (!readMethods.has(req.method)) {
    throw new V1Error(405, 'this registry is a read-only mirror: push and delete are not supported');
  }
  const path = decodePath(req.url);
  if (path === undefined) throw new V1Error(400, 'malformed request path');
  const p = parseV1Path(path);
  access?.check(p);
  const upstream = cache.sourceName;
  switch (p.kind) {
    case 'ping':
      // Standalone: clients need no index token to talk to this registry.
      return reply.header('X-Docker-Registry-Standalone', 'true').header('Content-Type', 'application/json').send('true');
    case 'images': {
      req.mirror = { api: 'v1', kind: 'tag', upstream };
      const answer = await cache.images(p.repo);
      access?.learn(p, answer.bytes);
      // The seed's rewrite: the client must fetch the images from us, not from the source.
      if (req.headers.host) reply.header('X-Docker-Endpoints', req.headers.host);
      return sendDoc(req, reply, answer);
    }
    case 'tags':
    case 'tag':
    case 'repo-json': {
      req.mirror = { api: 'v1', kind: 'tag', upstream };
      const doc = p.kind === 'tags' ? 'tags' : p.kind === 'tag' ? (`tag/${p.tag}` as const) : 'json';
      const answer = await cache.repoDoc(p.repo, doc);
      access?.learn(p, answer.bytes);
      return sendDoc(req, reply, answer);
    }
    case 'image-json': {
      req.mirror = { api: 'v1', kind: 'image', upstream };
      const answer = await cache.imageJson(p.id);
      if (answer.size !== undefined) reply.header('X-Docker-Size', String(answer.size));
      if (answer.checksum) reply.header('X-Docker-Checksum-Payload', answer.checksum);
      reply.header('Cache-Control', immutable);
      return sendDoc(req, reply, answer);
    }
    case 'ancestry': {
      req.mirror = { api: 'v1', kind: 'image', upstream };
      reply.header('Cache-Control', immutable);
      const answer = await cache.ancestry(p.id);
      access?.learn(p, answer.bytes);
      return sendDoc(req, reply, answer);
    }
    case 'layer': {
      req.mirror = { api: 'v1', kind: 'image', upstream };
      const range = typeof req.headers.range === 'string' ? req.headers.range : undefined;
      const body = await cache.layer(p.id, range);
      req.mirror.result = body.result;
      req.mirror.source = body.result === 'hit' ? 'cache' : 'upstream';
      reply.code(body.status).header('Content-Type', 'application/octet-stream').header('Accept-Ranges', 'bytes').header('Cache-Control', immutable);
      if (body.length !== undefined) reply.header('Content-Length', body.length);
      if (body.range) reply.header('Content-Range', `bytes ${body.range.start}-${body.range.end}/${body.size}`);
      if (req.method === 'HEAD') {
        // A cold layer keeps downloading into the cache; this client only wanted the headers.
        body.stream.destroy();
        return reply.send();
      }
      if (body.stream instanceof FileBody) return sendFileBody(req, reply, body.stream);
      return reply.send(body.stream);
    }
    default:
      throw new V1Error(404, 'no such v1 API route');
  }
}

function sendDoc(req: FastifyRequest, reply: FastifyReply, answer: DocAnswer) {
  if (req.mirror) {
    req.mirror.result = answer.result;
    req.mirror.source = answer.result === 'miss' || answer.result === 'pass' ? 'upstream' : 'cache';
  }
  return reply.header('Content-Type', 'application/json').header('Content-Length', answer.bytes.length).send(answer.bytes);
}

function sendError(req: FastifyRequest, reply: FastifyReply, err: unknown) {
  const e = toV1Error(err);
  if (e.status >= 500 && !(err instanceof V1Error) && !(err instanceof RegistryError)) {
    (req.log as Logger).error({ err }, 'internal error');
  }
  if (reply.sent || reply.raw.headersSent) {
    reply.raw.destroy();
    return;
  }
  for (const h of ['Content-Length', 'Content-Range', 'Accept-Ranges', 'Cache-Control']) reply.removeHeader(h);
  return reply.code(e.status).headers(e.headers).header('Content-Type', 'application/json').send(e.body());
}
