// A request's target after routing: which upstream, and the repository name as that
// upstream knows it (Docker Hub's implicit "library/" applied), which is also the name the
// cache files it under.

import type { UpstreamClient } from '../upstream/client.js';

export interface Target {
  upstream: UpstreamClient;
  /** Repository name as the upstream knows it. */
  name: string;
}

export function upstreamName(upstreamKey: string, upstreamUrl: string, name: string): string {
  const host = new URL(upstreamUrl).host;
  const isDockerHub = upstreamKey === 'docker.io' || host === 'registry-1.docker.io' || host === 'index.docker.io';
  return isDockerHub && !name.includes('/') ? `library/${name}` : name;
}
