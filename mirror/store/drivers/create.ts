// The store driver a config asks for: storage.s3 when set, else the directory storage.path.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, type MirrorConfig, type S3StorageConfig } from '../../config.js';
import type { StoreDriver } from '../driver.js';
import { FsDriver } from './fs-driver.js';
import { S3Driver } from './s3-driver.js';

export function createDriver(config: Pick<MirrorConfig, 'storage' | 'upstreamTimeouts'>): StoreDriver {
  const s3 = config.storage.s3;
  if (!s3) return new FsDriver(config.storage.path);
  return new S3Driver({
    bucket: s3.bucket,
    ...(s3.endpoint !== undefined ? { endpoint: s3.endpoint } : {}),
    region: s3.region,
    prefix: s3.prefix,
    forcePathStyle: s3.forcePathStyle,
    ...s3Credentials(s3),
    presignTTLMs: s3.presignTTLMs,
    partSize: s3.partSize,
    uploadExpiryMs: s3.uploadExpiryMs,
    // The store is asked as the upstream is: a bucket that does not answer in time is
    // unavailable (503 on warm reads, uncached cold pulls), never a hang.
    requestTimeoutMs: config.upstreamTimeouts.headersMs,
    // With S3, storage.path holds only downloads in flight (the operator's emptyDir).
    scratchDir: join(config.storage.path, 'tmp'),
  });
}

/** Inline keys, keys read from files (as mounted from a Secret), or none: the SDK's default chain. */
function s3Credentials(s3: S3StorageConfig): { credentials?: { accessKeyId: string; secretAccessKey: string } } {
  if (s3.accessKeyId !== undefined && s3.secretAccessKey !== undefined) return { credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } };
  if (s3.accessKeyIdFile === undefined || s3.secretAccessKeyFile === undefined) return {};
  const read = (file: string, key: string) => {
    let text: string;
    try {
      text = readFileSync(file, 'utf8').trim();
    } catch (err) {
      throw new ConfigError(`storage.s3.${key}`, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    if (!text) throw new ConfigError(`storage.s3.${key}`, `${file} is empty`);
    return text;
  };
  return { credentials: { accessKeyId: read(s3.accessKeyIdFile, 'accessKeyIdFile'), secretAccessKey: read(s3.secretAccessKeyFile, 'secretAccessKeyFile') } };
}
