// Client certificates (config tls.clientCAFile): the TLS handshake asks for one without
// requiring it (tls/serving.ts), and a request whose connection presented a certificate that
// verifies against the client CA is authenticated as "cert:<subject CN>" (the operator issues
// nodes "node:<name>", so the log reads cert:node:worker-1). Only the chain is verified: the
// CN names who pulled, it grants nothing beyond what any authenticated client may do.

import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { Principal } from './authenticator.js';

export type CertificateCheck =
  | { presented: false }
  | { presented: true; ok: true; principal: Principal }
  | { presented: true; ok: false; reason: string };

/** A CN longer than this (or with characters outside this set) is named by fingerprint. */
const maxNameLength = 128;
const printableName = /^[\x21-\x7e]+$/;

/** What the connection's certificate says about who sent the request. */
export function checkClientCertificate(socket: Socket): CertificateCheck {
  if (!(socket instanceof TLSSocket)) return { presented: false };
  const cert = socket.getPeerCertificate();
  // No certificate: an empty object.
  if (!cert || Object.keys(cert).length === 0) return { presented: false };
  // OpenSSL's verdict, e.g. "certificate has expired" (names no secret).
  if (!socket.authorized) return { presented: true, ok: false, reason: String(socket.authorizationError ?? 'not verified') };
  return { presented: true, ok: true, principal: { kind: 'certificate', name: certificatePrincipalName(cert.subject?.CN, cert.fingerprint256) } };
}

/** "cert:<CN>", or "cert:sha256:<16 hex of the fingerprint>" when the CN is absent or unprintable. */
export function certificatePrincipalName(cn: string | string[] | undefined, fingerprint256: string): string {
  const first = Array.isArray(cn) ? cn[0] : cn;
  if (first !== undefined && first.length <= maxNameLength && printableName.test(first)) return `cert:${first}`;
  return `cert:sha256:${fingerprint256.replace(/:/g, '').toLowerCase().slice(0, 16)}`;
}
