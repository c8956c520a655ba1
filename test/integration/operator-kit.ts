// Shared set-up for the operator's integration tests: a real etcd + kube-apiserver with the
// RegistryMirror CRD installed, API helpers, and operators run in-process or as processes.
import { EventsV1Api, loadAllYaml, loadYaml, PatchStrategy, type EventsV1Event } from '@kubernetes/client-node';
import { Agent } from 'undici';
import { readFileSync, createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { connect, getObject, type Kube } from '../../operator/kube/client.js';
import { parseFlags } from '../../operator/flags.js';
import { startOperator, type OperatorHandle } from '../../operator/main.js';
import { GROUP, PLURAL, VERSION, type RegistryMirror, type RegistryMirrorSpec } from '../../operator/types.js';
import { startKube, type KubeCluster } from '../rig/kube.js';
import { waitFor } from '../../tools/launch/proc.js';

export const REPO = new URL('../../../', import.meta.url).pathname;
export const CRD_FILE = join(REPO, 'crds/registrymirrors.yaml');

export type Cluster = KubeCluster & { tokens: Map<string, string>; kube: Kube };

/** etcd + kube-apiserver with the CRD installed and Established. */
export async function startClusterWithCrd(): Promise<Cluster> {
  const k = await startKube();
  try {
    const kube = connect(k.kubeconfig);
    await installCrd(kube);
    return Object.assign(k, { kube });
  } catch (err) {
    await k.stop();
    throw err;
  }
}

/**
 * An apiserver for an operator run with exactly the chart's RBAC: the CRD, the operator's
 * namespace with deploy/rbac/operator.yaml bound to the token user `operator-user` (plus any
 * other `users`), and the RegistryMirrors' namespaces.
 */
export async function startRbacCluster(opsNamespace: string, namespaces: string[], users: Record<string, string[]> = {}): Promise<Cluster> {
  const k = await startKube({ users: { 'operator-user': [], ...users } });
  const cluster = Object.assign(k, { kube: connect(k.kubeconfig) });
  await installCrd(cluster.kube);
  for (const ns of [opsNamespace, ...namespaces]) await createNamespace(cluster.kube, ns);
  await installRbac(cluster.kube, opsNamespace, 'operator-user');
  return cluster;
}

/** Creates the CRD from crds/registrymirrors.yaml and waits until it is Established. */
export async function installCrd(kube: Kube): Promise<void> {
  // loadYaml maps the file's field names (x-kubernetes-*) onto the client's typed model.
  const crd = loadYaml<any>(readFileSync(CRD_FILE, 'utf8'));
  await kube.objects.create(crd);
  await waitFor(
    async () => {
      const live = await getObject(kube, 'apiextensions.k8s.io/v1', 'CustomResourceDefinition', '', crd.metadata.name);
      return live?.status?.conditions?.some((c: any) => c.type === 'Established' && c.status === 'True');
    },
    20_000,
    'CRD established',
  );
}

export async function createNamespace(kube: Kube, name: string): Promise<void> {
  await kube.objects.create({ apiVersion: 'v1', kind: 'Namespace', metadata: { name } } as any);
}

export async function createMirror(kube: Kube, namespace: string, name: string, spec: RegistryMirrorSpec): Promise<RegistryMirror> {
  return (await kube.custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    plural: PLURAL,
    namespace,
    body: { apiVersion: `${GROUP}/${VERSION}`, kind: 'RegistryMirror', metadata: { name, namespace }, spec },
  })) as RegistryMirror;
}

export async function getMirror(kube: Kube, namespace: string, name: string): Promise<RegistryMirror> {
  return (await kube.custom.getNamespacedCustomObject({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name })) as RegistryMirror;
}

/** JSON merge patch of a RegistryMirror (as `kubectl patch --type merge`). */
export async function patchMirror(kube: Kube, namespace: string, name: string, patch: unknown): Promise<RegistryMirror> {
  return (await kube.objects.patch(
    { apiVersion: `${GROUP}/${VERSION}`, kind: 'RegistryMirror', metadata: { name, namespace }, ...(patch as object) } as any,
    undefined,
    undefined,
    'test',
    undefined,
    PatchStrategy.MergePatch,
  )) as unknown as RegistryMirror;
}

export async function deleteMirror(kube: Kube, namespace: string, name: string): Promise<void> {
  await kube.custom.deleteNamespacedCustomObject({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name });
}

export function get(kube: Kube, apiVersion: string, kind: string, namespace: string, name: string) {
  return getObject(kube, apiVersion, kind, namespace, name);
}

export function condition(cr: RegistryMirror | undefined, type: string) {
  return cr?.status?.conditions?.find((c) => c.type === type);
}

/** Waits until the RegistryMirror satisfies pred; returns it. */
export async function waitMirror(
  kube: Kube,
  namespace: string,
  name: string,
  pred: (cr: RegistryMirror) => boolean,
  what: string,
  timeoutMs = 20_000,
): Promise<RegistryMirror> {
  let last: RegistryMirror | undefined;
  try {
    return await waitFor<RegistryMirror>(
      async () => {
        last = await getMirror(kube, namespace, name);
        return pred(last) ? last : (undefined as unknown as RegistryMirror);
      },
      timeoutMs,
      what,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}; last status: ${JSON.stringify(last?.status)}`);
  }
}

/** An operator in this process, logging to a file in the cluster's dir. */
export async function startInProcessOperator(
  cluster: Cluster,
  extraArgs: string[] = [],
  fileName = 'operator.log',
): Promise<OperatorHandle & { logFile: string }> {
  const logFile = join(cluster.dir, fileName);
  const log = pino({ level: 'debug' }, createWriteStream(logFile, { flags: 'a' }));
  const flags = parseFlags(
    [
      '--kubeconfig',
      cluster.kubeconfig,
      '--no-leader-elect',
      '--health-host',
      '127.0.0.1',
      '--health-port',
      '0',
      '--mirror-image',
      'registry-mirror:test',
      '--status-interval',
      '1s',
      ...extraArgs,
    ],
    {},
  );
  const h = await startOperator(flags, { log });
  return Object.assign(h, { logFile });
}

export const RBAC_FILE = join(REPO, 'deploy/rbac/operator.yaml');

/**
 * Installs deploy/rbac/operator.yaml for `namespace` (the operator's), and binds its roles to
 * the token user `user` as well as the ServiceAccount, so an operator run with that user's
 * kubeconfig has exactly the chart's permissions.
 */
export async function installRbac(kube: Kube, namespace: string, user: string): Promise<void> {
  const docs = loadAllYaml(readFileSync(RBAC_FILE, 'utf8').replaceAll('registry-mirror-system', namespace));
  for (const d of docs) {
    if (d.kind === 'ClusterRoleBinding' || d.kind === 'RoleBinding') d.subjects.push({ kind: 'User', name: user, apiGroup: 'rbac.authorization.k8s.io' });
    await kube.objects.create(d);
  }
}

/** Creates a Pod object (no kubelet runs it) and marks it Ready with the given IP. */
export async function fakeReadyPod(cluster: Cluster, namespace: string, name: string, labels: Record<string, string>, podIP: string) {
  // Without a controller-manager no namespace gets its default ServiceAccount, which the
  // ServiceAccount admission plugin requires for every Pod.
  await cluster.kube.objects
    .create({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default', namespace } } as any)
    .catch((err: any) => {
      if (err?.code !== 409) throw err;
    });
  await cluster.kube.objects.create({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, labels },
    spec: { nodeName: 'fake-node', automountServiceAccountToken: false, containers: [{ name: 'mirror', image: 'registry-mirror:test' }] },
  } as any);
  const now = new Date().toISOString();
  await patchStatus(cluster, `/api/v1/namespaces/${namespace}/pods/${name}`, {
    phase: 'Running',
    podIP,
    podIPs: [{ ip: podIP }],
    conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: now }],
  });
}

/**
 * Merge-patches an object's /status as the admin, playing the controller no test cluster runs
 * (kubelet for Pods, the Deployment controller for Deployments). objectPath: its API path.
 */
export async function patchStatus(cluster: Cluster, objectPath: string, status: unknown): Promise<void> {
  const res = await fetch(`${cluster.server}${objectPath}/status`, {
    method: 'PATCH',
    headers: { authorization: `Bearer ${cluster.adminToken}`, 'content-type': 'application/merge-patch+json' },
    body: JSON.stringify({ status }),
    // @ts-expect-error undici's fetch takes a dispatcher; Node's RequestInit type lacks it
    dispatcher: insecureAgent,
  });
  if (res.status !== 200) throw new Error(`status patch of ${objectPath}: ${res.status} ${await res.text()}`);
}

/** The events.k8s.io/v1 Events about one object (by uid), as the apiserver holds them. */
export async function eventsAbout(kube: Kube, namespace: string, uid: string): Promise<EventsV1Event[]> {
  const list = await kube.kc.makeApiClient(EventsV1Api).listNamespacedEvent({ namespace });
  return list.items.filter((e) => e.regarding?.uid === uid);
}

const insecureAgent = new Agent({ connect: { rejectUnauthorized: false } });
