// spec.tls generated: the operator's CA (one Secret in the operator's namespace, made on first
// need) and each mirror's serving certificate (the Secret <name>-tls in the mirror's namespace,
// owned by the RegistryMirror). The serving Secret carries, as annotations, what decides
// whether it is still right (which names it covers, which CA signed it, when it is renewed),
// so the decision needs only the informer's summary, never the Secret's data.
//
// The CA key is read from its Secret into this process's memory and used to sign; it is never
// written anywhere else, logged, or put in an error message.
import { createHash, X509Certificate } from 'node:crypto';
import { getObject, type Kube } from '../kube/client.js';
import { statusOf } from '../kube/informer.js';
import { ownedMetadata } from '../render/owner.js';
import { objectNames } from '../render/names.js';
import { TLS_ANNOTATION_PREFIX, type SecretSummary } from '../secrets.js';
import type { Manifest, RegistryMirror } from '../types.js';
import { createCa, issueServing, loadCa, renewalTime, type Ca } from './ca.js';

export const CA_CERT_KEY = 'ca.crt';
export const CA_KEY_KEY = 'ca.key';
export const DEFAULT_CA_SECRET = 'registry-mirror-ca';

export const TLS_ANNOTATION = {
  hosts: `${TLS_ANNOTATION_PREFIX}hosts-hash`,
  ca: `${TLS_ANNOTATION_PREFIX}ca`,
  notAfter: `${TLS_ANNOTATION_PREFIX}not-after`,
  renewAfter: `${TLS_ANNOTATION_PREFIX}renew-after`,
} as const;

/** The CA as reconcile uses it: the signer, its PEM and a short fingerprint. */
export interface OperatorCa extends Ca {
  fingerprint: string;
}

export function fingerprintOf(certPem: string): string {
  return createHash('sha256').update(new X509Certificate(certPem).raw).digest('hex').slice(0, 16);
}

export function hostsHash(hosts: string[]): string {
  return createHash('sha256').update(hosts.join(',')).digest('hex').slice(0, 16);
}

/**
 * The operator's CA from Secret <name> in <namespace>, created there when absent. Loaded once
 * per process (the promise is kept; a failure is not, so the next reconcile tries again).
 */
export class CaStore {
  private loading: Promise<OperatorCa> | undefined;

  constructor(
    private readonly kube: Kube,
    readonly namespace: string,
    readonly secretName: string = DEFAULT_CA_SECRET,
    private readonly now: () => Date = () => new Date(),
  ) {}

  get(): Promise<OperatorCa> {
    this.loading ??= this.load().catch((err) => {
      this.loading = undefined;
      throw err;
    });
    return this.loading;
  }

  private async load(): Promise<OperatorCa> {
    let live = await getObject(this.kube, 'v1', 'Secret', this.namespace, this.secretName);
    if (!live) {
      const m = await createCa(this.now());
      try {
        await this.kube.objects.create({
          apiVersion: 'v1',
          kind: 'Secret',
          metadata: {
            name: this.secretName,
            namespace: this.namespace,
            labels: { 'app.kubernetes.io/name': 'registry-mirror', 'app.kubernetes.io/component': 'ca' },
          },
          type: 'Opaque',
          data: { [CA_CERT_KEY]: Buffer.from(m.certPem).toString('base64'), [CA_KEY_KEY]: Buffer.from(m.keyPem).toString('base64') },
        } as any);
      } catch (err) {
        // Another replica (a previous leader) made it first: use theirs.
        if (statusOf(err) !== 409) throw new Error(`could not create the CA Secret ${this.namespace}/${this.secretName} (HTTP ${statusOf(err) ?? '?'})`);
      }
      live = await getObject(this.kube, 'v1', 'Secret', this.namespace, this.secretName);
      if (!live) throw new Error(`the CA Secret ${this.namespace}/${this.secretName} vanished after it was created`);
    }
    const b64 = (k: string) => (typeof live!.data?.[k] === 'string' ? Buffer.from(live!.data[k], 'base64').toString('utf8') : '');
    let ca: Ca;
    try {
      ca = await loadCa({ certPem: b64(CA_CERT_KEY), keyPem: b64(CA_KEY_KEY) });
    } catch (err) {
      throw new Error(`the CA Secret ${this.namespace}/${this.secretName} is unusable: ${(err as Error).message}; delete it to have a new CA made`);
    }
    return { ...ca, fingerprint: fingerprintOf(ca.certPem) };
  }
}

export type ServingAction = { issue: false } | { issue: true; why: 'missing' | 'foreign' | 'hosts' | 'ca' | 'renew' | 'keys' };

/** Whether the serving Secret (as the informer summarised it) must be (re)issued now. */
export function servingAction(
  live: SecretSummary | undefined,
  want: { ownerUid: string; hosts: string[]; caFingerprint: string },
  now: Date,
): ServingAction {
  if (!live) return { issue: true, why: 'missing' };
  if (live.controllerUid !== want.ownerUid) return { issue: true, why: 'foreign' };
  if (!live.keys.includes('tls.crt') || !live.keys.includes('tls.key')) return { issue: true, why: 'keys' };
  const a = live.tlsAnnotations ?? {};
  if (a[TLS_ANNOTATION.hosts] !== hostsHash(want.hosts)) return { issue: true, why: 'hosts' };
  if (a[TLS_ANNOTATION.ca] !== want.caFingerprint) return { issue: true, why: 'ca' };
  const renewAfter = Date.parse(a[TLS_ANNOTATION.renewAfter] ?? '');
  if (!Number.isFinite(renewAfter) || now.getTime() >= renewAfter) return { issue: true, why: 'renew' };
  return { issue: false };
}

/** The serving Secret's facts from its annotations (status.tls and the requeue time). */
export function servingDates(live: SecretSummary | undefined): { notAfter?: string; renewAfter?: string } {
  const a = live?.tlsAnnotations ?? {};
  return { notAfter: a[TLS_ANNOTATION.notAfter], renewAfter: a[TLS_ANNOTATION.renewAfter] };
}

/**
 * A new serving certificate as the Secret <name>-tls (kubernetes.io/tls with ca.crt), owned
 * by the RegistryMirror. Holds a private key: apply it, never log it.
 */
export async function issueServingSecret(cr: RegistryMirror, ca: OperatorCa, hosts: string[], now: Date): Promise<{ secret: Manifest; notAfter: Date; renewAfter: Date }> {
  const issued = await issueServing(ca, hosts, now);
  const renewAfter = renewalTime(issued.notBefore, issued.notAfter);
  const meta = ownedMetadata(cr, objectNames(cr).tlsSecret);
  const secret: Manifest = {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      ...meta,
      annotations: {
        [TLS_ANNOTATION.hosts]: hostsHash(hosts),
        [TLS_ANNOTATION.ca]: ca.fingerprint,
        [TLS_ANNOTATION.notAfter]: issued.notAfter.toISOString(),
        [TLS_ANNOTATION.renewAfter]: renewAfter.toISOString(),
      },
    },
    type: 'kubernetes.io/tls',
    data: {
      'tls.crt': Buffer.from(issued.certPem).toString('base64'),
      'tls.key': Buffer.from(issued.keyPem).toString('base64'),
      'ca.crt': Buffer.from(ca.certPem).toString('base64'),
    },
  };
  return { secret, notAfter: issued.notAfter, renewAfter };
}
