// The Service clients and nodes use: stable name (the RegistryMirror's), port 5000.
import type { Manifest, RegistryMirror } from '../types.js';
import { MIRROR_PORT } from '../types.js';
import { commonLabels, objectNames, selectorLabels } from './names.js';
import { ownerReference } from './owner.js';

export function renderService(cr: RegistryMirror): Manifest {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: {
      name: objectNames(cr).service,
      namespace: cr.metadata.namespace,
      labels: commonLabels(cr),
      ownerReferences: [ownerReference(cr)],
    },
    spec: {
      type: 'ClusterIP',
      selector: selectorLabels(cr),
      ports: [{ name: 'http', port: MIRROR_PORT, targetPort: 'http', protocol: 'TCP' }],
    },
  };
}
