// This node's client certificate for mirrors with spec.auth: a new ECDSA key made here (it
// never leaves the node: only the CSR goes to the apiserver) and a certificates.k8s.io/v1
// CertificateSigningRequest for the signer registry-mirror.io/node-client with the CN
// node:<node>. The operator approves and signs it (operator/tls/csr.ts); the agent polls the
// CSR until it has the certificate, then hands it to the next sync, which writes it next to
// hosts.toml (key 0600). It asks again once 2/3 of the certificate's lifetime has passed, and
// after a denial or a timeout, with backoff. Nothing of the key is logged.
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { CertificatesV1Api } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { backoffDelay, sleep } from '../backoff.js';
import { timerDelay } from '../../mirror/duration.js';
import type { Kube } from '../kube/client.js';
import { errorText } from '../kube/informer.js';
import { createCsr, LEAF_LIFETIME_MS, renewalTime } from '../tls/ca.js';
import { csrState, NODE_CLIENT_SIGNER, NODE_CN_PREFIX } from '../tls/csr.js';

export interface Credential {
  certPem: string;
  keyPem: string;
  notBefore: Date;
  notAfter: Date;
}

/** How often a pending CSR is read again, and how long the agent waits for a signature. */
const POLL_MS = 1000;
const WAIT_MS = 5 * 60_000;
const RETRY = { baseMs: 5_000, maxMs: 10 * 60_000 };

/** The CSR's name: the node's, clipped, and a random suffix (one CSR per attempt). */
export function csrName(nodeName: string): string {
  const suffix = Math.random().toString(36).slice(2, 8);
  return `registry-mirror-node-${nodeName.slice(0, 200)}-${suffix}`.replace(/\.+$/, '');
}

export class NodeCredential {
  private cred: Credential | undefined;
  private running: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly abort = new AbortController();
  private readonly certs: CertificatesV1Api;

  constructor(private readonly o: { kube: Kube; nodeName: string; log: Logger; onChange: () => void }) {
    this.certs = o.kube.kc.makeApiClient(CertificatesV1Api);
  }

  /** The certificate and key, while valid. */
  current(): Credential | undefined {
    return this.cred && this.cred.notAfter.getTime() > Date.now() ? this.cred : undefined;
  }

  /** Starts getting a certificate unless one is valid or being fetched (called by every sync that needs one). */
  want(): void {
    if (this.stopped || this.running || this.timer || this.current()) return;
    this.running = this.obtain().finally(() => {
      this.running = undefined;
    });
  }

  private async obtain(): Promise<void> {
    for (let attempt = 1; !this.stopped; attempt++) {
      try {
        const cred = await this.request();
        if (!cred) return;
        this.cred = cred;
        this.o.log.info({ node: this.o.nodeName, notAfter: cred.notAfter.toISOString() }, 'client certificate issued');
        this.o.onChange();
        // The current one stays in use until its successor arrives.
        const renewAt = renewalTime(cred.notBefore, cred.notAfter);
        this.timer = setTimeout(() => {
          this.timer = undefined;
          this.renewSoon();
        }, timerDelay(renewAt.getTime() - Date.now()));
        this.timer.unref?.();
        return;
      } catch (err) {
        const retryInMs = backoffDelay(attempt, RETRY);
        this.o.log.warn({ node: this.o.nodeName, err: errorText(err), retryInMs }, 'could not get a client certificate; will retry');
        await sleep(retryInMs, this.abort.signal);
      }
    }
  }

  private renewSoon(): void {
    if (this.stopped || this.running) return;
    this.running = this.obtain().finally(() => {
      this.running = undefined;
    });
  }

  /** One CSR: create, wait for the operator's signature; undefined when stopped. */
  private async request(): Promise<Credential | undefined> {
    const cn = `${NODE_CN_PREFIX}${this.o.nodeName}`;
    const { csrPem, keyPem } = await createCsr(cn);
    const name = csrName(this.o.nodeName);
    await this.certs.createCertificateSigningRequest({
      body: {
        apiVersion: 'certificates.k8s.io/v1',
        kind: 'CertificateSigningRequest',
        metadata: { name, labels: { 'app.kubernetes.io/name': 'registry-mirror', 'app.kubernetes.io/component': 'node-agent' } },
        spec: {
          request: Buffer.from(csrPem).toString('base64'),
          signerName: NODE_CLIENT_SIGNER,
          usages: ['client auth', 'digital signature'],
          expirationSeconds: Math.floor(LEAF_LIFETIME_MS / 1000),
        },
      },
    });
    this.o.log.info({ csr: name, cn }, 'asked for a client certificate');
    const deadline = Date.now() + WAIT_MS;
    while (!this.stopped && Date.now() < deadline) {
      const csr = await this.certs.readCertificateSigningRequest({ name });
      const state = csrState(csr as any);
      if (state === 'denied' || state === 'failed') {
        const c = csr.status?.conditions?.find((x) => x.type === 'Denied' || x.type === 'Failed');
        throw new Error(`CSR ${name} was ${state}: ${c?.reason ?? ''} ${c?.message ?? ''}`.trim());
      }
      if (state === 'issued') {
        const certPem = Buffer.from(String(csr.status!.certificate), 'base64').toString('utf8');
        const cert = new X509Certificate(certPem);
        if (!cert.checkPrivateKey(createPrivateKey(keyPem))) throw new Error(`CSR ${name}: the certificate is not for our key`);
        return { certPem, keyPem, notBefore: new Date(cert.validFrom), notAfter: new Date(cert.validTo) };
      }
      await sleep(POLL_MS, this.abort.signal);
    }
    if (this.stopped) return undefined;
    throw new Error(`CSR ${name} was not signed within ${WAIT_MS / 1000}s (is the operator running, with the CA?)`);
  }

  stop(): void {
    this.stopped = true;
    this.abort.abort();
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
