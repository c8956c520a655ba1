// Node client certificates (spec.auth with nodeConfig): the node agent on each node makes a
// key and a certificates.k8s.io/v1 CertificateSigningRequest for the signer
// registry-mirror.io/node-client with the CN node:<its node>; the operator approves and signs
// it with its CA only when
//  - the requester is the node agents' ServiceAccount (spec.username, set by the apiserver),
//  - the request holds exactly one subject attribute, CN=node:<name>, and no extensions,
//  - <name> is a Node that exists and, when the requester's token is bound to a node
//    (extra authentication.kubernetes.io/node-name), that very node,
//  - the usages are client auth (plus digital signature / key encipherment) and nothing else,
//  - the request's signature is valid (the requester holds the key) and the key is ECDSA P-256.
// Anything else for this signer is Denied with the reason; a CSR someone else approved is
// still judged before it is signed (Failed if it does not pass). judgeCsr is pure given
// nodeExists; CsrSigner does the API calls.
import { CertificatesV1Api, CoreV1Api, type V1CertificateSigningRequest } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { errorText, statusOf } from '../kube/informer.js';
import type { Kube } from '../kube/client.js';
import { csrFacts, LEAF_LIFETIME_MS, signClientCsr } from './ca.js';
import type { OperatorCa } from './serving.js';

export const NODE_CLIENT_SIGNER = 'registry-mirror.io/node-client';
export const NODE_CN_PREFIX = 'node:';
/** The extra field a node-bound ServiceAccount token carries (Kubernetes >= 1.30). */
export const NODE_NAME_EXTRA = 'authentication.kubernetes.io/node-name';
const ALLOWED_USAGES = ['client auth', 'digital signature', 'key encipherment'];
/** Shortest certificate issued, whatever expirationSeconds asks (the apiserver's own minimum is 10 min). */
const MIN_LIFETIME_MS = 3_600_000;
/** A CSR's request larger than this is not read. */
const MAX_REQUEST_BYTES = 16 * 1024;
const NODE_NAME_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export interface CsrLike {
  metadata?: { name?: string; resourceVersion?: string };
  spec?: {
    request?: string;
    signerName?: string;
    username?: string;
    usages?: string[];
    expirationSeconds?: number;
    extra?: Record<string, string[]>;
  };
  status?: { conditions?: Array<{ type?: string; status?: string }>; certificate?: string };
}

export type CsrVerdict = { approve: true; nodeName: string; lifetimeMs: number } | { approve: false; reason: string; message: string };

const deny = (reason: string, message: string): CsrVerdict => ({ approve: false, reason, message });

export function csrState(csr: CsrLike): 'pending' | 'approved' | 'issued' | 'denied' | 'failed' {
  const conds = csr.status?.conditions ?? [];
  if (conds.some((c) => c.type === 'Denied' && c.status !== 'False')) return 'denied';
  if (conds.some((c) => c.type === 'Failed' && c.status !== 'False')) return 'failed';
  if (csr.status?.certificate) return 'issued';
  return conds.some((c) => c.type === 'Approved' && c.status !== 'False') ? 'approved' : 'pending';
}

/** Whether this operator may sign the CSR (see the header for the rules). */
export async function judgeCsr(csr: CsrLike, opts: { agentUser: string; nodeExists: (name: string) => Promise<boolean> }): Promise<CsrVerdict> {
  const spec = csr.spec ?? {};
  if (spec.username !== opts.agentUser) {
    return deny('UnknownRequester', `only the node agents' ServiceAccount (${opts.agentUser}) may request ${NODE_CLIENT_SIGNER} certificates; this came from ${JSON.stringify(String(spec.username ?? '').slice(0, 253))}`);
  }
  const usages = spec.usages ?? [];
  if (!usages.includes('client auth') || usages.some((u) => !ALLOWED_USAGES.includes(u))) {
    return deny('BadUsages', `usages must be client auth (with digital signature, key encipherment at most), not ${JSON.stringify(usages.slice(0, 8))}`);
  }
  const request = Buffer.from(String(spec.request ?? ''), 'base64');
  if (request.length === 0 || request.length > MAX_REQUEST_BYTES) return deny('BadRequest', 'spec.request is empty or larger than 16 KiB');
  let facts;
  try {
    facts = await csrFacts(request.toString('utf8'));
  } catch {
    return deny('BadRequest', 'spec.request is not a PEM PKCS#10 certificate request');
  }
  if (!facts.signatureValid) return deny('BadRequest', "the request's signature does not verify");
  if (facts.keyAlgorithm !== 'ECDSA P-256') return deny('BadKey', `the key must be ECDSA P-256, not ${facts.keyAlgorithm}`);
  if (facts.extraSubject || facts.hasExtensions) return deny('BadSubject', 'the request may hold one subject attribute (CN) and no extensions');
  const cn = facts.commonName ?? '';
  const nodeName = cn.startsWith(NODE_CN_PREFIX) ? cn.slice(NODE_CN_PREFIX.length) : '';
  if (!nodeName || nodeName.length > 253 || !NODE_NAME_RE.test(nodeName)) {
    return deny('BadSubject', `the CN must be ${NODE_CN_PREFIX}<node name>, not ${JSON.stringify(cn.slice(0, 300))}`);
  }
  const bound = spec.extra?.[NODE_NAME_EXTRA];
  if (bound && bound.length > 0 && !bound.includes(nodeName)) {
    return deny('NodeMismatch', `the requester's token is bound to node ${JSON.stringify(bound[0]!.slice(0, 253))}, not ${nodeName}`);
  }
  if (!(await opts.nodeExists(nodeName))) return deny('UnknownNode', `there is no Node named ${nodeName}`);
  const asked = typeof spec.expirationSeconds === 'number' && spec.expirationSeconds > 0 ? spec.expirationSeconds * 1000 : LEAF_LIFETIME_MS;
  return { approve: true, nodeName, lifetimeMs: Math.max(MIN_LIFETIME_MS, Math.min(asked, LEAF_LIFETIME_MS)) };
}

/** Approves (or denies) and signs the CSRs of NODE_CLIENT_SIGNER, one name at a time. */
export class CsrSigner {
  private readonly certs: CertificatesV1Api;
  private readonly core: CoreV1Api;

  constructor(
    private readonly o: { kube: Kube; ca: () => Promise<OperatorCa>; agentUser: string; log: Logger; now?: () => Date },
  ) {
    this.certs = o.kube.kc.makeApiClient(CertificatesV1Api);
    this.core = o.kube.kc.makeApiClient(CoreV1Api);
  }

  async handle(name: string): Promise<void> {
    let csr: V1CertificateSigningRequest;
    try {
      csr = await this.certs.readCertificateSigningRequest({ name });
    } catch (err) {
      if (statusOf(err) === 404) return;
      throw err;
    }
    if (csr.spec?.signerName !== NODE_CLIENT_SIGNER) return;
    const state = csrState(csr as CsrLike);
    if (state === 'denied' || state === 'failed' || state === 'issued') return;
    const verdict = await judgeCsr(csr as CsrLike, { agentUser: this.o.agentUser, nodeExists: (n) => this.nodeExists(n) });
    const log = this.o.log.child({ csr: name, requester: csr.spec?.username });
    const now = this.o.now?.() ?? new Date();
    const condition = (type: string, reason: string, message: string) => ({ type, status: 'True', reason, message, lastUpdateTime: now, lastTransitionTime: now });
    if (!verdict.approve) {
      csr.status = { ...(csr.status ?? {}), conditions: [...(csr.status?.conditions ?? []), condition(state === 'approved' ? 'Failed' : 'Denied', verdict.reason, verdict.message) as any] };
      if (state === 'approved') await this.certs.replaceCertificateSigningRequestStatus({ name, body: csr });
      else await this.certs.replaceCertificateSigningRequestApproval({ name, body: csr });
      log.warn({ reason: verdict.reason, message: verdict.message }, state === 'approved' ? 'refused to sign an approved CSR' : 'denied a CSR');
      return;
    }
    if (state === 'pending') {
      csr.status = { ...(csr.status ?? {}), conditions: [...(csr.status?.conditions ?? []), condition('Approved', 'NodeAgent', `the node agent on ${verdict.nodeName}`) as any] };
      csr = await this.certs.replaceCertificateSigningRequestApproval({ name, body: csr });
      log.info({ node: verdict.nodeName }, 'approved a node client CSR');
    }
    const ca = await this.o.ca();
    const request = Buffer.from(String(csr.spec.request), 'base64').toString('utf8');
    const signed = await signClientCsr(ca, request, `${NODE_CN_PREFIX}${verdict.nodeName}`, now, verdict.lifetimeMs);
    csr.status = { ...(csr.status ?? {}), certificate: Buffer.from(signed.certPem).toString('base64') };
    await this.certs.replaceCertificateSigningRequestStatus({ name, body: csr });
    log.info({ node: verdict.nodeName, notAfter: signed.notAfter.toISOString() }, 'signed a node client certificate');
  }

  private async nodeExists(name: string): Promise<boolean> {
    try {
      await this.core.readNode({ name });
      return true;
    } catch (err) {
      if (statusOf(err) === 404) return false;
      throw new Error(`could not look up Node ${name}: ${errorText(err)}`);
    }
  }
}
