// Peak resident memory of each server, per phase of the benchmark (and CPU time, which
// varies far less than wall time on a shared machine).
//
// Linux keeps the peak itself (VmHWM in /proc/<pid>/status), and writing "5" to
// /proc/<pid>/clear_refs resets it to the current RSS: so each phase starts with a reset and
// ends with one read, and no short spike between samples is missed. Where the reset is not
// allowed, VmRSS sampled every 100 ms stands in (the sampler always runs, as a cross-check).
import { readFileSync, writeFileSync } from 'node:fs';

export interface ProcMemory {
  rssKiB: number;
  hwmKiB: number;
}

export function readMemory(pid: number): ProcMemory | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
  const rssKiB = field('VmRSS');
  const hwmKiB = field('VmHWM');
  return Number.isFinite(rssKiB) ? { rssKiB, hwmKiB: Number.isFinite(hwmKiB) ? hwmKiB : rssKiB } : undefined;
}

/** CPU time (user + system) a process has used so far, in ms; NaN when it is gone. */
export function cpuMs(pid: number): number {
  try {
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}

/** USER_HZ: 100 on every Linux architecture Node runs on. */
const CLOCK_TICKS = 100;

/** Resets VmHWM to the current RSS; false when the kernel or permissions do not allow it. */
export function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

interface Watched {
  role: string;
  pid: number;
  /** The current phase's peak so far, KiB. */
  peakKiB: number;
  resetOk: boolean;
}

export class RssTracker {
  private readonly watched = new Map<number, Watched>();
  private phase: string | undefined;
  /** role -> phase -> peak KiB */
  readonly peaks: Record<string, Record<string, number>> = {};
  private timer: NodeJS.Timeout | undefined;
  hwmResetWorked = true;

  constructor(private readonly intervalMs = 100) {}

  start(): void {
    this.timer = setInterval(() => this.sampleAll(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    this.endPhase();
    if (this.timer) clearInterval(this.timer);
  }

  watch(role: string, pid: number): void {
    const w: Watched = { role, pid, peakKiB: 0, resetOk: resetPeak(pid) };
    if (!w.resetOk) this.hwmResetWorked = false;
    this.watched.set(pid, w);
    this.sample(w);
  }

  /** Takes a last reading before the process is stopped (call before stop()). */
  unwatch(pid: number): void {
    const w = this.watched.get(pid);
    if (!w) return;
    this.sample(w);
    this.record(w);
    this.watched.delete(pid);
  }

  beginPhase(name: string): void {
    this.endPhase();
    this.phase = name;
    for (const w of this.watched.values()) {
      w.resetOk = resetPeak(w.pid);
      if (!w.resetOk) this.hwmResetWorked = false;
      w.peakKiB = 0;
      this.sample(w);
    }
  }

  endPhase(): void {
    if (this.phase === undefined) return;
    for (const w of this.watched.values()) {
      this.sample(w);
      this.record(w);
    }
    this.phase = undefined;
  }

  private record(w: Watched): void {
    if (this.phase === undefined) return;
    const byPhase = (this.peaks[w.role] ??= {});
    byPhase[this.phase] = Math.max(byPhase[this.phase] ?? 0, w.peakKiB);
  }

  private sampleAll(): void {
    for (const w of this.watched.values()) this.sample(w);
  }

  private sample(w: Watched): void {
    const m = readMemory(w.pid);
    if (!m) return;
    // After a successful reset VmHWM is the exact peak since the phase began.
    w.peakKiB = Math.max(w.peakKiB, m.rssKiB, w.resetOk ? m.hwmKiB : 0);
  }

  /** Peak MiB of a role over all phases, or over the named ones. */
  peakMiB(role: string, phases?: string[]): number {
    const byPhase = this.peaks[role] ?? {};
    const values = Object.entries(byPhase)
      .filter(([p]) => !phases || phases.includes(p))
      .map(([, v]) => v);
    return values.length ? Math.max(...values) / 1024 : NaN;
  }
}
