// Picks the upstream for a request: containerd's ?ns=<registry host>, else a leading path
// component that names a configured upstream (/v2/ghcr.io/org/app/...) for clients that
// cannot send ns (skopeo, podman, docker), else the default upstream. Only configured
// upstreams are ever contacted: an unknown ns is an error, never a request to that host.
// An upstream's repository policy (allow/deny patterns) is applied here too, right after the
// name is known and valid, so a refused name never reaches the store or the upstream.

import type { RepositoryPolicy } from './access/patterns.js';
import { RegistryError } from './errors.js';
import { clip, parseName } from './reference.js';
import { upstreamName, type Target } from './cache/target.js';
import type { UpstreamClient } from './upstream/client.js';

export interface Routed {
  target: Target;
  /** Set when ?ns= chose the upstream: echoed as OCI-Namespace. */
  namespace?: string;
}

export class UpstreamRouter {
  constructor(
    private readonly upstreams: Map<string, UpstreamClient>,
    private readonly defaultUpstream: string,
    /** Upstream key -> its policy; upstreams without one allow every name. */
    private readonly policies: ReadonlyMap<string, RepositoryPolicy> = new Map(),
  ) {}

  /** Whether the upstream's policy lets this (upstream-side) repository name through. */
  allows(upstream: string, name: string): boolean {
    return this.policies.get(upstream)?.allows(name) ?? true;
  }

  get names(): string[] {
    return [...this.upstreams.keys()];
  }

  upstream(ns: string | undefined): { client: UpstreamClient; namespace?: string } {
    if (ns !== undefined) {
      const client = this.upstreams.get(ns);
      if (!client) {
        throw new RegistryError('NAME_UNKNOWN', `no upstream is configured for registry "${clip(ns)}"`, { ns: clip(ns) });
      }
      return { client, namespace: ns };
    }
    return { client: this.upstreams.get(this.defaultUpstream)! };
  }

  route(rawName: string, ns: string | undefined): Routed {
    let name = rawName;
    let picked = this.upstream(ns);
    if (ns === undefined) {
      const slash = name.indexOf('/');
      const first = slash > 0 ? name.slice(0, slash) : '';
      const prefixed = first ? this.upstreams.get(first) : undefined;
      if (prefixed) {
        picked = { client: prefixed };
        name = name.slice(slash + 1);
      }
    }
    parseName(name);
    const client = picked.client;
    const target = { upstream: client, name: upstreamName(client.name, client.config.url, name) };
    const decision = this.policies.get(client.name)?.check(target.name);
    if (decision && !decision.ok) throw new RegistryError('DENIED', decision.message, { name: target.name });
    return { target, namespace: picked.namespace };
  }
}
