// Issue 20: the CRI-O drop-in (registries.conf.d/50-registry-mirror-<registry>.conf): pure
// rendering, the same backup / byte-for-byte restore / cleanup / instance rules as hosts.toml
// (files.ts ManagedDir), runtime detection and the flags.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parse } from 'smol-toml';
import { fileOwner, HostsDir, RegistriesConfDir } from '../../operator/node-agent/files.js';
import { parseNodeAgentFlags } from '../../operator/node-agent/flags.js';
import { BACKUP_SUFFIX, isManaged, managedOwner, type HostsEntry } from '../../operator/node-agent/hosts-toml.js';
import { dropInFileName, locationOf, readRegistriesConf, registryOfDropIn, renderRegistriesConf } from '../../operator/node-agent/registries-conf.js';
import { detectRuntime } from '../../operator/node-agent/runtime.js';

const hub: HostsEntry = { registry: 'docker.io', server: 'https://registry-1.docker.io', mirrorUrl: 'http://10.96.0.10:5000', owner: 'infra/hub' };
const local: HostsEntry = { registry: '127.0.0.1:5001', server: 'http://127.0.0.1:5001', mirrorUrl: 'http://10.96.0.11:5000', owner: 'infra/local' };

describe('registries.conf.d drop-in rendering', () => {
  it('names the registry as prefix, the upstream as location, and the mirror first', () => {
    const text = renderRegistriesConf(hub);
    assert.ok(isManaged(text));
    assert.equal(managedOwner(text), 'infra/hub');
    assert.deepEqual(readRegistriesConf(text), [
      { prefix: 'docker.io', location: 'registry-1.docker.io', insecure: false, mirrors: [{ location: '10.96.0.10:5000', insecure: true }] },
    ]);
    assert.match(text, /^\[\[registry\]\]$/m);
    assert.match(text, /^\[\[registry\.mirror\]\]$/m);
    // v2 format only: no v1 [registries.*] tables.
    assert.equal((parse(text) as Record<string, unknown>).registries, undefined);
  });

  it('marks a plain-http upstream insecure (from its URL scheme), and is deterministic', () => {
    assert.deepEqual(readRegistriesConf(renderRegistriesConf(local))[0], {
      prefix: '127.0.0.1:5001',
      location: '127.0.0.1:5001',
      insecure: true,
      mirrors: [{ location: '10.96.0.11:5000', insecure: true }],
    });
    assert.equal(renderRegistriesConf(local), renderRegistriesConf({ ...local }));
  });

  it('addresses an IPv6 mirror in brackets, and keeps an upstream path', () => {
    assert.equal(readRegistriesConf(renderRegistriesConf({ ...hub, mirrorUrl: 'http://[fd00::10]:5000' }))[0]!.mirrors[0]!.location, '[fd00::10]:5000');
    assert.deepEqual(locationOf('https://harbor.example.com/proxy/'), { location: 'harbor.example.com/proxy', insecure: false });
  });

  it('carries an earlier file of that name: its other registries, its keys, its mirrors after ours', () => {
    const previous = `# the admin's
unqualified-search-registries = ["docker.io"]
[[registry]]
prefix = "docker.io"
location = "docker.io"
mirror-by-digest-only = false
[[registry.mirror]]
location = "corp-cache.example.com"
[[registry]]
prefix = "quay.io"
location = "quay.io"
`;
    const text = renderRegistriesConf(hub, previous);
    const regs = readRegistriesConf(text);
    assert.deepEqual(regs.map((r) => r.prefix), ['docker.io', 'quay.io']);
    assert.deepEqual(regs[0]!.mirrors.map((m) => m.location), ['10.96.0.10:5000', 'corp-cache.example.com']);
    assert.equal(regs[0]!.location, 'registry-1.docker.io');
    const doc = parse(text) as any;
    assert.equal(doc.registry[0]['mirror-by-digest-only'], false);
    assert.deepEqual([...doc['unqualified-search-registries']], ['docker.io']);
  });

  it('survives an unparsable earlier file (it stays in the backup)', () => {
    const text = renderRegistriesConf(hub, 'this is [not toml');
    assert.equal(readRegistriesConf(text).length, 1);
    assert.match(text, /could not be parsed/);
  });

  it('names files 50-registry-mirror-<registry>.conf and refuses names that could leave the directory', () => {
    assert.equal(dropInFileName('docker.io'), '50-registry-mirror-docker.io.conf');
    assert.equal(dropInFileName('[::1]:5000'), '50-registry-mirror-[::1]:5000.conf');
    assert.equal(registryOfDropIn('50-registry-mirror-127.0.0.1:5001.conf'), '127.0.0.1:5001');
    for (const other of ['shortnames.conf', '50-registry-mirror-docker.io.conf.registry-mirror-backup', '50-registry-mirror-a/b.conf']) {
      assert.equal(registryOfDropIn(other), undefined, other);
    }
    for (const bad of ['../etc', 'a/b', '..', '']) assert.throws(() => dropInFileName(bad));
  });
});

describe('RegistriesConfDir (files on a CRI-O node)', () => {
  const root = mkdtempSync(join(tmpdir(), 'rm-registries-conf-'));
  after(() => rmSync(root, { recursive: true, force: true }));
  const file = (dir: string, registry = 'docker.io') => join(dir, dropInFileName(registry));
  const ORIGINAL = '# the admin\'s own\r\n[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n\n[[registry.mirror]]\nlocation = "corp-cache.example.com"   # keep\n';

  it('writes atomically into the directory, with the instance in the marker; a rewrite of the same is a no-op', () => {
    const dir = join(root, 'a');
    const d = new RegistriesConfDir(dir, 'rm/ds');
    assert.deepEqual(d.write(hub), { registry: 'docker.io', action: 'written', backedUp: false });
    assert.deepEqual(fileOwner(readFileSync(file(dir), 'utf8')), { mirror: 'infra/hub', instance: 'rm/ds' });
    assert.equal(d.write(hub), undefined);
    assert.deepEqual(readdirSync(dir), ['50-registry-mirror-docker.io.conf']);
    assert.deepEqual(d.managedRegistries(), ['docker.io']);
  });

  it("backs up an admin's file of that name and restores it byte for byte; other files stay untouched", () => {
    const dir = join(root, 'b');
    mkdirSync(dir, { recursive: true });
    writeFileSync(file(dir), ORIGINAL);
    writeFileSync(join(dir, 'shortnames.conf'), '[aliases]\n"x" = "docker.io/library/x"\n');
    const d = new RegistriesConfDir(dir, 'rm/ds');
    assert.deepEqual(d.write(hub), { registry: 'docker.io', action: 'written', backedUp: true });
    assert.equal(readFileSync(`${file(dir)}${BACKUP_SUFFIX}`, 'utf8'), ORIGINAL);
    assert.deepEqual(readRegistriesConf(readFileSync(file(dir), 'utf8'))[0]!.mirrors.map((m) => m.location), ['10.96.0.10:5000', 'corp-cache.example.com']);
    assert.deepEqual(d.remove('docker.io'), { registry: 'docker.io', action: 'removed', restored: true });
    assert.equal(readFileSync(file(dir), 'utf8'), ORIGINAL);
    assert.deepEqual(readdirSync(dir).sort(), ['50-registry-mirror-docker.io.conf', 'shortnames.conf']);
    // Never removes a file without the marker, nor the directory itself.
    assert.equal(d.remove('docker.io'), undefined);
    assert.equal(readFileSync(file(dir), 'utf8'), ORIGINAL);
  });

  it('sync removes what left the plan; cleanup (removeAll) removes only this instance, restoring backups', () => {
    const dir = join(root, 'c');
    mkdirSync(dir, { recursive: true });
    writeFileSync(file(dir), ORIGINAL);
    const a = new RegistriesConfDir(dir, 'rm-a/ds');
    const b = new RegistriesConfDir(dir, 'rm-b/ds');
    const r1 = a.sync(new Map([['docker.io', hub], [local.registry, local]]));
    assert.deepEqual(r1.errors, []);
    assert.equal(r1.changes.length, 2);
    const r2 = b.sync(new Map([['docker.io', { ...hub, owner: 'other/hub' }], ['ghcr.io', { ...hub, registry: 'ghcr.io', server: 'https://ghcr.io' }]]));
    assert.deepEqual(r2.foreign.map((f) => f.registry), ['docker.io']);
    assert.match(r2.foreign[0]!.message, /registries\.conf\.d drop-in of docker\.io is managed by node agent rm-a\/ds/);
    assert.deepEqual(a.sync(new Map([['docker.io', hub]])).changes, [{ registry: local.registry, action: 'removed', restored: false }]);
    assert.deepEqual(a.removeAll(), [{ registry: 'docker.io', action: 'removed', restored: true }]);
    assert.equal(readFileSync(file(dir), 'utf8'), ORIGINAL);
    assert.deepEqual(b.managedRegistries(), ['ghcr.io']);
    assert.deepEqual(b.removeAll().map((c) => c.registry), ['ghcr.io']);
    assert.deepEqual(readdirSync(dir), ['50-registry-mirror-docker.io.conf']);
    assert.ok(existsSync(dir));
  });

  it('hosts.toml and drop-ins share the machinery but not the files', () => {
    const dir = join(root, 'd');
    new RegistriesConfDir(dir).write(hub);
    assert.deepEqual(new HostsDir(dir).managedRegistries(), []);
    new HostsDir(dir).write(hub);
    assert.deepEqual(new RegistriesConfDir(dir).managedRegistries(), ['docker.io']);
    assert.deepEqual(new HostsDir(dir).managedRegistries(), ['docker.io']);
    assert.ok(existsSync(join(dir, 'docker.io', 'hosts.toml')));
  });
});

describe('runtime detection and flags', () => {
  it('auto: CRI-O when its socket or config exists, containerd otherwise; explicit settings win', () => {
    const probes = { crioSocket: '/host/crio-run/crio.sock', crioConfig: '/etc/crio/crio.conf' };
    assert.equal(detectRuntime('auto', probes, (p) => p === '/host/crio-run/crio.sock').runtime, 'crio');
    assert.equal(detectRuntime('auto', probes, (p) => p === '/etc/crio/crio.conf').runtime, 'crio');
    const none = detectRuntime('auto', probes, () => false);
    assert.equal(none.runtime, 'containerd');
    assert.match(none.reason, /crio\.sock/);
    assert.equal(detectRuntime('containerd', probes, () => true).runtime, 'containerd');
    assert.equal(detectRuntime('crio', probes, () => false).runtime, 'crio');
  });

  it('parses --runtime, --registries-conf-dir and the probes, with defaults', () => {
    const d = parseNodeAgentFlags([], {});
    assert.equal(d.runtime, 'auto');
    assert.equal(d.registriesConfDir, '/etc/containers/registries.conf.d');
    assert.equal(d.crioSocket, '/var/run/crio/crio.sock');
    const f = parseNodeAgentFlags(['--runtime', 'crio', '--registries-conf-dir', '/x', '--crio-socket', '/s', '--crio-config', '/c'], {});
    assert.deepEqual([f.runtime, f.registriesConfDir, f.crioSocket, f.crioConfig], ['crio', '/x', '/s', '/c']);
    assert.throws(() => parseNodeAgentFlags(['--runtime', 'docker'], {}), /--runtime/);
  });
});
