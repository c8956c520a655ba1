// Which container runtime the node runs, hence which file the agent writes: containerd's
// hosts.toml (certs.d) or CRI-O's registries.conf.d drop-in. `--runtime auto` looks at what
// the node shows the agent through its host mounts: CRI-O when its socket or its config
// (crio.conf or crio.conf.d) is there, containerd otherwise. Pure but for the existence checks,
// which are injectable.
import { existsSync } from 'node:fs';

export type Runtime = 'containerd' | 'crio';
export type RuntimeSetting = Runtime | 'auto';
export const RUNTIME_SETTINGS: readonly RuntimeSetting[] = ['auto', 'containerd', 'crio'];

export interface RuntimeProbes {
  /** CRI-O's socket as the agent sees it (e.g. /host/crio-run/crio.sock). */
  crioSocket: string;
  /** CRI-O's config file or directory as the agent sees it (e.g. /etc/crio/crio.conf); optional. */
  crioConfig?: string;
}

export function detectRuntime(
  setting: RuntimeSetting,
  probes: RuntimeProbes,
  exists: (path: string) => boolean = existsSync,
): { runtime: Runtime; reason: string } {
  if (setting !== 'auto') return { runtime: setting, reason: `--runtime ${setting}` };
  if (exists(probes.crioSocket)) return { runtime: 'crio', reason: `CRI-O's socket ${probes.crioSocket} exists` };
  if (probes.crioConfig && exists(probes.crioConfig)) return { runtime: 'crio', reason: `CRI-O's config ${probes.crioConfig} exists` };
  return {
    runtime: 'containerd',
    reason: `neither CRI-O's socket ${probes.crioSocket}${probes.crioConfig ? ` nor its config ${probes.crioConfig}` : ''} exists`,
  };
}
