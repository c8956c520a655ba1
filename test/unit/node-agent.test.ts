import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { pino } from 'pino';
import { Writable } from 'node:stream';
import { checkContainerdConfig } from '../../operator/node-agent/containerd-config.js';
import { reportContainerdConfig } from '../../operator/node-agent/main.js';
import { HostsDir } from '../../operator/node-agent/files.js';
import { parseNodeAgentFlags } from '../../operator/node-agent/flags.js';
import { BACKUP_SUFFIX, isManaged, managedOwner, readHostsToml, registryDirName, renderHostsToml } from '../../operator/node-agent/hosts-toml.js';
import { compareMirrors, mirrorUrl, plan as planWith, type MirrorLike, type PlanOptions, type ServiceLike } from '../../operator/node-agent/plan.js';
import { DEFAULT_POLICY } from '../../operator/node-policy.js';

// These cases are about choosing and rendering, not tenancy: every namespace is allowed.
const OPEN = { ...DEFAULT_POLICY, namespaces: ['*'] };
const plan = (m: MirrorLike[], s: ServiceLike[], o: PlanOptions = {}) => planWith(m, s, { policy: OPEN, ...o });

const entry = { registry: 'docker.io', server: 'https://registry-1.docker.io', mirrorUrl: 'http://10.96.0.10:5000', owner: 'infra/hub' };

// Plain http unless a case says otherwise: these cases are about choosing mirrors; the TLS
// cases ('https mirrors') give spec.tls and status.tls themselves.
function mirror(ns: string, name: string, registry: string, created: string, extra: Partial<MirrorLike['spec']> = {}): MirrorLike {
  return { metadata: { namespace: ns, name, creationTimestamp: created, uid: `uid-${ns}-${name}` }, spec: { upstream: { registry }, tls: { mode: 'disabled' }, ...extra } };
}
function service(ns: string, name: string, ip: string): ServiceLike {
  const ownerReferences = [{ apiVersion: 'registry-mirror.io/v1alpha1', kind: 'RegistryMirror', name, uid: `uid-${ns}-${name}`, controller: true }];
  return { metadata: { namespace: ns, name, ownerReferences }, spec: { clusterIP: ip } };
}

describe('hosts.toml rendering', () => {
  it('points the registry at the mirror first, with the upstream as server', () => {
    const text = renderHostsToml(entry);
    assert.ok(isManaged(text));
    assert.equal(managedOwner(text), 'infra/hub');
    const doc = readHostsToml(text);
    assert.equal(doc.server, 'https://registry-1.docker.io');
    assert.deepEqual(doc.hosts, [{ url: 'http://10.96.0.10:5000', capabilities: ['pull', 'resolve'], dialTimeout: '200ms' }]);
    assert.match(text, /^\[host\."http:\/\/10\.96\.0\.10:5000"\]$/m);
  });

  it('is deterministic and takes a dial timeout', () => {
    assert.equal(renderHostsToml(entry), renderHostsToml({ ...entry }));
    assert.equal(readHostsToml(renderHostsToml({ ...entry, dialTimeout: '1s' })).hosts[0]!.dialTimeout, '1s');
  });

  it('keeps the hosts of a file that was there before, after the mirror', () => {
    const previous = 'server = "https://registry-1.docker.io"\n\n[host."https://corp-cache.example.com"]\n  capabilities = ["pull"]\n  skip_verify = true\n';
    const doc = readHostsToml(renderHostsToml(entry, previous));
    assert.deepEqual(doc.hosts.map((h) => h.url), ['http://10.96.0.10:5000', 'https://corp-cache.example.com']);
    assert.equal(doc.server, 'https://registry-1.docker.io');
    assert.match(renderHostsToml(entry, previous), /skip_verify = true/);
  });

  it("turns a previous file's different server into one more host", () => {
    const doc = readHostsToml(renderHostsToml(entry, 'server = "https://other.example.com"\n'));
    assert.deepEqual(doc.hosts.map((h) => h.url), ['http://10.96.0.10:5000', 'https://other.example.com']);
  });

  it('survives an unparsable previous file (it stays in the backup)', () => {
    const text = renderHostsToml(entry, 'this is [not toml');
    assert.equal(readHostsToml(text).hosts.length, 1);
    assert.match(text, /could not be parsed/);
  });

  it('recognises only its own marker', () => {
    assert.equal(isManaged('server = "x"\n'), false);
    assert.equal(isManaged('# some comment\nserver = "x"\n'), false);
  });

  it('refuses registry names that could leave the directory', () => {
    assert.equal(registryDirName('registry.example.com:5000'), 'registry.example.com:5000');
    assert.equal(registryDirName('[::1]:5000'), '[::1]:5000');
    for (const bad of ['../etc', 'a/b', '..', '.hidden', '']) assert.throws(() => registryDirName(bad));
  });
});

describe('plan', () => {
  it('writes one entry per registry for enabled mirrors with a Service ClusterIP', () => {
    const p = plan(
      [mirror('a', 'hub', 'docker.io', '2024-01-01T00:00:00Z'), mirror('a', 'ghcr', 'ghcr.io', '2024-01-01T00:00:00Z', { nodeConfig: { enabled: false } })],
      [service('a', 'hub', '10.96.0.10'), service('a', 'ghcr', '10.96.0.11')],
    );
    assert.deepEqual([...p.entries.keys()], ['docker.io']);
    assert.deepEqual(p.entries.get('docker.io'), { registry: 'docker.io', server: 'https://registry-1.docker.io', mirrorUrl: 'http://10.96.0.10:5000', owner: 'a/hub' });
    assert.equal(p.conditions.get('a/hub')?.reason, 'HostsConfigured');
    assert.equal(p.conditions.has('a/ghcr'), false);
  });

  it('uses spec.upstream.url, and waits for the Service', () => {
    const m = mirror('a', 'r', 'registry.example.com:5000', '2024-01-01T00:00:00Z');
    m.spec!.upstream!.url = 'http://10.88.0.1:5001';
    assert.equal(plan([m], []).conditions.get('a/r')?.reason, 'WaitingForService');
    assert.equal(plan([m], [service('a', 'r', 'None')]).entries.size, 0);
    assert.equal(plan([m], [service('a', 'r', '10.96.0.12')]).entries.get('registry.example.com:5000')?.server, 'http://10.88.0.1:5001');
    // No URL for a registry that is not well known: the operator refuses the spec, so do the nodes.
    assert.equal(plan([mirror('a', 'x', 'unknown.example.com', '2024-01-01T00:00:00Z')], []).conditions.get('a/x')?.reason, 'InvalidSpec');
  });

  it('resolves two mirrors for one registry the same way in any order: oldest, then namespace/name', () => {
    const older = mirror('z', 'late-name', 'docker.io', '2024-01-01T00:00:00Z');
    const newer = mirror('a', 'early-name', 'docker.io', '2024-02-01T00:00:00Z');
    const svcs = [service('z', 'late-name', '10.96.0.1'), service('a', 'early-name', '10.96.0.2')];
    for (const order of [[older, newer], [newer, older]]) {
      const p = plan(order, svcs);
      assert.equal(p.entries.get('docker.io')?.owner, 'z/late-name');
      assert.equal(p.conditions.get('a/early-name')?.reason, 'RegistryConflict');
      assert.match(p.conditions.get('a/early-name')!.message, /z\/late-name/);
    }
    const tie1 = mirror('b', 'm', 'docker.io', '2024-01-01T00:00:00Z');
    const tie2 = mirror('a', 'm', 'docker.io', '2024-01-01T00:00:00Z');
    assert.ok(compareMirrors(tie2, tie1) < 0);
    assert.equal(plan([tie1, tie2], [service('a', 'm', '10.96.0.3'), service('b', 'm', '10.96.0.4')]).entries.get('docker.io')?.owner, 'a/m');
  });

  it('keeps mirrors that require client credentials off the nodes, and says why', () => {
    const m = mirror('a', 'private', 'docker.io', '2024-01-01T00:00:00Z', { auth: { secret: { name: 'clients' } } });
    const p = plan([m], [service('a', 'private', '10.96.0.9')]);
    assert.equal(p.entries.size, 0);
    assert.equal(p.conditions.get('a/private')?.reason, 'ClientAuthRequired');
    // An open mirror of the same registry, even a newer one, serves the nodes instead.
    const open = mirror('a', 'open', 'docker.io', '2024-06-01T00:00:00Z');
    const q = plan([m, open], [service('a', 'private', '10.96.0.9'), service('a', 'open', '10.96.0.10')]);
    assert.equal(q.entries.get('docker.io')?.owner, 'a/open');
    assert.equal(q.conditions.get('a/open')?.reason, 'HostsConfigured');
  });

  it('ignores mirrors being deleted (the next one takes over)', () => {
    const old = mirror('a', 'old', 'docker.io', '2024-01-01T00:00:00Z');
    old.metadata.deletionTimestamp = '2024-03-01T00:00:00Z';
    const p = plan([old, mirror('a', 'new', 'docker.io', '2024-02-01T00:00:00Z')], [service('a', 'old', '10.96.0.1'), service('a', 'new', '10.96.0.2')]);
    assert.equal(p.entries.get('docker.io')?.owner, 'a/new');
  });

  it('brackets IPv6 ClusterIPs', () => {
    assert.equal(mirrorUrl('fd00::10'), 'http://[fd00::10]:5000');
  });
});

describe('HostsDir (files on a node)', () => {
  const root = mkdtempSync(join(tmpdir(), 'rm-unit-hosts-'));
  after(() => rmSync(root, { recursive: true, force: true }));

  it('writes atomically, rewrites only on change, removes only its own files', () => {
    const dir = new HostsDir(join(root, 'a'));
    assert.deepEqual(dir.sync(new Map([['docker.io', entry]])).changes, [{ registry: 'docker.io', action: 'written', backedUp: false }]);
    assert.deepEqual(dir.sync(new Map([['docker.io', entry]])).changes, []);
    assert.deepEqual(dir.managedRegistries(), ['docker.io']);
    // A foreign file for another registry is never touched.
    mkdirSync(join(root, 'a', 'quay.io'));
    writeFileSync(join(root, 'a', 'quay.io', 'hosts.toml'), 'server = "https://quay.io"\n');
    assert.deepEqual(dir.sync(new Map()).changes, [{ registry: 'docker.io', action: 'removed', restored: false }]);
    assert.equal(existsSync(join(root, 'a', 'docker.io')), false);
    assert.equal(readFileSync(join(root, 'a', 'quay.io', 'hosts.toml'), 'utf8'), 'server = "https://quay.io"\n');
    assert.equal(dir.remove('quay.io'), undefined);
  });

  it('backs up an existing file, carries its hosts, and restores it byte for byte', () => {
    const dir = new HostsDir(join(root, 'b'));
    const original = '# the admin\'s file\nserver = "https://registry-1.docker.io"\n[host."https://corp.example.com"]\n  capabilities = ["pull"]\n';
    mkdirSync(join(root, 'b', 'docker.io'), { recursive: true });
    writeFileSync(join(root, 'b', 'docker.io', 'hosts.toml'), original);
    assert.deepEqual(dir.sync(new Map([['docker.io', entry]])).changes, [{ registry: 'docker.io', action: 'written', backedUp: true }]);
    assert.equal(readFileSync(join(root, 'b', 'docker.io', `hosts.toml${BACKUP_SUFFIX}`), 'utf8'), original);
    const doc = readHostsToml(readFileSync(join(root, 'b', 'docker.io', 'hosts.toml'), 'utf8'));
    assert.deepEqual(doc.hosts.map((h) => h.url), ['http://10.96.0.10:5000', 'https://corp.example.com']);
    // A new ClusterIP: rewritten, the backup untouched.
    dir.sync(new Map([['docker.io', { ...entry, mirrorUrl: 'http://10.96.0.99:5000' }]]));
    assert.equal(readFileSync(join(root, 'b', 'docker.io', `hosts.toml${BACKUP_SUFFIX}`), 'utf8'), original);
    assert.deepEqual(dir.removeAll(), [{ registry: 'docker.io', action: 'removed', restored: true }]);
    assert.equal(readFileSync(join(root, 'b', 'docker.io', 'hosts.toml'), 'utf8'), original);
    assert.equal(existsSync(join(root, 'b', 'docker.io', `hosts.toml${BACKUP_SUFFIX}`)), false);
  });

  it("keeps going when one registry's directory cannot be written", () => {
    const dir = new HostsDir(join(root, 'd'));
    mkdirSync(join(root, 'd'), { recursive: true });
    writeFileSync(join(root, 'd', 'ghcr.io'), 'a file where a directory should be');
    const ghcr = { ...entry, registry: 'ghcr.io', server: 'https://ghcr.io' };
    const r = dir.sync(new Map([['ghcr.io', ghcr], ['docker.io', entry]]));
    assert.deepEqual(r.changes, [{ registry: 'docker.io', action: 'written', backedUp: false }]);
    assert.deepEqual(r.errors.map((e) => e.registry), ['ghcr.io']);
  });

  it('treats an admin overwriting its file as a new foreign file', () => {
    const dir = new HostsDir(join(root, 'c'));
    dir.sync(new Map([['docker.io', entry]]));
    writeFileSync(join(root, 'c', 'docker.io', 'hosts.toml'), 'server = "https://mine.example.com"\n');
    dir.sync(new Map([['docker.io', entry]]));
    assert.ok(isManaged(readFileSync(join(root, 'c', 'docker.io', 'hosts.toml'), 'utf8')));
    dir.sync(new Map());
    assert.equal(readFileSync(join(root, 'c', 'docker.io', 'hosts.toml'), 'utf8'), 'server = "https://mine.example.com"\n');
  });
});

describe('containerd config check', () => {
  const path = '/etc/containerd/certs.d';
  it('is quiet when config_path names the directory (1.x and 2.x layouts)', () => {
    assert.deepEqual(checkContainerdConfig(`version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "${path}"\n`, path), []);
    assert.deepEqual(checkContainerdConfig(`version = 3\n[plugins."io.containerd.cri.v1.images".registry]\n  config_path = "/x:${path}/"\n`, path), []);
  });
  it('warns when config_path is missing or elsewhere, or mirrors are set', () => {
    const missing = checkContainerdConfig('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "x"\n', path);
    assert.equal(missing[0]?.level, 'warn');
    assert.match(missing[0]!.message, /no registry config_path/);
    assert.match(checkContainerdConfig(`version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/other"\n`, path)[0]!.message, /"\/other"/);
    const legacy = checkContainerdConfig(
      `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "${path}"\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n  endpoint = ["http://x"]\n`,
      path,
    );
    assert.match(legacy[0]!.message, /deprecated registry.mirrors/);
  });
  it("logs a warning at start when the node's containerd lacks config_path", () => {
    const dir = mkdtempSync(join(tmpdir(), 'rm-unit-ctrd-'));
    try {
      const lines: Array<{ level: number; msg: string }> = [];
      const sink = new Writable({ write(chunk, _enc, cb) { lines.push(JSON.parse(String(chunk))); cb(); } });
      const log = pino({ level: 'info' }, sink);
      writeFileSync(join(dir, 'config.toml'), 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  snapshotter = "overlayfs"\n');
      reportContainerdConfig({ containerdConfig: join(dir, 'config.toml'), nodeHostsPath: path }, log);
      assert.equal(lines.length, 1);
      assert.equal(lines[0]!.level, 40);
      assert.match(lines[0]!.msg, /ignores the hosts.toml files/);
      lines.length = 0;
      writeFileSync(join(dir, 'config.toml'), `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "${path}"\n`);
      reportContainerdConfig({ containerdConfig: join(dir, 'config.toml'), nodeHostsPath: path }, log);
      assert.deepEqual(lines.map((l) => l.level), [30]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('only notes an invisible config, and warns on a broken one', () => {
    assert.equal(checkContainerdConfig(undefined, path)[0]?.level, 'info');
    assert.equal(checkContainerdConfig('not [ toml', path)[0]?.level, 'warn');
  });
});

describe('node-agent flags', () => {
  it('has documented defaults and reads the downward-API environment', () => {
    const f = parseNodeAgentFlags([], { POD_NAMESPACE: 'rm', NODE_AGENT_DAEMONSET: 'rm-node-agent', NODE_NAME: 'n1' });
    assert.equal(f.hostsDir, '/etc/containerd/certs.d');
    assert.equal(f.nodeHostsPath, '/etc/containerd/certs.d');
    assert.equal(f.dialTimeout, '200ms');
    assert.equal(f.daemonSet, 'rm-node-agent');
    assert.equal(f.podNamespace, 'rm');
    assert.equal(f.reportStatus, true);
    assert.equal(parseNodeAgentFlags(['--hosts-dir', '/host/certs.d', '--node-hosts-path', '/etc/containerd/certs.d', '--no-report-status'], {}).reportStatus, false);
  });
  it('refuses bad values with the flag named', () => {
    assert.throws(() => parseNodeAgentFlags(['--dial-timeout', 'soon'], {}), /--dial-timeout/);
    assert.throws(() => parseNodeAgentFlags(['--health-port', '70000'], {}), /--health-port/);
    assert.throws(() => parseNodeAgentFlags(['--bogus'], {}));
  });
});
