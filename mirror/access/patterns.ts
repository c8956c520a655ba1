// Per-upstream repository allow/deny patterns. Pure.
//
// Semantics (README "Access"):
//  - a pattern is matched against the whole repository name as the upstream knows it, e.g.
//    "library/alpine" on Docker Hub, "org/app" on ghcr.io (a path prefix such as
//    /v2/ghcr.io/... is not part of it);
//  - `*` matches any run of characters within one path component (never a `/`), `**` any run
//    of characters including `/` (any depth); everything else is literal. So `myorg/*` matches
//    myorg/app but not myorg/team/app, and `myorg/**` matches both (but not "myorg" itself);
//  - on Docker Hub a pattern without a `/` is completed as the name is: `alpine` is
//    `library/alpine`, `*` is `library/*` (every official image); `**` stays everything;
//  - no allow list (or an empty one) allows every name; deny wins over allow.
// Patterns are checked before any disk or upstream access, so a refused name never reaches
// either.

export type PolicyDecision = { ok: true } | { ok: false; reason: 'denied' | 'not-allowed'; message: string };

const patternChars = /^[a-z0-9._/*-]+$/;
export const maxPatternLength = 255;
export const maxPatterns = 256;

/** Why a pattern is unusable, or undefined when it is fine. Never echoes more than needed. */
export function patternProblem(p: unknown): string | undefined {
  if (typeof p !== 'string') return 'must be a string';
  if (p.length === 0) return 'must not be empty';
  if (p.length > maxPatternLength) return `is longer than ${maxPatternLength} characters`;
  if (!patternChars.test(p)) return 'may only hold lower-case letters, digits, ".", "_", "-", "/" and the wildcards * and **';
  if (p.startsWith('/') || p.endsWith('/') || p.includes('//')) return 'must not start or end with "/" or hold an empty component';
  if (p.includes('***')) return 'has "***": use * (one component) or ** (any depth)';
  return undefined;
}

/** Problems of a list of patterns, each with its key (e.g. "upstreams.x.allow[2]"). */
export function patternListProblems(v: unknown, key: string): Array<{ key: string; problem: string }> {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) return [{ key, problem: 'must be a list of patterns' }];
  if (v.length > maxPatterns) return [{ key, problem: `has ${v.length} patterns; at most ${maxPatterns}` }];
  const out: Array<{ key: string; problem: string }> = [];
  v.forEach((p, i) => {
    const problem = patternProblem(p);
    if (problem) out.push({ key: `${key}[${i}]`, problem });
  });
  return out;
}

/** `*` -> within a component, `**` -> across components; the rest literal. Anchored. */
export function compilePattern(p: string, dockerHub = false): RegExp {
  const full = dockerHub && !p.includes('/') && p !== '**' ? `library/${p}` : p;
  let re = '';
  for (let i = 0; i < full.length; i++) {
    const c = full[i]!;
    if (c === '*') {
      if (full[i + 1] === '*') {
        re += '.*';
        i++;
      } else re += '[^/]*';
    } else re += c.replace(/[.\\^$+?()[\]{}|-]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

export class RepositoryPolicy {
  private readonly allowRes: RegExp[];
  private readonly denyRes: RegExp[];

  constructor(
    /** What the messages call this policy's scope, e.g. "docker.io" or "v1". */
    readonly scope: string,
    readonly allow: readonly string[],
    readonly deny: readonly string[],
    dockerHub = false,
  ) {
    this.allowRes = allow.map((p) => compilePattern(p, dockerHub));
    this.denyRes = deny.map((p) => compilePattern(p, dockerHub));
  }

  /** A policy, or undefined when neither list holds anything (everything allowed). */
  static from(scope: string, allow: readonly string[] | undefined, deny: readonly string[] | undefined, dockerHub = false): RepositoryPolicy | undefined {
    if (!allow?.length && !deny?.length) return undefined;
    return new RepositoryPolicy(scope, allow ?? [], deny ?? [], dockerHub);
  }

  check(name: string): PolicyDecision {
    if (this.denyRes.some((r) => r.test(name))) {
      return { ok: false, reason: 'denied', message: `repository "${name}" is denied by this mirror's policy for ${this.scope}` };
    }
    if (this.allowRes.length > 0 && !this.allowRes.some((r) => r.test(name))) {
      return { ok: false, reason: 'not-allowed', message: `repository "${name}" is not in this mirror's allow list for ${this.scope}` };
    }
    return { ok: true };
  }

  allows(name: string): boolean {
    return this.check(name).ok;
  }
}

/** Docker Hub's hosts: names there get "library/" (see cache/target.ts upstreamName). */
export function isDockerHub(upstreamKey: string, upstreamUrl: string): boolean {
  let host = '';
  try {
    host = new URL(upstreamUrl).host;
  } catch {
    /* validated elsewhere */
  }
  return upstreamKey === 'docker.io' || host === 'registry-1.docker.io' || host === 'index.docker.io';
}
