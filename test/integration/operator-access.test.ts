// The operator's side of access, against a real kube-apiserver: spec.auth mounts the auth
// Secret and renders it into the mirror config (rotation rolls the pods), allow/deny reach
// the config, and hostile RegistryMirrors are stopped at one of two layers: the CRD schema
// (422 at admission) or the operator (Degraded with a clear message, nothing applied). Last,
// no Secret value shows up in the operator's log, any RegistryMirror status, any event, or
// anything the operator applied.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import bcrypt from 'bcryptjs';
import { parse } from 'yaml';
import { ANNOTATION } from '../../operator/render/names.js';
import type { RegistryMirror, RegistryMirrorSpec } from '../../operator/types.js';
import { kubeAvailable } from '../rig/kube.js';
import { tail, waitFor } from '../../tools/launch/proc.js';
import { condition, createMirror, createNamespace, get, getMirror, startClusterWithCrd, startInProcessOperator, waitMirror, type Cluster } from './operator-kit.js';

const NS = 'access';
const UPSTREAM_PASSWORD = 'op-upstream-Pa55-77aa31';
const CLIENT_PASSWORD = 'op-client-Pa55-0b9e';
const CLIENT_TOKEN = 'op-client-token-5d2c8e7f1a';
const ROTATED_TOKEN = 'op-rotated-token-9a8b7c6d5e';
const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('operator: spec.auth, allow/deny and hostile RegistryMirrors', { skip: !kubeAvailable() && 'kube-apiserver not built (test/rig/build-kube.sh)' }, () => {
  let cluster: Cluster;
  let op: Awaited<ReturnType<typeof startInProcessOperator>>;
  const htpasswd = `alice:${bcrypt.hashSync(CLIENT_PASSWORD, 5)}\n`;
  const secret = (name: string, stringData: Record<string, string>, type?: string) =>
    cluster.kube.objects.create({ apiVersion: 'v1', kind: 'Secret', metadata: { name, namespace: NS }, ...(type ? { type } : {}), stringData } as any);
  const dump = (err: unknown) => {
    throw new Error(`${(err as Error).message}\n--- operator log ---\n${tail(readFileSync(op.logFile, 'utf8'), 40)}`);
  };
  const degraded = (name: string) =>
    waitMirror(cluster.kube, NS, name, (m) => condition(m, 'Degraded')?.status === 'True', `${name} degraded`).catch(dump);

  before(async () => {
    cluster = await startClusterWithCrd();
    await createNamespace(cluster.kube, NS);
    await secret('hub-creds', { username: 'robot', password: UPSTREAM_PASSWORD });
    await secret('hub-dockercfg', { '.dockerconfigjson': JSON.stringify({ auths: { 'docker.io': { auth: b64(`robot:${UPSTREAM_PASSWORD}`) } } }) }, 'kubernetes.io/dockerconfigjson');
    await secret('mirror-auth', { htpasswd, tokens: `${CLIENT_TOKEN}\n` });
    await secret('bad-auth', { htpasswd: 'alice:$apr1$salt$notbcrypt\n' });
    op = await startInProcessOperator(cluster);
  });
  after(async () => {
    await op?.stop();
    await cluster?.stop();
  });

  test('spec.auth: the Secret is mounted, named in the config, and its rotation rolls the pods', async () => {
    await createMirror(cluster.kube, NS, 'secure', {
      upstream: { registry: 'docker.io', credentialsSecret: { name: 'hub-creds' }, allow: ['library/*', 'myorg/**'], deny: ['library/forbidden'] },
      auth: { secret: { name: 'mirror-auth' }, protectMetrics: true },
    } as RegistryMirrorSpec);
    const dep = await waitFor(() => get(cluster.kube, 'apps/v1', 'Deployment', NS, 'secure'), 15_000, 'Deployment secure').catch(dump);
    const pod = dep!.spec.template;
    const vol = pod.spec.volumes.find((v: any) => v.name === 'auth');
    assert.deepEqual(vol.secret.items, [{ key: 'htpasswd', path: 'htpasswd' }, { key: 'tokens', path: 'tokens' }]);
    assert.equal(vol.secret.secretName, 'mirror-auth');
    const hash1 = pod.metadata.annotations[ANNOTATION.authHash];
    assert.match(hash1, /^[0-9a-f]{16}$/);
    const config = parse((await get(cluster.kube, 'v1', 'ConfigMap', NS, 'secure-config'))!.data['config.yaml']);
    assert.deepEqual(config.auth, { htpasswdFile: '/etc/registry-mirror/auth/htpasswd', tokensFile: '/etc/registry-mirror/auth/tokens', protectMetrics: true });
    assert.deepEqual(config.upstreams['docker.io'].allow, ['library/*', 'myorg/**']);
    assert.deepEqual(config.upstreams['docker.io'].deny, ['library/forbidden']);
    const cr = await waitMirror(cluster.kube, NS, 'secure', (m) => condition(m, 'Degraded')?.status === 'False', 'secure reconciled');
    assert.equal(condition(cr, 'Degraded')!.reason, 'AsExpected');

    await cluster.kube.objects.patch(
      { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'mirror-auth', namespace: NS }, stringData: { tokens: `${ROTATED_TOKEN}\n` } } as any,
      undefined,
      undefined,
      'test',
      undefined,
      'application/merge-patch+json',
    );
    await waitFor(
      async () => {
        const d = await get(cluster.kube, 'apps/v1', 'Deployment', NS, 'secure');
        const h = d?.spec.template.metadata.annotations[ANNOTATION.authHash];
        return h && h !== hash1;
      },
      15_000,
      'auth hash to change',
    ).catch(dump);
  });

  test('a missing or unusable auth Secret: Degraded, nothing applied', async () => {
    await createMirror(cluster.kube, NS, 'no-auth-secret', { upstream: { registry: 'docker.io' }, auth: { secret: { name: 'absent' } } } as RegistryMirrorSpec);
    await createMirror(cluster.kube, NS, 'bad-auth', { upstream: { registry: 'docker.io' }, auth: { secret: { name: 'bad-auth' } } } as RegistryMirrorSpec);
    const missing = await degraded('no-auth-secret');
    assert.equal(condition(missing, 'Degraded')!.reason, 'AuthSecretNotFound');
    assert.match(condition(missing, 'Degraded')!.message, /Secret "absent" named by spec\.auth\.secret does not exist in namespace "access"/);
    const bad = await degraded('bad-auth');
    assert.equal(condition(bad, 'Degraded')!.reason, 'AuthSecretInvalid');
    assert.match(condition(bad, 'Degraded')!.message, /htpasswd line 1: only bcrypt hashes are supported/);
    for (const name of ['no-auth-secret', 'bad-auth']) {
      assert.equal(await get(cluster.kube, 'v1', 'ConfigMap', NS, `${name}-config`), undefined, name);
      assert.equal(await get(cluster.kube, 'apps/v1', 'Deployment', NS, name), undefined, name);
    }
  });

  test('hostile values the schema lets through: Degraded with a message naming the field', async () => {
    const cases: Array<[string, Record<string, unknown>, RegExp, string[]?]> = [
      ['creds-url', { upstream: { registry: 'registry.example.com', url: `https://robot:${UPSTREAM_PASSWORD}@registry.example.com` } }, /spec\.upstream\.url must not contain credentials/],
      ['creds-v1', { upstream: { registry: 'docker.io' }, v1: { enabled: true, source: `https://robot:${UPSTREAM_PASSWORD}@index.example.com` } }, /spec\.v1\.source must not contain credentials/],
      ['ipv6', { upstream: { registry: '[::1]:5000', url: 'http://[::1]:5000' } }, /spec\.upstream\.registry "\[::1\]:5000": IPv6 literals are not supported/],
      ['bad-port', { upstream: { registry: 'registry.example.com:99999', url: 'https://registry.example.com' } }, /port outside 1-65535/],
      ['secret-name', { upstream: { registry: 'docker.io', credentialsSecret: { name: 'Not_A_DNS..name' } } }, /spec\.upstream\.credentialsSecret\.name "Not_A_DNS\.\.name" is not a valid Secret name/],
      ['control', { upstream: { registry: 'docker.io' }, image: 'registry-mirror:1\r\nInjected: yes' }, /spec\.image contains control characters/],
      ['huge-size', { upstream: { registry: 'docker.io' }, storage: { size: '100Ei' } }, /spec\.storage\.size "100Ei" is larger than 8Pi/],
      ['cpu', { upstream: { registry: 'docker.io' }, resources: { requests: { cpu: '1e400' } } }, /spec\.resources\.requests\.cpu "1e400" is not a quantity/],
      // (A resources key the CRD does not name is pruned at admission: see operator-bounds.test.ts.)
      ['replicas', { upstream: { registry: 'docker.io' }, replicas: 1_000_000 }, /spec\.replicas is 1000000; at most 100/],
      ['ghcr-host', { upstream: { registry: `${'a'.repeat(70)}.example.com`, url: 'https://r.example.com' } }, /DNS label longer than 63/],
    ];
    for (const [name, spec] of cases) await createMirror(cluster.kube, NS, name, spec as unknown as RegistryMirrorSpec);
    // A name the apiserver takes for a custom resource but no Service can carry.
    await createMirror(cluster.kube, NS, 'dotted.name', { upstream: { registry: 'docker.io' } });
    cases.push(['dotted.name', {}, /metadata\.name "dotted\.name" must be a DNS label/]);
    for (const [name, , message] of cases) {
      const cr = await degraded(name);
      const c = condition(cr, 'Degraded')!;
      assert.equal(c.reason, 'InvalidSpec', name);
      assert.match(c.message, message, name);
      assert.doesNotMatch(c.message, /[\r\n]|Injected: yes/, 'no raw control characters or injected text');
      assert.equal(condition(cr, 'Ready')!.status, 'False');
      for (const [apiVersion, kind, n] of [['apps/v1', 'Deployment', name], ['v1', 'ConfigMap', `${name}-config`], ['v1', 'Service', name]] as const) {
        assert.equal(await get(cluster.kube, apiVersion, kind, NS, n), undefined, `${name}: no ${kind} rendered`);
      }
    }
  });

  test('hostile values the schema refuses at admission (422)', async () => {
    const refused: Array<[string, Record<string, unknown>]> = [
      ['huge-image', { upstream: { registry: 'docker.io' }, image: 'a'.repeat(100_000) }],
      ['huge-registry', { upstream: { registry: `${'a'.repeat(300)}.io` } }],
      ['bad-pattern', { upstream: { registry: 'docker.io', allow: ['Library/*'] } }],
      ['many-patterns', { upstream: { registry: 'docker.io', deny: Array(300).fill('a/*') } }],
      ['ctl-registry', { upstream: { registry: 'docker.io\n' } }],
      ['url-space', { upstream: { registry: 'r.example.com', url: 'https://r.example.com/ x' } }],
      ['size-words', { upstream: { registry: 'docker.io' }, storage: { size: '50 gigs' } }],
      ['size-long', { upstream: { registry: 'docker.io' }, storage: { size: '9'.repeat(100) } }],
      ['ttl', { upstream: { registry: 'docker.io' }, cache: { ttl: '7 days' } }],
      ['auth-no-secret', { upstream: { registry: 'docker.io' }, auth: { protectMetrics: true } }],
      ['auth-type', { upstream: { registry: 'docker.io' }, auth: { secret: { name: 'x' }, protectMetrics: 'yes' } }],
      ['log', { upstream: { registry: 'docker.io' }, logLevel: 'loud' }],
    ];
    for (const [name, spec] of refused) {
      await assert.rejects(createMirror(cluster.kube, NS, name, spec as unknown as RegistryMirrorSpec), (err: any) => err.code === 422, name);
    }
  });

  test('no Secret value in the operator log, statuses, events or applied objects', async () => {
    await op.idle();
    const secrets = [
      UPSTREAM_PASSWORD,
      b64(`robot:${UPSTREAM_PASSWORD}`),
      CLIENT_PASSWORD,
      CLIENT_TOKEN,
      ROTATED_TOKEN,
      htpasswd.trim().slice('alice:'.length),
      b64(htpasswd),
      b64(`${CLIENT_TOKEN}\n`),
    ];
    const list = async (path: string) => {
      const res = await fetch(`${cluster.server}${path}`, {
        headers: { authorization: `Bearer ${cluster.adminToken}` },
        // @ts-expect-error undici's fetch takes a dispatcher; Node's RequestInit type lacks it
        dispatcher: new (await import('undici')).Agent({ connect: { rejectUnauthorized: false } }),
      });
      assert.equal(res.status, 200, path);
      return res.text();
    };
    const mirrors = JSON.parse(await list(`/apis/registry-mirror.io/v1alpha1/namespaces/${NS}/registrymirrors`)) as { items: RegistryMirror[] };
    assert.ok(mirrors.items.length >= 10);
    const channels: Array<[string, string]> = [
      ['operator log', readFileSync(op.logFile, 'utf8')],
      ['statuses', JSON.stringify(mirrors.items.map((m) => m.status))],
      ['events', await list(`/api/v1/namespaces/${NS}/events`)],
      ['configmaps', await list(`/api/v1/namespaces/${NS}/configmaps`)],
      ['deployments', await list(`/apis/apps/v1/namespaces/${NS}/deployments`)],
      ['services', await list(`/api/v1/namespaces/${NS}/services`)],
    ];
    for (const [channel, text] of channels) {
      for (const s of secrets) assert.ok(!text.includes(s), `${channel} holds a secret value (${s.slice(0, 8)}…)`);
    }
    // Statuses name what is wrong without echoing the URL's password.
    const credsUrl = await getMirror(cluster.kube, NS, 'creds-url');
    assert.match(condition(credsUrl, 'Degraded')!.message, /must not contain credentials/);
  });
});
