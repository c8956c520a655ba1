// render(cr): every object a RegistryMirror owns, from its resolved spec and the few facts
// about the outside world it depends on (Secret forms + hashes, default image, the
// PodDisruptionBudget API served). Pure. With spec.storage.s3 there is no PVC, and there are
// the fleet's objects: the peers Service and the PodDisruptionBudget (whatever the replica
// count, so that scaling changes the Deployment alone).
import { hashOf } from '../hash.js';
import type { ResolvedSpec } from '../spec.js';
import type { AuthForm, CredentialsForm, Manifest, RegistryMirror, S3CredentialsForm } from '../types.js';
import { renderCaConfigMap, type CaBundles } from './ca-config-map.js';
import { renderConfigMap } from './config-map.js';
import { renderDeployment } from './deployment.js';
import { ANNOTATION } from './names.js';
import { renderPdb, type PdbApiVersion } from './pdb.js';
import { renderPvc } from './pvc.js';
import { renderPeersService, renderService } from './service.js';

export interface RenderInputs {
  defaultImage: string;
  credentials?: CredentialsForm;
  auth?: AuthForm;
  s3Credentials?: S3CredentialsForm;
  /** Default policy/v1. */
  pdbApiVersion?: PdbApiVersion;
  /** The public CA certificates for the <name>-ca ConfigMap (spec.tls not disabled). */
  ca?: CaBundles;
}

export interface Rendered {
  configMap: Manifest;
  /** spec.tls not disabled: <name>-ca. */
  caConfigMap?: Manifest;
  pvc?: Manifest;
  /** spec.storage.s3 only. */
  peersService?: Manifest;
  deployment: Manifest;
  service: Manifest;
  /** spec.storage.s3 only (and an apiserver that serves PodDisruptionBudgets). */
  pdb?: Manifest;
}

export function render(cr: RegistryMirror, spec: ResolvedSpec, inputs: RenderInputs): Rendered {
  const configMap = renderConfigMap(cr, spec, inputs.credentials, inputs.auth);
  const configHash = hashOf(configMap.data);
  const pdbApiVersion = inputs.pdbApiVersion ?? 'policy/v1';
  const tls = spec.tls.mode !== 'disabled';
  const caConfigMap = renderCaConfigMap(cr, spec, inputs.ca ?? {});
  const out: Rendered = {
    configMap,
    ...(caConfigMap ? { caConfigMap } : {}),
    pvc: renderPvc(cr, spec),
    ...(spec.s3 ? { peersService: renderPeersService(cr, tls) } : {}),
    deployment: renderDeployment(cr, spec, {
      defaultImage: inputs.defaultImage,
      configHash,
      credentials: inputs.credentials,
      auth: inputs.auth,
      s3Credentials: inputs.s3Credentials,
    }),
    service: renderService(cr, tls),
    ...(spec.s3 && pdbApiVersion !== 'none' ? { pdb: renderPdb(cr, pdbApiVersion) } : {}),
  };
  for (const m of Object.values(out)) if (m) stampAppliedHash(m as Manifest);
  return out;
}

/** Records the hash of the object's own content in an annotation; reconcile skips the apply
 * while the live object carries the same hash. */
export function stampAppliedHash(m: Manifest): void {
  const { annotations, ...rest } = m.metadata;
  const h = hashOf({ ...m, metadata: { ...rest, annotations: withoutKey(annotations, ANNOTATION.appliedHash) } });
  m.metadata.annotations = { ...(annotations ?? {}), [ANNOTATION.appliedHash]: h };
}

function withoutKey(m: Record<string, string> | undefined, k: string): Record<string, string> | undefined {
  if (!m) return undefined;
  const { [k]: _drop, ...rest } = m;
  return Object.keys(rest).length ? rest : undefined;
}

export { renderCaConfigMap, renderConfigMap, renderDeployment, renderPdb, renderPeersService, renderPvc, renderService };
