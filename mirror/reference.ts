// Repository names, tags and digests as the distribution reference grammar defines them.
// Everything that reaches the store or the upstream passes through here first, so a value
// that validates can be used as a path segment without escaping: none of them can contain
// "..", a leading "/", a backslash, NUL or a percent sign.

import { RegistryError } from './errors.js';

const pathComponent = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const tagPattern = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const digestPatterns: Record<string, RegExp> = {
  sha256: /^[a-f0-9]{64}$/,
  sha512: /^[a-f0-9]{128}$/,
};
export const maxNameLength = 255;

export type DigestAlgorithm = 'sha256' | 'sha512';

export interface Digest {
  algorithm: DigestAlgorithm;
  hex: string;
  /** "<algorithm>:<hex>" */
  value: string;
}

export function isValidName(name: string): boolean {
  if (name.length === 0 || name.length > maxNameLength) return false;
  return name.split('/').every((c) => pathComponent.test(c));
}

export function parseName(name: string): string {
  if (!isValidName(name)) throw new RegistryError('NAME_INVALID', 'invalid repository name', { name: clip(name) });
  return name;
}

export function isValidTag(tag: string): boolean {
  return tagPattern.test(tag);
}

export function parseDigest(value: string): Digest {
  const i = value.indexOf(':');
  const algorithm = value.slice(0, i);
  const hex = value.slice(i + 1);
  const pattern = digestPatterns[algorithm];
  if (i < 0 || !pattern || !pattern.test(hex)) {
    throw new RegistryError('DIGEST_INVALID', 'invalid digest: sha256 or sha512 with lowercase hex expected', {
      digest: clip(value),
    });
  }
  return { algorithm: algorithm as DigestAlgorithm, hex, value };
}

export function looksLikeDigest(ref: string): boolean {
  return ref.includes(':');
}

export type ManifestReference = { kind: 'tag'; tag: string } | { kind: 'digest'; digest: Digest };

export function parseManifestReference(ref: string): ManifestReference {
  if (looksLikeDigest(ref)) return { kind: 'digest', digest: parseDigest(ref) };
  if (!isValidTag(ref)) throw new RegistryError('TAG_INVALID', 'invalid tag', { tag: clip(ref) });
  return { kind: 'tag', tag: ref };
}

/** Registry hosts as they appear in image references and containerd's ?ns= (host[:port]). */
const hostPattern = /^(?=.{1,253}(?::\d{1,5})?$)[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::\d{1,5})?$/;
export function isValidRegistryHost(host: string): boolean {
  return hostPattern.test(host);
}

/** Keeps hostile input from bloating error bodies and logs. */
export function clip(s: string, max = 128): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}
