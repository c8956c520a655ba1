// Registries whose API endpoint differs from (or is well known for) the host name in image
// references, so a RegistryMirror for them needs no spec.upstream.url.

const WELL_KNOWN: Record<string, string> = {
  'docker.io': 'https://registry-1.docker.io',
  'registry-1.docker.io': 'https://registry-1.docker.io',
  'ghcr.io': 'https://ghcr.io',
  'quay.io': 'https://quay.io',
  'gcr.io': 'https://gcr.io',
  'registry.k8s.io': 'https://registry.k8s.io',
  'mcr.microsoft.com': 'https://mcr.microsoft.com',
  'public.ecr.aws': 'https://public.ecr.aws',
  'registry.gitlab.com': 'https://registry.gitlab.com',
  'docker.elastic.co': 'https://docker.elastic.co',
  'nvcr.io': 'https://nvcr.io',
};

export function defaultUpstreamUrl(registry: string): string | undefined {
  return WELL_KNOWN[registry];
}

/** The v1 (legacy API) index only exists for Docker Hub. */
export function defaultV1Source(registry: string): string | undefined {
  return registry === 'docker.io' ? 'https://index.docker.io' : undefined;
}
