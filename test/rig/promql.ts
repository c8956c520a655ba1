// The metric names a PromQL expression reads, for checking that every name the chart's alerts
// and dashboard use exists in what Prometheus scraped. A tokenizer, not a parser: it needs to
// tell metric names from functions, keywords, label names, durations and Grafana variables,
// nothing more.

const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'atan2', 'inf', 'nan', 'offset']);
const STRINGS = /"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`/g;
/** Clauses whose parenthesised list holds label names, not expressions. */
const LABEL_LISTS = /\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g;
const TOKEN = /\$\{?\w+\}?|\d[\w.]*(?:[eE][+-]?\d+)?|\.\d+|[A-Za-z_:][\w:]*|\S/g;

/** Sorted, without duplicates. Throws on an unterminated string or bracket (likely not PromQL). */
export function metricNames(expr: string): string[] {
  // Strings first (they may hold braces and names), then matchers and ranges, then label lists.
  const unquoted = expr.replace(STRINGS, ' 0 ');
  const bare = unquoted.replace(/\{[^{}]*\}/g, ' ').replace(/\[[^[\]]*\]/g, ' ');
  const stray = /["'`]/.exec(unquoted) ?? /[{}[\]]/.exec(bare);
  if (stray) throw new Error(`unterminated ${stray[0]} in PromQL: ${expr}`);
  const tokens = [...bare.replace(LABEL_LISTS, ' ').matchAll(TOKEN)].map((m) => m[0]);
  const names = new Set<string>();
  for (const [i, t] of tokens.entries()) {
    if (!/^[A-Za-z_:][\w:]*$/.test(t) || KEYWORDS.has(t.toLowerCase())) continue;
    if (tokens[i + 1] === '(') continue; // a function or an aggregation
    if (tokens[i - 1] === '@') continue;
    names.add(t);
  }
  return [...names].sort();
}

/** Every `expr` of a Prometheus rules file (its `groups`). */
export function ruleExpressions(rules: { groups: Array<{ rules: Array<{ expr: string }> }> }): string[] {
  return rules.groups.flatMap((g) => g.rules.map((r) => r.expr));
}

/** Every target `expr` of a Grafana dashboard's panels (rows' nested panels included). */
export function dashboardExpressions(dashboard: { panels?: unknown[] }): string[] {
  const out: string[] = [];
  const walk = (panels: unknown[] | undefined) => {
    for (const p of (panels ?? []) as Array<{ targets?: Array<{ expr?: string }>; panels?: unknown[] }>) {
      for (const t of p.targets ?? []) if (t.expr) out.push(t.expr);
      walk(p.panels);
    }
  };
  walk(dashboard.panels);
  return out;
}
