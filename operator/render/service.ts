// The Service clients and nodes use: stable name (the RegistryMirror's), port 5000.
import type { Manifest, RegistryMirror } from '../types.js';
import { MIRROR_PORT } from '../types.js';
import { objectNames, selectorLabels } from './names.js';
import { ownedMetadata } from './owner.js';

export function renderService(cr: RegistryMirror): Manifest {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: ownedMetadata(cr, objectNames(cr).service),
    spec: {
      type: 'ClusterIP',
      selector: selectorLabels(cr),
      ports: [{ name: 'http', port: MIRROR_PORT, targetPort: 'http', protocol: 'TCP' }],
    },
  };
}
