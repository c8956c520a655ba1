// Issue 20: the node agent's CRI-O drop-in, proven with podman (Debian bookworm's 4.3, the
// containers/image library CRI-O uses). A real docker-registry on 127.0.0.1 is the upstream,
// named after its host:port; a real mirror process serves it. The agent's own file-writing
// code (RegistriesConfDir.sync, in-process) writes the drop-in into a temp registries.conf.d,
// and podman pulls using only that: through the mirror (the mirror's log shows the pull), and
// from the drop-in's `location` (the upstream) once the mirror is stopped.
//
// Where podman finds drop-ins (checked against podman 4.3 / containers/image 5.23): with
// CONTAINERS_REGISTRIES_CONF set, drop-ins come from /etc/containers/registries.conf.d and
// $HOME/.config/containers/registries.conf.d, NOT from the directory next to that file, and
// podman 4.3 has no flag or variable for the drop-in directory. When
// $HOME/.config/containers/registries.conf exists (and CONTAINERS_REGISTRIES_CONF is unset),
// containers/image reads that file and only $HOME/.config/containers/registries.conf.d. So
// the test gives podman a temp HOME, writes a minimal registries.conf there (no
// unqualified-search registries) and has the agent write into the registries.conf.d beside
// it: nothing under /etc/containers is read. Storage, run and tmp dirs, containers.conf,
// storage.conf, the signature policy and the auth file are all in the temp dir too. podman 4.3
// as root keeps containers/image's blob-info cache in /var/lib/containers/cache whatever its
// flags say, so every podman runs in its own mount namespace (unshare) with a tmpfs over
// /var/lib/containers (over /var/lib when that does not exist): nothing is written outside
// the temp dir.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { buildFixtures, pushImage } from '../fixtures/images.js';
import { RegistriesConfDir } from '../../operator/node-agent/files.js';
import { readRegistriesConf } from '../../operator/node-agent/registries-conf.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { run, tempDir, type RunResult } from '../../tools/launch/proc.js';

function podmanAvailable(): boolean {
  try {
    execFileSync('podman', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe('CRI-O drop-in: podman pulls through the mirror', { skip: !podmanAvailable() && 'podman not installed (test/rig/install-deps.sh)', timeout: 600_000 }, () => {
  let upstream: RegistryHandle;
  let mirror: MirrorHandle;
  let dir: string;
  let home: string;
  let confDir: string;
  let ref: string;
  let digest: string;

  const env = (): Record<string, string | undefined> => ({
    HOME: home,
    XDG_CONFIG_HOME: join(home, '.config'),
    XDG_RUNTIME_DIR: join(dir, 'xdg-run'),
    XDG_DATA_HOME: join(home, '.local', 'share'),
    CONTAINERS_CONF: join(dir, 'containers.conf'),
    CONTAINERS_STORAGE_CONF: join(dir, 'storage.conf'),
    REGISTRY_AUTH_FILE: join(dir, 'auth.json'),
    // Unset: with it, podman would also read /etc/containers/registries.conf.d.
    CONTAINERS_REGISTRIES_CONF: undefined,
    CONTAINERS_REGISTRIES_CONF_DIR: undefined,
  });
  const shadow = existsSync('/var/lib/containers') ? '/var/lib/containers' : '/var/lib';
  const podman = (args: string[], allowFail = false): Promise<RunResult> =>
    run(
      'unshare',
      [
        '--mount', '--propagation', 'private', '--',
        'sh', '-c', `mount -t tmpfs registry-mirror-test "${shadow}" && exec podman "$@"`, 'podman',
        '--root', join(dir, 'storage'),
        '--runroot', join(dir, 'runroot'),
        '--tmpdir', join(dir, 'tmp'),
        '--storage-driver', 'vfs',
        '--events-backend', 'file',
        '--cgroup-manager', 'cgroupfs',
        ...args,
      ],
      { env: env(), timeoutMs: 180_000, allowFail },
    );
  const pull = () => podman(['pull', '--signature-policy', join(dir, 'policy.json'), ref]);
  const imageDigest = async () => (await podman(['image', 'inspect', '--format', '{{.Digest}}', ref])).stdout.trim();

  before(async () => {
    upstream = await startRegistry();
    const fixtures = await buildFixtures();
    const pushed = await pushImage(fixtures.images.small, upstream.host, { repository: 'crio/small', tag: 'v1' });
    digest = pushed.digest;
    ref = `${upstream.host}/crio/small:v1`;
    mirror = await startMirror({ defaultUpstream: upstream.host, upstreams: { [upstream.host]: { url: upstream.url } } });

    dir = tempDir('crio-podman');
    home = join(dir, 'home');
    confDir = join(home, '.config', 'containers', 'registries.conf.d');
    for (const d of [confDir, join(dir, 'xdg-run'), join(dir, 'tmp')]) mkdirSync(d, { recursive: true, mode: 0o700 });
    writeFileSync(join(home, '.config', 'containers', 'registries.conf'), 'unqualified-search-registries = []\nshort-name-mode = "enforcing"\n');
    writeFileSync(join(dir, 'containers.conf'), '');
    writeFileSync(join(dir, 'storage.conf'), `[storage]\ndriver = "vfs"\nrunroot = "${join(dir, 'runroot')}"\ngraphroot = "${join(dir, 'storage')}"\n`);
    writeFileSync(join(dir, 'policy.json'), '{"default":[{"type":"insecureAcceptAnything"}]}');
    writeFileSync(join(dir, 'auth.json'), '{"auths":{}}');
  });

  after(async () => {
    await mirror?.stop();
    await upstream?.stop();
  });

  it('the agent writes the drop-in: the registry (insecure, plain http upstream) with the mirror first', () => {
    const d = new RegistriesConfDir(confDir, 'kube-system/rm-node-agent');
    const { changes, errors } = d.sync(
      new Map([[upstream.host, { registry: upstream.host, server: upstream.url, mirrorUrl: mirror.url, owner: 'mirrors/local' }]]),
    );
    assert.deepEqual(errors, []);
    assert.deepEqual(changes, [{ registry: upstream.host, action: 'written', backedUp: false }]);
    assert.deepEqual(readdirSync(confDir), [`50-registry-mirror-${upstream.host}.conf`]);
    const text = readFileSync(join(confDir, `50-registry-mirror-${upstream.host}.conf`), 'utf8');
    assert.deepEqual(readRegistriesConf(text), [
      { prefix: upstream.host, location: upstream.host, insecure: true, mirrors: [{ location: mirror.host, insecure: true }] },
    ]);
  });

  it('podman pulls the image through the mirror (the mirror logs the pull)', async () => {
    const version = (await podman(['--version'])).stdout.trim();
    assert.match(version, /^podman version \d+\./);
    await pull();
    assert.equal(await imageDigest(), digest);
    const log = mirror.logText();
    assert.match(log, /\/v2\/crio\/small\/manifests\/v1/, 'the manifest request went to the mirror');
  });

  it('podman still pulls from the upstream (the location) when the mirror is down', async () => {
    await podman(['rmi', '--force', ref]);
    await mirror.stop();
    const before = await upstream.countRequests('GET', '/v2/crio/small/manifests/');
    await pull();
    assert.equal(await imageDigest(), digest);
    assert.ok((await upstream.countRequests('GET', '/v2/crio/small/manifests/')) > before, 'the manifest came from the upstream directly');
  });

  it('cleanup removes the drop-in, leaving the directory as it was', () => {
    const removed = new RegistriesConfDir(confDir, 'kube-system/rm-node-agent').removeAll();
    assert.deepEqual(removed, [{ registry: upstream.host, action: 'removed', restored: false }]);
    assert.deepEqual(readdirSync(confDir), []);
  });
});
