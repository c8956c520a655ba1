// The node agent's only side effects on the node: one file per registry, of one kind:
//  - containerd: <hostsDir>/<registry>/hosts.toml (HOSTS_TOML, hosts-toml.ts);
//  - CRI-O: <registries.conf.d>/<nn>-registry-mirror-<registry>.conf (REGISTRIES_CONF_DROP_IN,
//    registries-conf.ts).
// ManagedDir holds the rules, whatever the kind; a kind says where a registry's file lives,
// how it is rendered and how to find the files of this kind in the directory.
//
// Rules (symmetric add and cleanup, so a node is left as it was found):
//  - a write is atomic: a temp file in the same directory, fsync, rename over the file;
//  - a file without our marker is never overwritten: it is first renamed to
//    <file>.registry-mirror-backup, and its settings are carried into ours;
//  - only files with our marker are removed; when one goes, its backup (if any) is renamed back;
//  - a registry directory (hosts.toml) is removed only when it is empty after that;
//  - several agents (one per release) may share a node's directory: the marker's owner names
//    the RegistryMirror and the agent instance ("ns/name@instance"), and an agent rewrites or
//    removes only files of its own instance. A registry another instance already manages on
//    this node is left to it (reported as a conflict), and an uninstall of one release
//    removes only its own files. A marker without an instance (written before instances
//    existed) counts as the file of whichever agent finds it.
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmdirSync, unlinkSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { BACKUP_SUFFIX, COMPANION, companionFiles, isManaged, managedOwner, registryDirName, renderHostsToml, type HostsEntry } from './hosts-toml.js';
import { dropInFileName, registryOfDropIn, renderRegistriesConf } from './registries-conf.js';

/** One kind of file the agent writes, one per registry. */
export interface FileKind {
  /** For messages and logs: "hosts.toml", "registries.conf.d drop-in". */
  readonly name: string;
  /** The registry's file, relative to the managed directory (may include a subdirectory). */
  file(registry: string): string;
  /** Registries whose file of this kind may be in the directory (ownership is checked apart). */
  candidates(dir: string): string[];
  render(e: HostsEntry, previous?: string): string;
  /** Files written next to the registry's file (TLS material it names), and every name they may have. */
  companions?: { files(e: HostsEntry): Array<{ name: string; content: string; mode: number }>; names: readonly string[] };
}

/** containerd: <dir>/<registry>/hosts.toml. */
export const HOSTS_TOML: FileKind = {
  name: 'hosts.toml',
  file: (registry) => join(registryDirName(registry), 'hosts.toml'),
  candidates: (dir) => readdirSync(dir).filter((n) => existsSync(join(dir, n, 'hosts.toml'))),
  render: renderHostsToml,
  companions: { files: companionFiles, names: Object.values(COMPANION) },
};

/** CRI-O (containers/image): <dir>/<nn>-registry-mirror-<registry>.conf. */
export const REGISTRIES_CONF_DROP_IN: FileKind = {
  name: 'registries.conf.d drop-in',
  file: (registry) => dropInFileName(registry),
  candidates: (dir) =>
    readdirSync(dir)
      .filter((n) => registryOfDropIn(n) !== undefined && n === dropInFileName(registryOfDropIn(n)!))
      .map((n) => registryOfDropIn(n)!),
  render: renderRegistriesConf,
};

/** The instance used when none is configured (a single agent per node). */
export const DEFAULT_INSTANCE = 'registry-mirror';
const INSTANCE_RE = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(\/[a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$/;

export function checkInstance(instance: string): string {
  if (!INSTANCE_RE.test(instance) || instance.length > 253) throw new Error(`agent instance "${instance}" must be NAMESPACE/NAME or NAME (lower-case)`);
  return instance;
}

/** The RegistryMirror key and agent instance recorded in a managed file, or undefined. */
export function fileOwner(text: string): { mirror: string; instance?: string } | undefined {
  const owner = managedOwner(text);
  if (owner === undefined) return isManaged(text) ? { mirror: '' } : undefined;
  const at = owner.lastIndexOf('@');
  return at < 0 ? { mirror: owner } : { mirror: owner.slice(0, at), instance: owner.slice(at + 1) };
}

/** A registry's file managed by another agent instance: left alone, reported. */
export class ForeignOwnerError extends Error {
  constructor(readonly registry: string, readonly instance: string, kind = 'hosts.toml') {
    super(
      `${kind} of ${registry} is managed by node agent ${instance} (another registry-mirror release); ` +
        'this agent leaves it alone: configure each registry in one release only',
    );
  }
}

export type FileChange =
  | { registry: string; action: 'written'; backedUp: boolean }
  | { registry: string; action: 'removed'; restored: boolean };

function readIfExists(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

function atomicWrite(path: string, text: string, mode = 0o644): void {
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', mode);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  fsyncDir(join(path, '..'));
}

function fsyncDir(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    /* best effort: some filesystems refuse fsync on directories */
  }
}

export class ManagedDir {
  readonly instance: string;

  constructor(readonly dir: string, instance: string = DEFAULT_INSTANCE, readonly kind: FileKind = HOSTS_TOML) {
    this.instance = checkInstance(instance);
  }

  /** True when text is a managed file this instance may rewrite or remove. */
  private ours(text: string): boolean {
    const o = fileOwner(text);
    return o !== undefined && (o.instance === undefined || o.instance === this.instance);
  }

  private paths(registry: string) {
    const file = join(this.dir, this.kind.file(registry));
    const d = join(file, '..');
    // Only a per-registry subdirectory (hosts.toml) is ours to remove when it empties.
    return { dir: d, file, backup: `${file}${BACKUP_SUFFIX}`, ownDir: resolve(d) !== resolve(this.dir) };
  }

  /** Registries whose file carries our marker with this instance (or none). */
  managedRegistries(): string[] {
    if (!existsSync(this.dir)) return [];
    const out: string[] = [];
    for (const registry of this.kind.candidates(this.dir)) {
      let text: string | undefined;
      try {
        text = readIfExists(this.paths(registry).file);
      } catch {
        continue; // not a directory, unreadable: not ours
      }
      if (text !== undefined && this.ours(text)) out.push(registry);
    }
    return out.sort();
  }

  /** Writes (or keeps) the entry's file; returns what changed, if anything. */
  write(e: HostsEntry): FileChange | undefined {
    const p = this.paths(e.registry);
    mkdirSync(p.dir, { recursive: true });
    const current = readIfExists(p.file);
    if (current !== undefined && isManaged(current) && !this.ours(current)) {
      throw new ForeignOwnerError(e.registry, fileOwner(current)?.instance ?? '?', this.kind.name);
    }
    let backedUp = false;
    if (current !== undefined && !isManaged(current)) {
      // Someone else's file (or one an admin wrote over ours): keep it, ours carries its hosts.
      renameSync(p.file, p.backup);
      fsyncDir(p.dir);
      backedUp = true;
    }
    // Companions first: the file never names one that is not there yet.
    const companionsChanged = this.syncCompanions(p.dir, e);
    const previous = readIfExists(p.backup);
    const text = this.kind.render({ ...e, owner: `${e.owner}@${this.instance}` }, previous);
    if (!backedUp && current === text) return companionsChanged ? { registry: e.registry, action: 'written', backedUp } : undefined;
    atomicWrite(p.file, text);
    return { registry: e.registry, action: 'written', backedUp };
  }

  /** Writes the entry's companion files that differ, removes the ones it no longer needs; true when any changed. */
  private syncCompanions(dir: string, e: HostsEntry | undefined): boolean {
    const c = this.kind.companions;
    if (!c) return false;
    const want = e ? c.files(e) : [];
    let changed = false;
    for (const f of want) {
      const path = join(dir, f.name);
      if (readIfExists(path) === f.content) continue;
      atomicWrite(path, f.content, f.mode);
      changed = true;
    }
    for (const name of c.names) {
      if (want.some((f) => f.name === name) || !existsSync(join(dir, name))) continue;
      unlinkSync(join(dir, name));
      changed = true;
    }
    return changed;
  }

  /**
   * Removes our file for registry (restoring a backup); never touches a foreign file or
   * one of another agent instance.
   */
  remove(registry: string): FileChange | undefined {
    const p = this.paths(registry);
    const current = readIfExists(p.file);
    if (current === undefined || !this.ours(current)) return undefined;
    let restored = false;
    if (existsSync(p.backup)) {
      renameSync(p.backup, p.file);
      restored = true;
    } else {
      unlinkSync(p.file);
    }
    this.syncCompanions(p.dir, undefined);
    fsyncDir(p.dir);
    if (p.ownDir) {
      try {
        if (readdirSync(p.dir).length === 0) rmdirSync(p.dir);
      } catch {
        /* not empty or already gone */
      }
    }
    return { registry, action: 'removed', restored };
  }

  /**
   * Makes the directory match `entries`: writes them, removes our files for anything else.
   * One registry's failure (e.g. a read-only subdirectory) does not stop the others; the
   * failures are returned with the changes.
   */
  sync(entries: Map<string, HostsEntry>): {
    changes: FileChange[];
    errors: Array<{ registry: string; message: string }>;
    /** Registries whose file another agent instance manages on this node (not an error). */
    foreign: Array<{ registry: string; instance: string; message: string }>;
  } {
    const changes: FileChange[] = [];
    const errors: Array<{ registry: string; message: string }> = [];
    const foreign: Array<{ registry: string; instance: string; message: string }> = [];
    const attempt = (registry: string, fn: () => FileChange | undefined) => {
      try {
        const c = fn();
        if (c) changes.push(c);
      } catch (err) {
        if (err instanceof ForeignOwnerError) foreign.push({ registry, instance: err.instance, message: err.message });
        else errors.push({ registry, message: (err as Error).message });
      }
    };
    for (const e of entries.values()) attempt(e.registry, () => this.write(e));
    let managed: string[] = [];
    try {
      managed = this.managedRegistries();
    } catch (err) {
      errors.push({ registry: '*', message: (err as Error).message });
    }
    for (const r of managed) if (!entries.has(r)) attempt(r, () => this.remove(r));
    return { changes, errors, foreign };
  }

  /** Removes every file of this instance (restoring backups): `node-agent --cleanup`, uninstall. */
  removeAll(): FileChange[] {
    return this.managedRegistries()
      .map((r) => this.remove(r))
      .filter((c): c is FileChange => c !== undefined);
  }
}

/** containerd's certs.d: <dir>/<registry>/hosts.toml. */
export class HostsDir extends ManagedDir {
  constructor(dir: string, instance: string = DEFAULT_INSTANCE) {
    super(dir, instance, HOSTS_TOML);
  }
}

/** CRI-O's registries.conf.d: <dir>/<nn>-registry-mirror-<registry>.conf. */
export class RegistriesConfDir extends ManagedDir {
  constructor(dir: string, instance: string = DEFAULT_INSTANCE) {
    super(dir, instance, REGISTRIES_CONF_DROP_IN);
  }
}
