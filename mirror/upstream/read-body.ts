// Every upstream document the mirror reads into memory (manifests, tag lists, token
// responses, v1 JSON) goes through here with a byte limit: an upstream decides how much it
// sends, the mirror decides how much it holds (issue 11: a 300 MB tag list took the heap
// to 1.4 GB). Blobs are never read this way; they stream to disk.

import { RegistryError, type ErrorCode } from '../errors.js';
import type { UpstreamResponse } from './client.js';
import { describeError } from './retry.js';

/** Limits of the documents read from upstreams (stated in the README). */
export const documentLimits = {
  manifest: 4 << 20,
  /** A referrers list (OCI 1.1 referrers API), all its pages together. */
  referrers: 4 << 20,
  tagList: 8 << 20,
  token: 1 << 20,
  /** v1 JSON: tags, image json and ancestry, the images list. */
  v1Document: 16 << 20,
} as const;

/**
 * The whole body, or a RegistryError: `tooLarge` past the limit (checked against
 * Content-Length first, then while reading; the connection is dropped at once), UNAVAILABLE
 * when the body stalls or breaks off (upstream trouble, so cached content may be served
 * stale), never an internal error.
 */
export async function readBody(res: Pick<UpstreamResponse, 'headers' | 'body'>, limit: number, what: string, tooLarge: ErrorCode = 'UNAVAILABLE'): Promise<Buffer> {
  const refuse = () => {
    res.body.destroy();
    return new RegistryError(tooLarge, `upstream ${what} larger than ${limit} bytes`);
  };
  const declared = Number(res.headers['content-length']);
  if (declared > limit) throw refuse();
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of res.body) {
      total += (chunk as Buffer).length;
      if (total > limit) throw refuse();
      chunks.push(chunk as Buffer);
    }
  } catch (err) {
    if (err instanceof RegistryError) throw err;
    throw new RegistryError('UNAVAILABLE', `upstream broke off the ${what}: ${describeError(err)}`);
  }
  return Buffer.concat(chunks);
}
