// A request's target after routing: which upstream, and the repository name as that
// upstream knows it (Docker Hub's implicit "library/" applied), which is also the name the
// cache files it under.

import { RegistryError } from '../errors.js';
import { clip, maxNameLength } from '../reference.js';
import type { UpstreamClient } from '../upstream/client.js';

export interface Target {
  upstream: UpstreamClient;
  /** Repository name as the upstream knows it. */
  name: string;
}

export function upstreamName(upstreamKey: string, upstreamUrl: string, name: string): string {
  const host = new URL(upstreamUrl).host;
  const isDockerHub = upstreamKey === 'docker.io' || host === 'registry-1.docker.io' || host === 'index.docker.io';
  const full = isDockerHub && !name.includes('/') ? `library/${name}` : name;
  // The prefix can push a valid name past the grammar's 255 characters; distribution then
  // answers 500 (found by the fuzz test). Refuse it here, as the client's error it is.
  if (full.length > maxNameLength) {
    throw new RegistryError('NAME_INVALID', `repository name longer than ${maxNameLength} characters as ${upstreamKey} knows it`, { name: clip(full) });
  }
  return full;
}
