// A real Prometheus (Debian `prometheus` 2.42) on loopback, for the tests of the chart's
// scrape settings, alerts and dashboard. Its own temp dir for the config and the TSDB; stopped
// by pid like every launched process.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { freePort, startProcess, tempDir, waitForHttp, type ProcessHandle } from './proc.js';

export interface PrometheusOptions {
  /** prometheus.yml as an object (global, scrape_configs, ...); rule_files are added from ruleFiles. */
  config: Record<string, unknown>;
  /** Rules files' contents (YAML text), written beside the config and listed in rule_files. */
  ruleFiles?: string[];
  readyTimeoutMs?: number;
}

export interface PrometheusHandle {
  url: string;
  dir: string;
  logText(): string;
  /** GET /api/v1/<path> with query parameters; the `data` of a success, else throws with the error. */
  api<T = unknown>(path: string, params?: Record<string, string>): Promise<T>;
  stop(): Promise<void>;
}

export async function startPrometheus(opts: PrometheusOptions): Promise<PrometheusHandle> {
  const dir = tempDir('prometheus');
  const port = await freePort();
  const ruleFiles = (opts.ruleFiles ?? []).map((text, i) => {
    const file = join(dir, `rules-${i}.yaml`);
    writeFileSync(file, text);
    return file;
  });
  const configFile = join(dir, 'prometheus.yml');
  writeFileSync(configFile, stringify({ ...opts.config, rule_files: ruleFiles }));
  const proc: ProcessHandle = startProcess({
    cmd: 'prometheus',
    args: [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      // Debian's defaults point at /etc/prometheus and /usr/share; nothing outside dir is used.
      `--web.console.templates=${dir}`,
      `--web.console.libraries=${dir}`,
    ],
    cwd: dir,
    logFile: join(dir, 'prometheus.log'),
  });
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitForHttp(`${url}/-/ready`, { timeoutMs: opts.readyTimeoutMs ?? 30_000, expectStatus: 200, process: proc });
  } catch (err) {
    await proc.stop(5000);
    throw err;
  }
  return {
    url,
    dir,
    logText: () => proc.logText(),
    async api<T>(path: string, params: Record<string, string> = {}): Promise<T> {
      const res = await fetch(`${url}/api/v1/${path}?${new URLSearchParams(params)}`);
      const body = (await res.json()) as { status: string; data: T; error?: string };
      if (body.status !== 'success') throw new Error(`Prometheus /api/v1/${path}: ${res.status} ${body.error ?? ''}`);
      return body.data;
    },
    async stop() {
      await proc.stop(10_000);
    },
  };
}
