// /healthz (the process answers), /readyz (able to do its job: the Lease is reachable and, on
// the leader, the caches are synced) and /metrics (Prometheus).
import Fastify, { type FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';

export async function startHealthServer(opts: {
  host: string;
  port: number;
  ready: () => { ok: boolean; detail: string };
  registry: Registry;
}): Promise<{ server: FastifyInstance; port: number }> {
  const app = Fastify({ logger: false });
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    const r = opts.ready();
    return reply.code(r.ok ? 200 : 503).send({ status: r.ok ? 'ok' : 'not ready', detail: r.detail });
  });
  app.get('/metrics', async (_req, reply) => reply.type(opts.registry.contentType).send(await opts.registry.metrics()));
  await app.listen({ host: opts.host, port: opts.port });
  const addr = app.server.address();
  return { server: app, port: typeof addr === 'object' && addr ? addr.port : opts.port };
}
