// The Service clients and nodes use: stable name (the RegistryMirror's), port 5000.
import type { Manifest, RegistryMirror } from '../types.js';
import { MIRROR_PORT } from '../types.js';
import { objectNames, selectorLabels } from './names.js';
import { ownedMetadata } from './owner.js';

/** The port's name says what it speaks (meshes and humans read it): https unless spec.tls is disabled. */
export function renderService(cr: RegistryMirror, tls = true): Manifest {
  const port = tls ? 'https' : 'http';
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: ownedMetadata(cr, objectNames(cr).service),
    spec: {
      type: 'ClusterIP',
      selector: selectorLabels(cr),
      ports: [{ name: port, port: MIRROR_PORT, targetPort: port, protocol: 'TCP' }],
    },
  };
}

/**
 * spec.storage.s3 only: the headless Service <name>-peers through which the replicas of one
 * bucket find each other (cluster.peers.dns in their config: one A record per pod). It lists
 * pods that are not ready too (publishNotReadyAddresses): a mirror is ready only once it has
 * resolved its peers, so a list of ready pods alone would leave the first pods of a fleet
 * (or all of them, after they restart together) waiting on each other. Clients never use it.
 */
export function renderPeersService(cr: RegistryMirror, tls = true): Manifest {
  const port = tls ? 'https' : 'http';
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: ownedMetadata(cr, objectNames(cr).peers),
    spec: {
      type: 'ClusterIP',
      clusterIP: 'None',
      publishNotReadyAddresses: true,
      selector: selectorLabels(cr),
      ports: [{ name: port, port: MIRROR_PORT, targetPort: port, protocol: 'TCP' }],
    },
  };
}
