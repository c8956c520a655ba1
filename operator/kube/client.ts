// The operator's door to the apiserver: kubeconfig loading, the typed clients it uses, and
// the few calls it makes (server-side apply, status replace, get). All through
// @kubernetes/client-node.
import {
  CoordinationV1Api,
  CustomObjectsApi,
  KubeConfig,
  KubernetesObjectApi,
  loadYaml,
  PatchStrategy,
  PolicyApi,
  Watch,
} from '@kubernetes/client-node';
import type { Manifest, RegistryMirror, RegistryMirrorStatus } from '../types.js';
import { FIELD_MANAGER, GROUP, PLURAL, VERSION } from '../types.js';
import { statusOf } from './informer.js';

export interface Kube {
  kc: KubeConfig;
  objects: KubernetesObjectApi;
  custom: CustomObjectsApi;
  coordination: CoordinationV1Api;
  watch: Watch;
}

/** --kubeconfig FILE, else $KUBECONFIG / ~/.kube/config, else the in-cluster ServiceAccount. */
export function connect(kubeconfigPath?: string): Kube {
  const kc = new KubeConfig();
  if (kubeconfigPath) kc.loadFromFile(kubeconfigPath);
  else kc.loadFromDefault();
  return {
    kc,
    objects: KubernetesObjectApi.makeApiClient(kc),
    custom: kc.makeApiClient(CustomObjectsApi),
    coordination: kc.makeApiClient(CoordinationV1Api),
    watch: new Watch(kc),
  };
}

/** Server-side apply with the operator's field manager, forcing ownership of our fields. */
export async function apply(kube: Kube, m: Manifest): Promise<Record<string, any>> {
  // The client serialises through its typed model, which reads the model's property names;
  // loading the plain manifest through it first keeps every field (see loadYaml).
  const typed = loadYaml<any>(JSON.stringify(m));
  const res = await kube.objects.patch(typed, undefined, undefined, FIELD_MANAGER, true, PatchStrategy.ServerSideApply);
  return JSON.parse(JSON.stringify(res));
}

/** The live object, or undefined on 404. */
export async function getObject(
  kube: Kube,
  apiVersion: string,
  kind: string,
  namespace: string,
  name: string,
): Promise<Record<string, any> | undefined> {
  try {
    const res = await kube.objects.read({ apiVersion, kind, metadata: { name, namespace } });
    return JSON.parse(JSON.stringify(res));
  } catch (err) {
    if (statusOf(err) === 404) return undefined;
    throw err;
  }
}

/** PUT /status carrying the resourceVersion we read, so a write based on a stale read fails
 * with 409 instead of overwriting a newer status. */
export async function replaceStatus(kube: Kube, cr: RegistryMirror, status: RegistryMirrorStatus): Promise<RegistryMirror> {
  return (await kube.custom.replaceNamespacedCustomObjectStatus({
    group: GROUP,
    version: VERSION,
    plural: PLURAL,
    namespace: cr.metadata.namespace,
    name: cr.metadata.name,
    body: { apiVersion: cr.apiVersion, kind: cr.kind, metadata: cr.metadata, spec: cr.spec, status },
  })) as RegistryMirror;
}

export interface ResourceType {
  apiVersion: string;
  kind: string;
  plural: string;
}

export const RESOURCES = {
  registryMirrors: { apiVersion: `${GROUP}/${VERSION}`, kind: 'RegistryMirror', plural: PLURAL },
  deployments: { apiVersion: 'apps/v1', kind: 'Deployment', plural: 'deployments' },
  configMaps: { apiVersion: 'v1', kind: 'ConfigMap', plural: 'configmaps' },
  services: { apiVersion: 'v1', kind: 'Service', plural: 'services' },
  pvcs: { apiVersion: 'v1', kind: 'PersistentVolumeClaim', plural: 'persistentvolumeclaims' },
  pods: { apiVersion: 'v1', kind: 'Pod', plural: 'pods' },
  secrets: { apiVersion: 'v1', kind: 'Secret', plural: 'secrets' },
  /** Cluster-scoped: node client certificate requests (tls/csr.ts). */
  csrs: { apiVersion: 'certificates.k8s.io/v1', kind: 'CertificateSigningRequest', plural: 'certificatesigningrequests' },
} satisfies Record<string, ResourceType>;

/** PodDisruptionBudgets, in the API version the apiserver serves (detectPdbApiVersion). */
export function pdbResource(apiVersion: 'policy/v1' | 'policy/v1beta1'): ResourceType {
  return { apiVersion, kind: 'PodDisruptionBudget', plural: 'poddisruptionbudgets' };
}

/**
 * Which PodDisruptionBudget API the apiserver serves, by discovery (GET /apis/policy, which
 * every authenticated user may read): policy/v1 from 1.21 (where it holds PodDisruptionBudget
 * alone), else policy/v1beta1 (1.5 to 1.24), else 'none'. Errors other than 404 are thrown.
 */
export async function detectPdbApiVersion(kube: Kube): Promise<'policy/v1' | 'policy/v1beta1' | 'none'> {
  let served: string[];
  try {
    const group = await kube.kc.makeApiClient(PolicyApi).getAPIGroup();
    served = (group.versions ?? []).map((v) => v.groupVersion);
  } catch (err) {
    if (statusOf(err) === 404) return 'none';
    throw err;
  }
  if (served.includes('policy/v1')) return 'policy/v1';
  if (served.includes('policy/v1beta1')) return 'policy/v1beta1';
  return 'none';
}

/** /api/v1/namespaces/ns/pods, /apis/apps/v1/deployments, ... (namespace omitted = all). */
export function collectionPath(rt: ResourceType, namespace?: string): string {
  const base = rt.apiVersion.includes('/') ? `/apis/${rt.apiVersion}` : `/api/${rt.apiVersion}`;
  return `${base}${namespace ? `/namespaces/${namespace}` : ''}/${rt.plural}`;
}

/** Lists one page of a collection (all of it when no page is given). */
export function lister(kube: Kube, rt: ResourceType, namespace?: string, labelSelector?: string) {
  return async (page?: { limit: number; continue?: string }) => {
    const res = (await kube.objects.list(
      rt.apiVersion,
      rt.kind,
      namespace,
      undefined,
      undefined,
      undefined,
      undefined,
      labelSelector,
      page?.limit,
      page?.continue,
    )) as { items: unknown[]; metadata?: { resourceVersion?: string; continue?: string; _continue?: string } };
    // The typed client names the token _continue.
    const cont = res.metadata?.continue ?? res.metadata?._continue;
    return { items: res.items, metadata: { resourceVersion: res.metadata?.resourceVersion, continue: cont || undefined } };
  };
}
