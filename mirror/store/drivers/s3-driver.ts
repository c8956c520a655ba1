// The store in an S3 bucket (AWS S3, Ceph RGW, MinIO, ...): keys live at `${prefix}/${key}`.
//
// Every request is bounded in time, and every way a request can fail is one of two answers:
// "absent" (NoSuchKey / 404: get, stat and openRead answer undefined) or StoreUnavailableError
// (everything else: 5xx, 403, timeouts, refused connections), which callers turn into 503 on
// reads and "served uncached" on writes. Large content is never held in memory: commitFile
// streams the verified temp file, one PutObject when small, else one multipart upload to the
// final key, completed last and aborted on any failure, so nothing is ever visible at a key
// that did not upload whole. Each byte of it is sent once (a part whose connection was reset
// is sent a second time: the one retry of a streamed body, which the SDK never retries itself).
//
// Bounds (all per process):
//  - sockets: per driver one keep-alive agent (for the endpoint's scheme), at most
//    MAX_SOCKETS (64) connections to the endpoint, MAX_FREE_SOCKETS (16) of them kept idle;
//    requests beyond that queue in the agent;
//  - parts in flight: at most PARTS_PER_COMMIT (4) of one blob, and PARTS_IN_FLIGHT (8) over
//    all commits at once; a part is streamed from the file (READ_CHUNK at a time), never
//    buffered whole, so uploads hold about PARTS_IN_FLIGHT x (READ_CHUNK + socket buffers);
//  - list pages: LIST_PAGE (1000, S3's maximum) keys or uploads per request;
//  - time: a request that is not answered (status and headers) within requestTimeoutMs fails,
//    its retry included (a total deadline per operation); a connection that moves no byte for
//    requestTimeoutMs fails, in either direction: an upload whose part stalls, or a body whose
//    source stalls mid-way (the body stream is then destroyed with an error; a consumer that
//    reads nothing for that long loses the body too). CompleteMultipartUpload has no total
//    deadline (S3 may take minutes over it, answering at once and keeping the body alive):
//    its headers must come within requestTimeoutMs per attempt.
//
// RGW 16 (Ceph Pacific) and SDK v3: with the SDK's default flexible checksums a streamed
// PutObject or UploadPart goes as an aws-chunked body with a CRC32 trailer, which RGW 16.2.15
// refuses (411 MissingContentLength; a Buffer body happens to pass). Checksums are therefore
// computed only where an operation requires them (requestChecksumCalculation /
// responseChecksumValidation WHEN_REQUIRED): bodies go as plain Content-Length bodies of
// exactly their bytes. RGW answers errors without a <Message>: messages carry the code and
// the HTTP status.
//
// Conditional writes (putIf, for lease.ts): PutObject with If-None-Match: * or If-Match.
// Observed on RGW 16.2.15: If-None-Match: * on an existing key answers 412, and of writers
// racing on an absent key exactly one gets 200, the others 412. If-Match matches only the
// bare ETag (e0f1...), never the quoted form AWS documents ("e0f1..."; RGW answers 412 for the
// current tag quoted), answers 412 on an absent key (AWS documents 404 NoSuchKey), and of
// writers racing on one tag exactly one gets 200 and the others 412 or 500 (a lost race that
// surfaces as an internal error). DeleteObject ignores If-Match (a stale tag still deletes).
// CompleteMultipartUpload answers an empty ETag (HeadObject has it). So putIf sends the bare
// tag first and switches to the quoted form for good when a service refuses its own current
// tag; and whatever a conditional write answers short of 2xx or a plain refusal of the request
// (412, 404, 409, 5xx, a timeout, an SDK retry of a write that had landed), it reads the key
// back and decides by what is there: its own bytes (won), another tag (lost: 'conflict'), or
// the tag it matched, unchanged (refused for its form, or failed: tried again, at most twice).

import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { Agent as HttpAgent, STATUS_CODES } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { resolve } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  CopyObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
  UploadPartCommand,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { StoreUnavailableError, type ObjectInfo, type PutCondition, type StoreDriver, type TaggedObject } from '../driver.js';
import { removeQuietly } from '../fsutil.js';
import { checkKey, checkPrefix } from './fs-driver.js';

export interface S3DriverOptions {
  bucket: string;
  /** e.g. http://127.0.0.1:7480; absent = AWS. */
  endpoint?: string;
  /** The caller applies the default (us-east-1). */
  region: string;
  /** '' or 'a/b' (no leading or trailing '/'); keys live at `${prefix}/${key}`. */
  prefix: string;
  forcePathStyle: boolean;
  /** Absent: the SDK's default chain (environment, web identity, instance profile, ...). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** How long a presignGet URL is valid (SigV4 allows 1 s to 7 days). */
  presignTTLMs: number;
  /** Multipart part size, >= 5 MiB (S3's minimum for every part but the last). */
  partSize: number;
  /** Multipart uploads under the prefix older than this are aborted by open() and then hourly. */
  uploadExpiryMs: number;
  /** Every S3 request: no answer (status and headers) within this -> StoreUnavailableError. */
  requestTimeoutMs: number;
  /** Local directory for temp files (swept by open()). */
  scratchDir: string;
  /**
   * The ETag form putIf tries first in If-Match: 'bare' (default; all RGW 16 matches) or
   * 'quoted' (as AWS documents). A service that refuses its own current tag in one form gets
   * the other from then on.
   */
  ifMatchForm?: EtagForm;
}

export type EtagForm = 'bare' | 'quoted';

/** An entity tag as any service or caller spells it: W/"x", "x" or x are all x. */
export function bareEtag(etag: string): string {
  return etag.trim().replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
}

const MiB = 1024 * 1024;
/** S3's smallest part (all but the last). */
export const MIN_PART_SIZE = 5 * MiB;
/** S3's most parts in one upload: a bigger blob gets bigger parts. */
const MAX_PARTS = 10000;
/** Connections to the endpoint, per driver. */
export const MAX_SOCKETS = 64;
/** Idle keep-alive connections kept, per driver. */
const MAX_FREE_SOCKETS = 16;
/** Parts of one blob uploading at once. */
export const PARTS_PER_COMMIT = 4;
/** Parts uploading at once over every commit of the process. */
export const PARTS_IN_FLIGHT = 8;
/** Keys (ListObjectsV2) or uploads (ListMultipartUploads) per page: S3's maximum. */
export const LIST_PAGE = 1000;
/** How much of a part body is read from the file at a time. */
const READ_CHUNK = 512 * 1024;
const HOUR = 3600_000;
/** SigV4's longest presigned URL lifetime. */
const MAX_PRESIGN_S = 7 * 24 * 3600;

/** A counting semaphore; process-wide for parts in flight. */
class Slots {
  private free: number;
  private readonly waiting: Array<() => void> = [];
  constructor(n: number) {
    this.free = n;
  }
  async acquire(): Promise<() => void> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((r) => this.waiting.push(r));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    };
  }
}

const partSlots = new Slots(PARTS_IN_FLIGHT);

const silent = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };

interface ErrorLike {
  name?: string;
  message?: string;
  code?: string;
  errors?: Array<{ message?: string; code?: string }>;
  $metadata?: { httpStatusCode?: number };
}

/** "Code: message" for an S3 answer, or the network error's code and message. No secrets. */
export function describeS3Error(err: unknown): string {
  const e = (err ?? {}) as ErrorLike;
  if (err instanceof S3ServiceException) {
    const status = e.$metadata?.httpStatusCode;
    const http = status ? `HTTP ${status}${STATUS_CODES[status] ? ` ${STATUS_CODES[status]}` : ''}` : 'HTTP ?';
    // A HEAD answer has no body, so no error code: the SDK calls it "Unknown".
    if (e.name === 'Unknown' || !e.name) return http;
    const msg = e.message && e.message !== e.name && e.message !== 'UnknownError' ? e.message : '';
    return `${e.name}: ${msg ? `${msg} (${http})` : http}`;
  }
  const code = e.code ?? e.errors?.find((x) => x.code)?.code ?? e.name ?? 'Error';
  const msg = e.message || e.errors?.map((x) => x.message).filter(Boolean).join('; ') || String(err);
  return msg.includes(code) ? msg : `${code}: ${msg}`;
}

function statusOf(err: unknown): number | undefined {
  return (err as ErrorLike | undefined)?.$metadata?.httpStatusCode;
}

function isNotFound(err: unknown): boolean {
  const name = (err as ErrorLike | undefined)?.name;
  if (name === 'NoSuchKey' || name === 'NotFound') return true;
  return statusOf(err) === 404 && name !== 'NoSuchBucket' && name !== 'NoSuchUpload';
}

/** Worth a second attempt with a fresh body: a stale keep-alive socket, or a 5xx / throttle. */
function isRetryableUpload(err: unknown): boolean {
  const status = statusOf(err);
  if (status !== undefined) return status >= 500 || status === 429;
  const code = (err as ErrorLike | undefined)?.code;
  return code === 'ECONNRESET' || code === 'EPIPE';
}

class DeadlineError extends Error {
  readonly code = 'ETIMEDOUT';
  constructor(ms: number) {
    super(`no answer within ${ms} ms`);
    this.name = 'TimeoutError';
  }
}

/**
 * Bytes [start, stop) of an open file as a request body; errors (instead of ending short) when
 * the file ends early, so a request never goes out with fewer bytes than its Content-Length.
 */
class RangeBody extends Readable {
  private pos: number;
  constructor(
    private readonly fh: FileHandle,
    start: number,
    private readonly stop: number,
    private readonly path: string,
  ) {
    super({ highWaterMark: READ_CHUNK });
    this.pos = start;
  }
  override _read(): void {
    if (this.pos >= this.stop) {
      this.push(null);
      return;
    }
    const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, this.stop - this.pos));
    this.fh.read(buf, 0, buf.length, this.pos).then(
      ({ bytesRead }) => {
        if (bytesRead === 0) {
          this.destroy(new Error(`${this.path} ends at byte ${this.pos}, before byte ${this.stop}`));
          return;
        }
        this.pos += bytesRead;
        this.push(bytesRead === buf.length ? buf : buf.subarray(0, bytesRead));
      },
      (err: Error) => this.destroy(err),
    );
  }
}

// Crash tests only: hold after each uploaded part, so a kill -9 lands mid-upload.
const holdAfterPartMs = Number(process.env.REGISTRY_MIRROR_TEST_HOLD_AFTER_PART_MS ?? 0);

export class S3Driver implements StoreDriver {
  readonly kind = 's3' as const;
  readonly location: string;
  readonly shared = true;
  readonly syncBeforeCommit = false;
  readonly scratchDir: string;

  private readonly opts: S3DriverOptions;
  /**
   * Two attempts per request, except for a body streamed from a file, which the SDK never sends
   * twice (sendBody() retries those itself, with a fresh stream).
   */
  private readonly client: S3Client;
  private readonly partSize: number;
  private sweepTimer: NodeJS.Timeout | undefined;
  private sweeping: Promise<unknown> | undefined;
  private closed = false;
  private etagForm: EtagForm;

  constructor(opts: S3DriverOptions) {
    if (!opts.bucket) throw new Error('S3 store: no bucket');
    if (opts.prefix.startsWith('/') || opts.prefix.endsWith('/')) {
      throw new Error(`S3 store: prefix ${JSON.stringify(opts.prefix)} must not start or end with "/"`);
    }
    if (opts.prefix !== '') checkKey(opts.prefix);
    if (!(opts.partSize >= MIN_PART_SIZE)) throw new Error(`S3 store: partSize ${opts.partSize} is below 5 MiB`);
    if (!(opts.requestTimeoutMs > 0)) throw new Error(`S3 store: requestTimeoutMs must be positive`);
    const scratch = resolve(opts.scratchDir);
    if (scratch === '/') throw new Error('S3 store: the scratch dir cannot be "/"');
    this.opts = opts;
    this.scratchDir = opts.scratchDir;
    this.partSize = opts.partSize;
    this.etagForm = opts.ifMatchForm ?? 'bare';
    this.location = `s3://${opts.bucket}/${opts.prefix}${opts.endpoint ? ` (${withoutUserinfo(opts.endpoint)})` : ''}`;

    const agentOptions = { keepAlive: true, maxSockets: MAX_SOCKETS, maxFreeSockets: MAX_FREE_SOCKETS };
    const requestHandler = new NodeHttpHandler({
      connectionTimeout: opts.requestTimeoutMs,
      // Until the status and headers: an error, not the SDK's default warning.
      requestTimeout: opts.requestTimeoutMs,
      throwOnRequestTimeout: true,
      // No byte moved on the connection for this long (a stalled upload or body): an error.
      socketTimeout: opts.requestTimeoutMs,
      // Agent instances (not options): the handler then uses them for 100-continue requests
      // too, instead of a fresh unbounded agent per request.
      httpAgent: new HttpAgent(agentOptions),
      httpsAgent: new HttpsAgent(agentOptions),
      logger: silent,
    });
    const config: S3ClientConfig = {
      region: opts.region,
      forcePathStyle: opts.forcePathStyle,
      requestHandler,
      // RGW 16 does not understand the SDK's default flexible checksums (aws-chunked bodies
      // with CRC trailers): only where an operation requires one.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 2,
      // The SDK writes warnings to the console when it has no logger; a store failure reaches
      // the caller as an error instead, and nothing of a request is ever logged here.
      logger: silent,
      ...(opts.endpoint ? { endpoint: opts.endpoint } : {}),
      ...(opts.credentials ? { credentials: opts.credentials } : {}),
    };
    // The SDK's "versions after January 2027 need Node 22" notice is a multi-line stderr warning
    // in the middle of the JSON log; Node 20 is what this release is built and tested for (the
    // lock file pins the SDK), so it says nothing an operator can act on. An explicit setting wins.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    this.client = new S3Client(config);
  }

  private full(key: string): string {
    return this.opts.prefix ? `${this.opts.prefix}/${key}` : key;
  }

  private keyOf(fullKey: string): string | undefined {
    if (!this.opts.prefix) return fullKey;
    const p = `${this.opts.prefix}/`;
    return fullKey.startsWith(p) ? fullKey.slice(p.length) : undefined;
  }

  private unavailable(op: string, key: string, err: unknown): StoreUnavailableError {
    if (err instanceof StoreUnavailableError) return err;
    return new StoreUnavailableError(`S3 ${op} ${key}: ${describeS3Error(err)}`, { cause: err });
  }

  /**
   * One operation (all its attempts) that must be answered within requestTimeoutMs. The
   * deadline ends once send() resolves: a response body streams on without it.
   */
  private async timed<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const ac = new AbortController();
    const ms = this.opts.requestTimeoutMs;
    let fired = false;
    const timer = setTimeout(() => {
      fired = true;
      ac.abort(new DeadlineError(ms));
    }, ms);
    try {
      return await fn(ac.signal);
    } catch (err) {
      throw fired ? new DeadlineError(ms) : err;
    } finally {
      clearTimeout(timer);
    }
  }

  async open(): Promise<{ sweptTemp: number; sweptUploads: number }> {
    // Access first, by a request whose error answer has a body (a HEAD's has none, so it
    // cannot tell InvalidAccessKeyId from NoSuchBucket).
    try {
      await this.timed((abortSignal) =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.opts.bucket, Prefix: this.full(''), MaxKeys: 1 }), { abortSignal }),
      );
    } catch (err) {
      throw new Error(`S3 store ${this.location} is not usable: ListObjectsV2: ${describeS3Error(err)}`, { cause: err });
    }
    const sweptTemp = await sweepDir(this.scratchDir);
    const sweptUploads = await this.sweepUploads();
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = setInterval(() => {
      if (this.sweeping || this.closed) return;
      // A failed hourly sweep is tried again the next hour; nothing waits on it.
      this.sweeping = this.sweepUploads()
        .catch(() => 0)
        .finally(() => (this.sweeping = undefined));
    }, HOUR);
    this.sweepTimer.unref();
    return { sweptTemp, sweptUploads };
  }

  /** Aborts multipart uploads under the prefix initiated more than uploadExpiryMs ago. */
  private async sweepUploads(): Promise<number> {
    const cutoff = Date.now() - this.opts.uploadExpiryMs;
    const prefix = this.full('');
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    let aborted = 0;
    for (;;) {
      let page;
      try {
        page = await this.timed((abortSignal) =>
          this.client.send(
            new ListMultipartUploadsCommand({
              Bucket: this.opts.bucket,
              Prefix: prefix,
              MaxUploads: LIST_PAGE,
              KeyMarker: keyMarker,
              UploadIdMarker: uploadIdMarker,
            }),
            { abortSignal },
          ),
        );
      } catch (err) {
        throw this.unavailable('ListMultipartUploads', prefix, err);
      }
      for (const u of page.Uploads ?? []) {
        if (!u.Key || !u.UploadId || !u.Initiated || u.Initiated.getTime() >= cutoff) continue;
        if (await this.abortUpload(u.Key, u.UploadId)) aborted++;
      }
      if (!page.IsTruncated || (!page.NextKeyMarker && !page.NextUploadIdMarker)) return aborted;
      keyMarker = page.NextKeyMarker;
      uploadIdMarker = page.NextUploadIdMarker;
    }
  }

  /** Best effort: true when aborted now, false when it failed or was gone already. */
  private async abortUpload(fullKey: string, uploadId: string): Promise<boolean> {
    try {
      await this.timed((abortSignal) =>
        this.client.send(new AbortMultipartUploadCommand({ Bucket: this.opts.bucket, Key: fullKey, UploadId: uploadId }), {
          abortSignal,
        }),
      );
      return true;
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    await this.sweeping;
    this.client.destroy();
  }

  async get(key: string): Promise<Buffer | undefined> {
    return (await this.getTagged(key))?.bytes;
  }

  async getWithEtag(key: string): Promise<TaggedObject | undefined> {
    const got = await this.getTagged(key);
    if (got && !got.etag) throw new StoreUnavailableError(`S3 GetObject ${key}: the answer has no ETag`);
    return got;
  }

  /** The bytes and the bare ETag ('' when the service sent none). */
  private async getTagged(key: string): Promise<TaggedObject | undefined> {
    checkKey(key);
    try {
      const out = await this.timed((abortSignal) =>
        this.client.send(new GetObjectCommand({ Bucket: this.opts.bucket, Key: this.full(key) }), { abortSignal }),
      );
      const etag = bareEtag(out.ETag ?? '');
      const body = out.Body as Readable | undefined;
      if (!body) return { bytes: Buffer.alloc(0), etag };
      const chunks: Buffer[] = [];
      for await (const chunk of body) chunks.push(chunk as Buffer);
      return { bytes: Buffer.concat(chunks), etag };
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw this.unavailable('GetObject', key, err);
    }
  }

  /** The form of the ETag putIf now sends in If-Match (tests, diagnostics). */
  get ifMatchForm(): EtagForm {
    return this.etagForm;
  }

  async putIf(key: string, bytes: Buffer | string, cond: PutCondition): Promise<{ etag: string } | 'conflict'> {
    checkKey(key);
    const body = typeof bytes === 'string' ? Buffer.from(bytes) : bytes;
    const create = 'ifNoneMatch' in cond;
    if (create && cond.ifNoneMatch !== '*') throw new Error(`putIf ${key}: ifNoneMatch must be "*"`);
    const expected = create ? '' : bareEtag(cond.ifMatch);
    if (!create && !expected) throw new Error(`putIf ${key}: an empty ifMatch tag`);
    const op = create ? 'PutObject If-None-Match' : 'PutObject If-Match';
    let triedOtherForm = false;
    let retriedFailure = false;
    for (;;) {
      const form = this.etagForm;
      const sent = await this.sendConditional(key, body, create ? { IfNoneMatch: '*' } : { IfMatch: form === 'bare' ? expected : `"${expected}"` });
      if (sent.kind === 'failed') throw this.unavailable(op, key, sent.err);
      if (sent.kind === 'ok' && sent.etag) return { etag: sent.etag };
      // No tag in the answer, a refusal, or no telling: what is at the key now decides.
      let now: TaggedObject | undefined;
      try {
        now = await this.getWithEtag(key);
      } catch (err) {
        throw sent.kind === 'unknown' ? this.unavailable(op, key, sent.err) : this.unavailable(`${op} (reading it back)`, key, err);
      }
      if (now && now.bytes.equals(body)) return { etag: now.etag };
      // Written and replaced already by another writer; or refused, with no write of ours there.
      if (sent.kind === 'ok' || (sent.kind === 'refused' && create)) return 'conflict';
      // Someone else's write is there (or, for If-Match, the object is gone): they won.
      const unchanged = create ? now === undefined : now !== undefined && now.etag === expected;
      if (!unchanged) return 'conflict';
      if (sent.kind === 'refused') {
        if (triedOtherForm) {
          throw new StoreUnavailableError(
            `S3 ${op} ${key}: refused (HTTP ${sent.status}) for the object's own current ETag, bare and quoted: the service does not honour If-Match`,
          );
        }
        // The service refused its own current tag: it matches the other form (RGW 16 only the
        // bare one, AWS documents the quoted one). From now on that one goes first.
        triedOtherForm = true;
        if (this.etagForm === form) this.etagForm = form === 'bare' ? 'quoted' : 'bare';
        continue;
      }
      // Failed without effect (a 5xx, 409 ConditionalRequestConflict, a timeout): once more.
      if (retriedFailure) throw this.unavailable(op, key, sent.err);
      retriedFailure = true;
    }
  }

  /**
   * One conditional PutObject. 'refused': the service says the condition failed (412, or 404
   * for If-Match on an absent key); 'failed': a refusal of the request itself, so nothing was
   * written (400, 403, 501, ...); 'unknown': anything else (409, 5xx, a timeout, a reset), which
   * may or may not have written. 'ok' carries the bare ETag, '' when the answer had none.
   */
  private async sendConditional(
    key: string,
    body: Buffer,
    condition: { IfNoneMatch: string } | { IfMatch: string },
  ): Promise<{ kind: 'ok'; etag: string } | { kind: 'refused'; status: number } | { kind: 'failed'; err: unknown } | { kind: 'unknown'; err: unknown }> {
    try {
      const out = await this.timed((abortSignal) =>
        this.client.send(
          new PutObjectCommand({ Bucket: this.opts.bucket, Key: this.full(key), Body: body, ContentLength: body.length, ...condition }),
          { abortSignal },
        ),
      );
      return { kind: 'ok', etag: bareEtag(out.ETag ?? '') };
    } catch (err) {
      const status = statusOf(err);
      if (status === 412 || (status === 404 && 'IfMatch' in condition)) return { kind: 'refused', status };
      if (status !== undefined && status >= 400 && status < 500 && status !== 409 && status !== 408 && status !== 429) {
        return { kind: 'failed', err };
      }
      return { kind: 'unknown', err };
    }
  }

  async put(key: string, bytes: Buffer | string): Promise<void> {
    checkKey(key);
    const body = typeof bytes === 'string' ? Buffer.from(bytes) : bytes;
    try {
      await this.timed((abortSignal) =>
        this.client.send(
          new PutObjectCommand({ Bucket: this.opts.bucket, Key: this.full(key), Body: body, ContentLength: body.length }),
          { abortSignal },
        ),
      );
    } catch (err) {
      throw this.unavailable('PutObject', key, err);
    }
  }

  async delete(key: string): Promise<void> {
    checkKey(key);
    try {
      await this.timed((abortSignal) =>
        this.client.send(new DeleteObjectCommand({ Bucket: this.opts.bucket, Key: this.full(key) }), { abortSignal }),
      );
    } catch (err) {
      if (isNotFound(err)) return;
      throw this.unavailable('DeleteObject', key, err);
    }
  }

  async move(from: string, to: string): Promise<void> {
    checkKey(from);
    checkKey(to);
    // One server-side copy (CopyObject takes objects up to 5 GiB), then the delete.
    try {
      await this.timed((abortSignal) =>
        this.client.send(
          new CopyObjectCommand({ Bucket: this.opts.bucket, Key: this.full(to), CopySource: encodeURI(`${this.opts.bucket}/${this.full(from)}`) }),
          { abortSignal },
        ),
      );
    } catch (err) {
      if (isNotFound(err)) return;
      throw this.unavailable('CopyObject', from, err);
    }
    await this.delete(from);
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    checkKey(key);
    try {
      const out = await this.timed((abortSignal) =>
        this.client.send(new HeadObjectCommand({ Bucket: this.opts.bucket, Key: this.full(key) }), { abortSignal }),
      );
      return { key, size: out.ContentLength ?? 0, modifiedMs: out.LastModified?.getTime() ?? 0 };
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw this.unavailable('HeadObject', key, err);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    checkPrefix(prefix);
    let token: string | undefined;
    do {
      let page;
      try {
        page = await this.timed((abortSignal) =>
          this.client.send(
            new ListObjectsV2Command({ Bucket: this.opts.bucket, Prefix: this.full(prefix), MaxKeys: LIST_PAGE, ContinuationToken: token }),
            { abortSignal },
          ),
        );
      } catch (err) {
        throw this.unavailable('ListObjectsV2', prefix, err);
      }
      for (const o of page.Contents ?? []) {
        const key = o.Key === undefined ? undefined : this.keyOf(o.Key);
        if (!key) continue;
        yield { key, size: o.Size ?? 0, modifiedMs: o.LastModified?.getTime() ?? 0 };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  async children(prefix: string): Promise<string[]> {
    checkPrefix(prefix);
    if (prefix !== '' && !prefix.endsWith('/')) throw new Error(`children: prefix ${JSON.stringify(prefix)} must end in "/"`);
    const base = this.full(prefix);
    const names = new Set<string>();
    let token: string | undefined;
    do {
      let page;
      try {
        page = await this.timed((abortSignal) =>
          this.client.send(
            new ListObjectsV2Command({
              Bucket: this.opts.bucket,
              Prefix: base,
              Delimiter: '/',
              MaxKeys: LIST_PAGE,
              ContinuationToken: token,
            }),
            { abortSignal },
          ),
        );
      } catch (err) {
        throw this.unavailable('ListObjectsV2', prefix, err);
      }
      for (const p of page.CommonPrefixes ?? []) {
        const name = p.Prefix?.startsWith(base) ? p.Prefix.slice(base.length).replace(/\/$/, '') : '';
        if (name) names.add(name);
      }
      for (const o of page.Contents ?? []) {
        const name = o.Key?.startsWith(base) ? o.Key.slice(base.length) : '';
        if (name) names.add(name);
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return [...names].sort();
  }

  tempPath(): string {
    return `${this.scratchDir}/${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  }

  async commitFile(tmpPath: string, key: string, size: number): Promise<void> {
    checkKey(key);
    let fh: FileHandle;
    try {
      fh = await fs.open(tmpPath, 'r');
    } catch (err) {
      throw this.unavailable('commit', key, err);
    }
    try {
      // The bytes go from this open file: a temp file removed meanwhile still uploads whole,
      // one truncated meanwhile fails its request (RangeBody) instead of sending less.
      const st = await fh.stat();
      if (st.size !== size) throw new StoreUnavailableError(`S3 commit ${key}: ${tmpPath} has ${st.size} bytes, not ${size}`);
      if (size === 0) await this.put(key, Buffer.alloc(0));
      else if (size < this.partSize) await this.putFile(fh, tmpPath, key, size);
      else await this.multipart(fh, tmpPath, key, size);
    } finally {
      await fh.close().catch(() => undefined);
    }
  }

  /**
   * One request whose body streams from the file, tried twice (with a fresh body) when the
   * first fails in a way a second may not: a stale keep-alive socket, a 5xx. `outer` aborts it
   * (a sibling part failed). Times out only by the socket's idle bound: an upload takes as
   * long as its bytes take.
   */
  private async sendBody<T>(
    body: () => Readable,
    send: (body: Readable, abortSignal: AbortSignal) => Promise<T>,
    outer?: AbortSignal,
  ): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      if (outer?.aborted) throw outer.reason ?? new Error('aborted');
      const ac = new AbortController();
      const onOuter = (): void => ac.abort(outer?.reason);
      outer?.addEventListener('abort', onOuter, { once: true });
      const b = body();
      let bodyError: Error | undefined;
      // The handler pipes the body into the request, which does not see a source's error:
      // abort the request, or it would wait for the bytes that will not come.
      b.once('error', (err) => {
        bodyError = err;
        ac.abort(err);
      });
      try {
        return await send(b, ac.signal);
      } catch (err) {
        if (bodyError) throw bodyError;
        if (attempt < 2 && !outer?.aborted && isRetryableUpload(err)) continue;
        throw err;
      } finally {
        outer?.removeEventListener('abort', onOuter);
        b.destroy();
      }
    }
  }

  private async putFile(fh: FileHandle, path: string, key: string, size: number): Promise<void> {
    try {
      await this.sendBody(
        () => new RangeBody(fh, 0, size, path),
        (Body, abortSignal) =>
          this.client.send(
            new PutObjectCommand({ Bucket: this.opts.bucket, Key: this.full(key), Body, ContentLength: size }),
            { abortSignal, requestTimeout: 0 },
          ),
      );
    } catch (err) {
      throw this.unavailable('PutObject', key, err);
    }
  }

  private async multipart(fh: FileHandle, path: string, key: string, size: number): Promise<void> {
    const Bucket = this.opts.bucket;
    const Key = this.full(key);
    const partSize = Math.max(this.partSize, Math.ceil(size / MAX_PARTS));
    const count = Math.ceil(size / partSize);
    let uploadId: string | undefined;
    try {
      const created = await this.timed((abortSignal) =>
        this.client.send(new CreateMultipartUploadCommand({ Bucket, Key }), { abortSignal }),
      );
      uploadId = created.UploadId;
      if (!uploadId) throw new Error('CreateMultipartUpload answered no UploadId');
    } catch (err) {
      throw this.unavailable('CreateMultipartUpload', key, err);
    }
    const UploadId = uploadId;

    const etags: string[] = new Array<string>(count);
    const stop = new AbortController();
    let failure: { op: string; err: unknown } | undefined;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (!failure && next < count) {
        const i = next++;
        const release = await partSlots.acquire();
        try {
          if (failure) return;
          const start = i * partSize;
          const end = Math.min(size, start + partSize);
          const out = await this.sendBody(
            () => new RangeBody(fh, start, end, path),
            (Body, abortSignal) =>
              this.client.send(
                new UploadPartCommand({ Bucket, Key, UploadId, PartNumber: i + 1, Body, ContentLength: end - start }),
                { abortSignal, requestTimeout: 0 },
              ),
            stop.signal,
          );
          if (!out.ETag) throw new Error(`UploadPart ${i + 1} answered no ETag`);
          etags[i] = out.ETag;
          if (holdAfterPartMs > 0) await new Promise((r) => setTimeout(r, holdAfterPartMs));
        } catch (err) {
          if (!failure) {
            failure = { op: `UploadPart ${i + 1}/${count}`, err };
            stop.abort(err);
          }
        } finally {
          release();
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARTS_PER_COMMIT, count) }, worker));

    if (!failure) {
      try {
        // No total deadline here (see the top of the file): each attempt's headers within
        // requestTimeoutMs, the body as long as S3 keeps it moving.
        await this.client.send(
          new CompleteMultipartUploadCommand({
            Bucket,
            Key,
            UploadId,
            MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
          }),
        );
        return;
      } catch (err) {
        failure = { op: 'CompleteMultipartUpload', err };
      }
    }
    // Every part request has settled (the workers are done): nothing re-creates a part after this.
    await this.abortUpload(Key, UploadId);
    throw this.unavailable(failure.op, key, failure.err);
  }

  async openRead(key: string, start: number, end: number): Promise<Readable | undefined> {
    checkKey(key);
    const ranged = end >= start;
    let body: Readable | undefined;
    let length: number | undefined;
    try {
      const out = await this.timed((abortSignal) =>
        this.client.send(
          new GetObjectCommand({ Bucket: this.opts.bucket, Key: this.full(key), ...(ranged ? { Range: `bytes=${start}-${end}` } : {}) }),
          { abortSignal },
        ),
      );
      body = out.Body as Readable | undefined;
      length = out.ContentLength;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw this.unavailable('GetObject', key, err);
    }
    const want = ranged ? end - start + 1 : 0;
    if (!body) {
      if (want === 0) return new PassThrough().end();
      throw new StoreUnavailableError(`S3 GetObject ${key}: no body`);
    }
    if (length !== undefined && length !== want) {
      body.destroy();
      throw new StoreUnavailableError(`S3 GetObject ${key}: ${length} bytes for a range of ${want}`);
    }
    // A mid-body failure destroys the body with its error, for the consumer to see; this
    // listener only keeps an error that comes before the consumer listens from being thrown.
    body.on('error', () => undefined);
    return body;
  }

  async presignGet(key: string): Promise<string> {
    checkKey(key);
    const expiresIn = Math.min(MAX_PRESIGN_S, Math.max(1, Math.round(this.opts.presignTTLMs / 1000)));
    return getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.opts.bucket, Key: this.full(key) }), { expiresIn });
  }
}

/** An endpoint for messages: never a user or password written into its URL. */
function withoutUserinfo(endpoint: string): string {
  try {
    const u = new URL(endpoint);
    if (!u.username && !u.password) return endpoint;
    u.username = '';
    u.password = '';
    return u.toString();
  } catch {
    return '(an endpoint that is not a URL)';
  }
}

/** Removes everything in dir (creating it if missing); answers how many entries there were. */
async function sweepDir(dir: string): Promise<number> {
  await fs.mkdir(dir, { recursive: true });
  const names = await fs.readdir(dir);
  for (const name of names) await removeQuietly(`${dir}/${name}`);
  return names.length;
}
