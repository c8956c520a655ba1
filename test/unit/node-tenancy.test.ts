// Issue 12, items 1, 2, 7 and 8 at the level of the pure modules: the admin's node policy
// (operator/node-policy.ts), the node agent's plan (only validated, allowed specs and owned
// Services reach hosts.toml), the summaries its informers keep, file ownership between two
// agent instances, and the flags that carry the policy into the operator and the agent.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parseFlags } from '../../operator/flags.js';
import { fileOwner, HostsDir } from '../../operator/node-agent/files.js';
import { parseNodeAgentFlags } from '../../operator/node-agent/flags.js';
import { BACKUP_SUFFIX, isManaged, managedOwner, readHostsToml, renderHostsToml } from '../../operator/node-agent/hosts-toml.js';
import { plan, summarizeMirror, summarizeService, type MirrorLike, type ServiceLike } from '../../operator/node-agent/plan.js';
import { DEFAULT_POLICY, nodeConfigRefusal, parsePolicy, unsafeTarget, upstreamRefusal, urlUnder, type NodePolicy } from '../../operator/node-policy.js';
import { nodeConfigUpdate } from '../../operator/reconcile.js';
import { resolveSpec, type ResolvedSpec } from '../../operator/spec.js';
import { computeStatus } from '../../operator/status.js';
import type { RegistryMirror } from '../../operator/types.js';

const ADMIN: NodePolicy = { ...DEFAULT_POLICY, adminNamespace: 'registry-mirror' };

function mirror(ns: string, name: string, spec: Record<string, unknown>, created = '2024-01-01T00:00:00Z'): MirrorLike {
  // Plain http: tenancy is the subject here, not TLS.
  return { metadata: { namespace: ns, name, creationTimestamp: created, uid: `uid-${ns}-${name}` }, spec: { tls: { mode: 'disabled' }, ...spec } as MirrorLike['spec'] };
}
function ownedService(ns: string, name: string, ip: string, uid = `uid-${ns}-${name}`): ServiceLike {
  return {
    metadata: { namespace: ns, name, ownerReferences: [{ apiVersion: 'registry-mirror.io/v1alpha1', kind: 'RegistryMirror', name, uid, controller: true }] },
    spec: { clusterIP: ip },
  };
}
function resolved(spec: Record<string, unknown>, ns = 'x', name = 'm'): ResolvedSpec {
  const r = resolveSpec({ apiVersion: 'registry-mirror.io/v1alpha1', kind: 'RegistryMirror', metadata: { namespace: ns, name, uid: 'u' }, spec } as unknown as RegistryMirror);
  assert.ok(r.ok, JSON.stringify(r));
  return r.spec;
}

describe('node policy (operator/node-policy.ts)', () => {
  it('lets only the admin namespace configure nodes by default, and says who can allow another', () => {
    const hub = resolved({ upstream: { registry: 'docker.io' } });
    assert.equal(nodeConfigRefusal(ADMIN, 'registry-mirror', hub), undefined);
    const r = nodeConfigRefusal(ADMIN, 'team-a', hub);
    assert.equal(r?.reason, 'NamespaceNotAllowed');
    assert.match(r!.message, /an admin must list namespace team-a in nodeConfig\.allowedNamespaces of the registry-mirror chart/);
    assert.match(r!.message, /--node-config-namespaces/);
    // Without any admin namespace (e.g. no $POD_NAMESPACE), nothing is allowed.
    assert.equal(nodeConfigRefusal(DEFAULT_POLICY, 'registry-mirror', hub)?.reason, 'NamespaceNotAllowed');
    assert.equal(nodeConfigRefusal({ ...ADMIN, namespaces: ['team-a'] }, 'team-a', hub), undefined);
    assert.equal(nodeConfigRefusal({ ...ADMIN, namespaces: ['*'] }, 'anyone', hub), undefined);
  });

  it('limits allowed namespaces to the allowed registries (not the admin namespace)', () => {
    const p = { ...ADMIN, namespaces: ['team-a'], registries: ['ghcr.io'] };
    assert.equal(nodeConfigRefusal(p, 'team-a', resolved({ upstream: { registry: 'ghcr.io' } })), undefined);
    const r = nodeConfigRefusal(p, 'team-a', resolved({ upstream: { registry: 'docker.io' } }));
    assert.equal(r?.reason, 'RegistryNotAllowed');
    assert.match(r!.message, /nodeConfig\.allowedRegistries/);
    assert.equal(nodeConfigRefusal(p, 'registry-mirror', resolved({ upstream: { registry: 'docker.io' } })), undefined);
  });

  it('refuses loopback, link-local/metadata and kubelet-port fallbacks unless the admin allows them', () => {
    for (const url of [
      'https://127.0.0.1:10250',
      'http://169.254.169.254',
      'http://2852039166', // 169.254.169.254 as one number
      'http://[::1]:5000',
      'http://[fe80::1]',
      'http://[::ffff:169.254.169.254]',
      'http://localhost:8080',
      'http://metadata.google.internal',
      'https://10.0.0.5:10250',
      'http://0.0.0.0:80',
    ]) {
      assert.ok(unsafeTarget(url), url);
      const s = resolved({ upstream: { registry: 'registry.example.com', url } });
      assert.equal(nodeConfigRefusal(ADMIN, 'registry-mirror', s)?.reason, 'UnsafeUpstream', url);
      assert.match(nodeConfigRefusal(ADMIN, 'registry-mirror', s)!.message, /nodeConfig\.allowUnsafeUpstreams/);
      assert.equal(nodeConfigRefusal({ ...ADMIN, allowUnsafe: true }, 'registry-mirror', s), undefined, url);
    }
    for (const url of ['https://registry-1.docker.io', 'http://10.88.0.1:5999', 'https://registry.example.com:5000']) assert.equal(unsafeTarget(url), undefined, url);
  });

  it('restricts the upstream URLs of a namespace, naming the policy', () => {
    const p = { ...ADMIN, namespaces: ['*'], upstreams: { '*': ['https://registry-1.docker.io'], 'team-b': ['https://ghcr.io/'] } };
    const hub = resolved({ upstream: { registry: 'docker.io' } });
    const evil = resolved({ upstream: { registry: 'docker.io', url: 'https://evil.example' } });
    assert.equal(upstreamRefusal(p, 'team-a', hub), undefined);
    assert.match(upstreamRefusal(p, 'team-a', evil)!, /not among the upstreams an admin allowed for namespace "team-a".*nodeConfig\.allowedUpstreams/);
    assert.equal(nodeConfigRefusal(p, 'team-a', evil)?.reason, 'UpstreamNotAllowed');
    // A namespace's own entry replaces "*"; the admin namespace is not limited by "*".
    assert.ok(upstreamRefusal(p, 'team-b', hub));
    assert.equal(upstreamRefusal(p, 'team-b', resolved({ upstream: { registry: 'ghcr.io' } })), undefined);
    assert.equal(upstreamRefusal(p, 'registry-mirror', evil), undefined);
    // v1.source counts when v1 is enabled.
    assert.ok(upstreamRefusal(p, 'team-a', resolved({ upstream: { registry: 'docker.io' }, v1: { enabled: true, source: 'https://evil.example' } })));
    // So does the bucket endpoint of spec.storage.s3.
    const onBucket = (endpoint: string) =>
      resolved({ upstream: { registry: 'docker.io' }, replicas: 2, storage: { s3: { bucket: 'cache', endpoint, credentialsSecret: { name: 'keys' } } } });
    assert.match(upstreamRefusal(p, 'team-a', onBucket('http://10.0.0.9:7480'))!, /spec\.storage\.s3\.endpoint "http:\/\/10\.0\.0\.9:7480" is not among/);
    const withBucket = { ...p, upstreams: { '*': ['https://registry-1.docker.io', 'https://s3.internal.example'] } };
    assert.equal(upstreamRefusal(withBucket, 'team-a', onBucket('https://s3.internal.example')), undefined);
  });

  it('matches URL prefixes on origin and whole path segments', () => {
    assert.ok(urlUnder('https://ghcr.io', 'https://ghcr.io/'));
    assert.ok(urlUnder('https://r.example/v2/team', 'https://r.example/v2'));
    assert.ok(!urlUnder('https://r.example/v2team', 'https://r.example/v2'));
    assert.ok(!urlUnder('https://ghcr.io.evil.example', 'https://ghcr.io'));
    assert.ok(!urlUnder('http://ghcr.io', 'https://ghcr.io'));
    assert.ok(!urlUnder('https://ghcr.io:8443', 'https://ghcr.io'));
  });

  it('parses from flags, the same way in the operator and the node agent', () => {
    const args = [
      '--node-config-namespaces', 'team-a, team-b',
      '--node-config-registries', 'ghcr.io,Quay.io',
      '--allowed-upstream', '*=https://ghcr.io,https://quay.io',
      '--allowed-upstream', 'team-a=https://registry-1.docker.io',
      '--node-config-allow-unsafe',
    ];
    const env = { POD_NAMESPACE: 'rm-system' };
    const want: NodePolicy = {
      adminNamespace: 'rm-system',
      namespaces: ['team-a', 'team-b'],
      registries: ['ghcr.io', 'quay.io'],
      upstreams: { '*': ['https://ghcr.io', 'https://quay.io'], 'team-a': ['https://registry-1.docker.io'] },
      allowUnsafe: true,
    };
    assert.deepEqual(parseFlags(args, env).policy, want);
    assert.deepEqual(parseNodeAgentFlags(args, env).policy, want);
    assert.deepEqual(parseFlags([], {}).policy, DEFAULT_POLICY);
    assert.equal(parseNodeAgentFlags(['--admin-namespace', 'infra'], env).policy.adminNamespace, 'infra');
    assert.throws(() => parsePolicy({ 'allowed-upstream': ['team-a'] }, {}), /--allowed-upstream/);
    assert.throws(() => parsePolicy({ 'allowed-upstream': ['team-a=https://u:p@x.example'] }, {}), /--allowed-upstream/);
    assert.throws(() => parsePolicy({ 'node-config-namespaces': 'Bad_NS' }, {}), /--node-config-namespaces/);
  });
});

describe('node agent plan: tenancy and validation (issue 12 items 1-2)', () => {
  it("keeps an older tenant mirror off the nodes; the admin's newer mirror wins", () => {
    const tenant = mirror('team-a', 'hub', { upstream: { registry: 'docker.io', url: 'https://evil.example' } }, '2024-01-01T00:00:00Z');
    const admin = mirror('registry-mirror', 'hub', { upstream: { registry: 'docker.io' } }, '2024-06-01T00:00:00Z');
    const p = plan([tenant, admin], [ownedService('team-a', 'hub', '10.96.0.1'), ownedService('registry-mirror', 'hub', '10.96.0.2')], { policy: ADMIN });
    assert.equal(p.entries.get('docker.io')?.owner, 'registry-mirror/hub');
    assert.equal(p.entries.get('docker.io')?.server, 'https://registry-1.docker.io');
    assert.equal(p.conditions.get('team-a/hub')?.status, 'False');
    assert.equal(p.conditions.get('team-a/hub')?.reason, 'NamespaceNotAllowed');
    assert.equal(p.conditions.get('registry-mirror/hub')?.reason, 'HostsConfigured');
  });

  it('never writes a metadata or kubelet fallback, even for a registry nobody else mirrors', () => {
    const m = mirror('registry-mirror', 'q', { upstream: { registry: 'quay.io', url: 'http://169.254.169.254' } });
    const p = plan([m], [ownedService('registry-mirror', 'q', '10.96.0.3')], { policy: ADMIN });
    assert.equal(p.entries.size, 0);
    assert.equal(p.conditions.get('registry-mirror/q')?.reason, 'UnsafeUpstream');
  });

  it('renders only specs the operator validates: no IPv6 literal registry, no URL with credentials', () => {
    const open = { ...ADMIN, namespaces: ['*'] };
    const v6 = mirror('a', 'v6', { upstream: { registry: '[fd00::1]:5000', url: 'http://[fd00::1]:5000' } });
    const creds = mirror('a', 'creds', { upstream: { registry: 'registry.example.com', url: 'https://user:secret@registry.example.com' } });
    const p = plan([v6, creds], [ownedService('a', 'v6', '10.96.0.4'), ownedService('a', 'creds', '10.96.0.5')], { policy: open });
    assert.equal(p.entries.size, 0);
    assert.equal(p.conditions.get('a/v6')?.reason, 'InvalidSpec');
    assert.equal(p.conditions.get('a/creds')?.reason, 'InvalidSpec');
    assert.doesNotMatch(JSON.stringify([...p.conditions.values()]), /secret/);
    // Upstream URLs are written as the operator resolves them (trimmed, no trailing slash).
    const ok = mirror('a', 'ok', { upstream: { registry: 'registry.example.com', url: ' https://registry.example.com/ ' } });
    assert.equal(plan([ok], [ownedService('a', 'ok', '10.96.0.6')], { policy: open }).entries.get('registry.example.com')?.server, 'https://registry.example.com');
  });

  it('uses only the Service the RegistryMirror owns (controller ownerReference with its uid)', () => {
    const m = mirror('registry-mirror', 'hub', { upstream: { registry: 'docker.io' } });
    const impostor: ServiceLike = { metadata: { namespace: 'registry-mirror', name: 'hub' }, spec: { clusterIP: '10.96.0.66' } };
    const other = ownedService('registry-mirror', 'hub', '10.96.0.67', 'uid-of-someone-else');
    for (const svc of [impostor, other]) {
      const p = plan([m], [svc], { policy: ADMIN });
      assert.equal(p.entries.size, 0);
      assert.equal(p.conditions.get('registry-mirror/hub')?.reason, 'WaitingForService');
    }
    assert.equal(plan([m], [ownedService('registry-mirror', 'hub', '10.96.0.7')], { policy: ADMIN }).entries.get('docker.io')?.mirrorUrl, 'http://10.96.0.7:5000');
  });

  it('keeps only a bounded summary of each object (informer transforms)', () => {
    const huge = 'x'.repeat(1_400_000);
    const raw = {
      ...mirror('registry-mirror', 'hub', { upstream: { registry: 'docker.io' }, resources: { limits: { memory: huge } } }),
      status: { conditions: [{ type: 'Ready', status: 'False', reason: 'InvalidSpec', message: 'm' }], cache: { hits: 1 } },
    };
    const s = summarizeMirror(raw, ADMIN);
    assert.ok(JSON.stringify(s).length < 2048, JSON.stringify(s).slice(0, 300));
    assert.equal(s.refused?.reason, 'InvalidSpec'); // the operator refuses it, so the nodes do too
    assert.deepEqual(s.nodeStatus, { hasStatus: true, conditions: 1, index: -1 });
    const good = summarizeMirror(mirror('registry-mirror', 'hub', { upstream: { registry: 'docker.io' }, resources: { limits: { memory: '1Gi' } } }), ADMIN);
    assert.deepEqual(good.spec, { upstream: { registry: 'docker.io', url: 'https://registry-1.docker.io' } });
    assert.equal('resources' in (good.spec as object), false);
    const svc = summarizeService({ ...ownedService('a', 'b', '10.96.0.8'), spec: { clusterIP: '10.96.0.8', ports: [{ name: 'http', port: 5000 }] }, metadata: { ...ownedService('a', 'b', '1').metadata, annotations: { big: huge } } } as ServiceLike);
    assert.ok(JSON.stringify(svc).length < 1024);
    assert.equal(svc.spec?.clusterIP, '10.96.0.8');
  });
});

describe('operator: the same policy in conditions', () => {
  const cr = (ns: string, spec: Record<string, unknown>, conditions: unknown[] = []): RegistryMirror =>
    ({ apiVersion: 'registry-mirror.io/v1alpha1', kind: 'RegistryMirror', metadata: { namespace: ns, name: 'hub', uid: 'u', generation: 1 }, spec, status: { conditions } }) as unknown as RegistryMirror;
  it('sets NodeConfig=False for a refused namespace, and clears it once allowed', () => {
    const c = cr('team-a', { upstream: { registry: 'docker.io' } });
    const u = nodeConfigUpdate(c, resolved({ upstream: { registry: 'docker.io' } }), ADMIN);
    assert.equal(u.kind, 'refuse');
    const st = computeStatus(c, { kind: 'applied' }, { endpoint: 'e', nodeConfig: u }, new Date(0));
    const nc = st.conditions!.find((x) => (x.type as string) === 'NodeConfig')!;
    assert.equal(nc.status, 'False');
    assert.equal(nc.reason, 'NamespaceNotAllowed');
    const again = cr('team-a', { upstream: { registry: 'docker.io' } }, st.conditions);
    const cleared = nodeConfigUpdate(again, resolved({ upstream: { registry: 'docker.io' } }), { ...ADMIN, namespaces: ['team-a'] });
    assert.deepEqual(cleared, { kind: 'clear' });
    const st2 = computeStatus(again, { kind: 'applied' }, { endpoint: 'e', nodeConfig: cleared }, new Date(0));
    assert.equal(st2.conditions!.some((x) => (x.type as string) === 'NodeConfig'), false);
    // The agent's own conditions (HostsConfigured, ...) are left alone.
    const agentOwned = cr('registry-mirror', { upstream: { registry: 'docker.io' } }, [{ type: 'NodeConfig', status: 'True', reason: 'HostsConfigured', message: 'x' }]);
    assert.deepEqual(nodeConfigUpdate(agentOwned, resolved({ upstream: { registry: 'docker.io' } }), ADMIN), { kind: 'keep' });
  });
});

describe('two node agents on one node (issue 12 item 7)', () => {
  const root = mkdtempSync(join(tmpdir(), 'rm-unit-tenancy-'));
  after(() => rmSync(root, { recursive: true, force: true }));
  const entry = (registry: string, owner: string) => ({ registry, server: `https://${registry}`, mirrorUrl: 'http://10.96.0.10:5000', owner });

  it("never removes or rewrites the other instance's files, and an uninstall removes only its own", () => {
    const dir = join(root, 'shared');
    const a = new HostsDir(dir, 'rm-a/rm-a-node-agent');
    const b = new HostsDir(dir, 'rm-b/rm-b-node-agent');
    a.sync(new Map([['docker.io', entry('docker.io', 'rm-a/hub')]]));
    const text = readFileSync(join(dir, 'docker.io', 'hosts.toml'), 'utf8');
    assert.deepEqual(fileOwner(text), { mirror: 'rm-a/hub', instance: 'rm-a/rm-a-node-agent' });
    assert.equal(managedOwner(text), 'rm-a/hub@rm-a/rm-a-node-agent');

    // B plans only ghcr.io: it must not remove A's docker.io file.
    const rb = b.sync(new Map([['ghcr.io', entry('ghcr.io', 'rm-b/ghcr')]]));
    assert.deepEqual(rb.errors, []);
    assert.equal(readFileSync(join(dir, 'docker.io', 'hosts.toml'), 'utf8'), text);
    // A plans only docker.io: it must not remove B's ghcr.io file.
    a.sync(new Map([['docker.io', entry('docker.io', 'rm-a/hub')]]));
    assert.ok(existsSync(join(dir, 'ghcr.io', 'hosts.toml')));

    // Both want docker.io: the one that has it keeps it; the other reports, changes nothing.
    const both = b.sync(new Map([['docker.io', entry('docker.io', 'rm-b/hub')], ['ghcr.io', entry('ghcr.io', 'rm-b/ghcr')]]));
    assert.deepEqual(both.foreign.map((f) => [f.registry, f.instance]), [['docker.io', 'rm-a/rm-a-node-agent']]);
    assert.match(both.foreign[0]!.message, /managed by node agent rm-a\/rm-a-node-agent/);
    assert.equal(readFileSync(join(dir, 'docker.io', 'hosts.toml'), 'utf8'), text);
    assert.equal(existsSync(join(dir, 'docker.io', `hosts.toml${BACKUP_SUFFIX}`)), false);

    // Uninstalling B (removeAll, --cleanup) leaves A's file; uninstalling A then removes it.
    assert.deepEqual(b.removeAll().map((c) => c.registry), ['ghcr.io']);
    assert.equal(readFileSync(join(dir, 'docker.io', 'hosts.toml'), 'utf8'), text);
    assert.deepEqual(a.removeAll().map((c) => c.registry), ['docker.io']);
    assert.equal(existsSync(join(dir, 'docker.io')), false);
  });

  it("restores the node's own file only from the instance that backed it up", () => {
    const dir = join(root, 'backup');
    mkdirSync(join(dir, 'docker.io'), { recursive: true });
    const original = 'server = "https://registry-1.docker.io"\n';
    writeFileSync(join(dir, 'docker.io', 'hosts.toml'), original);
    const a = new HostsDir(dir, 'rm-a/ds');
    const b = new HostsDir(dir, 'rm-b/ds');
    a.sync(new Map([['docker.io', entry('docker.io', 'rm-a/hub')]]));
    assert.deepEqual(b.removeAll(), []);
    assert.ok(isManaged(readFileSync(join(dir, 'docker.io', 'hosts.toml'), 'utf8')));
    a.removeAll();
    assert.equal(readFileSync(join(dir, 'docker.io', 'hosts.toml'), 'utf8'), original);
  });

  it('takes over a file written before instances existed (upgrade)', () => {
    const dir = join(root, 'legacy');
    mkdirSync(join(dir, 'docker.io'), { recursive: true });
    writeFileSync(join(dir, 'docker.io', 'hosts.toml'), renderHostsToml(entry('docker.io', 'registry-mirror/hub')));
    const a = new HostsDir(dir, 'rm-a/ds');
    assert.deepEqual(a.managedRegistries(), ['docker.io']);
    a.sync(new Map([['docker.io', entry('docker.io', 'registry-mirror/hub')]]));
    assert.equal(fileOwner(readFileSync(join(dir, 'docker.io', 'hosts.toml'), 'utf8'))?.instance, 'rm-a/ds');
    assert.equal(readHostsToml(readFileSync(join(dir, 'docker.io', 'hosts.toml'), 'utf8')).hosts.length, 1);
  });

  it('derives the instance from the release (namespace/DaemonSet) and validates --instance', () => {
    assert.equal(parseNodeAgentFlags([], { POD_NAMESPACE: 'rm-a', NODE_AGENT_DAEMONSET: 'rm-a-node-agent' }).instance, 'rm-a/rm-a-node-agent');
    assert.equal(parseNodeAgentFlags([], {}).instance, 'registry-mirror');
    assert.equal(parseNodeAgentFlags(['--instance', 'x/y'], {}).instance, 'x/y');
    assert.throws(() => parseNodeAgentFlags(['--instance', 'a b)'], {}), /--instance/);
  });
});
