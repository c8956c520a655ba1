// Leader election on a coordination.k8s.io/v1 Lease, so that of several operator replicas
// exactly one reconciles. The rules (those of client-go's leaderelection):
//  - a Lease whose holder has not renewed for leaseDuration may be taken over; "not renewed"
//    is measured on our own clock from when we last saw the record change, so clock skew
//    between replicas does not matter;
//  - every write carries the resourceVersion we read: two candidates racing for the same
//    Lease cannot both win (the loser gets 409 Conflict);
//  - a leader that cannot renew within renewDeadline stops leading before anyone else may
//    take over (renewDeadline < leaseDuration);
//  - on a clean stop the leader releases the Lease so a standby takes over at once.
import type { CoordinationV1Api } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { jitter, sleep } from './backoff.js';
import { errorText, statusOf } from './kube/informer.js';

export interface LeaderOptions {
  api: CoordinationV1Api;
  namespace: string;
  name: string;
  identity: string;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
  log: Logger;
  onStartedLeading: () => void | Promise<void>;
  onStoppedLeading: () => void | Promise<void>;
}

interface LeaseRecord {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

/** RFC 3339 with microseconds, the format of the Lease's MicroTime fields. */
export function microTime(d: Date): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

export class LeaderElector {
  private leading = false;
  private lastRenew = 0;
  private observed: { key: string; at: number } = { key: '', at: 0 };
  /** True once the Lease could be read or written at least once (for /readyz). */
  contacted = false;

  constructor(private readonly o: LeaderOptions) {}

  get isLeader(): boolean {
    return this.leading;
  }

  /** Campaigns and renews until the signal aborts; then releases the Lease if held. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      let ok = false;
      try {
        ok = await this.tryAcquireOrRenew();
        this.contacted = true;
      } catch (err) {
        this.o.log.warn({ lease: this.o.name, err: errorText(err) }, 'lease update failed');
      }
      const now = Date.now();
      if (ok) {
        this.lastRenew = now;
        if (!this.leading) {
          this.leading = true;
          this.o.log.info({ lease: `${this.o.namespace}/${this.o.name}`, identity: this.o.identity }, 'became leader');
          await this.o.onStartedLeading();
        }
      } else if (this.leading && now - this.lastRenew > this.o.renewDeadlineMs) {
        this.leading = false;
        this.o.log.warn({ lease: this.o.name }, 'could not renew the lease in time; stopped leading');
        await this.o.onStoppedLeading();
      }
      await sleep(jitter(this.o.retryPeriodMs, 0.2), signal);
    }
    if (this.leading) {
      this.leading = false;
      await this.o.onStoppedLeading();
      await this.release();
    }
  }

  private async tryAcquireOrRenew(): Promise<boolean> {
    const now = new Date();
    const { api, namespace, name, identity } = this.o;
    const durationSec = Math.max(1, Math.ceil(this.o.leaseDurationMs / 1000));
    let lease: any;
    try {
      lease = await api.readNamespacedLease({ namespace, name });
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
      try {
        await api.createNamespacedLease({
          namespace,
          body: {
            metadata: { name, namespace },
            spec: { holderIdentity: identity, leaseDurationSeconds: durationSec, acquireTime: microTime(now) as any, renewTime: microTime(now) as any, leaseTransitions: 0 },
          },
        });
        return true;
      } catch (e) {
        if (statusOf(e) === 409) return false;
        throw e;
      }
    }
    const spec: LeaseRecord = lease.spec ?? {};
    const key = `${spec.holderIdentity ?? ''}|${String(spec.renewTime ?? '')}`;
    if (key !== this.observed.key) this.observed = { key, at: Date.now() };
    const holder = spec.holderIdentity ?? '';
    const heldByOther = holder !== '' && holder !== identity;
    const recordDurationMs = (spec.leaseDurationSeconds ?? durationSec) * 1000;
    if (heldByOther && Date.now() - this.observed.at < recordDurationMs) return false;

    const takeover = holder !== identity;
    const body = {
      ...lease,
      spec: {
        holderIdentity: identity,
        leaseDurationSeconds: durationSec,
        acquireTime: takeover ? microTime(now) : spec.acquireTime,
        renewTime: microTime(now),
        leaseTransitions: (spec.leaseTransitions ?? 0) + (takeover && holder !== '' ? 1 : 0),
      },
    };
    try {
      await api.replaceNamespacedLease({ namespace, name, body });
      if (takeover) this.o.log.info({ lease: name, previous: holder || null }, 'acquired lease');
      return true;
    } catch (err) {
      if (statusOf(err) === 409) return false;
      throw err;
    }
  }

  /** Gives the Lease up so a standby need not wait for it to expire. */
  private async release(): Promise<void> {
    const { api, namespace, name, identity } = this.o;
    try {
      const lease: any = await api.readNamespacedLease({ namespace, name });
      if (lease.spec?.holderIdentity !== identity) return;
      const now = microTime(new Date());
      await api.replaceNamespacedLease({
        namespace,
        name,
        body: { ...lease, spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: now } },
      });
      this.o.log.info({ lease: name }, 'released lease');
    } catch (err) {
      this.o.log.warn({ lease: name, err: errorText(err) }, 'could not release lease');
    }
  }
}
