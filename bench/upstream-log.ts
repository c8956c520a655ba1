// What the upstream registry was asked, from its own access log: the one count of upstream
// requests every section of the bench uses (distribution's proxy and the mirror alike).
import type { AccessEntry, RegistryHandle } from '../tools/launch/registry.js';
import { sleep, waitFor } from '../tools/launch/proc.js';
import { BENCH_USER_AGENT } from './pull.js';

/** Requests the upstream logged since entry `from`, from the caches only (not the bench's own). */
export async function upstreamRequestsSince(upstream: RegistryHandle, from: number): Promise<AccessEntry[]> {
  // A line is written after its body went out: wait until the log stops growing.
  let last = -1;
  let entries: AccessEntry[] = [];
  await waitFor(async () => {
    await sleep(300);
    entries = await upstream.requests();
    const stable = entries.length === last;
    last = entries.length;
    return stable;
  }, 120_000, 'the upstream access log to settle');
  return entries.slice(from).filter((e) => e.userAgent !== BENCH_USER_AGENT);
}

/** GETs of each blob among `entries`, in the order of `digests`. */
export function blobGets(entries: AccessEntry[], digests: string[]): number[] {
  return digests.map((d) => entries.filter((e) => e.method === 'GET' && e.path.includes(`/blobs/${d}`)).length);
}
