// spec.storage.s3 only: the PodDisruptionBudget of a fleet. maxUnavailable 1, not minAvailable:
// a drain or an eviction takes one replica at a time, and a fleet of one can still be drained
// (minAvailable 1 would block that node's drain until someone intervenes). Pure.
import type { Manifest, RegistryMirror } from '../types.js';
import { objectNames, selectorLabels } from './names.js';
import { ownedMetadata } from './owner.js';

/**
 * The PodDisruptionBudget API the apiserver serves: policy/v1 from Kubernetes 1.21 (the only
 * one from 1.25), policy/v1beta1 before; 'none' when neither is served (no PDB is rendered).
 * The operator asks discovery once at start (kube/client.ts detectPdbApiVersion).
 */
export type PdbApiVersion = 'policy/v1' | 'policy/v1beta1' | 'none';

export function renderPdb(cr: RegistryMirror, apiVersion: Exclude<PdbApiVersion, 'none'>): Manifest {
  return {
    apiVersion,
    kind: 'PodDisruptionBudget',
    metadata: ownedMetadata(cr, objectNames(cr).pdb),
    spec: {
      maxUnavailable: 1,
      selector: { matchLabels: selectorLabels(cr) },
    },
  };
}
