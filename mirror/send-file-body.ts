// Warm content (v2 blobs, v1 layers) skips fastify's stream piping: FileBody.writeTo reuses
// its buffers, which halves the CPU per byte served (store/file-body.ts has the why). The
// reply is hijacked, so headers are written here; onResponse still runs (fastify listens on
// the raw response), and an error aborts the connection as an error in a piped body would.

import type { OutgoingHttpHeaders } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FileBody } from './store/file-body.js';

export async function sendFileBody(req: FastifyRequest, reply: FastifyReply, body: FileBody): Promise<void> {
  reply.hijack();
  try {
    reply.raw.writeHead(reply.statusCode, reply.getHeaders() as OutgoingHttpHeaders);
  } catch (err) {
    body.destroy();
    reply.raw.destroy(err as Error);
    return;
  }
  const err = await body.writeTo(reply.raw);
  if (err) req.log.error({ err: err.message }, 'cached content could not be read: body aborted');
}
