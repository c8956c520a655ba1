// The cache PVC, rendered only when spec.storage.size is set without spec.storage.s3. Reconcile applies it only when
// it does not exist yet or would grow: a PVC is never deleted or shrunk by the operator
// (see shouldApplyPvc). With storage.retain it has no ownerReference and outlives the mirror.
import type { ResolvedSpec } from '../spec.js';
import type { Manifest, RegistryMirror } from '../types.js';
import { parseQuantity } from '../quantity.js';
import { objectNames } from './names.js';
import { ownedMetadata } from './owner.js';

export function renderPvc(cr: RegistryMirror, spec: ResolvedSpec): Manifest | undefined {
  if (!spec.storage) return undefined;
  const pvcSpec: Record<string, unknown> = {
    accessModes: ['ReadWriteOnce'],
    resources: { requests: { storage: spec.storage.quantity } },
  };
  if (spec.storage.storageClassName) pvcSpec.storageClassName = spec.storage.storageClassName;
  return {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: ownedMetadata(cr, objectNames(cr).pvc, !spec.storage.retain),
    spec: pvcSpec,
  };
}

/**
 * Whether applying `desired` over `existing` is safe: always when there is no PVC yet;
 * otherwise only to grow it (a PVC cannot shrink, and storageClassName is immutable, so those
 * changes are reported, not applied).
 */
export function pvcChange(
  existing: { spec?: { resources?: { requests?: Record<string, unknown> } } } | undefined,
  desired: Manifest,
): 'create' | 'grow' | 'unchanged' | 'shrink' {
  if (!existing) return 'create';
  const want = parseQuantity(String((desired.spec as { resources: { requests: { storage: string } } }).resources.requests.storage));
  const haveRaw = existing.spec?.resources?.requests?.storage;
  const have = haveRaw === undefined ? undefined : parseQuantity(String(haveRaw));
  if (want === undefined || have === undefined) return 'unchanged';
  if (want > have) return 'grow';
  if (want < have) return 'shrink';
  return 'unchanged';
}
