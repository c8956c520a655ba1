// Replicas over https (tls + cluster): a forward reaches its owner over TLS verified against
// tls.peerCAFile, without a host name check (the owner is dialled by IP, its certificate names
// only the Service), and presents this replica's certificate as a client certificate. A peer
// whose certificate does not verify is unreachable (marked down, served here); once the
// peer CA is right again, a probe over https brings it back.
import assert from 'node:assert/strict';
import type { TLSSocket } from 'node:tls';
import { after, before, describe, it } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { Cluster } from '../../mirror/cluster/forward.js';
import { Peers } from '../../mirror/cluster/peers.js';
import { MirrorMetrics } from '../../mirror/metrics.js';
import { httpsPeers } from '../../mirror/tls/peer-client.js';
import { httpsServerOptions, readTlsMaterial, type TlsMaterial } from '../../mirror/tls/serving.js';
import { waitFor } from '../../tools/launch/proc.js';
import { metricValue } from '../integration/helpers.js';
import { createTestCa, issueCert } from '../rig/test-ca.js';

describe('cluster forwarding over https', () => {
  let owner: FastifyInstance;
  let front: FastifyInstance;
  let peers: Peers;
  let cluster: Cluster;
  let first: Cluster | undefined;
  let metrics: MirrorMetrics;
  let good: TlsMaterial;
  let wrong: TlsMaterial;
  let material: TlsMaterial;
  let ownerAddr: string;
  const seen: Array<{ authorized: boolean; cn: string | undefined }> = [];
  const self = '127.0.0.1:1';

  before(async () => {
    const ca = await createTestCa('fleet CA');
    const otherCa = await createTestCa('not the fleet CA');
    // Names only: no IP address, as a certificate for the Service would be.
    const names = { cn: 'registry-mirror', dns: ['registry-mirror.mirrors.svc'] };
    const ownerPair = await issueCert(ca, names);
    const frontPair = await issueCert(ca, names);
    const ownerMaterial = readTlsMaterial({ ...ownerPair, clientCAFile: ca.certFile, reloadIntervalMs: 5000 });
    good = readTlsMaterial({ ...frontPair, peerCAFile: ca.certFile, reloadIntervalMs: 5000 });
    wrong = readTlsMaterial({ ...frontPair, peerCAFile: otherCa.certFile, reloadIntervalMs: 5000 });
    material = good;

    owner = Fastify({ https: httpsServerOptions(ownerMaterial, 5000) }) as unknown as FastifyInstance;
    owner.get('/readyz', async () => 'ok');
    owner.get('/v2/*', async (req) => {
      const socket = req.raw.socket as TLSSocket;
      seen.push({ authorized: socket.authorized, cn: socket.getPeerCertificate().subject?.CN as string | undefined });
      return 'from the owner';
    });
    await owner.listen({ host: '127.0.0.1', port: 0 });
    ownerAddr = `127.0.0.1:${(owner.server.address() as { port: number }).port}`;

    metrics = new MirrorMetrics(() => ({ storedBytes: 0, blobs: 0 }));
    peers = new Peers({ peers: { static: [self, ownerAddr] }, self, refreshMs: 100 }, undefined, undefined, httpsPeers(() => material, 1000));
    await peers.start();
    cluster = new Cluster(peers, metrics, pino({ level: 'silent' }), { connectMs: 1000, headersMs: 5000, idleMs: 5000 });
    front = Fastify();
    front.get('/v2/*', async (req, reply) => {
      const key = keyOwnedBy(peers, ownerAddr);
      if (await cluster.forward(req, reply, key)) return reply;
      return 'served here';
    });
    await front.ready();
  });

  after(async () => {
    await first?.close();
    await cluster?.close();
    await front?.close();
    await owner?.close();
  });

  it('reaches the owner over verified TLS without a host name check, presenting its certificate', async () => {
    const res = await front.inject({ method: 'GET', url: '/v2/x/blobs/sha256:1' });
    assert.equal(res.body, 'from the owner');
    assert.deepEqual(seen.at(-1), { authorized: true, cn: 'registry-mirror' });
  });

  it('an owner whose certificate does not verify is unreachable: served here, marked down; the right CA brings it back', async () => {
    material = wrong;
    // The pooled connection of the first test was verified with the old CA: a new client.
    first = cluster;
    cluster = new Cluster(peers, metrics, pino({ level: 'silent' }), { connectMs: 1000, headersMs: 5000, idleMs: 5000 });
    const before = seen.length;
    const res = await front.inject({ method: 'GET', url: '/v2/x/blobs/sha256:2' });
    assert.equal(res.body, 'served here');
    assert.equal(seen.length, before, 'nothing reached the owner');
    assert.equal(metricValue(await metrics.registry.metrics(), 'registry_mirror_cluster_forwards_total', { result: 'owner_unreachable' }), 1);
    assert.deepEqual(peers.members(), [self]);
    material = good;
    await waitFor(() => peers.members().includes(ownerAddr), 5000, 'the owner to answer a probe over https');
  });
});

/** A key the given member owns among the current members. */
function keyOwnedBy(peers: Peers, member: string): string {
  for (let i = 0; i < 10_000; i++) if (peers.owner(`k${i}`) === member) return `k${i}`;
  throw new Error(`${member} owns no key: not a member?`);
}
