// The per-upstream circuit breaker as a state machine (mirror/upstream/circuit-breaker.ts),
// on a hand-driven clock: when it opens, how long it fails requests at once, the single
// half-open probe, and outcomes of requests from an earlier window.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CircuitBreaker, fastFailReason, reportingBreaker, type BreakerEvent, type BreakerPermit } from '../../mirror/upstream/circuit-breaker.js';

function rig(failures = 3, openForMs = 10_000) {
  let t = 1_000_000;
  const events: string[] = [];
  const b = new CircuitBreaker({ failures, openForMs }, () => t, {
    onOpen: (i) => events.push(`open:${i.reason}:${i.failures}${i.reopened ? ':again' : ''}`),
    onClose: () => events.push('close'),
    onProbe: () => events.push('probe'),
  });
  return {
    b,
    events,
    advance: (ms: number) => void (t += ms),
    now: () => t,
    /** One whole request: admitted, then failed at connection level. */
    fail(reason = 'ECONNREFUSED'): BreakerPermit {
      const p = b.acquire();
      assert.ok(p, 'admitted');
      b.failed(p, reason);
      b.release(p);
      return p;
    },
    succeed(): void {
      const p = b.acquire();
      assert.ok(p, 'admitted');
      b.succeeded(p);
      b.release(p);
    },
  };
}

describe('circuit breaker', () => {
  it('opens after `failures` failed requests in a row, not before', () => {
    const r = rig(3);
    r.fail();
    r.fail();
    assert.equal(r.b.snapshot().state, 'closed');
    assert.equal(r.b.snapshot().consecutiveFailures, 2);
    assert.equal(r.b.snapshot().lastFailure, 'ECONNREFUSED');
    r.fail('UND_ERR_CONNECT_TIMEOUT');
    assert.deepEqual(r.b.snapshot(), {
      state: 'open',
      consecutiveFailures: 3,
      openedAt: r.now(),
      probeAt: r.now() + 10_000,
      lastFailure: 'UND_ERR_CONNECT_TIMEOUT',
    });
    assert.deepEqual(r.events, ['open:UND_ERR_CONNECT_TIMEOUT:3']);
  });

  it('an answer (any status) in between starts the count again', () => {
    const r = rig(3);
    r.fail();
    r.fail();
    r.succeed();
    assert.deepEqual(r.b.snapshot(), { state: 'closed', consecutiveFailures: 0 });
    r.fail();
    r.fail();
    assert.equal(r.b.snapshot().state, 'closed');
    r.fail();
    assert.equal(r.b.snapshot().state, 'open');
  });

  it('while open every request is refused, without a permit, until the window is over', () => {
    const r = rig(1, 10_000);
    r.fail();
    for (let i = 0; i < 50; i++) assert.equal(r.b.acquire(), undefined);
    assert.equal(r.b.retryInMs(), 10_000);
    r.advance(9_999);
    assert.equal(r.b.acquire(), undefined);
    assert.equal(r.b.retryInMs(), 1);
    assert.match(fastFailReason(r.b), /^ECONNREFUSED on 1 request in a row; circuit breaker open, next try in 1s$/);
    r.advance(1);
    assert.equal(r.b.retryInMs(), 0);
    const probe = r.b.acquire();
    assert.deepEqual(probe && { probe: probe.probe }, { probe: true });
    assert.equal(r.b.snapshot().state, 'half-open');
  });

  it('half-open: exactly one probe; the others keep failing at once until it has its answer', () => {
    const r = rig(1, 1000);
    r.fail();
    r.advance(1000);
    const probe = r.b.acquire()!;
    assert.ok(probe.probe);
    for (let i = 0; i < 20; i++) assert.equal(r.b.acquire(), undefined, 'one probe at a time');
    assert.match(fastFailReason(r.b), /half-open, a probe request is out/);
    r.advance(60_000);
    assert.equal(r.b.acquire(), undefined, 'however long the probe takes');
    r.b.succeeded(probe);
    r.b.release(probe);
    assert.deepEqual(r.b.snapshot(), { state: 'closed', consecutiveFailures: 0 });
    assert.deepEqual(r.events, ['open:ECONNREFUSED:1', 'probe', 'close']);
    const p = r.b.acquire();
    assert.ok(p && !p.probe, 'closed again: everyone goes');
  });

  it('a failed probe opens it for another whole window, counted from the failure', () => {
    const r = rig(2, 1000);
    r.fail();
    r.fail();
    r.advance(1500);
    const probe = r.b.acquire()!;
    r.advance(700); // a probe waiting on a connect timeout
    r.b.failed(probe, 'UND_ERR_CONNECT_TIMEOUT');
    r.b.release(probe);
    assert.equal(r.b.snapshot().state, 'open');
    assert.equal(r.b.snapshot().openedAt, r.now());
    assert.equal(r.b.snapshot().consecutiveFailures, 3);
    r.advance(999);
    assert.equal(r.b.acquire(), undefined);
    r.advance(1);
    assert.ok(r.b.acquire()?.probe);
    assert.deepEqual(r.events, ['open:ECONNREFUSED:2', 'probe', 'open:UND_ERR_CONNECT_TIMEOUT:3:again', 'probe']);
  });

  it('at most one probe per window: over 10 windows of a dead upstream, 10 probes', () => {
    const r = rig(1, 1000);
    r.fail();
    let probes = 0;
    for (let ms = 0; ms < 10_000; ms += 50) {
      r.advance(50);
      const p = r.b.acquire();
      if (!p) continue;
      assert.ok(p.probe);
      probes++;
      r.b.failed(p, 'ECONNREFUSED');
      r.b.release(p);
    }
    assert.equal(probes, 10);
  });

  it('a probe that ends without reaching the upstream hands the probe on', () => {
    const r = rig(1, 1000);
    r.fail();
    r.advance(1000);
    const first = r.b.acquire()!;
    assert.equal(r.b.acquire(), undefined);
    r.b.release(first); // e.g. its token service on another host failed
    assert.equal(r.b.snapshot().state, 'half-open');
    const second = r.b.acquire();
    assert.ok(second?.probe, 'the next request is the probe');
    r.b.succeeded(second!);
    assert.equal(r.b.snapshot().state, 'closed');
  });

  it('outcomes of requests admitted before it opened change nothing', () => {
    const r = rig(2, 1000);
    const slowA = r.b.acquire()!;
    const slowB = r.b.acquire()!;
    r.fail();
    r.fail();
    assert.equal(r.b.snapshot().state, 'open');
    r.b.succeeded(slowA); // a late answer to an old request does not close it
    assert.equal(r.b.snapshot().state, 'open');
    r.advance(1000);
    const probe = r.b.acquire()!;
    r.b.failed(slowB, 'ECONNRESET'); // nor does an old failure fail the probe
    assert.equal(r.b.snapshot().state, 'half-open');
    r.b.succeeded(probe);
    assert.equal(r.b.snapshot().state, 'closed');
    r.b.failed(slowB, 'ECONNRESET');
    assert.equal(r.b.snapshot().consecutiveFailures, 0, 'nor counts after it closed again');
  });

  it('retries: allowed while closed; not once it opened, and not for the probe before its answer', () => {
    const r = rig(1, 1000);
    const inFlight = r.b.acquire()!;
    assert.ok(r.b.mayRetry(inFlight));
    assert.ok(r.b.allows(inFlight));
    r.fail();
    assert.ok(!r.b.mayRetry(inFlight), 'opened meanwhile: no more tries');
    assert.ok(!r.b.allows(inFlight), 'nor another exchange');
    r.advance(1000);
    const probe = r.b.acquire()!;
    assert.ok(r.b.allows(probe));
    assert.ok(!r.b.mayRetry(probe), 'one try for the probe');
    r.b.succeeded(probe); // e.g. a 503: the upstream answers, so retries are fine again
    assert.ok(r.b.mayRetry(probe));
  });

  it('failures 0 turns it off: every request goes, nothing opens', () => {
    const r = rig(0);
    for (let i = 0; i < 100; i++) r.fail();
    assert.equal(r.b.enabled, false);
    assert.equal(r.b.snapshot().state, 'closed');
    const p = r.b.acquire()!;
    assert.ok(r.b.mayRetry(p) && r.b.allows(p));
    assert.deepEqual(r.events, []);
  });

  it('reportingBreaker reports transitions as events, and is off without a policy', () => {
    let t = 0;
    const seen: BreakerEvent[] = [];
    const b = reportingBreaker({ failures: 1, openForMs: 500 }, (e) => seen.push(e), () => t);
    const p = b.acquire()!;
    b.failed(p, 'ECONNREFUSED');
    t = 500;
    const probe = b.acquire()!;
    b.succeeded(probe);
    assert.deepEqual(seen, [{ kind: 'open', reason: 'ECONNREFUSED', failures: 1, reopened: false, openForMs: 500 }, { kind: 'probe' }, { kind: 'close' }]);
    const off = reportingBreaker(undefined, () => assert.fail('no events when off'));
    for (let i = 0; i < 10; i++) off.failed(off.acquire()!, 'ECONNREFUSED');
    assert.equal(off.snapshot().state, 'closed');
  });
});
