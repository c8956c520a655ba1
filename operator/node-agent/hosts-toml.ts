// containerd's hosts.toml (registry.config_path/<registry>/hosts.toml), as the node agent
// writes it. Pure: text in, text out.
//
//   # registry-mirror node-agent: managed file (owner: ns/name) ...   <- the marker
//   server = "https://registry-1.docker.io"                            <- the upstream: last resort
//
//   [host."https://10.96.0.10:5000"]                                   <- the mirror Service's ClusterIP
//   capabilities = [ "pull", "resolve" ]
//   dial_timeout = "200ms"
//   ca = "registry-mirror-ca.crt"                                      <- https: the mirror's CA (status.tls)
//   client = [ [ "registry-mirror-client.crt", "registry-mirror-client.key" ] ]  <- spec.auth: the node's certificate
//
//   [host."https://registry.example.com"]                              <- hosts of a file that was
//   ...                                                                   there before us, kept
//
// containerd tries the hosts in file order, then `server`, moving on per request on
// connection errors, 404 and 5xx. The mirror is addressed by ClusterIP because the node's
// containerd does not resolve cluster DNS. `dial_timeout` makes a dead mirror cost 200 ms
// instead of the OS connect timeout in containerd >= 1.7; containerd 1.6 ignores the key (and
// then a mirror that is gone without its Service costs a connect timeout per pull).
import { parse, stringify } from 'smol-toml';

export const MARKER = '# registry-mirror node-agent: managed file';
export const BACKUP_SUFFIX = '.registry-mirror-backup';
export const DEFAULT_DIAL_TIMEOUT = '200ms';

export interface HostsEntry {
  /** Registry host as in image references (the certs.d subdirectory name). */
  registry: string;
  /** Upstream base URL, containerd's `server`. */
  server: string;
  /** The mirror, e.g. http://10.96.0.10:5000. */
  mirrorUrl: string;
  /** namespace/name of the RegistryMirror. */
  owner: string;
  dialTimeout?: string;
  /** https mirror: the PEM CA bundle to trust for it (absent: the system's roots). */
  caPem?: string;
  /** The mirror asks clients to authenticate (spec.auth): the node's client certificate and key (PEM). */
  client?: { certPem: string; keyPem: string };
}

/**
 * Files written next to hosts.toml for the mirror's host, named relative to it (containerd
 * resolves a relative ca/client path against the hosts.toml's directory). The key is 0600.
 */
export const COMPANION = {
  ca: 'registry-mirror-ca.crt',
  clientCert: 'registry-mirror-client.crt',
  clientKey: 'registry-mirror-client.key',
} as const;

/** The companion files an entry needs, with their content and mode. */
export function companionFiles(e: HostsEntry): Array<{ name: string; content: string; mode: number }> {
  return [
    ...(e.caPem ? [{ name: COMPANION.ca, content: e.caPem, mode: 0o644 }] : []),
    ...(e.client
      ? [
          { name: COMPANION.clientCert, content: e.client.certPem, mode: 0o644 },
          { name: COMPANION.clientKey, content: e.client.keyPem, mode: 0o600 },
        ]
      : []),
  ];
}

/** True when the text is a hosts.toml the node agent wrote (it starts with the marker). */
export function isManaged(text: string): boolean {
  return text.startsWith(MARKER);
}

/** The owner recorded in a managed file's marker line, if any. */
export function managedOwner(text: string): string | undefined {
  if (!isManaged(text)) return undefined;
  return /\(owner: ([^)\s]+)\)/.exec(text.split('\n', 1)[0]!)?.[1];
}

type TomlTable = Record<string, unknown>;

/**
 * hosts.toml for one registry. `previous` is the text of a file that was there before the agent
 * (the backup, restored byte for byte when the mirror goes). Nothing it configured is lost:
 *  - its hosts follow the mirror, each with every key it had (ca, client, skip_verify,
 *    [header], override_path, proxy, keys we do not know);
 *  - its server-level settings (every top-level key but `server` and `host`) belong to its
 *    server. When that server is ours (the same URL, or both the registry's default when the
 *    file names none), they stay server-level in our file. When it differs, the previous server
 *    becomes one more host before our `server`, carrying those settings (capabilities default
 *    to pull and resolve there unless the file set them). If that URL is already one of its
 *    hosts, the host's own keys win and the server-level keys it lacks are added.
 * The mirror's own host never receives any of these settings (a registry's Authorization
 * header must not go to the mirror). An unparsable previous file is ignored (it stays in the
 * backup and comes back on removal).
 */
export function renderHostsToml(e: HostsEntry, previous?: string): string {
  const mirror = e.mirrorUrl.replace(/\/+$/, '');
  const hosts: Record<string, TomlTable> = {};
  hosts[mirror] = {
    capabilities: ['pull', 'resolve'],
    dial_timeout: e.dialTimeout ?? DEFAULT_DIAL_TIMEOUT,
    ...(e.caPem ? { ca: COMPANION.ca } : {}),
    ...(e.client ? { client: [[COMPANION.clientCert, COMPANION.clientKey]] } : {}),
  };
  let serverSettings: TomlTable = {};
  let kept = '';
  if (previous !== undefined) {
    const prev = parsePrevious(previous);
    if (prev) {
      for (const [url, table] of Object.entries(prev.hosts)) {
        if (normalizeUrl(url) !== normalizeUrl(mirror) && !(url in hosts)) hosts[url] = table;
      }
      const prevServer = prev.server ?? defaultServer(e.registry);
      if (normalizeUrl(prevServer) === normalizeUrl(e.server)) {
        serverSettings = prev.settings;
      } else if (normalizeUrl(prevServer) !== normalizeUrl(mirror)) {
        const existing = Object.keys(hosts).find((u) => u !== mirror && normalizeUrl(u) === normalizeUrl(prevServer));
        if (existing) hosts[existing] = { ...prev.settings, ...hosts[existing] };
        else hosts[prevServer] = { capabilities: ['pull', 'resolve'], ...prev.settings };
      }
      kept = ` Hosts of the file that was here before (saved as hosts.toml${BACKUP_SUFFIX}, restored when this mirror goes) follow the mirror.`;
    } else {
      kept = ` The file that was here before could not be parsed; it is saved as hosts.toml${BACKUP_SUFFIX} and restored when this mirror goes.`;
    }
  }
  const header = [
    `${MARKER} (owner: ${e.owner}). Do not edit: the agent rewrites and removes it.`,
    `# Pulls of ${e.registry} go to the registry-mirror Service first, then to the upstream.${kept}`,
  ];
  const body = stringify({ server: e.server, ...serverSettings, host: hosts });
  return `${header.join('\n')}\n${body.endsWith('\n') ? body : `${body}\n`}`;
}

interface PreviousFile {
  server?: string;
  /** Every top-level key but server and host: the settings of the server. */
  settings: TomlTable;
  hosts: Record<string, TomlTable>;
}

function parsePrevious(text: string): PreviousFile | undefined {
  try {
    const doc = parse(text) as TomlTable;
    const server = typeof doc.server === 'string' && doc.server !== '' ? doc.server : undefined;
    const settings: TomlTable = {};
    for (const [k, v] of Object.entries(doc)) if (k !== 'server' && k !== 'host') settings[k] = v;
    const hostTable = doc.host && typeof doc.host === 'object' && !Array.isArray(doc.host) ? (doc.host as Record<string, unknown>) : {};
    const hosts: Record<string, TomlTable> = {};
    for (const [url, t] of Object.entries(hostTable)) if (t && typeof t === 'object' && !Array.isArray(t)) hosts[url] = t as TomlTable;
    return { server, settings, hosts };
  } catch {
    return undefined;
  }
}

/** containerd's server for a registry namespace whose hosts.toml names none. */
function defaultServer(registry: string): string {
  return registry === 'docker.io' ? 'https://registry-1.docker.io' : `https://${registry}`;
}

function normalizeUrl(u: string): string {
  let s = u.trim().replace(/\/+$/, '').toLowerCase();
  if (s.startsWith('https://')) s = s.replace(/^(https:\/\/[^/]+):443(?=\/|$)/, '$1');
  return s.replace(/^(https?:\/\/)docker\.io(?=\/|$)/, '$1registry-1.docker.io');
}

/** What a managed file says, for tests and the agent's own checks. */
export function readHostsToml(text: string): {
  server?: string;
  hosts: Array<{ url: string; capabilities?: string[]; dialTimeout?: string; ca?: string; client?: string[][] }>;
} {
  const doc = parse(text) as TomlTable;
  const hostTable = (doc.host ?? {}) as Record<string, TomlTable>;
  return {
    server: typeof doc.server === 'string' ? doc.server : undefined,
    hosts: Object.entries(hostTable).map(([url, t]) => ({
      url,
      capabilities: Array.isArray(t.capabilities) ? (t.capabilities as string[]) : undefined,
      dialTimeout: typeof t.dial_timeout === 'string' ? t.dial_timeout : undefined,
      ...(typeof t.ca === 'string' ? { ca: t.ca } : {}),
      ...(Array.isArray(t.client) ? { client: t.client as string[][] } : {}),
    })),
  };
}

/**
 * The certs.d directory name for a registry host. containerd looks up `<host[:port]>`; the
 * CRD's pattern already limits registry to host[:port] or [ipv6][:port], this refuses anything
 * that could leave the directory.
 */
export function registryDirName(registry: string): string {
  if (!/^[A-Za-z0-9.\-[\]:]+$/.test(registry) || registry.startsWith('.') || registry.includes('..')) {
    throw new Error(`registry "${registry}" is not a host[:port] name usable as a directory`);
  }
  return registry;
}
