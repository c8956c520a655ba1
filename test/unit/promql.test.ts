import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { dashboardExpressions, metricNames, ruleExpressions } from '../rig/promql.js';

describe('metricNames (PromQL)', () => {
  it('finds the metrics and skips functions, aggregations, keywords and label lists', () => {
    const expr = `(
      sum by (namespace, upstream) (rate(registry_mirror_upstream_errors_total[10m]))
        /
      sum without (reason) (increase(registry_mirror_upstream_requests_total{status=~"5..|429"}[10m] offset 5m))
    ) > 0.1 and on (pod) group_left (registrymirror) up{job="registry-mirror"} == bool 1`;
    assert.deepEqual(metricNames(expr), ['registry_mirror_upstream_errors_total', 'registry_mirror_upstream_requests_total', 'up']);
  });

  it('skips Grafana variables, numbers with exponents and strings that look like names', () => {
    const expr = 'histogram_quantile(0.95, sum by (le) (rate(x_bucket{ns=~"$namespace", a="b{c}"}[$__rate_interval]))) * 1e3 + label_replace(y, "dst", "$1", "src", "(.*)")';
    assert.deepEqual(metricNames(expr), ['x_bucket', 'y']);
  });

  it('takes the name of a selector that has no braces, and a recording-rule name with colons', () => {
    assert.deepEqual(metricNames('job:requests:rate5m > on() vector(3)'), ['job:requests:rate5m']);
    assert.deepEqual(metricNames('a or b unless c'), ['a', 'b', 'c']);
  });

  it('refuses an unterminated string or matcher', () => {
    assert.throws(() => metricNames('up{job="x}'), /unterminated/);
  });

  it('collects the expressions of a rules file and of a dashboard with rows', () => {
    assert.deepEqual(ruleExpressions({ groups: [{ rules: [{ expr: 'a' }, { expr: 'b' }] }, { rules: [{ expr: 'c' }] }] }), ['a', 'b', 'c']);
    const dash = { panels: [{ targets: [{ expr: 'a' }, {}] }, { type: 'row', panels: [{ targets: [{ expr: 'b' }] }] }] };
    assert.deepEqual(dashboardExpressions(dash), ['a', 'b']);
  });
});
