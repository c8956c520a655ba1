// How a replica reaches its peers when the fleet serves https (config tls + cluster): the
// peers' serving certificates are verified against tls.peerCAFile. Peers are dialled by pod
// IP, which a certificate for the Service's names does not carry, so the host name check is
// skipped; the chain check (issued by the peer CA, in its validity) is not. The replica
// presents its own serving certificate as its client certificate, so a peer with
// tls.clientCAFile authenticates forwarded requests (the certificate must then also be valid
// for client authentication under that CA). The connector follows the reloader: a rotated
// certificate or CA is used for the next connection.

import { buildConnector } from 'undici';
import type { TlsMaterial } from './serving.js';
import { minTlsVersion } from './serving.js';

export interface PeerClientTls {
  /** The URL scheme peers are reached with. */
  scheme: 'http' | 'https';
  /** An undici connector (Agent `connect`), for https; undefined for plain http. */
  connect?: buildConnector.connector;
}

export const plainPeers: PeerClientTls = { scheme: 'http' };

/** An https peer client that always dials with the latest material `current()` returns. */
export function httpsPeers(current: () => TlsMaterial, connectTimeoutMs: number): PeerClientTls {
  let built: { hash: string; connector: buildConnector.connector } | undefined;
  const connector = (): buildConnector.connector => {
    const m = current();
    if (built?.hash !== m.hash) {
      built = {
        hash: m.hash,
        connector: buildConnector({
          ca: m.peerCa,
          cert: m.cert,
          key: m.key,
          minVersion: minTlsVersion,
          rejectUnauthorized: true,
          checkServerIdentity: () => undefined,
          timeout: connectTimeoutMs,
        } as buildConnector.BuildOptions),
      };
    }
    return built.connector;
  };
  return { scheme: 'https', connect: (opts, callback) => connector()(opts, callback) };
}
