// One duration grammar (mirror/duration.ts) for the mirror, the operator and the CRD. Every
// duration field of the CRD (crds/ and the chart's copy) carries DURATION_PATTERN and
// DURATION_MAX_LENGTH, and the CRD's own pattern, the parser, the operator's spec check and the
// rendered-config check (the mirror's config parser) accept and refuse the same strings: on a
// table, on strings generated from the grammar's alphabet and on strings generated from the
// pattern itself. A spec the CRD admits is therefore one the mirror runs with.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { parse } from 'yaml';
import { parseConfigText } from '../../mirror/config.js';
import { DURATION_MAX_LENGTH, DURATION_PATTERN, isDuration, parseDuration } from '../../mirror/duration.js';
import { CONFIG_KEY, renderConfigMap } from '../../operator/render/config-map.js';
import { mirrorConfigProblem } from '../../operator/render/mirror-config.js';
import { resolveSpec } from '../../operator/spec.js';
import type { RegistryMirror, RegistryMirrorSpec } from '../../operator/types.js';

const REPO = new URL('../../../', import.meta.url).pathname;
const CRD_FILES = ['crds/registrymirrors.yaml', 'charts/registry-mirror/crds/registrymirrors.yaml'];
/** The duration fields, by their path in the spec, and where each lands in the mirror config. */
const DURATION_FIELDS = ['spec.cache.ttl', 'spec.cache.tagTTL', 'spec.v1.tagsCacheTTL'] as const;
/** Durations with a range of their own (checked by the operator): the one grammar, not round-tripped here. */
const BOUNDED_DURATION_FIELDS = ['spec.storage.s3.presignTTL'] as const;

interface StringSchema {
  path: string;
  pattern?: string;
  maxLength?: number;
  description?: string;
}

/** Every schema node with a pattern or a duration-like name, with its path (spec.cache.ttl). */
function stringSchemas(file: string): StringSchema[] {
  const crd = parse(readFileSync(join(REPO, file), 'utf8')) as {
    spec: { versions: Array<{ name: string; schema: { openAPIV3Schema: Record<string, unknown> } }> };
  };
  const out: StringSchema[] = [];
  const walk = (node: unknown, path: string) => {
    if (node === null || typeof node !== 'object') return;
    const n = node as Record<string, unknown>;
    if (typeof n.pattern === 'string' || /ttl|timeout|interval|duration|period|deadline/i.test(path.slice(path.lastIndexOf('.') + 1))) {
      out.push({ path, pattern: n.pattern as string | undefined, maxLength: n.maxLength as number | undefined, description: n.description as string | undefined });
    }
    for (const [k, v] of Object.entries((n.properties as Record<string, unknown>) ?? {})) walk(v, path ? `${path}.${k}` : k);
    if (n.items) walk(n.items, `${path}[]`);
    for (const alt of (n.anyOf as unknown[]) ?? []) walk(alt, path);
  };
  assert.ok(crd.spec.versions.length > 0, `${file}: no versions`);
  for (const v of crd.spec.versions) walk(v.schema.openAPIV3Schema, '');
  return out;
}

/** What the API server does with a string for a field: maxLength (in characters), then pattern. */
function crdAdmits(field: StringSchema, s: string): boolean {
  return [...s].length <= field.maxLength! && new RegExp(field.pattern!).test(s);
}

function cr(spec: RegistryMirrorSpec): RegistryMirror {
  return { apiVersion: 'registry-mirror.io/v1alpha1', kind: 'RegistryMirror', metadata: { name: 'hub', namespace: 'ns1', uid: 'uid-1', generation: 1 }, spec };
}

/** The spec with one duration field set to s. */
function specWith(field: (typeof DURATION_FIELDS)[number], s: string): RegistryMirrorSpec {
  const upstream = { registry: 'docker.io' };
  if (field === 'spec.cache.ttl') return { upstream, cache: { ttl: s } };
  if (field === 'spec.cache.tagTTL') return { upstream, cache: { tagTTL: s } };
  return { upstream, v1: { enabled: true, tagsCacheTTL: s } };
}

/**
 * What the operator does with the field: its spec check, then the rendered config.yaml through
 * the mirror's own parser (the check before anything is applied). Returns the milliseconds the
 * mirror would run with, or undefined when either step refuses.
 */
function operatorMs(field: (typeof DURATION_FIELDS)[number], s: string): number | undefined {
  const c = cr(specWith(field, s));
  const r = resolveSpec(c);
  if (!r.ok) {
    assert.ok(r.problems.some((p) => p.startsWith(field)), `${field}=${JSON.stringify(s)}: refused for something else: ${r.problems.join('; ')}`);
    return undefined;
  }
  const yaml = (renderConfigMap(c, r.spec).data as Record<string, string>)[CONFIG_KEY]!;
  const problem = mirrorConfigProblem(yaml);
  assert.equal(problem, undefined, `${field}=${JSON.stringify(s)}: the spec check passed but the rendered config did not: ${problem}`);
  const config = parseConfigText(yaml, {});
  if (field === 'spec.cache.ttl') return config.cache.ttlMs;
  if (field === 'spec.cache.tagTTL') return config.cache.tagTTLMs;
  return config.v1.tagsCacheTTLMs;
}

const fields = (() => {
  const all = CRD_FILES.flatMap((f) => stringSchemas(f).map((s) => ({ ...s, file: f })));
  return { all, duration: all.filter((s) => (DURATION_FIELDS as readonly string[]).includes(s.path)) };
})();

/** Accepted, with the milliseconds they mean (exact sum, a leftover fraction of 1 ms rounds up). */
const ACCEPTED: Array<[string, number]> = [
  ['0', 0],
  ['0s', 0],
  ['0.0h', 0],
  ['00h', 0],
  ['0ns', 0],
  ['168h', 168 * 3_600_000],
  ['5m', 300_000],
  ['30s', 30_000],
  ['1h30m', 5_400_000],
  ['1h30m10s250ms', 5_410_250],
  ['250ms', 250],
  ['500ms', 500],
  ['1.5s', 1500],
  ['1.1s', 1100],
  ['4.35s', 4350],
  ['0.3s', 300],
  ['1.s', 1000],
  ['.5s', 500],
  ['.5h', 1_800_000],
  ['0.1h', 360_000],
  ['2.5m', 150_000],
  ['1s1h', 3_601_000],
  ['1m1m', 120_000],
  ['001m', 60_000],
  ['1.0001s', 1001],
  ['1.0000000001s', 1001],
  ['0.4ms', 1],
  ['1.4ms', 2],
  ['1.5ms', 2],
  ['2.000ms', 2],
  ['1ns', 1],
  ['0.5ns', 1],
  ['999999ns', 1],
  ['1000000ns', 1],
  ['1000001ns', 2],
  ['1us', 1],
  ['1500us', 2],
  ['1500\u00b5s', 2], // µ MICRO SIGN, as Go accepts
  ['1000\u03bcs', 1], // μ GREEK SMALL LETTER MU, as Go accepts
  ['1h1m1s1ms1us1ns', 3_661_002],
  ['1h'.repeat(32), 32 * 3_600_000], // 64 characters: the longest admitted
];

const REFUSED = [
  '', '5', '00', '0.0', '.', 'h', '.h', '.s', 's', 'ms', '\u00b5s',
  '1 h', ' 1h', '1h ', '1h\n', '1h,2m', '1h 2m',
  '-1h', '+1h', '-0', '+0', // no sign
  '1d', '7d', '1w', '1y', '1H', '1S', '1MS', '1Ms', '1mss', '1hm', '1sec', '1min', '1hr', '1\u00b5', '1u', '1n',
  '1.5.5s', '1..5s', '..5s', '1e3s', '1E3s', '1,5s', '1_000s', '0x10s', '1h30', '30m1',
  '\uff11s', // FULLWIDTH DIGIT ONE
  'one', 'NaN', 'Infinity', 'Infinityh',
  '1h'.repeat(32) + '1s', // 66 characters: past maxLength
  '1' + '0'.repeat(63) + 'h', // 65 characters
];

describe('one duration grammar: mirror, operator and CRD', () => {
  it('every duration field of the CRD (and the chart copy) carries the one pattern and maxLength', () => {
    for (const file of CRD_FILES) {
      const found = fields.duration.filter((f) => f.file === file).map((f) => f.path).sort();
      assert.deepEqual(found, [...DURATION_FIELDS].sort(), `${file}: duration fields`);
    }
    for (const f of fields.duration) {
      assert.equal(f.pattern, DURATION_PATTERN, `${f.file} ${f.path}: pattern`);
      assert.equal(f.maxLength, DURATION_MAX_LENGTH, `${f.file} ${f.path}: maxLength`);
    }
    // No other field looks like a duration or has a pattern with time units in it: a second
    // duration grammar cannot hide in the CRD.
    for (const f of fields.all) {
      if ((DURATION_FIELDS as readonly string[]).includes(f.path)) continue;
      if ((BOUNDED_DURATION_FIELDS as readonly string[]).includes(f.path)) {
        assert.equal(f.pattern, DURATION_PATTERN, `${f.file} ${f.path}: pattern`);
        assert.equal(f.maxLength, DURATION_MAX_LENGTH, `${f.file} ${f.path}: maxLength`);
        continue;
      }
      assert.ok(!/ttl|timeout|interval|duration|period|deadline/i.test(f.path), `${f.file} ${f.path} looks like a duration but is not checked here`);
      assert.ok(!/\bms\b|\(ns\||\|h\)/.test(f.pattern ?? ''), `${f.file} ${f.path}: a second duration pattern ${f.pattern}`);
    }
  });

  it('means what the table says, and refuses what it refuses', () => {
    for (const [s, ms] of ACCEPTED) {
      assert.ok(isDuration(s), JSON.stringify(s));
      assert.equal(parseDuration(s), ms, JSON.stringify(s));
    }
    for (const s of REFUSED) {
      assert.ok(!isDuration(s), JSON.stringify(s));
      assert.equal(parseDuration(s), undefined, JSON.stringify(s));
    }
  });

  it('the CRD admits exactly what the parser, the spec check and the rendered config accept (table)', () => {
    for (const s of [...ACCEPTED.map(([t]) => t), ...REFUSED]) {
      const ms = parseDuration(s);
      for (const f of fields.duration) assert.equal(crdAdmits(f, s), ms !== undefined, `${f.file} ${f.path}: ${JSON.stringify(s)}`);
      for (const field of DURATION_FIELDS) assert.equal(operatorMs(field, s), ms, `${field}: ${JSON.stringify(s)}`);
    }
  });

  it('the CRD admits exactly what the parser accepts (generated strings)', () => {
    const crd = fields.duration[0]!;
    // Strings over the grammar's alphabet and its near misses, most of them refused.
    const alphabet = fc.constantFrom('0', '1', '5', '9', '.', 'n', 'u', '\u00b5', '\u03bc', 'm', 's', 'h', 'd', '-', '+', ' ', 'e');
    // Strings the pattern itself generates (all admitted unless too long).
    const fromPattern = fc.stringMatching(new RegExp(DURATION_PATTERN));
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: alphabet, maxLength: 70 }), fromPattern), (s) => {
        const ms = parseDuration(s);
        assert.equal(crdAdmits(crd, s), ms !== undefined, JSON.stringify(s));
        assert.equal(isDuration(s), ms !== undefined, JSON.stringify(s));
        if (ms !== undefined) {
          assert.ok(Number.isInteger(ms) && ms >= 0, `${JSON.stringify(s)} -> ${ms}`);
          // Zero only when every digit is zero: rounding never turns a duration into 0.
          assert.equal(ms === 0, !/[1-9]/.test(s), `${JSON.stringify(s)} -> ${ms}`);
        }
      }),
      { numRuns: 3000 },
    );
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: alphabet, maxLength: 20 }), fromPattern), fc.constantFrom(...DURATION_FIELDS), (s, field) => {
        assert.equal(operatorMs(field, s), parseDuration(s), `${field}: ${JSON.stringify(s)}`);
      }),
      { numRuns: 300 },
    );
  });

  it('adds whole-millisecond parts exactly', () => {
    const UNIT_MS = { h: 3_600_000, m: 60_000, s: 1000, ms: 1 } as const;
    const part = fc.tuple(fc.nat({ max: 99_999 }), fc.constantFrom(...(Object.keys(UNIT_MS) as Array<keyof typeof UNIT_MS>)));
    fc.assert(
      fc.property(fc.array(part, { minLength: 1, maxLength: 5 }), (parts) => {
        const text = parts.map(([n, u]) => `${n}${u}`).join('');
        assert.equal(parseDuration(text), parts.reduce((sum, [n, u]) => sum + n * UNIT_MS[u], 0), text);
      }),
      { numRuns: 1000 },
    );
  });
});
