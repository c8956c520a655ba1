// A fleet: three mirror processes on one bucket of a real Ceph RGW, in front of a real
// docker-registry behind a request-logging proxy. Pulls spread round-robin over the replicas
// cost exactly one upstream GET per blob; killing the replica that owns a blob mid-transfer
// fails no client (they retry) and costs that blob at most one more GET; a fourth replica
// joining mid-run fails nothing; no multipart upload is left behind.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { CreateBucketCommand, ListMultipartUploadsCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { Peers } from '../../mirror/cluster/peers.js';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { freePort, sleep } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { rgwClient, startCeph, type CephHandle } from '../../tools/launch/ceph.js';
import { startFaultProxy, type FaultProxyHandle } from '../rig/fault-proxy.js';
import { downloadsSettled, fetchHashed, getMetrics, getStats, metricValue, pullImage, pushRandomImage, type RandomImage } from './helpers.js';

const MiB = 1 << 20;

describe('a fleet of three replicas on one bucket', { timeout: 600_000 }, () => {
  let ceph: CephHandle;
  let s3: S3Client;
  let registry: RegistryHandle;
  let upstream: FaultProxyHandle;
  const bucket = 'fleet';
  const mirrors = new Map<string, MirrorHandle>();
  let addresses: string[] = [];

  async function startReplica(self: string, peers: string[], on = bucket, extra: Record<string, unknown> = {}): Promise<MirrorHandle> {
    const m = await startMirror(
      {
        upstreams: { 'docker.io': { url: upstream.url } },
        storage: {
          s3: { bucket: on, endpoint: ceph.endpoint, region: ceph.region, forcePathStyle: true, accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey, partSize: '5Mi' },
        },
        cluster: { peers: { static: peers }, self, refresh: '500ms' },
        ...extra,
      },
      { port: Number(self.split(':')[1]) },
    );
    mirrors.set(self, m);
    return m;
  }

  /** Upstream GETs of one path that got an answer, as the proxy in front of the registry saw them. */
  const upstreamGets = (path: string) => upstream.requests().filter((r) => r.method === 'GET' && r.path.split('?')[0] === path && r.status === 200).length;

  /** A blob through the replicas, as a client that retries on the next replica when one fails. */
  async function pullBlobRetrying(replicas: string[], first: number, repository: string, digest: string): Promise<number> {
    for (let attempt = 0; attempt < 4; attempt++) {
      const via = replicas[(first + attempt) % replicas.length]!;
      const got = await fetchHashed(`http://${via}/v2/${repository}/blobs/${digest}`).catch((err: Error) => ({ digest: undefined, error: err.message }));
      if (got.digest === digest) return attempt;
      await sleep(200);
    }
    throw new Error(`${digest} never arrived`);
  }

  before(async () => {
    ceph = await startCeph({ mgr: false });
    s3 = rgwClient(ceph);
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
    registry = await startRegistry();
    upstream = await startFaultProxy(registry.url);
    addresses = [];
    for (let i = 0; i < 3; i++) addresses.push(`127.0.0.1:${await freePort()}`);
    for (const a of addresses) await startReplica(a, addresses);
  });

  after(async () => {
    for (const m of mirrors.values()) await m.stop().catch(() => undefined);
    await upstream?.stop();
    await registry?.stop();
    s3?.destroy();
    await ceph?.stop();
  });

  it('30 concurrent cold pulls of a 5-layer image, round-robin over the replicas: exactly one upstream GET per blob', async () => {
    const img: RandomImage = await pushRandomImage(registry.url, 'fleet/app', 'v1', [4 * MiB, 3 * MiB, 2 * MiB, 6 * MiB, 1 * MiB], 'fleet-app');
    const pulls = Array.from({ length: 30 }, (_, i) => pullImage(`http://${addresses[i % 3]}`, '', img.repository, img.tag));
    const done = await Promise.all(pulls);
    for (const p of done) assert.equal(p.manifestDigest, img.digest);
    for (const b of [img.config, ...img.layers]) {
      assert.equal(upstreamGets(`/v2/${img.repository}/blobs/${b.digest}`), 1, `upstream GETs of ${b.digest}`);
    }
    const manifestLog = () => addresses.map((a) => `${a}:\n${mirrors.get(a)!.logText().split('\n').filter((l) => l.includes('/manifests/v1') && !l.includes('"result":"hit"')).join('\n')}`).join('\n');
    assert.equal(upstreamGets(`/v2/${img.repository}/manifests/v1`), 1, `one manifest GET for the tag; ${manifestLog()}`);
    // What the operator's status reads: upstream transfers over blobs added, fleet-wide.
    let fetches = 0;
    let added = 0;
    // A blob is committed (uploaded) after its clients' last byte: let the commits finish.
    for (const a of addresses) await downloadsSettled(`http://${a}`);
    for (const a of addresses) {
      const st = await getStats(`http://${a}`);
      fetches += st.upstreamBlobFetches;
      added += st.blobsAdded;
    }
    assert.deepEqual({ fetches, added }, { fetches: 6, added: 6 }, `one transfer per blob, each adding it once; ${addresses.map((a) => mirrors.get(a)!.logText().split('\n').filter((l) => /"level":[4-6]|cache|commit/.test(l) && !/"msg":"request"/.test(l)).join('\n')).join('\n')}`);
    let forwarded = 0;
    for (const a of addresses) forwarded += metricValue(await getMetrics(`http://${a}`), 'registry_mirror_cluster_forwards_total', { result: 'forwarded' }) ?? 0;
    assert.ok(forwarded > 0, 'misses went to their owners');
    // Warm now: a replica serves from the bucket without asking the owner.
    const before = forwarded;
    await pullImage(`http://${addresses[0]}`, '', img.repository, img.tag);
    await pullImage(`http://${addresses[1]}`, '', img.repository, img.tag);
    let after = 0;
    for (const a of addresses) after += metricValue(await getMetrics(`http://${a}`), 'registry_mirror_cluster_forwards_total', { result: 'forwarded' }) ?? 0;
    assert.equal(after, before, 'warm content takes no hop');
  });

  it('kill -9 of the owner mid-transfer: every client completes by retry, and the blob costs at most 2 upstream GETs', async () => {
    const img = await pushRandomImage(registry.url, 'fleet/big', 'v1', [24 * MiB], 'fleet-big');
    const layer = img.layers[0]!;
    upstream.slowBlob(layer.digest, 8 * MiB);
    // The owner every replica computes: the same rendezvous hash over the same members.
    const ring = new Peers({ peers: { static: addresses }, self: addresses[0]!, refreshMs: 60_000 });
    await ring.start();
    ring.stop();
    const owner = ring.owner(`blob:${layer.digest}`);
    const others = addresses.filter((a) => a !== owner);
    const clients = Array.from({ length: 6 }, (_, i) => pullBlobRetrying(addresses, i % 3, img.repository, layer.digest));
    await sleep(1200); // about 9 MiB in
    await mirrors.get(owner)!.kill9();
    const attempts = await Promise.all(clients);
    assert.ok(attempts.some((a) => a > 0), 'some clients had to retry');
    assert.ok(upstreamGets(`/v2/${img.repository}/blobs/${layer.digest}`) <= 2, `upstream GETs: ${upstreamGets(`/v2/${img.repository}/blobs/${layer.digest}`)}`);
    let unreachable = 0;
    for (const a of others) unreachable += metricValue(await getMetrics(`http://${a}`), 'registry_mirror_cluster_forwards_total', { result: 'owner_unreachable' }) ?? 0;
    assert.ok(unreachable > 0, `the dead owner was noticed and skipped; logs:\n${others.map((a) => mirrors.get(a)!.logText().split('\n').filter((l) => /owner|warn|error/i.test(l)).slice(-10).join('\n')).join('\n')}`);
    upstream.clear();
    // The replica comes back and is a member again.
    await mirrors.get(owner)!.restart();
  });

  it('a fourth replica joining mid-run fails nothing, and no multipart upload is left behind', async () => {
    const img = await pushRandomImage(registry.url, 'fleet/join', 'v1', [3 * MiB, 3 * MiB, 3 * MiB, 3 * MiB, 3 * MiB], 'fleet-join');
    const fourth = `127.0.0.1:${await freePort()}`;
    const all = [...addresses, fourth];
    const pulls = Array.from({ length: 12 }, (_, i) => sleep(i * 50).then(() => pullImage(`http://${addresses[i % 3]}`, '', img.repository, img.tag)));
    await sleep(100);
    await startReplica(fourth, all);
    const late = Array.from({ length: 4 }, () => pullImage(`http://${fourth}`, '', img.repository, img.tag));
    for (const p of await Promise.all([...pulls, ...late])) assert.equal(p.manifestDigest, img.digest);
    for (const m of mirrors.values()) await m.stop();
    const open = await s3.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
    assert.deepEqual(open.Uploads ?? [], [], 'no multipart upload left open');
  });

  it('three replicas running expiry at once: one sweeps (the lease holder), each expired object is deleted once, no lease left behind', async () => {
    const expiryBucket = 'fleet-expiry';
    await s3.send(new CreateBucketCommand({ Bucket: expiryBucket }));
    const trio: string[] = [];
    for (let i = 0; i < 3; i++) trio.push(`127.0.0.1:${await freePort()}`);
    // Grace on a shared bucket: access flush 5 s + lease margin (headers 2 s + 10 s).
    const replicas = [];
    for (const a of trio) replicas.push(await startReplica(a, trio, expiryBucket, { cache: { ttl: '3s' }, upstreamTimeouts: { headers: '2s' } }));
    const img = await pushRandomImage(registry.url, 'fleet/expire', 'v1', [2 * MiB, 2 * MiB, 2 * MiB], 'fleet-expire');
    await Promise.all(trio.map((a) => pullImage(`http://${a}`, '', img.repository, img.tag)));
    const seen = ceph.rgwRequests().length;
    const contentKeys = async () => {
      const out: string[] = [];
      let token: string | undefined;
      do {
        const page = await s3.send(new ListObjectsV2Command({ Bucket: expiryBucket, ContinuationToken: token }));
        for (const o of page.Contents ?? []) if (/^(blobs|manifests)\//.test(o.Key!)) out.push(o.Key!);
        token = page.NextContinuationToken;
      } while (token);
      return out;
    };
    for (let i = 0; i < 50 && (await contentKeys()).length < 4; i++) await sleep(200);
    assert.ok((await contentKeys()).length >= 4, 'cached: manifest, config, three layers');
    let left = await contentKeys();
    for (let i = 0; i < 200 && left.length > 0; i++) {
      await sleep(250);
      left = await contentKeys();
    }
    assert.deepEqual(left, [], 'everything expired');
    for (let i = 0; i < 20 && ceph.rgwRequests().slice(seen).filter((r) => r.method === 'DELETE').length < 5; i++) await sleep(250);
    const deletes = new Map<string, number>();
    for (const r of ceph.rgwRequests().slice(seen)) {
      if (r.method === 'DELETE' && /\/(blobs|manifests)\//.test(r.path)) deletes.set(r.path, (deletes.get(r.path) ?? 0) + 1);
    }
    assert.ok(deletes.size >= 5, `deletes seen: ${deletes.size}`);
    for (const [path, n] of deletes) assert.equal(n, 1, `${path} deleted ${n} times`);
    const sweepers = replicas.filter((m) => /expired unused content/.test(m.logText()));
    assert.equal(sweepers.length, 1, 'one replica swept');
    for (const m of replicas) await m.stop();
    const lease = await s3.send(new ListObjectsV2Command({ Bucket: expiryBucket, Prefix: 'state/lease/' }));
    assert.deepEqual(lease.Contents ?? [], [], 'no lease left behind');
  });
});
