// Does the node's containerd read the hosts.toml files at all? Only when its CRI registry
// config has `config_path` naming the certs.d directory. Pure: the config text in, findings
// out; the agent logs them (it never edits containerd's config).
import { parse } from 'smol-toml';

export interface ConfigFinding {
  level: 'info' | 'warn';
  message: string;
}

type Table = Record<string, unknown>;

function dig(obj: unknown, ...path: string[]): unknown {
  let cur = obj;
  for (const p of path) {
    if (!cur || typeof cur !== 'object') return undefined;
    cur = (cur as Table)[p];
  }
  return cur;
}

/**
 * hostsPath: the certs.d directory as the *node* sees it (the agent may see it elsewhere
 * through a hostPath mount).
 */
export function checkContainerdConfig(text: string | undefined, hostsPath: string): ConfigFinding[] {
  const fix = `set config_path = "${hostsPath}" under [plugins."io.containerd.grpc.v1.cri".registry] (containerd 1.x) or [plugins."io.containerd.cri.v1.images".registry] (containerd 2.x) and restart containerd`;
  if (text === undefined) {
    return [{ level: 'info', message: `containerd's config is not visible to the agent; make sure containerd has registry config_path = "${hostsPath}" (hosts.toml files are ignored otherwise)` }];
  }
  let doc: Table;
  try {
    doc = parse(text) as Table;
  } catch (err) {
    return [{ level: 'warn', message: `containerd's config could not be parsed (${(err as Error).message}); cannot tell whether config_path is set` }];
  }
  const registries = [
    dig(doc, 'plugins', 'io.containerd.grpc.v1.cri', 'registry'),
    dig(doc, 'plugins', 'io.containerd.cri.v1.images', 'registry'),
    // version 1 configs name the plugin "cri"
    dig(doc, 'plugins', 'cri', 'registry'),
  ].filter((r): r is Table => !!r && typeof r === 'object');
  const configPath = registries.map((r) => r.config_path).find((p): p is string => typeof p === 'string' && p !== '');
  const findings: ConfigFinding[] = [];
  if (!configPath) {
    findings.push({ level: 'warn', message: `containerd has no registry config_path: it ignores the hosts.toml files this agent writes, so pulls do not use the mirror; ${fix}` });
  } else {
    const paths = configPath.split(':').map((p) => p.replace(/\/+$/, ''));
    if (!paths.includes(hostsPath.replace(/\/+$/, ''))) {
      findings.push({ level: 'warn', message: `containerd's registry config_path is "${configPath}", not "${hostsPath}" where this agent writes: pulls do not use the mirror; ${fix}` });
    }
  }
  if (registries.some((r) => r.mirrors && typeof r.mirrors === 'object' && Object.keys(r.mirrors as Table).length > 0)) {
    findings.push({ level: 'warn', message: 'containerd also has the deprecated registry.mirrors settings; containerd refuses to use them together with config_path' });
  }
  return findings;
}
