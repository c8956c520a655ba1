// ownerReferences: the RegistryMirror is the controller of everything it owns, and
// blockOwnerDeletion makes foreground deletion wait for the dependents.
import type { OwnerReference, RegistryMirror } from '../types.js';
import { API_VERSION, KIND } from '../types.js';
import { commonLabels } from './names.js';

export function ownerReference(cr: RegistryMirror): OwnerReference {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    name: cr.metadata.name,
    uid: cr.metadata.uid,
    controller: true,
    blockOwnerDeletion: true,
  };
}

/** True when obj's controller is this RegistryMirror (or obj has no controller at all). */
export function isControlledBy(obj: { metadata?: { ownerReferences?: Array<{ uid?: string; controller?: boolean }> } }, uid: string): boolean {
  const ctrl = obj.metadata?.ownerReferences?.find((r) => r.controller);
  return ctrl === undefined || ctrl.uid === uid;
}

/**
 * The metadata every rendered object carries: its name, the RegistryMirror's namespace and
 * labels, and the controller ownerReference (left off only for a retained PVC).
 */
export function ownedMetadata(cr: RegistryMirror, name: string, owned = true) {
  return {
    name,
    namespace: cr.metadata.namespace,
    labels: commonLabels(cr),
    ...(owned ? { ownerReferences: [ownerReference(cr)] } : {}),
  };
}
