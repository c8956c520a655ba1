// Who is using a store: `serve` and `verify` each leave a small record in <root>/state/
// (serve.pid, verify.pid) while they run, so that `verify --repair` never moves files under a
// running server and a server never starts under a running repair. A record whose process is
// gone (kill -9, a crash, a pod that was replaced) is stale and ignored.
//
// This is advice between well-behaved processes on one machine, not a lock: two servers on
// one store are not detected, and a record written on another host is taken at its word.

import { promises as fs, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';

export type StoreRole = 'serve' | 'verify';

interface OwnerRecord {
  pid: number;
  host: string;
  started: string;
}

function recordPath(root: string, role: StoreRole): string {
  return join(root, 'state', `${role}.pid`);
}

/** Records that this process uses the store in `role`; returns the function that removes it. */
export async function claimStore(root: string, role: StoreRole): Promise<() => Promise<void>> {
  await fs.mkdir(join(root, 'state'), { recursive: true });
  const record: OwnerRecord = { pid: process.pid, host: hostname(), started: new Date().toISOString() };
  const path = recordPath(root, role);
  await fs.writeFile(path, `${JSON.stringify(record)}\n`);
  return async () => {
    // Only our own record: another process may have claimed the store since.
    const now = readRecord(path);
    if (now?.pid === process.pid && now.host === record.host) await fs.rm(path, { force: true });
  };
}

/** The live process using the store in `role`, if any (not this process). */
export function activeOwner(root: string, role: StoreRole): OwnerRecord | undefined {
  const rec = readRecord(recordPath(root, role));
  if (!rec) return undefined;
  if (rec.host !== hostname()) return rec;
  if (rec.pid === process.pid) return undefined;
  return isAlive(rec.pid) ? rec : undefined;
}

function readRecord(path: string): OwnerRecord | undefined {
  try {
    const rec = JSON.parse(readFileSync(path, 'utf8')) as Partial<OwnerRecord>;
    if (typeof rec.pid === 'number' && Number.isInteger(rec.pid) && rec.pid > 0 && typeof rec.host === 'string') {
      return { pid: rec.pid, host: rec.host, started: String(rec.started ?? '') };
    }
  } catch {
    /* missing or unreadable: nobody */
  }
  return undefined;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function describeOwner(rec: OwnerRecord): string {
  return `pid ${rec.pid} on ${rec.host}, since ${rec.started}`;
}
