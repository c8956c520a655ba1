// Docker Engine (Debian's docker.io, dockerd 20.10.24) as a real client (issue 13, item 4):
// the mirror is its `registry-mirrors` for docker.io, in front of a real docker-registry that
// holds library/<fixture> images. One dockerd for the whole file (test/rig/docker.ts: its
// own data-root, exec-root, pidfile, socket, containerd, no iptables and no bridge).
//
// The mirror is reached at a non-loopback address (10.77.0.2, added to lo for this file, and
// a TCP forwarder to it): dockerd treats 127.0.0.0/8 as insecure by default, so only another
// address shows what a user needs in daemon.json. When the mirror fails dockerd falls back to
// registry-1.docker.io; the rig sends that through a dead local proxy (test/rig/docker.ts),
// so it fails at once and nothing leaves the machine.

import assert from 'node:assert/strict';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildFixtures, pushImage } from '../fixtures/images.js';
import { dockerSkipReason, startDocker, type DockerHandle } from '../rig/docker.js';
import { busyboxImage } from '../../tools/oci/image.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { MEDIA, type PushedImage } from '../../tools/oci/oci-client.js';
import { run } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { skopeoCopy } from '../../tools/launch/skopeo.js';

/** The manifest media types dockerd 20.10 accepts (it sends all of them, in no fixed order). */
const DOCKER_ACCEPT = [MEDIA.dockerManifest, MEDIA.dockerList, MEDIA.ociManifest, MEDIA.ociIndex, 'application/vnd.docker.distribution.manifest.v1+prettyjws', 'application/json'].join(', ');
const SCHEMA1 = 'application/vnd.docker.distribution.manifest.v1+prettyjws';

/** Host paths a dockerd (or a managed containerd, or the CLI) writes by default. */
const systemPaths = ['/etc/docker', '/var/lib/docker', '/run/docker', '/run/docker.pid', '/run/docker.sock', '/var/lib/docker-engine', '/opt/containerd', '/root/.docker', '/etc/containerd'];

/** Every file and directory under the paths, with size and mtime. */
const DOCKERD_FIXED_DIRS = ['/run/docker', '/run/docker/plugins'];
function snapshot(paths: string[]): string[] {
  const out: string[] = [];
  const walk = (p: string) => {
    let st;
    try {
      st = statSync(p);
    } catch {
      return;
    }
    // dockerd's plugin manager uses a hard-coded exec root, /run/docker/plugins, whatever
    // --exec-root says, and creates it (empty) on a machine that never ran Docker: those two
    // directories are left out; anything inside them still counts.
    if (!(st.isDirectory() && DOCKERD_FIXED_DIRS.includes(p))) out.push(`${p} ${st.isDirectory() ? 'd' : st.size} ${st.mtimeMs}`);
    if (st.isDirectory()) for (const e of readdirSync(p).sort()) walk(join(p, e));
  };
  for (const p of paths) walk(p);
  return out;
}

/** The mirror's address as dockerd sees it: not loopback, but on lo, so traffic stays here. */
const mirrorAddress = '10.77.0.2';

async function addLoAddress(): Promise<boolean> {
  const lo = (await run('ip', ['-4', 'addr', 'show', 'dev', 'lo'])).stdout;
  if (lo.includes(`${mirrorAddress}/32`)) return false;
  await run('ip', ['addr', 'add', `${mirrorAddress}/32`, 'dev', 'lo']);
  return true;
}

/** Forwards host:<free port> to 127.0.0.1:targetPort; resolves with the port. */
async function forward(host: string, targetPort: number): Promise<{ server: Server; port: number }> {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    client.pipe(upstream).pipe(client);
    const done = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
  });
  server.on('close', () => sockets.forEach((s) => s.destroy()));
  const close = server.close.bind(server);
  server.close = (cb?: (err?: Error) => void) => {
    sockets.forEach((s) => s.destroy());
    return close(cb);
  };
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, host, resolve));
  const addr = server.address();
  return { server, port: typeof addr === 'object' && addr ? addr.port : 0 };
}

async function iptablesDockerChains(): Promise<string> {
  const r = await run('iptables', ['-w', '5', '-S'], { allowFail: true, timeoutMs: 20000 }).catch(() => undefined);
  return (r?.stdout ?? '').split('\n').filter((l) => /DOCKER/.test(l)).join('\n');
}

describe('Docker Engine pulls through the mirror', { timeout: 900_000, skip: dockerSkipReason() }, () => {
  let upstream: RegistryHandle;
  let mirror: MirrorHandle;
  let docker: DockerHandle;
  let fwd: Server;
  /** "10.77.0.2:PORT": the mirror as a remote Docker host reaches it. */
  let mirrorHost: string;
  let small: PushedImage;
  let multi: PushedImage;
  let dv2: PushedImage;
  let before0: { paths: string[]; docker0: boolean; chains: string };
  let addedAddress = false;

  before(async () => {
    addedAddress = await addLoAddress();
    const address = mirrorAddress;
    before0 = { paths: snapshot(systemPaths), docker0: existsSync('/sys/class/net/docker0'), chains: await iptablesDockerChains() };
    const fixtures = await buildFixtures();
    upstream = await startRegistry();
    small = await pushImage(fixtures.images.small, upstream.host, { repository: 'library/small', tag: 'v1' });
    multi = await pushImage(fixtures.images['multi-docker'], upstream.host, { repository: 'library/multi', tag: 'v1' });
    dv2 = await pushImage(fixtures.images['docker-v2'], upstream.host, { repository: 'library/dv2', tag: 'v1' });
    // The same schema 2 image under a tag no client has asked for yet (the schema1 test's).
    await pushImage(fixtures.images['docker-v2'], upstream.host, { repository: 'library/dv2', tag: 's1first' });
    const bb = await busyboxImage('registry-mirror.local/busybox:docker', ['/bin/busybox', 'echo', 'hello from docker'], 'busybox-docker', { '/etc/docker-test': 'docker\n' });
    await skopeoCopy(`oci:${bb.layoutDir}:${bb.tag}`, `docker://${upstream.host}/library/busybox:v1`, { format: 'v2s2' });
    mirror = await startMirror({ upstreams: { 'docker.io': { url: upstream.url } } });
    const f = await forward(address, mirror.port);
    fwd = f.server;
    mirrorHost = `${address}:${f.port}`;
    // registry-mirrors only: an http:// mirror needs no insecure-registries.
    docker = await startDocker({ registryMirrors: [`http://${mirrorHost}`] });
    process.stdout.write(`# dockerd answered after ${docker.startMs} ms (containerd started before it)\n`);
  });

  after(async () => {
    await docker?.stop();
    fwd?.close();
    await mirror?.stop();
    await upstream?.stop();
    if (addedAddress) await run('ip', ['addr', 'del', `${mirrorAddress}/32`, 'dev', 'lo'], { allowFail: true });
  });

  /** The digest docker reports for a pull; asserts the mirror (not the fallback) served it. */
  async function pull(ref: string): Promise<string> {
    const r = await docker.pull(ref);
    assert.ok(r.digest, `docker pull ${ref} reported a digest:\n${r.stdout}`);
    assert.doesNotMatch(r.stdout + r.stderr, /schema ?1|DEPRECATION/i, `${ref}: no schema1 warning`);
    return r.digest;
  }

  it('pulls through registry-mirrors (http, no insecure-registries): OCI, schema 2, manifest list', async () => {
    assert.equal(await pull('small:v1'), small.digest);
    assert.equal(await pull('library/multi:v1'), multi.digest);
    assert.equal(await pull('docker.io/library/dv2:v1'), dv2.digest);
    const inspected = await docker.inspect('dv2:v1');
    assert.equal(inspected.id, dv2.manifests[0]!.config.digest, 'image ID is the config digest');
    assert.ok(inspected.repoDigests.includes(`dv2@${dv2.digest}`), inspected.repoDigests.join(' '));
    const log = mirror.logText();
    for (const path of ['/v2/library/small/manifests/v1', '/v2/library/multi/manifests/v1', '/v2/library/dv2/manifests/v1']) {
      assert.ok(log.includes(`"url":"${path}"`), `the mirror served ${path}`);
    }
    assert.doesNotMatch(docker.logText(), /registry-1\.docker\.io/, 'no fallback to Docker Hub');
  });

  it('runs the busybox fixture with --network none', async () => {
    await pull('busybox:v1');
    const r = await docker.docker(['run', '--rm', '--network', 'none', 'busybox:v1'], { timeoutMs: 120_000 });
    assert.equal(r.stdout.trim(), 'hello from docker');
  });

  it('pulls by digest', async () => {
    await docker.removeAllImages();
    assert.equal(await pull(`small@${small.digest}`), small.digest);
    assert.equal(await pull(`library/dv2@${dv2.digest}`), dv2.digest);
  });

  it('pulls from the mirror directly by mirror:port/name only with insecure-registries', async () => {
    const direct = `${mirrorHost}/library/small:v1`;
    const refused = await docker.docker(['pull', direct], { allowFail: true, timeoutMs: 120_000 });
    assert.notEqual(refused.code, 0, 'without insecure-registries dockerd talks https to the mirror');
    assert.match(refused.stderr, /HTTP response to HTTPS client/);
    await docker.reload({ 'insecure-registries': [mirrorHost] });
    assert.equal(await pull(direct), small.digest);
    assert.equal(await pull(`${mirrorHost}/library/multi:v1`), multi.digest);
  });

  it('a tag asked for first by a schema1-only client resolves for Docker to the digest the upstream gives Docker', async () => {
    const direct = await fetch(`${upstream.url}/v2/library/dv2/manifests/s1first`, { method: 'HEAD', headers: { accept: DOCKER_ACCEPT } });
    const upstreamDigest = direct.headers.get('docker-content-digest');
    assert.equal(direct.headers.get('content-type'), MEDIA.dockerManifest);
    assert.equal(upstreamDigest, dv2.digest);
    const old = await fetch(`${mirror.url}/v2/library/dv2/manifests/s1first`, { headers: { accept: SCHEMA1 } });
    assert.equal(old.status, 200);
    assert.equal(old.headers.get('content-type'), SCHEMA1, 'the schema1-only client gets schema 1');
    await old.arrayBuffer();
    const r = await docker.pull('dv2:s1first');
    assert.equal(r.digest, upstreamDigest, `Docker got the digest the upstream gives Docker:\n${r.stdout}${r.stderr}`);
    assert.doesNotMatch(r.stdout + r.stderr, /schema ?1|DEPRECATION/i);
    assert.equal((await docker.inspect('dv2:s1first')).id, dv2.manifests[0]!.config.digest, 'same image ID as a direct pull');
  });

  it('a 404 from the mirror: dockerd falls back to registry-1.docker.io and reports that error', async () => {
    const r = await docker.docker(['pull', 'missing:v1'], { allowFail: true, timeoutMs: 180_000 });
    assert.notEqual(r.code, 0);
    assert.ok(mirror.logText().includes('"url":"/v2/library/missing/manifests/v1"'), 'the mirror was asked first');
    process.stdout.write(`# docker pull missing:v1 -> ${r.stderr.trim()}\n`);
    assert.match(r.stderr, /registry-1\.docker\.io/, "the error is the fallback's, not the mirror's 404");
  });

  it('with the upstream stopped, pulls are served from the cache', async () => {
    await upstream.stop();
    await docker.removeAllImages();
    assert.equal(await pull('small:v1'), small.digest);
    assert.equal(await pull('library/multi:v1'), multi.digest);
    assert.equal(await pull(`dv2@${dv2.digest}`), dv2.digest);
    assert.equal(await pull('dv2:v1'), dv2.digest);
  });

  it('dockerd wrote nothing outside its temp dir and stops by pid', async () => {
    const pid = docker.pid;
    await docker.stop();
    assert.throws(() => process.kill(pid, 0), 'dockerd is gone');
    assert.deepEqual(snapshot(systemPaths), before0.paths, 'no change under /etc/docker, /var/lib/docker, /run/docker*, /opt/containerd, ~/.docker');
    assert.equal(existsSync('/sys/class/net/docker0'), before0.docker0, 'no docker0 bridge');
    assert.equal(await iptablesDockerChains(), before0.chains, 'no DOCKER iptables chains');
    assert.ok(!existsSync(docker.pidFile), 'pidfile removed at exit');
  });
});
