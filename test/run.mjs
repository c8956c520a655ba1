// Runs the whole suite with node's test runner: unit tests first (fast feedback), then the
// integration and end-to-end files, which start real registries, containerd and Kubernetes.
// Usage: node test/run.mjs [substring...]   (filters test files by path)
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const root = new URL('../dist/test/', import.meta.url).pathname;
function collect(dir) {
  let out = [];
  for (const entry of readdirSync(dir).sort()) {
    const p = join(dir, entry);
    if (statSync(p).isDirectory()) out = out.concat(collect(p));
    else if (entry.endsWith('.test.js')) out.push(p);
  }
  return out;
}
const filters = process.argv.slice(2);
const order = ['unit', 'integration', 'e2e'];
const files = collect(root)
  .filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)))
  .sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
function rank(f) {
  const i = order.findIndex((o) => f.includes(`/test/${o}/`));
  return i < 0 ? order.length : i;
}
if (files.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
// Integration files start heavy real processes; on a 2-core machine one file at a time keeps
// them from starving each other's timeouts.
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', '--test-reporter=spec', ...files], {
  stdio: 'inherit',
});
process.exit(r.status ?? 1);
