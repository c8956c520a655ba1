// What the operator keeps of a Secret: its key names and a keyed hash of its data, never the
// values. The hash goes into the pod template so that rotating the Secret rolls the pods; it
// is an HMAC keyed with the Secret's uid, so someone who can read Pods but not Secrets cannot
// test guesses of a password against it.
//
// A Secret used for client authentication (spec.auth) is also checked here, while its data is
// at hand: its htpasswd and tokens keys are parsed with the mirror's own parsers, and only the
// verdict is kept (counts and problems naming lines, never a hash or a token). A bad file is
// then reported in the RegistryMirror's status instead of crash-looping the mirror pods.
import { createHmac } from 'node:crypto';
import { parseHtpasswd, parseTokens } from '../mirror/access/credential-files.js';
import { stableStringify } from './hash.js';
import type { AuthForm, CredentialsForm } from './types.js';

/** The verdict on one client-auth key of a Secret. */
export interface AuthKeySummary {
  entries: number;
  problems: string[];
}

export interface SecretSummary {
  apiVersion?: string;
  kind?: string;
  metadata: { name: string; namespace: string; uid?: string; resourceVersion?: string };
  type?: string;
  keys: string[];
  dataHash: string;
  /** Present for the keys named htpasswd and tokens. */
  auth?: { htpasswd?: AuthKeySummary; tokens?: AuthKeySummary };
}

export function summarizeSecret(s: any): SecretSummary {
  const data: Record<string, string> = { ...(s?.data ?? {}) };
  const uid = String(s?.metadata?.uid ?? '');
  return {
    metadata: {
      name: s?.metadata?.name,
      namespace: s?.metadata?.namespace,
      uid,
      resourceVersion: s?.metadata?.resourceVersion,
    },
    type: s?.type,
    keys: Object.keys(data).sort(),
    dataHash: createHmac('sha256', uid).update(stableStringify(data)).digest('hex').slice(0, 16),
    ...authSummary(data),
  };
}

function authSummary(data: Record<string, string>): Pick<SecretSummary, 'auth'> {
  const decode = (k: string) => Buffer.from(String(data[k]), 'base64').toString('utf8');
  const auth: NonNullable<SecretSummary['auth']> = {};
  if (typeof data.htpasswd === 'string') {
    const p = parseHtpasswd(decode('htpasswd'));
    auth.htpasswd = { entries: p.entries.size, problems: p.problems };
  }
  if (typeof data.tokens === 'string') {
    const p = parseTokens(decode('tokens'));
    auth.tokens = { entries: p.entries.size, problems: p.problems };
  }
  return auth.htpasswd || auth.tokens ? { auth } : {};
}

/** The client-auth keys a Secret holds, or a message saying why it cannot be used for spec.auth. */
export function authForm(s: SecretSummary): AuthForm | { problem: string } {
  const name = `Secret "${s.metadata.name}" named by spec.auth.secret`;
  const a = s.auth;
  if (!a) {
    return { problem: `${name} has neither an htpasswd nor a tokens key (it has: ${s.keys.length ? s.keys.slice(0, 10).join(', ') : 'no keys'})` };
  }
  const problems = [
    ...(a.htpasswd?.problems ?? []).slice(0, 3).map((p) => `htpasswd ${p}`),
    ...(a.tokens?.problems ?? []).slice(0, 3).map((p) => `tokens ${p}`),
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
      `(it has: ${s.keys.length ? s.keys.join(', ') : 'no keys'})`,
  };
}
