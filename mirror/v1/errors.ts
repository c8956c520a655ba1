// Errors of the v1 API. v1 clients expect {"error": "<message>"} with a plain HTTP status
// (the python registry's api_error), not the v2/OCI error list; this is the one place that
// maps anything thrown below a v1 route to that shape.

import { RegistryError } from '../errors.js';

export class V1Error extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** Extra response headers (e.g. Content-Range on a 416). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'V1Error';
  }

  body(): { error: string } {
    return { error: this.message };
  }
}

export const notFound = (what: string) => new V1Error(404, `${what} not found`);

/** Any error as a V1Error: RegistryErrors keep their status and message, the rest are 500. */
export function toV1Error(err: unknown): V1Error {
  if (err instanceof V1Error) return err;
  if (err instanceof RegistryError) return new V1Error(err.status, err.message);
  return new V1Error(500, 'internal error');
}

/** The error a client sees for a source status that is not a success. */
export function sourceError(status: number, what: string): V1Error {
  if (status === 404) return notFound(what);
  if (status === 401 || status === 403) return new V1Error(status, `the v1 source refused access to ${what}`);
  if (status === 429) return new V1Error(429, 'the v1 source is rate limiting');
  // Another 4xx is a refusal of this request, not an outage (see upstreamError).
  if (status >= 400 && status < 500) return new V1Error(404, `${what} not found (the v1 source answered ${status})`);
  return new V1Error(503, `the v1 source answered ${status}`);
}
