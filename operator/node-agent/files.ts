// The node agent's only side effects on the node: <hostsDir>/<registry>/hosts.toml.
//
// Rules (symmetric add and cleanup, so a node is left as it was found):
//  - a write is atomic: a temp file in the same directory, fsync, rename over hosts.toml;
//  - a hosts.toml without our marker is never overwritten: it is first renamed to
//    hosts.toml.registry-mirror-backup, and its hosts are carried into ours;
//  - only files with our marker are removed; when one goes, its backup (if any) is renamed back;
//  - a registry directory is removed only when it is empty after that;
//  - several agents (one per release) may share a node's certs.d: the marker's owner names the
//    RegistryMirror and the agent instance ("ns/name@instance"), and an agent rewrites or
//    removes only files of its own instance. A registry another instance already manages on
//    this node is left to it (reported as a conflict), and an uninstall of one release
//    removes only its own files. A marker without an instance (written before instances
//    existed) counts as the file of whichever agent finds it.
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmdirSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { BACKUP_SUFFIX, isManaged, managedOwner, registryDirName, renderHostsToml, type HostsEntry } from './hosts-toml.js';

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

/** A registry's hosts.toml managed by another agent instance: left alone, reported. */
export class ForeignOwnerError extends Error {
  constructor(readonly registry: string, readonly instance: string) {
    super(
      `hosts.toml of ${registry} is managed by node agent ${instance} (another registry-mirror release); ` +
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

function atomicWrite(path: string, text: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', 0o644);
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

export class HostsDir {
  readonly instance: string;

  constructor(readonly dir: string, instance: string = DEFAULT_INSTANCE) {
    this.instance = checkInstance(instance);
  }

  /** True when text is a managed file this instance may rewrite or remove. */
  private ours(text: string): boolean {
    const o = fileOwner(text);
    return o !== undefined && (o.instance === undefined || o.instance === this.instance);
  }

  private paths(registry: string) {
    const d = join(this.dir, registryDirName(registry));
    return { dir: d, file: join(d, 'hosts.toml'), backup: join(d, `hosts.toml${BACKUP_SUFFIX}`) };
  }

  /** Registries whose hosts.toml carries our marker with this instance (or none). */
  managedRegistries(): string[] {
    if (!existsSync(this.dir)) return [];
    const out: string[] = [];
    for (const name of readdirSync(this.dir)) {
      let text: string | undefined;
      try {
        text = readIfExists(join(this.dir, name, 'hosts.toml'));
      } catch {
        continue; // not a directory, unreadable: not ours
      }
      if (text !== undefined && this.ours(text)) out.push(name);
    }
    return out.sort();
  }

  /** Writes (or keeps) the entry's hosts.toml; returns what changed, if anything. */
  write(e: HostsEntry): FileChange | undefined {
    const p = this.paths(e.registry);
    mkdirSync(p.dir, { recursive: true });
    const current = readIfExists(p.file);
    if (current !== undefined && isManaged(current) && !this.ours(current)) {
      throw new ForeignOwnerError(e.registry, fileOwner(current)?.instance ?? '?');
    }
    let backedUp = false;
    if (current !== undefined && !isManaged(current)) {
      // Someone else's file (or one an admin wrote over ours): keep it, ours carries its hosts.
      renameSync(p.file, p.backup);
      fsyncDir(p.dir);
      backedUp = true;
    }
    const previous = readIfExists(p.backup);
    const text = renderHostsToml({ ...e, owner: `${e.owner}@${this.instance}` }, previous);
    if (!backedUp && current === text) return undefined;
    atomicWrite(p.file, text);
    return { registry: e.registry, action: 'written', backedUp };
  }

  /**
   * Removes our hosts.toml for registry (restoring a backup); never touches a foreign file or
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
    fsyncDir(p.dir);
    try {
      if (readdirSync(p.dir).length === 0) rmdirSync(p.dir);
    } catch {
      /* not empty or already gone */
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
