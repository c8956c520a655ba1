import assert from 'node:assert/strict';
import { test } from 'node:test';
import { aggregateCache, fetchesPerBlob, hitRatio, parseMirrorStats, type MirrorStats } from '../../operator/cache-stats.js';
import { setConditions } from '../../operator/conditions.js';
import { computeStatus, rolloutState, statusEqual, type DeploymentLike } from '../../operator/status.js';
import type { RegistryMirror } from '../../operator/types.js';

const t0 = new Date('2026-01-01T00:00:00Z');
const t1 = new Date('2026-01-01T00:01:00Z');
const stats = (o: Partial<MirrorStats>): MirrorStats => ({
  hits: 0, misses: 0, staleServed: 0, bytesServed: 0, bytesFromUpstream: 0, storedBytes: 0, blobs: 0, upstreamErrors: 0, ...o,
});
const cr = (status?: RegistryMirror['status']): RegistryMirror => ({
  apiVersion: 'registry-mirror.io/v1alpha1',
  kind: 'RegistryMirror',
  metadata: { name: 'hub', namespace: 'ns', uid: 'u', generation: 4 },
  spec: { upstream: { registry: 'docker.io' } },
  status,
});
const dep = (replicas: number, st: DeploymentLike['status'], generation = 2): DeploymentLike => ({
  metadata: { generation },
  spec: { replicas },
  status: { observedGeneration: generation, ...st },
});
const endpoint = 'http://hub.ns.svc:5000';

test('aggregateCache sums pods, computes hitRatio and a human size', () => {
  const c = aggregateCache(
    [stats({ hits: 3, misses: 1, storedBytes: 2 ** 30, blobs: 4, bytesServed: 10 }), stats({ hits: 5, misses: 1, storedBytes: 2 ** 29, blobs: 1, bytesServed: 5 })],
    undefined,
    t0,
  )!;
  assert.equal(c.hits, 8);
  assert.equal(c.misses, 2);
  assert.equal(c.hitRatio, 0.8);
  assert.equal(c.storedBytes, 1.5 * 2 ** 30);
  assert.equal(c.stored, '1.5Gi');
  assert.equal(c.blobs, 5);
  assert.equal(c.bytesServed, 15);
  assert.equal(c.pods, 2);
  assert.equal(c.updated, t0.toISOString());
});

test('aggregateCache keeps the old timestamp when nothing moved, and is undefined with no pods', () => {
  const a = aggregateCache([stats({ hits: 1 })], undefined, t0)!;
  assert.equal(aggregateCache([stats({ hits: 1 })], a, t1)!.updated, t0.toISOString());
  assert.equal(aggregateCache([stats({ hits: 2 })], a, t1)!.updated, t1.toISOString());
  assert.equal(aggregateCache([], a, t1), undefined);
});

test('hitRatio: 0 with no requests, rounded to 4 places', () => {
  assert.equal(hitRatio(0, 0), 0);
  assert.equal(hitRatio(1, 2), 0.3333);
});

test('parseMirrorStats accepts the /stats JSON and rejects other bodies', () => {
  const s = parseMirrorStats({ hits: 1, misses: 2, staleServed: 0, bytesServed: 3, bytesFromUpstream: 4, storedBytes: 5, blobs: 6, upstreamErrors: 0, since: 'x' });
  assert.deepEqual(s, { hits: 1, misses: 2, staleServed: 0, bytesServed: 3, bytesFromUpstream: 4, storedBytes: 5, blobs: 6, upstreamErrors: 0, since: 'x' });
  assert.equal(parseMirrorStats({ hello: 1 }), undefined);
  assert.equal(parseMirrorStats(null), undefined);
  // Figures must be non-negative safe integers; anything else refuses the whole body.
  for (const bad of [{ hits: -1 }, { hits: 1, misses: 'x' }, { hits: 1.5 }, { hits: 1, blobs: { x: 1 } }, { hits: 2 ** 60 }, [{ hits: 1 }]]) {
    assert.equal(parseMirrorStats(bad), undefined, JSON.stringify(bad));
  }
  assert.deepEqual(parseMirrorStats({ hits: 1 }), { hits: 1, misses: 0, staleServed: 0, bytesServed: 0, bytesFromUpstream: 0, storedBytes: 0, blobs: 0, upstreamErrors: 0 });
  assert.equal(parseMirrorStats({ hits: 1, since: 'y'.repeat(1000) })?.since, undefined);
  assert.equal('extra' in parseMirrorStats({ hits: 1, extra: 'z'.repeat(1000) })!, false);
});

test('setConditions keeps lastTransitionTime unless the status flips; ordered Ready, Progressing, Degraded', () => {
  const a = setConditions(undefined, [
    { type: 'Degraded', status: 'False', reason: 'AsExpected', message: '' },
    { type: 'Ready', status: 'False', reason: 'PodsNotReady', message: '' },
  ], 1, t0);
  assert.deepEqual(a.map((c) => c.type), ['Ready', 'Degraded']);
  const b = setConditions(a, [
    { type: 'Ready', status: 'True', reason: 'MirrorAvailable', message: '' },
    { type: 'Degraded', status: 'False', reason: 'AsExpected', message: 'changed text' },
  ], 2, t1);
  assert.equal(b[0]!.lastTransitionTime, t1.toISOString());
  assert.equal(b[1]!.lastTransitionTime, t0.toISOString());
  assert.equal(b[1]!.observedGeneration, 2);
});

test('rolloutState: complete, rolling, failed by deadline or unavailable', () => {
  assert.equal(rolloutState(dep(1, { replicas: 1, updatedReplicas: 1, readyReplicas: 1 })).complete, true);
  const rolling = rolloutState(dep(2, { replicas: 2, updatedReplicas: 1, readyReplicas: 2 }));
  assert.equal(rolling.complete, false);
  assert.equal(rolling.failed, false);
  const notObserved = rolloutState({ metadata: { generation: 3 }, spec: { replicas: 1 }, status: { observedGeneration: 2, updatedReplicas: 1, readyReplicas: 1 } });
  assert.equal(notObserved.complete, false);
  const deadline = rolloutState(dep(1, { updatedReplicas: 1, readyReplicas: 0, conditions: [{ type: 'Progressing', status: 'False', reason: 'ProgressDeadlineExceeded', message: 'too slow' }] }));
  assert.equal(deadline.failed, true);
  assert.match(deadline.failureMessage, /0\/1 ready replicas: too slow/);
  assert.equal(rolloutState(dep(1, { updatedReplicas: 1, readyReplicas: 0, conditions: [{ type: 'Available', status: 'False' }] })).failed, true);
  assert.equal(rolloutState(undefined).ready, 0);
  // The ReplicaSet cannot create pods: said at once with its message, even with some pods ready.
  const cannot = rolloutState(
    dep(3, {
      replicas: 2,
      updatedReplicas: 2,
      readyReplicas: 2,
      conditions: [{ type: 'ReplicaFailure', status: 'True', reason: 'FailedCreate', message: 'pods "m-x" is forbidden: error looking up service account c/irsa: serviceaccount "irsa" not found' }],
    }),
  );
  assert.equal(cannot.failed, true);
  assert.equal(cannot.failureReason, 'PodsNotCreated');
  assert.match(cannot.failureMessage, /2\/3 ready replicas: .*serviceaccount "irsa" not found/);
  assert.equal(rolloutState(dep(1, { updatedReplicas: 1, readyReplicas: 0, conditions: [{ type: 'Available', status: 'False' }] })).failureReason, 'DeploymentUnavailable');
});

test('computeStatus: blocked -> Degraded with the reason, nothing ready', () => {
  const s = computeStatus(cr(), { kind: 'blocked', reason: 'CredentialsSecretNotFound', message: 'Secret "x" ...' }, { endpoint }, t0);
  assert.equal(s.observedGeneration, 4);
  assert.equal(s.endpoint, endpoint);
  const by = Object.fromEntries(s.conditions!.map((c) => [c.type, c]));
  assert.equal(by.Degraded!.status, 'True');
  assert.equal(by.Degraded!.reason, 'CredentialsSecretNotFound');
  assert.equal(by.Ready!.status, 'False');
  assert.equal(by.Progressing!.status, 'False');
});

test('computeStatus: applied and available -> Ready, cache figures carried', () => {
  const cache = aggregateCache([stats({ hits: 1, misses: 1 })], undefined, t0)!;
  const s = computeStatus(cr(), { kind: 'applied', deployment: dep(1, { replicas: 1, updatedReplicas: 1, readyReplicas: 1 }) }, { endpoint, cache }, t0);
  const by = Object.fromEntries(s.conditions!.map((c) => [c.type, c]));
  assert.equal(by.Ready!.status, 'True');
  assert.equal(by.Ready!.reason, 'MirrorAvailable');
  assert.equal(by.Progressing!.status, 'False');
  assert.equal(by.Degraded!.status, 'False');
  assert.equal(s.readyReplicas, 1);
  assert.equal(s.cache!.hitRatio, 0.5);
});

test('computeStatus: rolling out -> Progressing; unavailable -> DeploymentUnavailable; warning -> Degraded', () => {
  const rolling = computeStatus(cr(), { kind: 'applied', deployment: dep(1, {}) }, { endpoint }, t0);
  assert.equal(rolling.conditions!.find((c) => c.type === 'Progressing')!.status, 'True');
  assert.equal(rolling.conditions!.find((c) => c.type === 'Ready')!.reason, 'PodsNotReady');
  const down = computeStatus(cr(), { kind: 'applied', deployment: dep(1, { updatedReplicas: 1, conditions: [{ type: 'Available', status: 'False', message: 'm' }] }) }, { endpoint }, t0);
  assert.equal(down.conditions!.find((c) => c.type === 'Degraded')!.reason, 'DeploymentUnavailable');
  const warn = computeStatus(cr(), { kind: 'applied', deployment: dep(1, { updatedReplicas: 1, readyReplicas: 1, replicas: 1 }), warning: { reason: 'StorageShrinkRefused', message: 'no' } }, { endpoint }, t0);
  assert.equal(warn.conditions!.find((c) => c.type === 'Degraded')!.reason, 'StorageShrinkRefused');
  assert.equal(warn.conditions!.find((c) => c.type === 'Ready')!.status, 'True');
});

test('computeStatus is stable: recomputing from its own output is no change (no status write)', () => {
  const first = computeStatus(cr(), { kind: 'applied', deployment: dep(1, {}) }, { endpoint }, t0);
  const again = computeStatus(cr(first), { kind: 'applied', deployment: dep(1, {}) }, { endpoint }, t1);
  assert.ok(statusEqual(first, again));
  const keepsCache = computeStatus(cr({ ...first, cache: aggregateCache([stats({ hits: 1 })], undefined, t0) }), { kind: 'applied', deployment: dep(1, {}) }, { endpoint }, t1);
  assert.equal(keepsCache.cache?.hits, 1, 'last known cache figures are kept while no pod answers');
});

test('a fleet on one bucket: traffic summed over the pods, the store\'s own figures the largest any pod reports', () => {
  const pods = [
    stats({ hits: 3, misses: 1, bytesServed: 10, bytesFromUpstream: 7, storedBytes: 2 ** 30, blobs: 40, upstreamErrors: 1 }),
    stats({ hits: 5, misses: 2, bytesServed: 20, bytesFromUpstream: 3, storedBytes: 2 ** 30 + 5, blobs: 41 }),
    stats({ hits: 0, misses: 0, storedBytes: 2 ** 29, blobs: 12 }),
  ];
  const shared = aggregateCache(pods, undefined, t0, { sharedStore: true })!;
  assert.deepEqual(
    [shared.hits, shared.misses, shared.bytesServed, shared.bytesFromUpstream, shared.upstreamErrors, shared.pods],
    [8, 3, 30, 10, 1, 3],
  );
  assert.equal(shared.storedBytes, 2 ** 30 + 5, 'the bucket once, not once per pod');
  assert.equal(shared.blobs, 41);
  assert.equal(shared.stored, '1Gi');
  const separate = aggregateCache(pods, undefined, t0)!;
  assert.equal(separate.storedBytes, 2 ** 30 + 2 ** 30 + 5 + 2 ** 29, 'own emptyDirs: summed as before');
  assert.equal(separate.blobs, 93);
});

test('upstream fetches per blob: transfers over blobs added, over the pods that report both', () => {
  assert.deepEqual(fetchesPerBlob([stats({ upstreamBlobFetches: 4, blobsAdded: 4 }), stats({ upstreamBlobFetches: 1, blobsAdded: 0 })]), {
    upstreamBlobFetches: 5,
    blobsAdded: 4,
    fetchesPerBlob: 1.25,
  });
  assert.deepEqual(fetchesPerBlob([stats({ upstreamBlobFetches: 0, blobsAdded: 0 })]), { upstreamBlobFetches: 0, blobsAdded: 0 }, 'no ratio of nothing');
  assert.equal(fetchesPerBlob([stats({ hits: 1 })]), undefined, 'a mirror that does not report them');
  // A pod of an earlier version (mid-rollout) does not dilute the figure.
  assert.equal(fetchesPerBlob([stats({ upstreamBlobFetches: 3, blobsAdded: 3 }), stats({ hits: 9 })])!.fetchesPerBlob, 1);
  assert.equal(fetchesPerBlob([stats({ upstreamBlobFetches: 1, blobsAdded: 3 })])!.fetchesPerBlob, 0.3333);

  const c = aggregateCache([stats({ upstreamBlobFetches: 6, blobsAdded: 5 }), stats({ upstreamBlobFetches: 0, blobsAdded: 0 })], undefined, t0, { sharedStore: true })!;
  assert.equal(c.upstreamBlobFetches, 6);
  assert.equal(c.blobsAdded, 5);
  assert.equal(c.fetchesPerBlob, 1.2);
  const old = aggregateCache([stats({ hits: 1 })], undefined, t0)!;
  for (const k of ['upstreamBlobFetches', 'blobsAdded', 'fetchesPerBlob']) assert.equal(k in old, false, `${k} absent when no pod reports it`);
  // A moved counter is a change (a new timestamp, a status write); an unchanged one is not.
  assert.equal(aggregateCache([stats({ upstreamBlobFetches: 6, blobsAdded: 5 }), stats({})], c, t1, { sharedStore: true })!.updated, t0.toISOString());
  assert.equal(aggregateCache([stats({ upstreamBlobFetches: 7, blobsAdded: 5 }), stats({})], c, t1, { sharedStore: true })!.updated, t1.toISOString());
});

test('parseMirrorStats: the fleet counters when present, checked like the others', () => {
  const base = { hits: 1, misses: 0, staleServed: 0, bytesServed: 0, bytesFromUpstream: 0, storedBytes: 0, blobs: 0, upstreamErrors: 0 };
  assert.deepEqual(parseMirrorStats({ ...base, upstreamBlobFetches: 3, blobsAdded: 2 }), { ...base, upstreamBlobFetches: 3, blobsAdded: 2 });
  assert.equal('upstreamBlobFetches' in parseMirrorStats(base)!, false);
  for (const bad of [{ upstreamBlobFetches: -1 }, { blobsAdded: 'x' }, { upstreamBlobFetches: 1.5 }]) {
    assert.equal(parseMirrorStats({ ...base, ...bad }), undefined, JSON.stringify(bad));
  }
});

test('computeStatus: readyReplicas from the Deployment; the fleet figures carried in status.cache', () => {
  const cache = aggregateCache([stats({ hits: 1, upstreamBlobFetches: 2, blobsAdded: 2 }), stats({ hits: 2 })], undefined, t0, { sharedStore: true })!;
  const s = computeStatus(cr(), { kind: 'applied', deployment: dep(3, { replicas: 3, updatedReplicas: 3, readyReplicas: 2 }) }, { endpoint, cache }, t0);
  assert.equal(s.readyReplicas, 2);
  assert.match(s.conditions!.find((c) => c.type === 'Ready')!.message, /\(2\/3 replicas ready\)/);
  assert.equal(s.cache!.fetchesPerBlob, 1);
  assert.equal(s.cache!.pods, 2);
});
