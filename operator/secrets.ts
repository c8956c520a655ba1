// What the operator keeps of a Secret: its key names and a keyed hash of its data, never the
// values. The hash goes into the pod template so that rotating the Secret rolls the pods; it
// is an HMAC keyed with the Secret's uid, so someone who can read Pods but not Secrets cannot
// test guesses of a password against it.
import { createHmac } from 'node:crypto';
import { stableStringify } from './hash.js';
import type { CredentialsForm } from './types.js';

export interface SecretSummary {
  apiVersion?: string;
  kind?: string;
  metadata: { name: string; namespace: string; uid?: string; resourceVersion?: string };
  type?: string;
  keys: string[];
  dataHash: string;
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
  };
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
