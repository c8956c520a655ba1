// Replays the request sequence of a docker 1.x pull over the v1 API (docker's registry/session
// and graph/pull code of that era): GET /v1/_ping; the index's
// /v1/repositories/<ns>/<repo>/images (with X-Docker-Token: true); the tag list
// .../tags and the tag .../tags/<tag>; the ancestry of the tagged image; then, from the base
// image up, each image's /json and /layer. Everything is checked the way a careful client
// would: the layer's size against X-Docker-Size, the payload checksum when one is given.

import { createHash } from 'node:crypto';

export interface V1PullStep {
  path: string;
  status: number;
  headers: Headers;
}

export interface V1PullResult {
  steps: V1PullStep[];
  imageId: string;
  ancestry: string[];
  /** image id -> "sha256:<hex>" of the layer as received */
  layers: Map<string, string>;
  /** image id -> X-Docker-Checksum-Payload as received */
  checksums: Map<string, string | null>;
}

export class V1PullError extends Error {
  constructor(
    message: string,
    readonly steps: V1PullStep[],
  ) {
    super(message);
  }
}

export async function pullV1(base: string, repo: string, tag: string): Promise<V1PullResult> {
  const steps: V1PullStep[] = [];
  const get = async (path: string, headers: Record<string, string> = {}): Promise<Response> => {
    const res = await fetch(base + path, { headers: { 'user-agent': 'docker/1.6.2 go/go1.4.2 os/linux arch/amd64', ...headers } });
    steps.push({ path, status: res.status, headers: res.headers });
    if (res.status !== 200) throw new V1PullError(`GET ${path}: ${res.status} ${await res.text()}`, steps);
    return res;
  };
  await (await get('/v1/_ping')).arrayBuffer();
  await (await get(`/v1/repositories/${repo}/images`, { 'x-docker-token': 'true' })).json();
  const tags = (await (await get(`/v1/repositories/${repo}/tags`)).json()) as Record<string, string>;
  const imageId = (await (await get(`/v1/repositories/${repo}/tags/${tag}`)).json()) as string;
  if (tags[tag] !== imageId) throw new V1PullError(`tag list says ${tags[tag]}, tag says ${imageId}`, steps);
  const ancestry = (await (await get(`/v1/images/${imageId}/ancestry`)).json()) as string[];
  const layers = new Map<string, string>();
  const checksums = new Map<string, string | null>();
  for (let i = ancestry.length - 1; i >= 0; i--) {
    const id = ancestry[i]!;
    const jsonRes = await get(`/v1/images/${id}/json`);
    const json = Buffer.from(await jsonRes.arrayBuffer());
    const size = jsonRes.headers.get('x-docker-size');
    const checksum = jsonRes.headers.get('x-docker-checksum-payload');
    const layerRes = await get(`/v1/images/${id}/layer`);
    const layer = createHash('sha256');
    const payload = createHash('sha256').update(json).update('\n');
    let n = 0;
    for await (const chunk of layerRes.body as unknown as AsyncIterable<Uint8Array>) {
      layer.update(chunk);
      payload.update(chunk);
      n += chunk.length;
    }
    if (size !== null && Number(size) !== n) throw new V1PullError(`layer of ${id}: ${n} bytes, X-Docker-Size ${size}`, steps);
    if (checksum && checksum !== `sha256:${payload.digest('hex')}`) throw new V1PullError(`layer of ${id}: checksum mismatch`, steps);
    layers.set(id, `sha256:${layer.digest('hex')}`);
    checksums.set(id, checksum);
  }
  return { steps, imageId, ancestry, layers, checksums };
}
