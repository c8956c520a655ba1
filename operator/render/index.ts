// render(cr): every object a RegistryMirror owns, from its resolved spec and the few facts
// about the outside world it depends on (Secret forms + hashes, default image). Pure. With
// spec.storage.s3 there is no PVC.
import { hashOf } from '../hash.js';
import type { ResolvedSpec } from '../spec.js';
import type { AuthForm, CredentialsForm, Manifest, RegistryMirror, S3CredentialsForm } from '../types.js';
import { renderConfigMap } from './config-map.js';
import { renderDeployment } from './deployment.js';
import { ANNOTATION } from './names.js';
import { renderPvc } from './pvc.js';
import { renderService } from './service.js';

export interface RenderInputs {
  defaultImage: string;
  credentials?: CredentialsForm;
  auth?: AuthForm;
  s3Credentials?: S3CredentialsForm;
}

export interface Rendered {
  configMap: Manifest;
  pvc?: Manifest;
  deployment: Manifest;
  service: Manifest;
}

export function render(cr: RegistryMirror, spec: ResolvedSpec, inputs: RenderInputs): Rendered {
  const configMap = renderConfigMap(cr, spec, inputs.credentials, inputs.auth);
  const configHash = hashOf(configMap.data);
  const out: Rendered = {
    configMap,
    pvc: renderPvc(cr, spec),
    deployment: renderDeployment(cr, spec, {
      defaultImage: inputs.defaultImage,
      configHash,
      credentials: inputs.credentials,
      auth: inputs.auth,
      s3Credentials: inputs.s3Credentials,
    }),
    service: renderService(cr),
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

export { renderConfigMap, renderDeployment, renderPvc, renderService };
