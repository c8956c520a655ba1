// Runs the mirror as a real process, the way users run it (for the tests and the bench):
// `node dist/bin/registry-mirror.js serve --config FILE`, with a YAML config (DESIGN.md §3).
// A separate process (not an in-process server) so tests can kill -9 it, restart it on the
// same store, and read its log exactly as an operator would.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent } from 'undici';
import { stringify } from 'yaml';
import { freePort, startProcess, tempDir, waitForHttp, type ProcessHandle } from './proc.js';

export interface MirrorOptions {
  /** Extra environment (e.g. MIRROR_* overrides). */
  env?: Record<string, string | undefined>;
  /** Listen on this port instead of a free one. */
  port?: number;
  readyTimeoutMs?: number;
  /** Don't wait for /readyz (for tests of start-up failures); await `exited` yourself. */
  noWait?: boolean;
  /** With `tls` in the config: the CA file that signed the mirror's certificate (readiness is checked over https). */
  caFile?: string;
}

export interface MirrorHandle {
  /** http://127.0.0.1:PORT, or https:// with `tls` in the config. */
  url: string;
  /** "127.0.0.1:PORT" */
  host: string;
  port: number;
  dataDir: string;
  configFile: string;
  logFile: string;
  /** The config exactly as written (with listen and storage.path filled in). */
  config: Record<string, unknown>;
  pid(): number;
  /** Resolves with the exit code when the current process exits. */
  exited(): Promise<number | null>;
  logText(): string;
  /** SIGTERM, SIGKILL after graceMs; resolves with the exit code. */
  stop(graceMs?: number): Promise<number | null>;
  kill9(): Promise<number | null>;
  /** Stop (if running) and start again on the same port with the same config and data. */
  restart(): Promise<void>;
}

/** The repository root: the nearest directory above this file with a package.json. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the repository root above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
  return dir;
}

export function mirrorBin(): string {
  return join(repoRoot(), 'dist', 'bin', 'registry-mirror.js');
}

export async function startMirror(config: Record<string, unknown> = {}, opts: MirrorOptions = {}): Promise<MirrorHandle> {
  const dir = tempDir('mirror');
  const port = opts.port ?? (await freePort());
  const host = `127.0.0.1:${port}`;
  const storage = { ...((config.storage as Record<string, unknown> | undefined) ?? {}) };
  if (storage.path === undefined) storage.path = join(dir, 'data');
  const full: Record<string, unknown> = { ...config, listen: host, storage };
  const configFile = join(dir, 'config.yml');
  const logFile = join(dir, 'mirror.log');
  writeFileSync(configFile, stringify(full));
  const bin = mirrorBin();
  if (!existsSync(bin)) throw new Error(`${bin} does not exist: run npm run build first`);

  const scheme = full.tls ? 'https' : 'http';
  if (full.tls && !opts.caFile) throw new Error('startMirror: a config with tls needs opts.caFile to check readiness over https');

  let proc: ProcessHandle | undefined;
  const start = async (): Promise<void> => {
    proc = startProcess({
      cmd: process.execPath,
      args: [bin, 'serve', '--config', configFile],
      cwd: dir,
      env: { ...opts.env },
      logFile,
    });
    if (!opts.noWait) {
      // Probes need no client certificate (/readyz is always open); no keep-alive, so no
      // connection of ours is left counting against limits.maxConnections.
      const dispatcher = opts.caFile ? new Agent({ connect: { ca: readFileSync(opts.caFile) }, pipelining: 0 }) : undefined;
      try {
        await waitForHttp(`${scheme}://${host}/readyz`, { timeoutMs: opts.readyTimeoutMs ?? 20000, expectStatus: 200, process: proc, ...(dispatcher ? { dispatcher } : {}) });
      } finally {
        await dispatcher?.close();
      }
    }
  };
  await start();

  return {
    url: `${scheme}://${host}`,
    host,
    port,
    dataDir: String(storage.path),
    configFile,
    logFile,
    config: full,
    pid: () => proc?.pid ?? -1,
    exited: () => proc?.exited ?? Promise.resolve(null),
    logText: () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : ''),
    stop: async (graceMs = 10000) => (proc ? proc.stop(graceMs) : null),
    kill9: async () => (proc ? proc.kill9() : null),
    async restart() {
      await proc?.stop(10000);
      await start();
    },
  };
}
