// CRI-O's (and podman's, skopeo's: the containers/image library's) registries.conf drop-in,
// <registries.conf.d>/<nn>-registry-mirror-<registry>.conf, as the node agent writes it.
// Pure: text in, text out.
//
//   # registry-mirror node-agent: managed file (owner: ns/name@instance) ...   <- the marker
//   [[registry]]
//   prefix = "docker.io"                 <- the registry, as in image references
//   location = "registry-1.docker.io"    <- the upstream (host[:port][/path] of its URL): last resort
//   insecure = false                     <- true when the upstream URL is plain http
//
//   [[registry.mirror]]
//   location = "10.96.0.10:5000"         <- the mirror Service's ClusterIP
//   insecure = true                      <- the mirror speaks plain HTTP
//
// containers/image tries the mirrors in order, then `location`, moving on when a mirror
// fails (connection errors, and any error fetching the manifest). Drop-ins are v2 format
// only; they are read in lexical order after registries.conf, a later [[registry]] with the
// same prefix replacing an earlier one. The `nn` of the file name orders ours among the
// admin's drop-ins.
import { parse, stringify } from 'smol-toml';
import { BACKUP_SUFFIX, MARKER, registryDirName, type HostsEntry } from './hosts-toml.js';

/** Where our drop-ins sort among the others (lexical order of the file names). */
export const DROP_IN_PRIORITY = '50';
const NAME_RE = /^(\d\d)-registry-mirror-(.+)\.conf$/;

/** The drop-in's file name for a registry. */
export function dropInFileName(registry: string, priority = DROP_IN_PRIORITY): string {
  return `${priority}-registry-mirror-${registryDirName(registry)}.conf`;
}

/** The registry a drop-in file name of ours is for, or undefined for any other name. */
export function registryOfDropIn(name: string): string | undefined {
  const m = NAME_RE.exec(name);
  if (!m) return undefined;
  try {
    return registryDirName(m[2]!);
  } catch {
    return undefined;
  }
}

/** `http://10.0.0.1:5000/` -> { location: '10.0.0.1:5000', insecure: true } (path kept). */
export function locationOf(url: string): { location: string; insecure: boolean } {
  const u = new URL(url);
  const path = u.pathname.replace(/\/+$/, '');
  return { location: `${u.host}${path}`, insecure: u.protocol === 'http:' };
}

type Table = Record<string, unknown>;
const isTable = (v: unknown): v is Table => !!v && typeof v === 'object' && !Array.isArray(v);

/** containers/image's location for a registry whose [[registry]] names none: the prefix. */
function sameLocation(a: string, b: string): boolean {
  const n = (s: string) => s.trim().replace(/\/+$/, '').toLowerCase().replace(/^docker\.io(?=\/|$)/, 'registry-1.docker.io');
  return n(a) === n(b);
}

/**
 * The drop-in for one registry. `previous` is the text of a file that had our file name before
 * the agent (kept as <name>.registry-mirror-backup, which containers/image does not read, and
 * restored byte for byte when the mirror goes). Nothing it configured is lost while ours is in
 * place: its top-level keys and its [[registry]] tables for other prefixes are carried over
 * as they were; its table for this registry keeps its own keys (e.g. mirror-by-digest-only,
 * blocked) except prefix/location/insecure, which are ours, and its mirrors follow ours. An
 * unparsable previous file is ignored (it stays in the backup and comes back on removal).
 */
export function renderRegistriesConf(e: HostsEntry, previous?: string): string {
  const upstream = locationOf(e.server);
  const mirror = locationOf(e.mirrorUrl);
  const mirrors: Table[] = [{ location: mirror.location, insecure: mirror.insecure }];
  let ours: Table = {};
  const others: Table[] = [];
  let topLevel: Table = {};
  let kept = '';
  if (previous !== undefined) {
    const prev = parsePrevious(previous);
    if (prev) {
      topLevel = prev.topLevel;
      for (const r of prev.registries) {
        const prefix = typeof r.prefix === 'string' && r.prefix !== '' ? r.prefix : typeof r.location === 'string' ? r.location : '';
        if (prefix !== e.registry) {
          others.push(r);
          continue;
        }
        const { prefix: _p, location: _l, insecure: _i, mirror: prevMirrors, ...rest } = r;
        ours = { ...ours, ...rest };
        if (Array.isArray(prevMirrors)) {
          for (const m of prevMirrors) {
            if (isTable(m) && typeof m.location === 'string' && !mirrors.some((x) => sameLocation(String(x.location), m.location as string))) mirrors.push(m);
          }
        }
      }
      kept = ` The settings of the file that was here before (saved as ${dropInFileName(e.registry)}${BACKUP_SUFFIX}, restored when this mirror goes) are kept.`;
    } else {
      kept = ` The file that was here before could not be parsed; it is saved as ${dropInFileName(e.registry)}${BACKUP_SUFFIX} and restored when this mirror goes.`;
    }
  }
  const header = [
    `${MARKER} (owner: ${e.owner}). Do not edit: the agent rewrites and removes it.`,
    `# Pulls of ${e.registry} go to the registry-mirror Service first, then to the upstream.${kept}`,
  ];
  const registry: Table = { prefix: e.registry, location: upstream.location, insecure: upstream.insecure, ...ours, mirror: mirrors };
  const body = stringify({ ...topLevel, registry: [registry, ...others] });
  return `${header.join('\n')}\n${body.endsWith('\n') ? body : `${body}\n`}`;
}

function parsePrevious(text: string): { topLevel: Table; registries: Table[] } | undefined {
  try {
    const doc = parse(text) as Table;
    const topLevel: Table = {};
    for (const [k, v] of Object.entries(doc)) if (k !== 'registry') topLevel[k] = v;
    const registries = Array.isArray(doc.registry) ? (doc.registry as unknown[]).filter(isTable) : [];
    return { topLevel, registries };
  } catch {
    return undefined;
  }
}

/** What a drop-in says, for tests and checks. */
export function readRegistriesConf(text: string): Array<{ prefix?: string; location?: string; insecure?: boolean; mirrors: Array<{ location: string; insecure?: boolean }> }> {
  const doc = parse(text) as Table;
  const regs = Array.isArray(doc.registry) ? (doc.registry as unknown[]).filter(isTable) : [];
  return regs.map((r) => ({
    prefix: typeof r.prefix === 'string' ? r.prefix : undefined,
    location: typeof r.location === 'string' ? r.location : undefined,
    insecure: typeof r.insecure === 'boolean' ? r.insecure : undefined,
    mirrors: (Array.isArray(r.mirror) ? (r.mirror as unknown[]).filter(isTable) : []).map((m) => ({
      location: String(m.location),
      ...(typeof m.insecure === 'boolean' ? { insecure: m.insecure } : {}),
    })),
  }));
}
