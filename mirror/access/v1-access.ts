// v1 image endpoints (/v1/images/<id>/json|ancestry|layer) name no repository, so
// repository patterns cannot judge them directly. With a v1 policy in force, an image id is
// served only once this mirror has seen it come from an allowed repository: in its tag list,
// a tag, its images list, or the ancestry of an image already admitted. That is the order in
// which docker 1.x pulls (tags, ancestry, then json and layer of each ancestor), so allowed
// pulls work unchanged, and an id learned elsewhere (say, of a denied repository) is refused.
// The set lives in memory; after a restart it is learned again from the same (cached)
// answers on the next pull.

import { LRUCache } from 'lru-cache';
import { V1Error } from '../v1/errors.js';
import { repoName, type V1Path } from '../v1/path.js';
import type { RepositoryPolicy } from './patterns.js';

const imageId = /^[a-f0-9]{64}$/;

/** The v1 policy: repository paths by pattern, image paths by the ids admitted so far. */
export class V1Access {
  readonly gate = new V1ImageGate();

  constructor(private readonly policy: RepositoryPolicy) {}

  /** Throws a 403 V1Error when the path is refused; before any disk or source access. */
  check(p: V1Path): void {
    if (p.kind === 'images' || p.kind === 'tags' || p.kind === 'tag' || p.kind === 'repo-json') {
      const decision = this.policy.check(repoName(p.repo));
      if (!decision.ok) throw new V1Error(403, decision.message);
    } else if (p.kind === 'image-json' || p.kind === 'ancestry' || p.kind === 'layer') {
      if (!this.gate.admits(p.id)) {
        throw new V1Error(403, `image ${p.id} has not been seen in a repository this mirror allows; pull it by repository (tags, then ancestry)`);
      }
    }
  }

  /** After a repository's images list, tags or tag, or an admitted image's ancestry was served. */
  learn(p: V1Path, bytes: Buffer): void {
    if (p.kind === 'images' || p.kind === 'tags' || p.kind === 'tag' || p.kind === 'ancestry') this.gate.learn(bytes);
  }
}

export class V1ImageGate {
  private readonly ids = new LRUCache<string, true>({ max: 100_000 });

  admits(id: string): boolean {
    return this.ids.has(id);
  }

  /** Records the ids in a v1 answer: a tag map, a tag (a JSON string), an images list or an ancestry. */
  learn(bytes: Buffer): void {
    let doc: unknown;
    try {
      doc = JSON.parse(bytes.toString('utf8'));
    } catch {
      return;
    }
    const add = (v: unknown) => {
      if (typeof v === 'string' && imageId.test(v)) this.ids.set(v, true);
    };
    if (typeof doc === 'string') add(doc);
    else if (Array.isArray(doc)) for (const e of doc) add(typeof e === 'string' ? e : (e as { id?: unknown } | null)?.id);
    else if (doc && typeof doc === 'object') for (const v of Object.values(doc)) add(v);
  }
}
