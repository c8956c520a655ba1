// The operator's small runtime parts: work queue, backoff, flags, Secret summaries, Lease times.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backoffDelay, jitter } from '../../operator/backoff.js';
import { parseFlags } from '../../operator/flags.js';
import { microTime } from '../../operator/leader.js';
import { WorkQueue } from '../../operator/queue.js';
import { credentialsForm, MAX_KEY_NAMES_KEPT, s3CredentialsForm, summarizeSecret } from '../../operator/secrets.js';
import { isPodReady, statsUrl } from '../../operator/stats-scraper.js';

test('backoff doubles up to the cap, with jitter in [0.5, 1)', () => {
  const p = { baseMs: 100, maxMs: 1000 };
  assert.equal(backoffDelay(1, p, () => 0.999999), 100);
  assert.equal(backoffDelay(3, p, () => 0.999999), 400);
  assert.equal(backoffDelay(10, p, () => 0.999999), 1000);
  assert.equal(backoffDelay(10, p, () => 0), 500);
  assert.equal(jitter(1000, 0.2, () => 0.5), 1100);
});

test('queue: dedups, never runs a key twice at once, re-runs a key added while running', async () => {
  const runs: string[] = [];
  let active = 0;
  let maxActiveForA = 0;
  const q = new WorkQueue(async (k) => {
    if (k === 'a') maxActiveForA = Math.max(maxActiveForA, ++active);
    runs.push(k);
    await new Promise((r) => setTimeout(r, 20));
    if (k === 'a') active--;
  }, { concurrency: 2 });
  q.add('a');
  q.add('a');
  q.add('b');
  await new Promise((r) => setTimeout(r, 5));
  q.add('a'); // while a runs: once more after it
  q.add('a');
  await q.idle();
  assert.deepEqual(runs.filter((k) => k === 'a').length, 2);
  assert.deepEqual(runs.filter((k) => k === 'b').length, 1);
  assert.equal(maxActiveForA, 1);
  await q.stop();
});

test('queue: failures retry with per-key backoff; success resets the count', async () => {
  let calls = 0;
  const errors: number[] = [];
  const q = new WorkQueue(
    async () => {
      calls++;
      if (calls < 3) throw new Error('boom');
    },
    { backoff: { baseMs: 10, maxMs: 50 }, onError: (_k, _e, ms) => errors.push(ms) },
  );
  q.add('k');
  await q.idle();
  assert.equal(calls, 3);
  assert.equal(errors.length, 2);
  assert.equal(q.attempts('k'), 0);
  await q.stop();
});

test('queue: a delay past the 32-bit timer limit (a 30-day renewal) waits instead of firing at once', async () => {
  const ran: string[] = [];
  const q = new WorkQueue(async (k) => {
    ran.push(k);
  });
  q.addAfter('ns/later', 30 * 24 * 3_600_000);
  q.addAfter('ns/soon', 5);
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(ran, ['ns/soon']);
  await q.stop();
});

test('flags: defaults, overrides, and clear errors', () => {
  const f = parseFlags([], {});
  assert.equal(f.leaderElect, true);
  assert.equal(f.namespace, undefined);
  assert.equal(f.leaseNamespace, 'default');
  assert.equal(f.statusIntervalMs, 30_000);
  assert.equal(f.healthPort, 8081);
  assert.equal(f.statsPort, 5000);
  const g = parseFlags(['--namespace', 'x', '--no-leader-elect', '--mirror-image', 'img:1', '--status-interval', '5s', '--health-port', '0'], { POD_NAMESPACE: 'ops' });
  assert.equal(g.namespace, 'x');
  assert.equal(g.leaseNamespace, 'ops');
  assert.equal(g.leaderElect, false);
  assert.equal(g.mirrorImage, 'img:1');
  assert.equal(g.statusIntervalMs, 5000);
  assert.equal(g.healthPort, 0);
  assert.throws(() => parseFlags(['--status-interval', 'soon'], {}), /--status-interval "soon" is not a positive duration/);
  assert.throws(() => parseFlags(['--lease-duration', '5s', '--renew-deadline', '10s'], {}), /renew-deadline must be shorter/);
  assert.throws(() => parseFlags(['--bogus'], {}), /bogus/);
});

test('Secret summaries keep key names and a keyed hash, never values', () => {
  const s = summarizeSecret({ metadata: { name: 'c', namespace: 'n', uid: 'u1' }, data: { username: 'dXNlcg==', password: 'cGFzcw==' } });
  assert.deepEqual(s.keys, ['password', 'username']);
  assert.ok(!JSON.stringify(s).includes('cGFzcw=='));
  assert.deepEqual(credentialsForm(s), { form: 'basic', hash: s.dataHash });
  const rotated = summarizeSecret({ metadata: { name: 'c', namespace: 'n', uid: 'u1' }, data: { username: 'dXNlcg==', password: 'bmV3' } });
  assert.notEqual(rotated.dataHash, s.dataHash);
  const otherUid = summarizeSecret({ metadata: { name: 'c', namespace: 'n', uid: 'u2' }, data: { username: 'dXNlcg==', password: 'cGFzcw==' } });
  assert.notEqual(otherUid.dataHash, s.dataHash, 'keyed by uid');
  const dcj = summarizeSecret({ metadata: { name: 'd', namespace: 'n', uid: 'u' }, data: { '.dockerconfigjson': 'e30=' } });
  assert.equal((credentialsForm(dcj) as { form: string }).form, 'dockerconfigjson');
  const bad = credentialsForm(summarizeSecret({ metadata: { name: 'b', namespace: 'n', uid: 'u' }, data: { token: 'eA==' } }));
  assert.match((bad as { problem: string }).problem, /neither a \.dockerconfigjson key nor both username and password keys \(it has: token\)/);
});

test('S3 credentials Secret: both keys give the hash; a missing key is named, values never', () => {
  const meta = { name: 's3', namespace: 'n', uid: 'u1' };
  const both = summarizeSecret({ metadata: meta, data: { accessKeyId: 'QUtJQUVYQU1QTEU=', secretAccessKey: 'c2VjcmV0LXZhbHVl' } });
  assert.deepEqual(s3CredentialsForm(both), { hash: both.dataHash });
  assert.ok(!JSON.stringify(both).includes('c2VjcmV0LXZhbHVl'));
  const rotated = summarizeSecret({ metadata: meta, data: { accessKeyId: 'QUtJQUVYQU1QTEU=', secretAccessKey: 'bmV3' } });
  assert.notEqual((s3CredentialsForm(rotated) as { hash: string }).hash, both.dataHash);
  const one = s3CredentialsForm(summarizeSecret({ metadata: meta, data: { accessKeyId: 'QUtJQUVYQU1QTEU=' } })) as { problem: string };
  assert.equal(one.problem, 'Secret "s3" named by spec.storage.s3.credentialsSecret lacks the secretAccessKey key (it has: accessKeyId)');
  const none = s3CredentialsForm(summarizeSecret({ metadata: meta, data: { AWS_ACCESS_KEY_ID: 'eA==' } })) as { problem: string };
  assert.match(none.problem, /lacks the accessKeyId and secretAccessKey keys \(it has: AWS_ACCESS_KEY_ID\)$/);
  // Both keys are always kept, however many other keys the Secret has.
  const data: Record<string, string> = { accessKeyId: 'eA==', secretAccessKey: 'eQ==' };
  for (let i = 0; i < 50; i++) data[`a${i}`] = 'eA==';
  const many = summarizeSecret({ metadata: meta, data });
  assert.equal(many.keys.length, MAX_KEY_NAMES_KEPT + 2);
  assert.deepEqual(s3CredentialsForm(many), { hash: many.dataHash });
});

test('Lease MicroTime has microseconds; pod readiness and stats URLs', () => {
  assert.equal(microTime(new Date('2026-01-02T03:04:05.678Z')), '2026-01-02T03:04:05.678000Z');
  const ready = { status: { podIP: '10.0.0.5', conditions: [{ type: 'Ready', status: 'True' }] } };
  assert.equal(isPodReady(ready), true);
  assert.equal(isPodReady({ status: { podIP: '10.0.0.5', conditions: [{ type: 'Ready', status: 'False' }] } }), false);
  assert.equal(isPodReady({ metadata: { deletionTimestamp: 'x' }, status: ready.status }), false);
  assert.equal(statsUrl('10.0.0.5', 5000), 'http://10.0.0.5:5000/stats');
  assert.equal(statsUrl('fd00::1', 5000), 'http://[fd00::1]:5000/stats');
});
