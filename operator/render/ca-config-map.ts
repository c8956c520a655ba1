// The <name>-ca ConfigMap: the public half of the mirror's TLS, for whoever needs it in the
// mirror's namespace. ca.crt: the CA that signs the serving certificate (clients trust it;
// the fleet's replicas check each other against it). client-ca.crt (spec.auth only): the
// operator's CA, which signs the nodes' client certificates. Pure; never a key.
import type { ResolvedSpec } from '../spec.js';
import type { Manifest, RegistryMirror } from '../types.js';
import { CA_BUNDLE_KEY, CLIENT_CA_KEY } from './mirror-config.js';
import { objectNames } from './names.js';
import { ownedMetadata } from './owner.js';

export interface CaBundles {
  /** PEM: the serving certificate's CA (absent in secret mode when the Secret has no ca.crt). */
  serving?: string;
  /** PEM: the operator's CA (it signs node client certificates). */
  operator?: string;
}

export function renderCaConfigMap(cr: RegistryMirror, spec: ResolvedSpec, ca: CaBundles): Manifest | undefined {
  if (spec.tls.mode === 'disabled') return undefined;
  const data: Record<string, string> = {};
  if (ca.serving) data[CA_BUNDLE_KEY] = ca.serving;
  if (spec.auth && ca.operator) data[CLIENT_CA_KEY] = ca.operator;
  return { apiVersion: 'v1', kind: 'ConfigMap', metadata: ownedMetadata(cr, objectNames(cr).caConfigMap), data };
}
