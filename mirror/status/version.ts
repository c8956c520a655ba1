// The version the status page shows: package.json's, found above this module (dist/mirror/
// status/ in a checkout, /app/dist/... in the image). Read once.

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | undefined;

export function mirrorVersion(): string {
  if (cached !== undefined) return cached;
  cached = 'unknown';
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const file = join(dir, 'package.json');
    if (existsSync(file)) {
      try {
        const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: unknown; version?: unknown };
        if (pkg.name === 'registry-mirror' && typeof pkg.version === 'string') cached = pkg.version;
      } catch {
        // unreadable: the version stays unknown
      }
      break;
    }
    dir = dirname(dir);
  }
  return cached;
}
