// Bytes served and misses per repository, for the status page's top lists. Repository names
// come from clients, so the map is bounded: at most `maxRepositories` names are tracked, and
// a new name past that pushes out the one used least recently (lru-cache). Only requests that
// succeeded are counted (server.ts), so inventing names costs a client real upstream content.

import { LRUCache } from 'lru-cache';

export interface RepositoryFigures {
  /** "<upstream>/<repository>" as the upstream knows it. */
  repository: string;
  bytesServed: number;
  misses: number;
}

export const maxRepositories = 1000;

export class RepositoryTraffic {
  private readonly map: LRUCache<string, RepositoryFigures>;

  constructor(max = maxRepositories) {
    this.map = new LRUCache({ max });
  }

  record(repository: string, delta: { bytesServed?: number; misses?: number }): void {
    let f = this.map.get(repository);
    if (!f) {
      f = { repository, bytesServed: 0, misses: 0 };
      this.map.set(repository, f);
    }
    f.bytesServed += delta.bytesServed ?? 0;
    f.misses += delta.misses ?? 0;
  }

  get size(): number {
    return this.map.size;
  }

  /** The `k` repositories with the most of `by` (more than none), most first; ties by name. */
  top(by: 'bytesServed' | 'misses', k: number): RepositoryFigures[] {
    const all: RepositoryFigures[] = [];
    for (const f of this.map.values()) if (f[by] > 0) all.push({ ...f });
    return all.sort((a, b) => b[by] - a[by] || (a.repository < b.repository ? -1 : 1)).slice(0, k);
  }
}
