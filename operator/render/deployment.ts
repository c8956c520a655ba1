// The mirror Deployment. Pure: everything it depends on is an argument, so a change in any
// input (spec, config, credentials) shows up as a change in the output, and the hash
// annotations on the pod template make such a change roll the pods.
import type { ResolvedSpec } from '../spec.js';
import type { AuthForm, CredentialsForm, Manifest, RegistryMirror, S3CredentialsForm } from '../types.js';
import { MIRROR_PORT } from '../types.js';
import { ANNOTATION, commonLabels, MOUNT, objectNames, selectorLabels } from './names.js';
import { ownedMetadata } from './owner.js';
import { CONFIG_KEY } from './config-map.js';
import { CA_BUNDLE_KEY, CLIENT_CA_KEY, CLUSTER_SELF_ENV, renderTls } from './mirror-config.js';
import { S3_CREDENTIAL_KEYS } from '../secrets.js';

/** The uid/gid the mirror runs as (the image's non-root user; fsGroup makes volumes writable). */
export const MIRROR_UID = 65532;

export interface DeploymentInputs {
  /** Image used when spec.image is empty: the operator's --mirror-image. */
  defaultImage: string;
  /** Hash of the rendered ConfigMap data. */
  configHash: string;
  credentials?: CredentialsForm;
  /** The client-auth Secret's keys and hash (spec.auth). */
  auth?: AuthForm;
  /** The S3 credentials Secret's hash (spec.storage.s3.credentialsSecret). */
  s3Credentials?: S3CredentialsForm;
}

/** A different name per source: see the volumes below. */
function dataVolumeName(spec: ResolvedSpec): string {
  return spec.s3 ? 's3-scratch' : spec.storage ? 'cache-pvc' : 'cache-tmp';
}

export function renderDeployment(cr: RegistryMirror, spec: ResolvedSpec, inputs: DeploymentInputs): Manifest {
  const names = objectNames(cr);
  const podAnnotations: Record<string, string> = { [ANNOTATION.configHash]: inputs.configHash };
  if (inputs.credentials) podAnnotations[ANNOTATION.credentialsHash] = inputs.credentials.hash;
  if (inputs.auth && spec.auth) podAnnotations[ANNOTATION.authHash] = inputs.auth.hash;
  if (inputs.s3Credentials && spec.s3?.credentialsSecret) podAnnotations[ANNOTATION.s3CredentialsHash] = inputs.s3Credentials.hash;

  const dataVolume = (source: Record<string, unknown>) => ({ name: dataVolumeName(spec), ...source });
  const volumes: unknown[] = [
    { name: 'config', configMap: { name: names.configMap, items: [{ key: CONFIG_KEY, path: 'config.yaml' }] } },
    // Different names for the sources: server-side apply then drops the old volume entry
    // whole, rather than merging emptyDir and persistentVolumeClaim into one volume. With S3
    // the cache is the bucket and this emptyDir only holds downloads in flight.
    dataVolume(spec.storage ? { persistentVolumeClaim: { claimName: names.pvc } } : { emptyDir: {} }),
    { name: 'tmp', emptyDir: {} },
  ];
  const mounts: unknown[] = [
    { name: 'config', mountPath: MOUNT.config, readOnly: true },
    { name: dataVolumeName(spec), mountPath: MOUNT.data },
    { name: 'tmp', mountPath: MOUNT.tmp },
  ];
  if (inputs.credentials && spec.credentialsSecret) {
    const keys = inputs.credentials.form === 'dockerconfigjson' ? ['.dockerconfigjson'] : ['username', 'password'];
    volumes.push({
      name: 'credentials',
      secret: { secretName: spec.credentialsSecret, defaultMode: 0o440, items: keys.map((k) => ({ key: k, path: k })) },
    });
    mounts.push({ name: 'credentials', mountPath: MOUNT.credentials, readOnly: true });
  }
  if (spec.s3?.credentialsSecret) {
    // The two keys the config names (mirror-config.ts), whatever else the Secret holds.
    volumes.push({
      name: 's3-credentials',
      secret: {
        secretName: spec.s3.credentialsSecret,
        defaultMode: 0o440,
        items: S3_CREDENTIAL_KEYS.map((k) => ({ key: k, path: k })),
      },
    });
    mounts.push({ name: 's3-credentials', mountPath: MOUNT.s3Credentials, readOnly: true });
  }
  if (inputs.auth && spec.auth) {
    // Only the keys the config names; group-readable for the pod's fsGroup, nobody else.
    volumes.push({
      name: 'auth',
      secret: { secretName: spec.auth.secret, defaultMode: 0o440, items: inputs.auth.keys.map((k) => ({ key: k, path: k })) },
    });
    mounts.push({ name: 'auth', mountPath: MOUNT.auth, readOnly: true });
  }

  const tls = renderTls(spec);
  if (tls) {
    // Mounted whole (no subPath), so a renewed certificate reaches the pod, which re-reads it.
    const secretName = spec.tls.mode === 'secret' ? spec.tls.secretName : names.tlsSecret;
    volumes.push({
      name: 'tls',
      secret: { secretName, defaultMode: 0o440, items: ['tls.crt', 'tls.key'].map((k) => ({ key: k, path: k })) },
    });
    mounts.push({ name: 'tls', mountPath: MOUNT.tls, readOnly: true });
    const caKeys = [...(tls.peerCAFile ? [CA_BUNDLE_KEY] : []), ...(tls.clientCAFile ? [CLIENT_CA_KEY] : [])];
    if (caKeys.length > 0) {
      volumes.push({ name: 'ca', configMap: { name: names.caConfigMap, items: caKeys.map((k) => ({ key: k, path: k })) } });
      mounts.push({ name: 'ca', mountPath: MOUNT.ca, readOnly: true });
    }
  }

  // The replicas of a bucket (spec.storage.s3) form a fleet: each learns its own address as
  // its peers see it from the downward API (the ConfigMap is the same for all of them);
  // Kubernetes expands $(POD_IP) because POD_IP is defined before it.
  const env = spec.s3
    ? [
        { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
        { name: CLUSTER_SELF_ENV, value: `$(POD_IP):${MIRROR_PORT}` },
      ]
    : undefined;

  // kubelet does not verify a probe's certificate: HTTPS is all it needs to know.
  const portName = tls ? 'https' : 'http';
  const probe = (path: string, period: number, failures: number) => ({
    httpGet: { path, port: portName, ...(tls ? { scheme: 'HTTPS' } : {}) },
    periodSeconds: period,
    timeoutSeconds: 2,
    failureThreshold: failures,
  });

  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: ownedMetadata(cr, names.deployment),
    spec: {
      replicas: spec.replicas,
      selector: { matchLabels: selectorLabels(cr) },
      // One ReadWriteOnce volume cannot be mounted by an old and a new pod on different nodes.
      // A bucket (spec.storage.s3) is no such volume: it rolls like an emptyDir, one new pod
      // at a time and no old one stopped before its successor is ready.
      strategy: spec.storage ? { type: 'Recreate' } : { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } },
      template: {
        metadata: { labels: commonLabels(cr), annotations: podAnnotations },
        spec: {
          // Workload identity for S3 (IRSA, EKS Pod Identity): the pods run as that
          // ServiceAccount. Its webhooks project their own token; the Kubernetes API token
          // stays unmounted. serviceAccount is the deprecated alias the apiserver fills in
          // from serviceAccountName: applying both makes both ours, so dropping the field
          // later removes both (left alone, the alias would bring the name back).
          ...(spec.s3?.serviceAccountName ? { serviceAccountName: spec.s3.serviceAccountName, serviceAccount: spec.s3.serviceAccountName } : {}),
          automountServiceAccountToken: false,
          enableServiceLinks: false,
          // The mirror's shutdown delay (5 s, still serving) plus its drain (25 s), with room
          // to save state before the kubelet's SIGKILL.
          terminationGracePeriodSeconds: 45,
          // A fleet spreads over the nodes, one node's loss taking as few replicas as can be;
          // ScheduleAnyway, so a cluster with fewer nodes than replicas still runs them all.
          ...(spec.s3
            ? {
                topologySpreadConstraints: [
                  {
                    maxSkew: 1,
                    topologyKey: 'kubernetes.io/hostname',
                    whenUnsatisfiable: 'ScheduleAnyway',
                    labelSelector: { matchLabels: selectorLabels(cr) },
                  },
                ],
              }
            : {}),
          securityContext: {
            runAsNonRoot: true,
            runAsUser: MIRROR_UID,
            runAsGroup: MIRROR_UID,
            fsGroup: MIRROR_UID,
            seccompProfile: { type: 'RuntimeDefault' },
          },
          containers: [
            {
              name: 'mirror',
              image: spec.image ?? inputs.defaultImage,
              args: ['serve', '--config', MOUNT.configFile],
              ports: [{ name: portName, containerPort: MIRROR_PORT, protocol: 'TCP' }],
              ...(env ? { env } : {}),
              livenessProbe: { ...probe('/healthz', 10, 3), initialDelaySeconds: 5 },
              // /readyz: the store is reachable (and, in a fleet, the peers have been resolved
              // at least once). Only ready pods are behind the client Service.
              readinessProbe: probe('/readyz', 5, 2),
              resources: spec.resources,
              securityContext: {
                allowPrivilegeEscalation: false,
                readOnlyRootFilesystem: true,
                capabilities: { drop: ['ALL'] },
              },
              volumeMounts: mounts,
            },
          ],
          volumes,
        },
      },
    },
  };
}
