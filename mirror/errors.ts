// Every error the registry API can answer with lives here: one code, one HTTP status, one
// default message. Handlers throw RegistryError; the server's error handler renders the
// OCI error JSON ({"errors":[{code,message,detail}]}) so no route formats errors itself.

export const errorCodes = {
  BLOB_UNKNOWN: { status: 404, message: 'blob unknown to registry' },
  MANIFEST_UNKNOWN: { status: 404, message: 'manifest unknown' },
  NAME_UNKNOWN: { status: 404, message: 'repository name not known to registry' },
  NAME_INVALID: { status: 400, message: 'invalid repository name' },
  TAG_INVALID: { status: 400, message: 'manifest tag did not match URI' },
  DIGEST_INVALID: { status: 400, message: 'provided digest did not match uploaded content' },
  MANIFEST_INVALID: { status: 502, message: 'manifest invalid' },
  SIZE_INVALID: { status: 502, message: 'provided length did not match content length' },
  PAGINATION_NUMBER_INVALID: { status: 400, message: 'invalid number of results requested' },
  UNAUTHORIZED: { status: 401, message: 'authentication required' },
  DENIED: { status: 403, message: 'requested access to the resource is denied' },
  UNSUPPORTED: { status: 405, message: 'the operation is unsupported' },
  RANGE_INVALID: { status: 416, message: 'requested range not satisfiable' },
  TOOMANYREQUESTS: { status: 429, message: 'too many requests' },
  UNAVAILABLE: { status: 503, message: 'upstream registry unavailable' },
  UNKNOWN: { status: 500, message: 'unknown error' },
} as const;

export type ErrorCode = keyof typeof errorCodes;

export class RegistryError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly detail: unknown;

  constructor(code: ErrorCode, message?: string, detail?: unknown, status?: number) {
    super(message ?? errorCodes[code].message);
    this.name = 'RegistryError';
    this.code = code;
    this.status = status ?? errorCodes[code].status;
    this.detail = detail;
  }

  body(): { errors: Array<{ code: string; message: string; detail?: unknown }> } {
    const e: { code: string; message: string; detail?: unknown } = { code: this.code, message: this.message };
    if (this.detail !== undefined) e.detail = this.detail;
    return { errors: [e] };
  }
}

export function isRegistryError(err: unknown): err is RegistryError {
  return err instanceof RegistryError;
}
