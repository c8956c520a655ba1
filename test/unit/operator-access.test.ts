// The operator's side of access: spec.auth and spec.upstream.allow/deny rendered into the
// mirror's config and pod; the auth Secret checked without its values being kept; and
// hostile RegistryMirrors (credentials in URLs, huge strings, control characters, odd hosts,
// invalid quantities, bad names) refused with a clear message that repeats nothing unsafe,
// with nothing rendered.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import bcrypt from 'bcryptjs';
import { parse } from 'yaml';
import { parseConfigText } from '../../mirror/config.js';
import { render } from '../../operator/render/index.js';
import { mirrorConfigProblem, renderMirrorConfig } from '../../operator/render/mirror-config.js';
import { ANNOTATION } from '../../operator/render/names.js';
import { authForm, summarizeSecret } from '../../operator/secrets.js';
import { resolveSpec, show, type ResolvedSpec } from '../../operator/spec.js';
import type { RegistryMirror } from '../../operator/types.js';

function cr(spec: unknown, name = 'hub'): RegistryMirror {
  return { apiVersion: 'registry-mirror.io/v1alpha1', kind: 'RegistryMirror', metadata: { name, namespace: 'ns1', uid: 'uid-1' }, spec: spec as RegistryMirror['spec'] };
}
function resolved(c: RegistryMirror): ResolvedSpec {
  const r = resolveSpec(c);
  assert.ok(r.ok, JSON.stringify(r));
  return r.spec;
}
function problems(spec: unknown, name = 'hub'): string {
  const r = resolveSpec(cr(spec, name));
  assert.equal(r.ok, false, `expected problems for ${JSON.stringify(spec).slice(0, 200)}`);
  return (r as { problems: string[] }).problems.join('\n');
}
const secret = (data: Record<string, string>, name = 'auth') =>
  summarizeSecret({
    metadata: { name, namespace: 'ns1', uid: 'secret-uid' },
    data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
  });

describe('spec.auth and spec.upstream.allow/deny', () => {
  const htpasswd = `alice:${bcrypt.hashSync('pw', 4)}\n`;

  test('render into the mirror config, a read-only Secret volume and a hash annotation', () => {
    const c = cr({ upstream: { registry: 'docker.io', allow: ['library/*', 'myorg/**'], deny: ['library/bad'] }, auth: { secret: { name: 'mirror-auth' }, protectMetrics: true } });
    const spec = resolved(c);
    const form = authForm(secret({ htpasswd, tokens: 'a-token-of-twenty-chars\n' }, 'mirror-auth'));
    assert.ok(!('problem' in form));
    const config = renderMirrorConfig(spec, undefined, form);
    assert.deepEqual(config.upstreams['docker.io'], { url: 'https://registry-1.docker.io', allow: ['library/*', 'myorg/**'], deny: ['library/bad'] });
    assert.deepEqual(config.auth, { htpasswdFile: '/etc/registry-mirror/auth/htpasswd', tokensFile: '/etc/registry-mirror/auth/tokens', protectMetrics: true });

    const r = render(c, spec, { defaultImage: 'img:1', auth: form });
    const text = (r.configMap.data as Record<string, string>)['config.yaml']!;
    const parsed = parseConfigText(text);
    assert.deepEqual(parsed.v1.allow, ['library/*', 'myorg/**'], 'v1 follows the upstream lists in the mirror');
    assert.equal(mirrorConfigProblem(text), undefined);
    const pod = (r.deployment as any).spec.template;
    assert.equal(pod.metadata.annotations[ANNOTATION.authHash], form.hash);
    const vol = pod.spec.volumes.find((v: any) => v.name === 'auth');
    assert.deepEqual(vol.secret, { secretName: 'mirror-auth', defaultMode: 0o440, items: [{ key: 'htpasswd', path: 'htpasswd' }, { key: 'tokens', path: 'tokens' }] });
    assert.deepEqual(pod.spec.containers[0].volumeMounts.find((m: any) => m.name === 'auth'), { name: 'auth', mountPath: '/etc/registry-mirror/auth', readOnly: true });
    assert.ok(!JSON.stringify(r).includes('a-token-of-twenty-chars') && !JSON.stringify(r).includes(htpasswd.slice(6, 30)), 'no Secret value rendered');
  });

  test('only the keys present are mounted and named; rotation changes the hash; no auth, nothing rendered', () => {
    const c = cr({ upstream: { registry: 'ghcr.io' }, auth: { secret: { name: 'a' } } });
    const tokensOnly = authForm(secret({ tokens: 'sha256:' + 'a'.repeat(64) }));
    assert.ok(!('problem' in tokensOnly));
    assert.deepEqual(tokensOnly.keys, ['tokens']);
    const cfg = renderMirrorConfig(resolved(c), undefined, tokensOnly);
    assert.deepEqual(cfg.auth, { tokensFile: '/etc/registry-mirror/auth/tokens', protectMetrics: false });
    const rotated = authForm(secret({ tokens: 'sha256:' + 'b'.repeat(64) }));
    assert.notEqual((rotated as { hash: string }).hash, tokensOnly.hash);
    const plain = render(cr({ upstream: { registry: 'ghcr.io' } }), resolved(cr({ upstream: { registry: 'ghcr.io' } })), { defaultImage: 'i' });
    assert.ok(!JSON.stringify(plain).includes('/etc/registry-mirror/auth'));
    assert.equal(parse((plain.configMap.data as Record<string, string>)['config.yaml']).auth, undefined);
  });

  test('the auth Secret is checked with the mirror parsers; its summary keeps no value', () => {
    const s = secret({ htpasswd: 'carol:$apr1$xyz$abc\n', tokens: 'too-short\n' });
    assert.ok(!JSON.stringify(s).includes('apr1') && !JSON.stringify(s).includes('too-short'), 'no value kept');
    const bad = authForm(s);
    assert.ok('problem' in bad);
    assert.match(bad.problem, /Secret "auth" named by spec\.auth\.secret: htpasswd line 1: only bcrypt hashes are supported \(htpasswd -B\); tokens line 1: a token must be/);
    assert.ok(!bad.problem.includes('carol') && !bad.problem.includes('too-short'));
    const none = authForm(secret({ username: 'u', password: 'p' }));
    assert.match((none as { problem: string }).problem, /has neither an htpasswd nor a tokens key \(it has: password, username\)/);
    const empty = authForm(secret({ htpasswd: '# nobody\n' }));
    assert.match((empty as { problem: string }).problem, /holds no users and no tokens/);
  });

  test('bad patterns and auth references name the field', () => {
    assert.match(problems({ upstream: { registry: 'docker.io', allow: ['Library/*'] } }), /spec\.upstream\.allow\[0\] may only hold lower-case letters/);
    assert.match(problems({ upstream: { registry: 'docker.io', deny: 'library/*' } }), /spec\.upstream\.deny must be a list of patterns/);
    assert.match(problems({ upstream: { registry: 'docker.io' }, auth: {} }), /spec\.auth\.secret is required/);
    assert.match(problems({ upstream: { registry: 'docker.io' }, auth: { secret: { name: 'Not_DNS' } } }), /spec\.auth\.secret\.name "Not_DNS" is not a valid Secret name/);
    assert.match(problems({ upstream: { registry: 'docker.io' }, auth: { secret: { name: 'a' }, protectMetrics: 'yes' } }), /spec\.auth\.protectMetrics must be true or false/);
  });
});

test('the mirror pod runs non-root on a read-only root filesystem, no privileges, a writable /tmp', () => {
  const c = cr({ upstream: { registry: 'docker.io' } });
  const pod = (render(c, resolved(c), { defaultImage: 'i' }).deployment as any).spec.template.spec;
  assert.deepEqual(pod.securityContext, { runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: { type: 'RuntimeDefault' } });
  assert.equal(pod.automountServiceAccountToken, false);
  const ctr = pod.containers[0];
  assert.deepEqual(ctr.securityContext, { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
  assert.deepEqual(pod.volumes.find((v: any) => v.name === 'tmp'), { name: 'tmp', emptyDir: {} });
  assert.ok(ctr.volumeMounts.some((m: any) => m.name === 'tmp' && m.mountPath === '/tmp'));
  for (const m of ctr.volumeMounts) if (m.name !== 'tmp' && !m.name.startsWith('cache-')) assert.equal(m.readOnly, true, m.name);
});

describe('hostile RegistryMirrors', () => {
  const hub = { registry: 'docker.io' };

  test('URLs with credentials: refused, and the credentials are not repeated, however the URL is malformed', () => {
    for (const url of ['https://user:hunter2@registry.example.com', 'https://hunter2@registry.example.com/', 'https://user:hun@ter2@exa mple.com', 'ftp://user:hunter2@x', 'user:hunter2@registry.example.com']) {
      const p = problems({ upstream: { registry: 'registry.example.com', url } });
      assert.match(p, /spec\.upstream\.url/);
      assert.ok(!p.includes('hunter2') && !p.includes('ter2'), `${url} -> ${p}`);
    }
    assert.match(problems({ upstream: { registry: 'registry.example.com', url: 'https://u:p@registry.example.com' } }), /must not contain credentials/);
    assert.ok(!problems({ upstream: hub, v1: { enabled: true, source: 'https://u:hunter2@v1.example.com' } }).includes('hunter2'));
  });

  test('huge strings and control characters: the field is named, the value is not repeated', () => {
    const huge = 'a'.repeat(100_000);
    for (const [spec, field] of [
      [{ upstream: { registry: huge } }, 'spec.upstream.registry'],
      [{ upstream: hub, image: huge }, 'spec.image'],
      [{ upstream: hub, cache: { ttl: huge } }, 'spec.cache.ttl'],
      [{ upstream: hub, storage: { size: '1Gi', storageClassName: huge } }, 'spec.storage.storageClassName'],
    ] as const) {
      const p = problems(spec);
      assert.match(p, new RegExp(`${field.replaceAll('.', '\\.')} is 100000 characters long; at most 2048`));
      assert.ok(p.length < 500, 'the message stays short');
    }
    for (const [spec, field] of [
      [{ upstream: { registry: 'docker.io\nx' } }, 'spec.upstream.registry'],
      [{ upstream: { registry: 'r.example.com', url: 'https://r.example.com/\u0000' } }, 'spec.upstream.url'],
      [{ upstream: hub, image: 'img:1\r\nX-Evil: 1' }, 'spec.image'],
      [{ upstream: hub, logLevel: 'info\u001b[31m' }, 'spec.logLevel'],
      [{ upstream: hub, resources: { limits: { 'memory\u0007': '1Gi' } } }, 'spec.resources.limits'],
      [{ upstream: { ...hub, allow: ['library/*\u2028'] } }, 'spec.upstream.allow[0]'],
    ] as const) {
      const p = problems(spec);
      assert.ok(p.includes(field), `${field}: ${p}`);
      assert.doesNotMatch(p, /[\u0000-\u001f\u2028]/, 'no control character reaches the message');
    }
    assert.match(problems({ upstream: { ...hub, allow: Array(300).fill('a/*') } }), /spec\.upstream\.allow has 300 entries; at most 256/);
  });

  test('weird registry hosts', () => {
    assert.match(problems({ upstream: { registry: '[::1]:5000', url: 'http://[::1]:5000' } }), /IPv6 literals are not supported/);
    assert.match(problems({ upstream: { registry: 'registry.example.com:99999', url: 'https://r.example.com' } }), /port outside 1-65535/);
    assert.match(problems({ upstream: { registry: 'registry.example.com:0', url: 'https://r.example.com' } }), /port outside 1-65535/);
    assert.match(problems({ upstream: { registry: `${'a'.repeat(64)}.example.com`, url: 'https://r.example.com' } }), /DNS label longer than 63/);
    for (const registry of ['../etc', 'a..b', '-a.com', 'a.com/', 'UPPER.io', 'a_b.io', 'host:port']) {
      assert.match(problems({ upstream: { registry, url: 'https://r.example.com' } }), /is not a registry host name/, registry);
    }
    assert.match(problems({ upstream: { registry: 'r.example.com', url: 'https://exämple.com' } }), /must be ASCII/);
  });

  test('invalid quantities, replicas and images', () => {
    for (const size of ['-1Gi', '1e400', '1m', '0', 'lots', '1 Gi', {}, -5]) {
      assert.match(problems({ upstream: hub, storage: { size } }), /spec\.storage\.size .* is not a positive quantity/, JSON.stringify(size));
    }
    assert.match(problems({ upstream: hub, storage: { size: '100Ei' } }), /larger than 8Pi/);
    assert.match(problems({ upstream: hub, resources: { requests: { cpu: '1e400' } } }), /spec\.resources\.requests\.cpu "1e400" is not a quantity/);
    assert.match(problems({ upstream: hub, resources: { requests: { 'not a name': '1' } } }), /has a key "not a name" that is not a resource name/);
    assert.match(problems({ upstream: hub, resources: { limits: 'lots' } }), /spec\.resources\.limits must be a map/);
    assert.match(problems({ upstream: hub, replicas: 1e9 }), /spec\.replicas is 1000000000; at most 100/);
    assert.match(problems({ upstream: hub, replicas: 1.5 }), /spec\.replicas must be an integer/);
    for (const image of ['team/UPPER', 'img name', 'a@b', 'https://registry.example.com/img']) {
      assert.match(problems({ upstream: hub, image }), /spec\.image .* is not an image reference/, image);
    }
    for (const image of ['registry-mirror:1.0', 'localhost:5000/team/mirror@sha256:' + 'a'.repeat(64), 'ghcr.io/o/registry-mirror']) {
      assert.ok(resolveSpec(cr({ upstream: hub, image })).ok, image);
    }
    assert.ok(resolveSpec(cr({ upstream: hub, resources: { limits: { 'hugepages-2Mi': '1Gi', 'example.com/gpu': 1 } } })).ok);
  });

  test('names that cannot name a Service, Secret names that are not DNS names, wrong types', () => {
    for (const name of ['1hub', 'a.b', 'x'.repeat(64)]) assert.match(problems({ upstream: hub }, name), /metadata\.name .* must be a DNS label/, name);
    assert.match(problems({ upstream: { ...hub, credentialsSecret: { name: 'a/../b' } } }), /credentialsSecret\.name "a\/\.\.\/b" is not a valid Secret name/);
    assert.match(problems({ upstream: { ...hub, credentialsSecret: { name: 'x'.repeat(254) } } }), /is not a valid Secret name/);
    assert.match(problems({ upstream: { registry: 5 } }), /spec\.upstream\.registry must be a string/);
    assert.match(problems({ upstream: hub, image: ['x'] }), /spec\.image must be a string/);
    assert.deepEqual(resolveSpec({ ...cr({}), spec: [] as never }), { ok: false, problems: ['spec must be an object'] });
  });

  test('many problems: the first ten and a count', () => {
    const p = problems({ upstream: { ...hub, allow: Array.from({ length: 20 }, () => 'BAD') } });
    assert.equal(p.split('\n').length, 11);
    assert.match(p, /and 10 more problems$/);
  });

  test('show() quotes, clips and strips URL credentials', () => {
    assert.equal(show('7d'), '"7d"');
    assert.equal(show('https://u:secret@host/x'), '"https://…@host/x"');
    assert.equal(show('a\nb'), '"a\\nb"');
    assert.equal(show('a\u2028\u009bb'), '"a\\u2028\\u009bb"');
    assert.equal(show('x'.repeat(100)).length, 64 + 3);
  });

  test('the rendered config must be one the mirror accepts', () => {
    assert.match(mirrorConfigProblem('upstreams: {docker.io: {url: "ftp://x"}}')!, /config: upstreams\.docker\.io\.url: must be an http/);
    assert.equal(mirrorConfigProblem(''), undefined);
  });
});
