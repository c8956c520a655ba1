// ConfigMap holding the mirror's config.yaml. Pure.
import { stringify } from 'yaml';
import type { ResolvedSpec } from '../spec.js';
import type { AuthForm, CredentialsForm, Manifest, RegistryMirror } from '../types.js';
import { objectNames, peersDnsName } from './names.js';
import { renderMirrorConfig } from './mirror-config.js';
import { ownedMetadata } from './owner.js';

export const CONFIG_KEY = 'config.yaml';

export function renderConfigMap(cr: RegistryMirror, spec: ResolvedSpec, credentials?: CredentialsForm, auth?: AuthForm): Manifest {
  const config = renderMirrorConfig(spec, credentials, auth, peersDnsName(cr));
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: ownedMetadata(cr, objectNames(cr).configMap),
    data: {
      [CONFIG_KEY]: `# Rendered by the registry-mirror operator from RegistryMirror ${cr.metadata.name}; edits are overwritten.\n${stringify(config)}`,
    },
  };
}
