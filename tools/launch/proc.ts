// Process, port and temp-dir helpers every launcher builds on (tools/launch/, the bench and the
// test rigs in test/rig/).
//
// The rules they enforce: a caller only ever stops processes it started, by pid (SIGTERM, then
// SIGKILL after a grace period); nothing outlives the calling process, even when a test fails
// or the runner kills the file; every temp dir is removed at exit.
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fetch as undiciFetch, type Dispatcher } from 'undici';

export interface ProcessHandle {
  pid: number;
  /** SIGTERM, then SIGKILL if still alive after graceMs; resolves with the exit code (null on a signal). */
  stop(graceMs?: number): Promise<number | null>;
  /** SIGKILL at once, as a crash or `kill -9` would; resolves when the process is gone. */
  kill9(): Promise<number | null>;
  /** Resolves with the exit code (null when killed by a signal) once the process has exited. */
  exited: Promise<number | null>;
  /** Everything the process wrote to stdout and stderr so far. */
  logText(): string;
  logFile: string;
  /** True until the process has exited. */
  alive(): boolean;
}

export interface StartProcessOptions {
  cmd: string;
  args?: string[];
  /** Added to (and overriding) the parent's environment. */
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** stdout and stderr are appended here (created if missing). */
  logFile: string;
}

// Children still running. SIGKILL is the only signal worth sending from an 'exit' handler:
// it is synchronous, so there is no time to wait for a graceful stop.
const liveChildren = new Map<number, () => void>();
const tempDirs = new Set<string>();
let exitHooksInstalled = false;

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  process.on('exit', cleanupNow);
  // node --test kills a file that hangs with SIGTERM; without these handlers the 'exit' hook
  // would not run and the registries and containerd of that file would be orphaned.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      cleanupNow();
      process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
    });
  }
}

function cleanupNow(): void {
  for (const kill of liveChildren.values()) kill();
  liveChildren.clear();
  for (const dir of tempDirs) {
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
    } catch {
      // A child killed a moment ago may still be writing; nothing more can be done at exit.
    }
  }
  tempDirs.clear();
}

/** A TCP port that was free on 127.0.0.1 a moment ago (the kernel picks it). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('no port from the kernel'))));
    });
  });
}

/** A fresh directory under os.tmpdir(); removed when removeTempDirs() runs or the process exits. */
export function tempDir(prefix: string): string {
  installExitHooks();
  const dir = mkdtempSync(join(tmpdir(), `rm-test-${prefix.replace(/[^A-Za-z0-9_.-]/g, '_')}-`));
  tempDirs.add(dir);
  return dir;
}

/** Removes one temp dir now (e.g. in after()) instead of at exit. */
export function removeTempDir(dir: string): void {
  tempDirs.delete(dir);
  rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
}

/**
 * Spawns a process with stdout and stderr appended to logFile. The child gets the file
 * descriptor itself, not a pipe: its lines land in the file whole and in order even when
 * the test process is busy, and a child never blocks on a full pipe nobody reads.
 */
export function startProcess(opts: StartProcessOptions): ProcessHandle {
  installExitHooks();
  const fd = openSync(opts.logFile, 'a');
  let child;
  try {
    child = spawn(opts.cmd, opts.args ?? [], {
      cwd: opts.cwd,
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', fd, fd],
    });
  } finally {
    closeSync(fd);
  }
  let running = true;
  let spawnError: Error | undefined;
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      running = false;
      if (child.pid !== undefined) liveChildren.delete(child.pid);
      resolve(code);
    });
    child.once('error', (err) => {
      running = false;
      if (child.pid !== undefined) liveChildren.delete(child.pid);
      // A spawn failure (ENOENT) has no exit event; keep the reason for logText().
      spawnError = err;
      resolve(null);
    });
  });
  const pid = child.pid;
  if (pid === undefined) {
    throw new Error(`could not start ${opts.cmd}: no pid (is it installed?)`);
  }
  liveChildren.set(pid, () => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  });

  const signal = (sig: NodeJS.Signals): void => {
    if (!running) return;
    try {
      process.kill(pid, sig);
    } catch {
      /* exited between the check and the kill */
    }
  };
  const handle: ProcessHandle = {
    pid,
    exited,
    logFile: opts.logFile,
    alive: () => running,
    async stop(graceMs = 5000) {
      signal('SIGTERM');
      const timer = setTimeout(() => signal('SIGKILL'), graceMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
    async kill9() {
      signal('SIGKILL');
      return exited;
    },
    logText() {
      const text = existsSync(opts.logFile) ? readFileSync(opts.logFile, 'utf8') : '';
      return spawnError ? `${text}\n[spawn error] ${spawnError.message}` : text;
    },
  };
  return handle;
}

/** The last lines of a log, for error messages that must stay readable. */
export function tail(text: string, lines = 30): string {
  return text.split('\n').slice(-lines).join('\n');
}

export interface WaitForHttpOptions {
  timeoutMs?: number;
  /** Wait for exactly this status; without it any HTTP answer counts. */
  expectStatus?: number | number[];
  /** Give up at once, with its log in the error, if this process exits while we wait. */
  process?: ProcessHandle;
  /** An undici dispatcher (e.g. an Agent trusting a test CA, for https); requests then go through undici's fetch. */
  dispatcher?: Dispatcher;
}

/** Polls url until it answers (with expectStatus, if given). Throws on timeout. */
export async function waitForHttp(url: string, opts: WaitForHttpOptions = {}): Promise<Response> {
  const timeoutMs = opts.timeoutMs ?? 15000;
  const want = opts.expectStatus === undefined ? undefined : [opts.expectStatus].flat();
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer yet';
  while (Date.now() < deadline) {
    if (opts.process && !opts.process.alive()) {
      throw new Error(`process ${opts.process.pid} exited while waiting for ${url}:\n${tail(opts.process.logText())}`);
    }
    try {
      const signal = AbortSignal.timeout(Math.max(500, Math.min(3000, deadline - Date.now())));
      const res = opts.dispatcher ? ((await undiciFetch(url, { signal, dispatcher: opts.dispatcher })) as unknown as Response) : await fetch(url, { signal });
      await res.arrayBuffer();
      if (!want || want.includes(res.status)) return res;
      last = `status ${res.status}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(100);
  }
  const log = opts.process ? `\n${tail(opts.process.logText())}` : '';
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${url} (${last})${log}`);
}

/** Polls fn until it returns a truthy value (which is returned). Throws on timeout. */
export async function waitFor<T>(fn: () => T | Promise<T>, timeoutMs = 10000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() >= deadline) {
      const why = lastErr instanceof Error ? ` (last error: ${lastErr.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await sleep(50);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a short command to completion with a timeout, capturing its output. Throws an error
 * that names the command and carries its stderr when it fails or times out.
 */
export async function run(
  cmd: string,
  args: string[],
  opts: { timeoutMs?: number; env?: Record<string, string | undefined>; cwd?: string; allowFail?: boolean } = {},
): Promise<RunResult> {
  installExitHooks();
  const timeoutMs = opts.timeoutMs ?? 60000;
  const child = spawn(cmd, args, { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const pid = child.pid;
  if (pid !== undefined) {
    liveChildren.set(pid, () => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    });
  }
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout.on('data', (b: Buffer) => out.push(b));
  child.stderr.on('data', (b: Buffer) => err.push(b));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, timeoutMs);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (c) => resolve(c));
  }).finally(() => {
    clearTimeout(timer);
    if (pid !== undefined) liveChildren.delete(pid);
  });
  const result = { code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
  const line = [cmd, ...args].join(' ');
  if (timedOut) throw new Error(`timed out after ${timeoutMs} ms: ${line}\nstderr: ${tail(result.stderr)}`);
  if (code !== 0 && !opts.allowFail) {
    throw new CommandError(`exit ${code}: ${line}\nstderr: ${tail(result.stderr)}`, result);
  }
  return result;
}

export class CommandError extends Error {
  constructor(
    message: string,
    readonly result: RunResult,
  ) {
    super(message);
    this.name = 'CommandError';
  }
}
