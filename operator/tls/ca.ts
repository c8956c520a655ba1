// The operator's certificate authority: X.509 work with @peculiar/x509 on Node's WebCrypto
// (node:crypto makes keys but cannot build certificates). ECDSA P-256 throughout: small,
// fast, and accepted by Node's TLS, Go's (containerd, skopeo) and every current client.
// Pure apart from randomness: every time is an argument.
//
// Key material is only ever returned to the caller as PEM for a Secret; nothing here logs.
import './reflect-metadata.js';
import * as x509 from '@peculiar/x509';
import { createPrivateKey, webcrypto } from 'node:crypto';
import { isIP } from 'node:net';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

/** The CA's lifetime: long, because rotating it means every node trusts a new CA. */
export const CA_LIFETIME_MS = 10 * 365 * 24 * 3_600_000;
/** A mirror's serving certificate and a node's client certificate: 90 days. */
export const LEAF_LIFETIME_MS = 90 * 24 * 3_600_000;
/** Leaves are renewed once this share of their lifetime has passed (a month left of 90 days). */
export const RENEW_AT = 2 / 3;
/** notBefore is backdated by this much: clocks of nodes and pods may run a little behind. */
const BACKDATE_MS = 5 * 60_000;

export interface CaMaterial {
  certPem: string;
  keyPem: string;
}

/** A loaded CA, ready to sign. The key object stays in memory only. */
export interface Ca {
  certPem: string;
  cert: x509.X509Certificate;
  key: CryptoKey;
}

export interface Issued {
  certPem: string;
  keyPem: string;
  notBefore: Date;
  notAfter: Date;
}

function serial(): string {
  // 16 random bytes, the top bit clear so the DER integer stays positive.
  const b = webcrypto.getRandomValues(new Uint8Array(16));
  b[0]! &= 0x7f;
  return Buffer.from(b).toString('hex');
}

async function newKeys(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function keyPem(k: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', k));
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

/** A new self-signed CA (may sign leaves only: pathLength 0). */
export async function createCa(now: Date, commonName = 'registry-mirror operator CA'): Promise<CaMaterial> {
  const keys = await newKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: [{ CN: [commonName] }],
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: new Date(now.getTime() + CA_LIFETIME_MS),
    keys,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await keyPem(keys.privateKey) };
}

/** The CA from its Secret's PEM; throws with a message naming what is wrong (never the key). */
export async function loadCa(m: CaMaterial): Promise<Ca> {
  let cert: x509.X509Certificate;
  try {
    cert = new x509.X509Certificate(m.certPem);
  } catch {
    throw new Error('the CA certificate is not a PEM X.509 certificate');
  }
  let key: CryptoKey;
  try {
    // node:crypto reads PKCS#8 and SEC1 alike; WebCrypto takes PKCS#8.
    const der = createPrivateKey(m.keyPem).export({ format: 'der', type: 'pkcs8' });
    key = await webcrypto.subtle.importKey('pkcs8', der, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
  } catch {
    throw new Error('the CA key is not a PEM ECDSA P-256 private key');
  }
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  if (!bc?.ca) throw new Error('the CA certificate is not a CA (basicConstraints)');
  return { certPem: m.certPem, cert, key };
}

/** When a certificate valid from notBefore to notAfter is renewed. */
export function renewalTime(notBefore: Date, notAfter: Date): Date {
  return new Date(notBefore.getTime() + (notAfter.getTime() - notBefore.getTime()) * RENEW_AT);
}

async function sign(
  ca: Ca,
  subjectCn: string,
  publicKey: CryptoKey | x509.PublicKey,
  usage: 'server' | 'client',
  now: Date,
  lifetimeMs: number,
  names?: x509.JsonGeneralNames,
): Promise<{ cert: x509.X509Certificate; notBefore: Date; notAfter: Date }> {
  // Whole seconds, as X.509 stores them: the dates reported (status.tls) are the certificate's.
  const t = Math.floor(now.getTime() / 1000) * 1000;
  const notBefore = new Date(t - BACKDATE_MS);
  // Never past the CA's own end: a chain is only as valid as its CA.
  const notAfter = new Date(Math.min(t + lifetimeMs, ca.cert.notAfter.getTime()));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: [{ CN: [subjectCn] }],
    issuer: ca.cert.subjectName,
    notBefore,
    notAfter,
    publicKey,
    signingKey: ca.key,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([usage === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth], false),
      await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
      ...(names && names.length > 0 ? [new x509.SubjectAlternativeNameExtension(names, false)] : []),
    ],
  });
  return { cert, notBefore, notAfter };
}

/** A serving certificate and its new key for these DNS names and IP addresses. */
export async function issueServing(ca: Ca, hosts: string[], now: Date, lifetimeMs = LEAF_LIFETIME_MS): Promise<Issued> {
  const keys = await newKeys();
  const names: x509.JsonGeneralNames = hosts.map((h) => (isIP(h) ? { type: 'ip', value: h } : { type: 'dns', value: h }));
  const { cert, notBefore, notAfter } = await sign(ca, hosts[0] ?? 'registry-mirror', keys.publicKey, 'server', now, lifetimeMs, names);
  return { certPem: cert.toString('pem'), keyPem: await keyPem(keys.privateKey), notBefore, notAfter };
}

/** What the operator needs to know of a PKCS#10 request before it signs one. */
export interface CsrFacts {
  commonName?: string;
  /** Any subject attribute besides one CN, or any requested extension: refused. */
  extraSubject: boolean;
  hasExtensions: boolean;
  keyAlgorithm: string;
  signatureValid: boolean;
}

/** Reads a PEM CSR; throws when it is not one. */
export async function csrFacts(pem: string): Promise<CsrFacts> {
  const csr = new x509.Pkcs10CertificateRequest(pem);
  const subject = csr.subjectName.toJSON();
  const cns = csr.subjectName.getField('CN');
  const attrs = subject.flatMap((rdn) => Object.entries(rdn).flatMap(([k, v]) => v.map(() => k)));
  const alg = csr.publicKey.algorithm as { name?: string; namedCurve?: string };
  return {
    commonName: cns.length === 1 ? cns[0] : undefined,
    extraSubject: attrs.length !== 1,
    hasExtensions: csr.extensions.length > 0,
    keyAlgorithm: [alg.name, alg.namedCurve].filter(Boolean).join(' '),
    signatureValid: await csr.verify(),
  };
}

/** A client certificate for the CSR's key, with the given CN (the CSR's own subject is not copied). */
export async function signClientCsr(ca: Ca, csrPem: string, commonName: string, now: Date, lifetimeMs = LEAF_LIFETIME_MS): Promise<{ certPem: string; notAfter: Date }> {
  const csr = new x509.Pkcs10CertificateRequest(csrPem);
  const { cert, notAfter } = await sign(ca, commonName, csr.publicKey, 'client', now, lifetimeMs);
  return { certPem: cert.toString('pem'), notAfter };
}

/** A new key and a PKCS#10 request for it with only a CN (the node agent's side). */
export async function createCsr(commonName: string): Promise<{ csrPem: string; keyPem: string }> {
  const keys = await newKeys();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: [{ CN: [commonName] }], keys, signingAlgorithm: ALG });
  return { csrPem: csr.toString('pem'), keyPem: await keyPem(keys.privateKey) };
}
