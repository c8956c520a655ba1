// What the operator keeps of a Secret: its key names and a keyed hash of its data, never the
// values. The hash goes into the pod template so that rotating the Secret rolls the pods; it
// is an HMAC keyed with the Secret's uid, so someone who can read Pods but not Secrets cannot
// test guesses of a password against it.
//
// A Secret used for client authentication (spec.auth) is also checked here, while its data is
// at hand: its htpasswd and tokens keys are parsed with the mirror's own parsers, and only the
// verdict is kept (counts and problems naming lines, never a hash or a token). A bad file is
// then reported in the RegistryMirror's status instead of crash-looping the mirror pods.
//
// Memory is bounded whatever a tenant puts in a Secret (the informer watches Secrets in every
// namespace it watches, referenced or not): a summary keeps at most MAX_PROBLEMS_KEPT problems
// per key (with their total count), at most MAX_KEY_NAMES_KEPT key names besides the ones the
// operator reads (with the total count), and no data. The parse itself is transient.
import { createHmac } from 'node:crypto';
import { parseHtpasswd, parseTokens } from '../mirror/access/credential-files.js';
import { stableStringify } from './hash.js';
import type { AuthForm, CredentialsForm, S3CredentialsForm } from './types.js';

/** Problems kept per client-auth key (the first ones, in file order). */
export const MAX_PROBLEMS_KEPT = 3;
/** Key names kept besides the ones the operator reads (the first ones, sorted). */
export const MAX_KEY_NAMES_KEPT = 10;
/** The keys the operator reads; always kept when present. */
const KNOWN_KEYS = ['.dockerconfigjson', 'accessKeyId', 'ca.crt', 'htpasswd', 'password', 'secretAccessKey', 'tls.crt', 'tls.key', 'tokens', 'username'];
/**
 * A TLS Secret's ca.crt (public) is kept up to this size, so that spec.tls mode secret can
 * publish it; only for Secrets with tls.crt and tls.key (not, e.g., every ServiceAccount
 * token Secret, which has a ca.crt too).
 */
export const MAX_CA_CRT_KEPT = 16 * 1024;
/** Annotations the operator writes on the serving certificate Secrets it issues (tls/serving.ts). */
export const TLS_ANNOTATION_PREFIX = 'registry-mirror.io/tls-';
const MAX_TLS_ANNOTATIONS = 8;
/** The keys of an S3 credentials Secret (spec.storage.s3.credentialsSecret), as the mirror reads them. */
export const S3_CREDENTIAL_KEYS = ['accessKeyId', 'secretAccessKey'] as const;

/** The verdict on one client-auth key of a Secret. */
export interface AuthKeySummary {
  entries: number;
  /** How many problems the key has in all. */
  problemCount: number;
  /** The first MAX_PROBLEMS_KEPT of them. */
  problems: string[];
}

export interface SecretSummary {
  apiVersion?: string;
  kind?: string;
  metadata: { name: string; namespace: string; uid?: string; resourceVersion?: string };
  type?: string;
  /** The known keys present, plus at most MAX_KEY_NAMES_KEPT others; sorted. */
  keys: string[];
  /** How many keys the Secret has in all. */
  keyCount: number;
  dataHash: string;
  /** Present for the keys named htpasswd and tokens. */
  auth?: { htpasswd?: AuthKeySummary; tokens?: AuthKeySummary };
  /** A TLS Secret's ca.crt, when it has one of at most MAX_CA_CRT_KEPT bytes (public data). */
  caCrt?: string;
  /** The uid of its controller (ownerReferences), if any. */
  controllerUid?: string;
  /** The registry-mirror.io/tls-* annotations (at most MAX_TLS_ANNOTATIONS, 256 characters each). */
  tlsAnnotations?: Record<string, string>;
}

/**
 * The informer's transform for Secrets: everything the operator keeps of one. Strings are
 * copied (never slices of the watched object's text), so nothing of the data stays reachable.
 */
export function summarizeSecret(s: any): SecretSummary {
  const data: Record<string, string> = { ...(s?.data ?? {}) };
  const uid = String(s?.metadata?.uid ?? '');
  const all = Object.keys(data).sort();
  const known = all.filter((k) => KNOWN_KEYS.includes(k));
  const others = all.filter((k) => !KNOWN_KEYS.includes(k)).slice(0, MAX_KEY_NAMES_KEPT);
  return {
    metadata: {
      name: copy(s?.metadata?.name),
      namespace: copy(s?.metadata?.namespace),
      uid: copy(uid),
      resourceVersion: copy(s?.metadata?.resourceVersion),
    },
    type: typeof s?.type === 'string' ? copy(s.type.slice(0, 253)) : undefined,
    keys: [...known, ...others].sort().map((k) => copy(k.slice(0, 253))!),
    keyCount: all.length,
    dataHash: createHmac('sha256', uid).update(stableStringify(data)).digest('hex').slice(0, 16),
    ...authSummary(data),
    ...tlsSummary(s, data),
  };
}

function tlsSummary(s: any, data: Record<string, string>): Pick<SecretSummary, 'caCrt' | 'controllerUid' | 'tlsAnnotations'> {
  const out: Pick<SecretSummary, 'caCrt' | 'controllerUid' | 'tlsAnnotations'> = {};
  if (typeof data['tls.crt'] === 'string' && typeof data['tls.key'] === 'string' && typeof data['ca.crt'] === 'string') {
    const ca = Buffer.from(data['ca.crt'], 'base64');
    if (ca.length > 0 && ca.length <= MAX_CA_CRT_KEPT) out.caCrt = ca.toString('utf8');
  }
  const refs = Array.isArray(s?.metadata?.ownerReferences) ? (s.metadata.ownerReferences as Array<{ uid?: unknown; controller?: unknown }>) : [];
  const ctrl = refs.find((r) => r?.controller === true);
  if (typeof ctrl?.uid === 'string') out.controllerUid = copy(ctrl.uid.slice(0, 128));
  const ann = s?.metadata?.annotations;
  if (ann && typeof ann === 'object') {
    const kept = Object.entries(ann as Record<string, unknown>)
      .filter(([k, v]) => k.startsWith(TLS_ANNOTATION_PREFIX) && typeof v === 'string')
      .slice(0, MAX_TLS_ANNOTATIONS)
      .map(([k, v]) => [copy(k.slice(0, 253)), copy((v as string).slice(0, 256))]);
    if (kept.length > 0) out.tlsAnnotations = Object.fromEntries(kept);
  }
  return out;
}

/** A flat copy of a string, so a kept name never pins a larger string it was sliced from. */
function copy<T extends string | undefined>(v: T): T {
  return (typeof v === 'string' ? Buffer.from(v, 'utf8').toString('utf8') : v) as T;
}

function keyNames(s: SecretSummary): string {
  if (s.keys.length === 0) return 'no keys';
  const more = (s.keyCount ?? s.keys.length) - s.keys.length;
  return `${s.keys.join(', ')}${more > 0 ? ` and ${more} more` : ''}`;
}

function authSummary(data: Record<string, string>): Pick<SecretSummary, 'auth'> {
  const decode = (k: string) => Buffer.from(String(data[k]), 'base64').toString('utf8');
  const auth: NonNullable<SecretSummary['auth']> = {};
  if (typeof data.htpasswd === 'string') auth.htpasswd = checkInChunks(decode('htpasswd'), 'htpasswd');
  if (typeof data.tokens === 'string') auth.tokens = checkInChunks(decode('tokens'), 'tokens');
  return auth.htpasswd || auth.tokens ? { auth } : {};
}

/** Lines handed to the mirror's parser at once: bounds the transient memory of a check. */
export const CHECK_CHUNK_LINES = 4096;

/**
 * The mirror's own parser, run over CHECK_CHUNK_LINES lines at a time so that a hostile file
 * (a 1 MiB Secret of one-character lines has half a million problems) never has all its
 * problems in memory at once: only the count and the first MAX_PROBLEMS_KEPT survive. Line
 * numbers are the file's. Entries are counted across chunks as the parser would (a tokens
 * file's distinct tokens, an htpasswd file's distinct users; a user already seen in an
 * earlier chunk is a problem, as it is within one).
 */
function checkInChunks(text: string, kind: 'htpasswd' | 'tokens'): AuthKeySummary {
  const seen = new Set<string>();
  let problemCount = 0;
  let kept: Array<{ line: number; text: string }> = [];
  const keep = (line: number, t: string) => {
    kept.push({ line, text: t });
    kept.sort((a, b) => a.line - b.line);
    if (kept.length > MAX_PROBLEMS_KEPT) kept = kept.slice(0, MAX_PROBLEMS_KEPT);
  };
  let start = 0;
  let offset = 0; // lines before this chunk
  while (start < text.length) {
    let end = start;
    let n = 0;
    while (n < CHECK_CHUNK_LINES) {
      const nl = text.indexOf('\n', end);
      if (nl < 0) {
        end = text.length;
        break;
      }
      end = nl + 1;
      n++;
    }
    const chunk = text.slice(start, end);
    const shift = (p: string) => p.replace(/\bline (\d+)/g, (_m, d: string) => `line ${Number(d) + offset}`);
    const lineOf = (p: string) => Number(/^line (\d+)/.exec(p)?.[1] ?? 0) + offset;
    const parsed = kind === 'tokens' ? parseTokens(chunk) : parseHtpasswd(chunk);
    problemCount += parsed.problems.length;
    for (const p of parsed.problems.slice(0, MAX_PROBLEMS_KEPT)) keep(lineOf(p), shift(p));
    const fresh = [...parsed.entries.keys()];
    // A token repeated is harmless (the parser keeps a set); a user repeated is a problem.
    const again = new Set(kind === 'htpasswd' ? fresh.filter((k) => seen.has(k)) : []);
    problemCount += again.size;
    if (again.size > 0 && kind === 'htpasswd' && (kept.length < MAX_PROBLEMS_KEPT || kept[kept.length - 1]!.line > offset)) {
      // Name the lines of users first seen in an earlier chunk (only while they could be kept).
      const lines = chunk.split('\n');
      const named = new Set<string>();
      for (let i = 0; i < lines.length && named.size < Math.min(again.size, MAX_PROBLEMS_KEPT); i++) {
        const l = lines[i]!.trim();
        const c = l.indexOf(':');
        const user = c < 0 ? '' : l.slice(0, c);
        if (again.has(user) && !named.has(user)) {
          named.add(user);
          keep(offset + i + 1, `line ${offset + i + 1}: the user of an earlier line again`);
        }
      }
    }
    for (const k of fresh) seen.add(k);
    offset += n;
    start = end;
  }
  return { entries: seen.size, problemCount, problems: kept.map((k) => copy(k.text)) };
}

/** The client-auth keys a Secret holds, or a message saying why it cannot be used for spec.auth. */
export function authForm(s: SecretSummary): AuthForm | { problem: string } {
  const name = `Secret "${s.metadata.name}" named by spec.auth.secret`;
  const a = s.auth;
  if (!a) {
    return { problem: `${name} has neither an htpasswd nor a tokens key (it has: ${keyNames(s)})` };
  }
  const more = (k: AuthKeySummary | undefined) => {
    const n = (k?.problemCount ?? k?.problems.length ?? 0) - (k?.problems.length ?? 0);
    return n > 0 ? [`and ${n} more problems`] : [];
  };
  const problems = [
    ...[...(a.htpasswd?.problems ?? []).slice(0, MAX_PROBLEMS_KEPT), ...more(a.htpasswd)].map((p) => `htpasswd ${p}`),
    ...[...(a.tokens?.problems ?? []).slice(0, MAX_PROBLEMS_KEPT), ...more(a.tokens)].map((p) => `tokens ${p}`),
  ];
  if (problems.length > 0) return { problem: `${name}: ${problems.join('; ')}` };
  if ((a.htpasswd?.entries ?? 0) + (a.tokens?.entries ?? 0) === 0) {
    return { problem: `${name} holds no users and no tokens: nobody could pull` };
  }
  const keys: AuthForm['keys'] = [];
  if (a.htpasswd) keys.push('htpasswd');
  if (a.tokens) keys.push('tokens');
  return { keys, hash: s.dataHash };
}

/** The form of credentials a Secret holds, or a message saying why it holds none we can use. */
export function credentialsForm(s: SecretSummary): CredentialsForm | { problem: string } {
  if (s.keys.includes('.dockerconfigjson')) return { form: 'dockerconfigjson', hash: s.dataHash };
  if (s.keys.includes('username') && s.keys.includes('password')) return { form: 'basic', hash: s.dataHash };
  return {
    problem:
      `Secret "${s.metadata.name}" has neither a .dockerconfigjson key nor both username and password keys ` +
      `(it has: ${keyNames(s)})`,
  };
}

/** The S3 credentials Secret holds both keys, or a message naming the missing ones (never values). */
export function s3CredentialsForm(s: SecretSummary): S3CredentialsForm | { problem: string } {
  const missing = S3_CREDENTIAL_KEYS.filter((k) => !s.keys.includes(k));
  if (missing.length === 0) return { hash: s.dataHash };
  return {
    problem:
      `Secret "${s.metadata.name}" named by spec.storage.s3.credentialsSecret lacks the ${missing.join(' and ')} ` +
      `key${missing.length > 1 ? 's' : ''} (it has: ${keyNames(s)})`,
  };
}
