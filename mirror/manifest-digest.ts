// What a manifest's digest is, and whether a body proves one. Pure functions, shared by the
// manifest cache (before anything is stored) and `registry-mirror verify` (on disk).
//
// The store is content-addressed and shared by every upstream, so a manifest may only be
// stored under a digest its own bytes prove: otherwise one upstream could plant content
// under the digest of another upstream's manifest (issue 11).
//
// Signed schema1 (`...manifest.v1+prettyjws`) is the one type whose digest is not the hash
// of the body: distribution hashes the JWS payload, i.e. the manifest without its
// signatures: bytes[0, formatLength) followed by the protected header's formatTail. Hashing
// that payload alone would prove too little: bytes after formatLength are free, and a JSON
// key repeated there ("fsLayers" again, after the signatures) overrides the signed one in
// every parser a client uses. So the body must be exactly payload-with-signatures: the
// prefix, then `,"signatures": <array>` and nothing else, then the tail.

import { createHash } from 'node:crypto';
import { manifestMediaTypes } from './manifest-class.js';
import type { Digest, DigestAlgorithm } from './reference.js';

export const schema1SignedType = manifestMediaTypes.schema1Signed;

/** The digest distribution gives these bytes (hex), or undefined for a malformed signed schema1. */
export function manifestDigestHex(bytes: Buffer, mediaType: string, algorithm: DigestAlgorithm): string | undefined {
  if (!isSignedSchema1(mediaType)) return hashHex(bytes, algorithm);
  const payload = schema1Payload(bytes);
  return payload ? hashHex(payload, algorithm) : undefined;
}

/** Whether the bytes are the manifest named by this digest. */
export function provesDigest(bytes: Buffer, mediaType: string, digest: Digest): boolean {
  // A body hashing to the digest is proof whatever its type claims to be.
  return hashHex(bytes, digest.algorithm) === digest.hex || manifestDigestHex(bytes, mediaType, digest.algorithm) === digest.hex;
}

export function isSignedSchema1(mediaType: string): boolean {
  return mediaType.split(';')[0]!.trim() === schema1SignedType;
}

/**
 * The JWS payload of a signed schema1 manifest, when the body is that payload with
 * signatures spliced in and nothing more; undefined otherwise. Every signature must name the
 * same formatLength and formatTail (libtrust refuses disagreeing signatures too).
 */
export function schema1Payload(bytes: Buffer): Buffer | undefined {
  let doc: { signatures?: unknown };
  try {
    doc = JSON.parse(bytes.toString('utf8')) as { signatures?: unknown };
  } catch {
    return undefined;
  }
  if (!Array.isArray(doc.signatures) || doc.signatures.length === 0) return undefined;
  let format: { length: number; tail: string } | undefined;
  for (const sig of doc.signatures as Array<{ protected?: unknown }>) {
    const f = protectedFormat(sig?.protected);
    if (!f || (format && (format.length !== f.length || format.tail !== f.tail))) return undefined;
    format = f;
  }
  const tail = Buffer.from(format!.tail, 'base64url');
  const { length } = format!;
  if (length > bytes.length - tail.length || !bytes.subarray(bytes.length - tail.length).equals(tail)) return undefined;
  // The spliced-in part must be exactly one "signatures" member.
  const middle = bytes.subarray(length, bytes.length - tail.length).toString('utf8');
  const m = /^\s*,\s*"signatures"\s*:/.exec(middle);
  if (!m) return undefined;
  try {
    if (!Array.isArray(JSON.parse(middle.slice(m[0].length)))) return undefined;
  } catch {
    return undefined;
  }
  return Buffer.concat([bytes.subarray(0, length), tail]);
}

function protectedFormat(value: unknown): { length: number; tail: string } | undefined {
  if (typeof value !== 'string') return undefined;
  try {
    const h = JSON.parse(Buffer.from(value, 'base64url').toString('utf8')) as { formatLength?: unknown; formatTail?: unknown };
    if (typeof h.formatLength !== 'number' || !Number.isSafeInteger(h.formatLength) || h.formatLength < 0) return undefined;
    if (typeof h.formatTail !== 'string') return undefined;
    return { length: h.formatLength, tail: h.formatTail };
  } catch {
    return undefined;
  }
}

function hashHex(bytes: Buffer, algorithm: DigestAlgorithm): string {
  return createHash(algorithm).update(bytes).digest('hex');
}
