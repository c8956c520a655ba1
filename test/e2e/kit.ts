// What every end-to-end file on the single-node cluster does the same way: install the chart
// with the project image (imported into the node, never pulled), query objects with kubectl,
// and on a failed step print the cluster's state and the component logs before rethrowing.
import { join } from 'node:path';
import type { Cluster } from '../rig/cluster.js';
import { PROJECT_IMAGE } from '../../tools/oci/image.js';
import { repoRoot } from '../../tools/launch/mirror.js';
import { sleep, tail, waitFor } from '../../tools/launch/proc.js';

export const RELEASE = 'rm';
export const RELEASE_NS = 'rm-system';

/**
 * waitFor at a kubectl-friendly pace: a check that runs kubectl costs a process start, and the
 * machine's two cores are shared, so a false answer waits a second before the next try.
 */
export function until<T>(fn: () => T | Promise<T>, timeoutMs: number, what: string): Promise<T> {
  return waitFor(async () => {
    const v = await fn();
    if (!v) await sleep(1000);
    return v;
  }, timeoutMs, what);
}

export interface E2eKit {
  /** One timeline line on stderr: seconds since the kit was made. */
  mark(what: string): void;
  /** kubectl's stdout (a failure throws). */
  k(...args: string[]): Promise<string>;
  /** `kubectl ... -o jsonpath=PATH`, trimmed; '' when the object is missing. */
  jsonpath(args: string[], path: string): Promise<string>;
  /** `kubectl ... -o json`, parsed. */
  json(args: string[]): Promise<any>;
  /** Wraps a test body: on failure the cluster's state is printed, then the error rethrown. */
  step(fn: () => Promise<void>): () => Promise<void>;
  /** Milliseconds since the kit was made. */
  elapsedMs(): number;
}

/**
 * `cluster()` is read at call time (the cluster starts in before()); `logSelectors` are the
 * [label selector, namespace] pairs whose pods' logs a failure prints.
 */
export function e2eKit(name: string, cluster: () => Cluster | undefined, logSelectors: Array<readonly [string, string]>): E2eKit {
  const t0 = Date.now();
  const c = () => {
    const got = cluster();
    if (!got) throw new Error('the cluster is not running');
    return got;
  };
  const k = async (...args: string[]) => (await c().kubectl(args)).stdout;
  const jsonpath = async (args: string[], path: string) => (await c().kubectl([...args, '-o', `jsonpath=${path}`], { allowFail: true })).stdout.trim();

  async function diagnose(): Promise<void> {
    const cl = cluster();
    if (!cl) return;
    const out: string[] = [];
    for (const args of [
      ['get', 'nodes,pods,deploy,ds,svc,endpoints', '-A', '-o', 'wide'],
      ['get', 'registrymirrors', '-A', '-o', 'yaml'],
      ['get', 'events', '-A', '--sort-by=.lastTimestamp'],
    ]) {
      const r = await cl.kubectl(args, { allowFail: true }).catch((e: Error) => ({ stdout: '', stderr: e.message }));
      out.push(`$ kubectl ${args.join(' ')}\n${tail(r.stdout + r.stderr, 60)}`);
    }
    for (const [sel, ns] of logSelectors) {
      const r = await cl.kubectl(['logs', '-n', ns, '-l', sel, '--tail=40', '--all-containers', '--prefix'], { allowFail: true }).catch((e: Error) => ({ stdout: '', stderr: e.message }));
      out.push(`$ kubectl logs -n ${ns} -l ${sel}\n${r.stdout}${r.stderr}`);
    }
    for (const [component, log] of Object.entries(cl.logs())) {
      out.push(`== ${component}\n${tail(log.split('\n').filter((l) => /^E\d{4}|level=error|error/i.test(l)).join('\n'), 15)}`);
    }
    process.stderr.write(`\n---- ${name} diagnostics ----\n${out.join('\n\n')}\n---- end ----\n`);
  }

  return {
    mark: (what) => process.stderr.write(`# ${name} ${((Date.now() - t0) / 1000).toFixed(1)}s: ${what}\n`),
    k,
    jsonpath,
    json: async (args) => JSON.parse(await k(...args, '-o', 'json')),
    step: (fn) => async () => {
      try {
        await fn();
      } catch (err) {
        await diagnose();
        throw err;
      }
    },
    elapsedMs: () => Date.now() - t0,
  };
}

/**
 * helm install of the chart with the imported project image; the node agent writes into the
 * node containerd's config_path. `allowedNamespaces`: where RegistryMirrors may steer the node
 * (README "Tenancy"), the admin's decision made here at install.
 */
export async function installChart(cluster: Cluster, allowedNamespaces: string[]): Promise<string> {
  const i = PROJECT_IMAGE.lastIndexOf(':');
  const r = await cluster.helm([
    'install', RELEASE, join(repoRoot(), 'charts/registry-mirror'),
    '--namespace', RELEASE_NS, '--create-namespace',
    '--set', `image.repository=${PROJECT_IMAGE.slice(0, i)}`, '--set', `image.tag=${PROJECT_IMAGE.slice(i + 1)}`, '--set', 'image.pullPolicy=Never',
    '--set', `nodeAgent.hostsDir=${cluster.certsDir}`,
    '--set', `nodeAgent.containerdConfig=${join(cluster.dir, 'containerd.toml')}`,
    '--set', 'operator.statusInterval=3s',
    '--set', `nodeConfig.allowedNamespaces={${allowedNamespaces.join(',')}}`,
    '--wait', '--timeout', '3m',
  ]);
  return r.stdout;
}
