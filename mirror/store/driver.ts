// The one seam between the store and where its bytes live. The content store, the repository
// and v1 indexes, expiry, eviction and `verify` speak only this interface; a directory
// (drivers/fs-driver.ts, the embedded default) and an S3 bucket (drivers/s3-driver.ts) are
// its two implementations, and one conformance suite (test/unit/store-driver-suite.ts) runs
// against both.
//
// Keys are '/'-separated relative paths ("blobs/sha256/ab/ab12...", "repos/docker.io/library/
// alpine/_tags/3.19"). Callers validate every segment before it becomes a key (reference.ts,
// v1/path.ts): no empty segment, no "." or "..", no leading "/". A driver maps a key to a file
// under its root or to an object under its prefix, and never outside them.
//
// Large content never passes through memory whole: a download writes a local temp file in
// scratchDir (readers that lag read it back), and only once it is verified does commitFile
// move it to its key, as one rename (fs) or one upload straight to the final key (S3). So
// nothing is ever visible at a content key that did not verify, whatever the driver.

import type { Readable } from 'node:stream';

export interface ObjectInfo {
  key: string;
  size: number;
  /** Last modification, ms since epoch. */
  modifiedMs: number;
}

/**
 * The store could not be reached or refused a request (S3 5xx, timeout, connection refused,
 * credentials revoked). Callers turn it into 503 UNAVAILABLE on reads and "served uncached" on
 * writes; a missing object is never this error (get/stat/openRead answer undefined).
 */
export class StoreUnavailableError extends Error {
  readonly code = 'STORE_UNAVAILABLE';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreUnavailableError';
  }
}

export function isStoreUnavailable(err: unknown): err is StoreUnavailableError {
  return (err as { code?: unknown } | undefined)?.code === 'STORE_UNAVAILABLE';
}

/**
 * The condition of a conditional write (putIf): `ifNoneMatch: '*'` writes only when nothing is
 * at the key; `ifMatch` only when what is there has this entity tag (as getWithEtag or putIf
 * answered it; quoted or not, the driver sends the form its service matches).
 */
export type PutCondition = { ifNoneMatch: '*' } | { ifMatch: string };

/** A whole small object and its entity tag: opaque, unquoted, changes with every write. */
export interface TaggedObject {
  bytes: Buffer;
  etag: string;
}

export interface StoreDriver {
  readonly kind: 'filesystem' | 's3';
  /** Where, for logs and errors: the directory, or "s3://bucket/prefix (endpoint)". No secrets. */
  readonly location: string;
  /**
   * More than one process may use this store at the same time (S3). Such a store has no
   * owner record, and each process keeps its own state objects (state/<kind>/<instance>.json)
   * instead of one shared file that two processes would overwrite.
   */
  readonly shared: boolean;
  /** Local directory for temp files: downloads in flight and atomic writes. Swept by open(). */
  readonly scratchDir: string;
  /** Whether a temp file must be fsynced before commitFile (fs: yes; S3 uploads it anyway). */
  readonly syncBeforeCommit: boolean;

  /**
   * Checks that the store is reachable and usable, and sweeps leftovers of earlier runs: temp
   * files in scratchDir, and (S3) multipart uploads under the prefix older than the configured
   * bound. Rejects with a message naming the cause (S3: the service's error code) when the store
   * cannot be used; nothing else is called before it.
   */
  open(): Promise<{ sweptTemp: number; sweptUploads: number }>;
  /** Stops background work; idempotent. */
  close(): Promise<void>;

  /** A whole small object; undefined when absent. */
  get(key: string): Promise<Buffer | undefined>;
  /** Replaces an object atomically: readers see the old bytes or all of the new, never part. */
  put(key: string, bytes: Buffer | string): Promise<void>;
  /**
   * A whole small object with its entity tag, for a later putIf({ ifMatch }); undefined when
   * absent. Unavailable: StoreUnavailableError (S3), the Node error (fs).
   */
  getWithEtag(key: string): Promise<TaggedObject | undefined>;
  /**
   * Writes a small object only if `cond` holds, atomically with the check: of writers racing on
   * one condition, at most one gets its entity tag back; every other answer is 'conflict'.
   * 'conflict' means the condition failed: something is at the key (ifNoneMatch), or what is
   * there is absent or not that tag (ifMatch), i.e. someone else wrote first. Any other failure
   * rejects (StoreUnavailableError on S3), and then the write may or may not have happened: a
   * caller that must know reads the key again.
   *
   * `bytes` must differ from what any other writer writes to the key (lease.ts puts a fresh
   * token and a counter in each body): an answer that does not say whether the write won (RGW
   * 16 answers a lost If-Match race with 412 or 500, AWS documents 409 for a concurrent
   * conditional write, a timeout) is resolved by reading the key back; our bytes there = won.
   * fs: one process per store (state/serve.pid), so an in-process lock per file makes the
   * check and the rename atomic; the tag is a hash of the content.
   */
  putIf(key: string, bytes: Buffer | string, cond: PutCondition): Promise<{ etag: string } | 'conflict'>;
  /** Removes an object; an absent one is fine. fs also removes directories this leaves empty. */
  delete(key: string): Promise<void>;
  /**
   * Moves an object to another key (`verify --repair` quarantines corrupt content): fs
   * renames, S3 copies on the server and then deletes. An absent source is fine.
   */
  move(from: string, to: string): Promise<void>;
  stat(key: string): Promise<ObjectInfo | undefined>;
  /** Every object under `prefix` ("blobs/", "repos/docker.io/"), any depth, in no set order. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /**
   * The names one level below `prefix` (which ends in "/"): objects and "directories" (names
   * that have objects below them), without the prefix or a trailing "/", sorted, unique.
   */
  children(prefix: string): Promise<string[]>;

  /** A fresh temp file path in scratchDir (not created). */
  tempPath(): string;
  /**
   * Makes a finished, verified local file the object at `key`: fs renames it into place
   * (durably), S3 uploads it straight to the final key (one PutObject when small, else one
   * multipart upload, completed last and aborted on any failure). On S3 the temp file is left
   * for the caller to remove; on fs it is gone. Rejects with StoreUnavailableError, or an
   * ENOSPC-coded error (fs), and then nothing is at `key` that was not there before.
   */
  commitFile(tmpPath: string, key: string, size: number): Promise<void>;
  /**
   * Bytes [start, end] (inclusive) of the object as a response body; for an empty object
   * start = 0, end = -1. Undefined when the object is absent. Rejects before any byte when the
   * store cannot be read (StoreUnavailableError), so a caller can still answer 503.
   */
  openRead(key: string, start: number, end: number): Promise<Readable | undefined>;
  /** A URL from which a client may GET the object directly for a while (S3 redirect mode). */
  presignGet?(key: string): Promise<string>;
}
