// The Helm chart's static checks that need no cluster: its crds/ is the root crds/ byte for
// byte (the root file is the one source of truth), and every value is documented.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parse } from 'yaml';

const REPO = new URL('../../../', import.meta.url).pathname;
const CHART = join(REPO, 'charts/registry-mirror');

describe('helm chart', () => {
  it('ships the root crds/ unchanged', () => {
    const root = readdirSync(join(REPO, 'crds')).sort();
    assert.deepEqual(readdirSync(join(CHART, 'crds')).sort(), root, 'same files in crds/ and charts/registry-mirror/crds/');
    for (const f of root) {
      assert.equal(
        readFileSync(join(CHART, 'crds', f), 'utf8'),
        readFileSync(join(REPO, 'crds', f), 'utf8'),
        `charts/registry-mirror/crds/${f} differs from crds/${f}: cp crds/${f} charts/registry-mirror/crds/`,
      );
    }
  });

  it('documents every value with a "# --" comment', () => {
    const lines = readFileSync(join(CHART, 'values.yaml'), 'utf8').split('\n');
    const undocumented: string[] = [];
    const path: string[] = [];
    const documented = new Set<string>();
    for (const [i, line] of lines.entries()) {
      const m = /^( *)([A-Za-z][\w-]*):(.*)$/.exec(line);
      if (!m) continue;
      const depth = m[1]!.length / 2;
      path.length = depth;
      path.push(m[2]!);
      const isSection = m[3]!.trim() === '' && (lines[i + 1] ?? '').startsWith(' '.repeat((depth + 1) * 2)) && !/^\s*-/.test(lines[i + 1] ?? '');
      // Keys inside a documented value (e.g. resources.requests) are part of that value.
      if (path.slice(0, -1).some((_, k) => documented.has(path.slice(0, k + 1).join('.')))) continue;
      // The doc comment block directly above (possibly several lines) starts with "# --".
      let j = i - 1;
      while (j >= 0 && /^\s*# /.test(lines[j]!) && !/^\s*# --/.test(lines[j]!)) j--;
      const hasDoc = j >= 0 && /^\s*# --/.test(lines[j]!);
      if (hasDoc) documented.add(path.join('.'));
      else if (!isSection) undocumented.push(path.join('.'));
    }
    assert.deepEqual(undocumented, []);
  });

  it('parses, with the defaults the templates rely on', () => {
    const v = parse(readFileSync(join(CHART, 'values.yaml'), 'utf8'));
    assert.equal(v.nodeAgent.enabled, true);
    assert.equal(v.nodeAgent.hostsDir, '/etc/containerd/certs.d');
    assert.deepEqual(v.mirrors, []);
    // Secure by default: only the release namespace's RegistryMirrors configure nodes.
    assert.deepEqual(v.nodeConfig, { allowedNamespaces: [], allowedRegistries: [], allowedUpstreams: {}, allowUnsafeUpstreams: false });
    // Monitoring is opt-in: the Prometheus Operator's CRDs may not be installed.
    assert.equal(v.monitoring.podMonitor.enabled, false);
    assert.equal(v.monitoring.prometheusRule.enabled, false);
    assert.equal(v.monitoring.grafanaDashboard.enabled, false);
    assert.deepEqual(v.monitoring.grafanaDashboard.labels, { grafana_dashboard: '1' });
    const chart = parse(readFileSync(join(CHART, 'Chart.yaml'), 'utf8'));
    const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8'));
    assert.equal(chart.appVersion, pkg.version, 'Chart.yaml appVersion follows package.json version');
  });
});
