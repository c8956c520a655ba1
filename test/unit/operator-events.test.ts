// The operator's Event recorder without the apiserver: aggregation into a series, the
// per-(object, reason) token bucket, the bounded caches, and which Events a reconcile records.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  BURST,
  clipNote,
  EventCorrelator,
  eventBody,
  eventName,
  microTime,
  NOTE_MAX_BYTES,
  REFILL_MS,
  takeToken,
  type EventInput,
  type EventObject,
} from '../../operator/events.js';
import { appliedEvent, DEGRADED_REASONS, reconcileEvents } from '../../operator/event-reasons.js';
import type { RegistryMirrorStatus } from '../../operator/types.js';

const obj = (uid = 'u1'): EventObject => ({ apiVersion: 'registry-mirror.io/v1alpha1', kind: 'RegistryMirror', namespace: 'ns', name: 'hub', uid });
const warn = (reason: string, note = 'n'): EventInput => ({ type: 'Warning', reason, action: 'Reconcile', note });
const t0 = new Date('2026-01-01T00:00:00Z');
const at = (ms: number) => new Date(t0.getTime() + ms);

test('takeToken: a full bucket of BURST, then one token per REFILL_MS, never above BURST', () => {
  let b;
  for (let i = 0; i < BURST; i++) {
    const r = takeToken(b, t0.getTime());
    assert.ok(r.ok, `token ${i + 1}`);
    b = r.bucket;
  }
  assert.equal(takeToken(b, t0.getTime()).ok, false);
  assert.equal(takeToken(b, t0.getTime() + REFILL_MS - 1).ok, false, 'no token before the refill');
  const one = takeToken(b, t0.getTime() + REFILL_MS);
  assert.ok(one.ok);
  assert.equal(takeToken(one.bucket, t0.getTime() + REFILL_MS + 1).ok, false, 'exactly one token came back');
  // A long quiet spell refills to BURST, not beyond.
  let q = takeToken(one.bucket, t0.getTime() + 100 * REFILL_MS).bucket;
  let granted = 1;
  while (takeToken(q, t0.getTime() + 100 * REFILL_MS).ok) {
    q = takeToken(q, t0.getTime() + 100 * REFILL_MS).bucket;
    granted++;
  }
  assert.equal(granted, BURST);
});

test('takeToken: a steady trickle earns its tokens (the refill clock keeps partial progress)', () => {
  let b = { tokens: 0, at: 0 };
  // Asked every half refill period for 10 periods: 10 tokens, not 0 (as a clock reset at each ask would give).
  let ok = 0;
  for (let t = 0; t <= 10 * REFILL_MS; t += REFILL_MS / 2) {
    const r = takeToken(b, t);
    b = r.bucket;
    if (r.ok) ok++;
  }
  assert.equal(ok, 10);
});

test('correlator: the first occurrence creates, repeats patch one series with a growing count', () => {
  const c = new EventCorrelator();
  const first = c.observe(obj(), warn('CredentialsSecretNotFound'), t0);
  assert.equal(first.kind, 'create');
  c.created((first as { key: string }).key, 'hub.1');
  const second = c.observe(obj(), warn('CredentialsSecretNotFound'), at(1000));
  assert.deepEqual(second, { kind: 'patch', key: (first as { key: string }).key, count: 2, lastObservedTime: '2026-01-01T00:00:01.000000Z' });
  assert.equal(c.nameOf((first as { key: string }).key), 'hub.1');
  const third = c.observe(obj(), warn('CredentialsSecretNotFound'), at(2000));
  assert.equal(third.kind === 'patch' && third.count, 3);
  // Another note, type, action or object is another Event.
  assert.equal(c.observe(obj(), warn('CredentialsSecretNotFound', 'other'), at(3000)).kind, 'create');
  assert.equal(c.observe(obj(), { ...warn('CredentialsSecretNotFound'), action: 'Apply' }, at(3000)).kind, 'create');
  assert.equal(c.observe(obj('u2'), warn('CredentialsSecretNotFound'), at(3000)).kind, 'create');
});

test('correlator: a hot loop gets BURST writes per (object, reason), then one per REFILL_MS', () => {
  const c = new EventCorrelator();
  const decisions = Array.from({ length: 1000 }, (_, i) => c.observe(obj(), warn('InvalidSpec', `n${i % 3}`), at(i)));
  assert.equal(decisions.filter((d) => d.kind !== 'drop').length, BURST, 'the bucket is per reason, whatever the note');
  assert.equal(decisions.filter((d) => d.kind === 'create').length, 3);
  assert.equal(c.observe(obj(), warn('InvalidSpec', 'n0'), at(1000 + REFILL_MS)).kind, 'patch');
  assert.equal(c.observe(obj(), warn('InvalidSpec', 'n0'), at(1001 + REFILL_MS)).kind, 'drop');
  // Other reasons and other objects have their own buckets.
  assert.equal(c.observe(obj(), warn('ObjectConflict'), at(2000)).kind, 'create');
  assert.equal(c.observe(obj('u2'), warn('InvalidSpec', 'n0'), at(2000)).kind, 'create');
});

test('correlator: both caches are LRUs of their stated size', () => {
  const c = new EventCorrelator({ cacheSize: 3, rateCacheSize: 5 });
  for (let i = 0; i < 50; i++) c.observe(obj(`u${i}`), warn('InvalidSpec'), t0);
  assert.deepEqual(c.sizes, { series: 3, buckets: 5 });
  // The oldest key was evicted: it is a new Event again (the apiserver's copy keeps its count).
  assert.equal(c.observe(obj('u0'), warn('InvalidSpec'), at(1)).kind, 'create');
  assert.equal(c.observe(obj('u49'), warn('InvalidSpec'), at(1)).kind, 'patch');
});

test('restart: an expired Event starts a new series at 1', () => {
  const c = new EventCorrelator();
  const d = c.observe(obj(), warn('InvalidSpec'), t0) as { key: string };
  c.created(d.key, 'hub.1');
  c.observe(obj(), warn('InvalidSpec'), at(1));
  c.restart(d.key, undefined, at(2));
  assert.equal(c.nameOf(d.key), undefined);
  const next = c.observe(obj(), warn('InvalidSpec'), at(3));
  assert.equal(next.kind === 'patch' && next.count, 2);
});

test('event body: micro time, bounded note, valid name, regarding the object', () => {
  assert.equal(microTime(new Date('2026-01-01T00:00:00.123Z')), '2026-01-01T00:00:00.123000Z');
  const long = 'é'.repeat(2000) + '\u0007';
  const clipped = clipNote(long);
  assert.ok(Buffer.byteLength(clipped) <= NOTE_MAX_BYTES);
  assert.ok(clipped.endsWith('…'));
  assert.equal(clipNote('a\u0000b\nc'), 'a b\nc');
  const name = eventName('x'.repeat(253), t0, 70_000);
  assert.ok(name.length <= 253 && /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(name), name);
  assert.notEqual(eventName('hub', t0, 1), eventName('hub', t0, 2));
  const b = eventBody(obj(), warn('InvalidSpec', long), { controller: 'registry-mirror.io/operator', instance: 'p'.repeat(300) }, 'hub.1', t0);
  assert.equal(b.reportingInstance.length, 128);
  assert.deepEqual(b.regarding, { apiVersion: 'registry-mirror.io/v1alpha1', kind: 'RegistryMirror', namespace: 'ns', name: 'hub', uid: 'u1' });
  assert.equal(b.metadata.namespace, 'ns');
  assert.equal(b.eventTime, '2026-01-01T00:00:00.000000Z');
});

const cond = (type: string, status: string, reason: string, message = 'm') => ({ type, status, reason, message, lastTransitionTime: t0.toISOString() });
const status = (o: Partial<RegistryMirrorStatus> & { degraded?: [string, string] }): RegistryMirrorStatus => ({
  readyReplicas: o.readyReplicas ?? 0,
  conditions: [cond('Degraded', o.degraded?.[0] ?? 'False', o.degraded?.[1] ?? 'AsExpected')] as RegistryMirrorStatus['conditions'],
  ...(o.rateLimits ? { rateLimits: o.rateLimits } : {}),
});
const keep = { kind: 'keep' } as const;

test('reconcileEvents: each Degraded reason is a Warning, every time it is found', () => {
  for (const reason of DEGRADED_REASONS) {
    const e = reconcileEvents({ previous: status({ degraded: ['True', reason] }), next: status({ degraded: ['True', reason] }), nodeConfig: keep });
    assert.deepEqual(e, [{ type: 'Warning', reason, action: 'Reconcile', note: 'm' }]);
  }
  assert.deepEqual(reconcileEvents({ previous: undefined, next: status({}), nodeConfig: keep }), []);
});

test('reconcileEvents: replicas ready on reaching desired; lost outside a rollout only', () => {
  const ev = (before: number, now: number, desired: number, rollingOut = false) =>
    reconcileEvents({ previous: status({ readyReplicas: before }), next: status({ readyReplicas: now }), rollout: { desired, rollingOut }, nodeConfig: keep }).map((e) => `${e.type} ${e.reason} ${e.note}`);
  assert.deepEqual(ev(0, 2, 2), ['Normal ReplicasReady 2/2 replicas ready']);
  assert.deepEqual(ev(1, 1, 2), []);
  assert.deepEqual(ev(2, 2, 2), [], 'no transition, no event');
  assert.deepEqual(ev(2, 1, 2), ['Warning ReplicasLost 1/2 replicas ready (was 2)']);
  assert.deepEqual(ev(2, 1, 2, true), [], 'a rollout takes pods down by design');
  assert.deepEqual(ev(3, 2, 2), [], 'a surge pod going away is no loss');
});

test('reconcileEvents: UpstreamRateLimitLow below 10% left, with a note that stays the same as remaining falls', () => {
  const rl = (remaining: number, limit = 100) => [{ upstream: 'registry-1.docker.io', limit, remaining, windowSeconds: 21600, observedAt: t0.toISOString() }];
  const ev = (remaining: number, limit?: number) => reconcileEvents({ previous: undefined, next: status({ rateLimits: rl(remaining, limit) }), nodeConfig: keep });
  assert.deepEqual(ev(10), []);
  const low = ev(9);
  assert.equal(low.length, 1);
  assert.equal(low[0]!.type, 'Warning');
  assert.equal(low[0]!.reason, 'UpstreamRateLimitLow');
  assert.match(low[0]!.note, /registry-1\.docker\.io.*100 per 21600s/);
  assert.deepEqual(ev(3), low, 'the same Event (aggregated) while the limit stays the same');
  assert.deepEqual(ev(0, 0), [], 'a limit of 0 states nothing');
  const partial = (r: object) => reconcileEvents({ previous: undefined, next: status({ rateLimits: [{ upstream: 'x', observedAt: t0.toISOString(), ...r }] }), nodeConfig: keep });
  assert.deepEqual(partial({ remaining: 0 }), [], 'no limit stated: no share to judge');
  assert.deepEqual(partial({ limit: 100 }), []);
});

test('reconcileEvents: a node policy refusal is a Warning unless the Degraded condition already says it', () => {
  const refuse = { kind: 'refuse', reason: 'NamespaceNotAllowed', message: 'namespace ns may not configure nodes' } as const;
  assert.deepEqual(reconcileEvents({ previous: undefined, next: status({}), nodeConfig: refuse }), [
    { type: 'Warning', reason: 'NamespaceNotAllowed', action: 'ConfigureNodes', note: 'namespace ns may not configure nodes' },
  ]);
  const up = { kind: 'refuse', reason: 'UpstreamNotAllowed', message: 'x' } as const;
  assert.deepEqual(reconcileEvents({ previous: undefined, next: status({ degraded: ['True', 'UpstreamNotAllowed'] }), nodeConfig: up }).length, 1);
});

test('appliedEvent: Normal, Create or Update, one Event per object', () => {
  assert.deepEqual(appliedEvent('Deployment', 'hub', true), { type: 'Normal', reason: 'Applied', action: 'Create', note: 'Created Deployment "hub"' });
  assert.deepEqual(appliedEvent('ConfigMap', 'hub-config', false), { type: 'Normal', reason: 'Applied', action: 'Update', note: 'Updated ConfigMap "hub-config"' });
});
