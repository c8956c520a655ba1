#!/usr/bin/env node
// Assembles the project's container image as an OCI archive without a Docker engine: the
// same content as the Dockerfile's final stage (this machine's node binary and its shared
// libraries instead of the node:20 base image, the built app, production node_modules),
// User 1000:1000. Load it with `ctr -n k8s.io images import ARCHIVE` or push it with
// `skopeo copy oci-archive:ARCHIVE docker://REGISTRY/registry-mirror:TAG`.
//
// Usage: npm run build && node scripts/build-image.mjs [--ref NAME:TAG] [--out FILE]
// The work files are kept in $IMAGE_CACHE_DIR (default dist/image-build) for the next run.
import { copyFileSync, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const repo = new URL('..', import.meta.url).pathname;
const { values } = parseArgs({
  options: {
    ref: { type: 'string', default: `registry-mirror:${JSON.parse(await import('node:fs').then((fs) => fs.readFileSync(join(repo, 'package.json'), 'utf8'))).version}` },
    out: { type: 'string', default: 'registry-mirror-image.tar' },
  },
});
if (!existsSync(join(repo, 'dist/tools/oci/image.js'))) {
  process.stderr.write('dist/ is missing: run `npm run build` first\n');
  process.exit(1);
}
process.env.IMAGE_CACHE_DIR ??= join(repo, 'dist', 'image-build');
const { projectImage } = await import('../dist/tools/oci/image.js');
const ref = values.ref.includes('/') ? values.ref : `docker.io/library/${values.ref}`;
const image = await projectImage(ref);
const out = resolve(values.out);
copyFileSync(image.archive, out);
process.stdout.write(`${out}\n  ref ${image.ref}\n  manifest ${image.manifestDigest}\n`);
