// Small client-side helpers the mirror's integration tests share: fetch a blob while hashing
// it, and look at the store on disk.

import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';

export interface Fetched {
  status: number;
  headers: Headers;
  digest?: string;
  bytes: number;
  /** Set when the body ended abnormally (aborted, reset). */
  error?: string;
}

/** GETs a URL and hashes the body as it streams, never holding it in memory. */
export async function fetchHashed(url: string, init: RequestInit = {}): Promise<Fetched> {
  const res = await fetch(url, init);
  const hash = createHash('sha256');
  let bytes = 0;
  try {
    if (res.body) {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        hash.update(chunk);
        bytes += chunk.length;
      }
    }
  } catch (err) {
    return { status: res.status, headers: res.headers, bytes, error: String((err as Error).cause ?? err) };
  }
  return { status: res.status, headers: res.headers, bytes, digest: `sha256:${hash.digest('hex')}` };
}

export function blobPath(dataDir: string, digest: string): string {
  const [alg, hex] = digest.split(':') as [string, string];
  return join(dataDir, 'blobs', alg, hex.slice(0, 2), hex);
}

export function isCached(dataDir: string, digest: string): boolean {
  return existsSync(blobPath(dataDir, digest));
}

export function tempFiles(dataDir: string): string[] {
  const dir = join(dataDir, 'tmp');
  return existsSync(dir) ? readdirSync(dir) : [];
}

export async function ociError(res: Response): Promise<string | undefined> {
  const body = (await res.json().catch(() => undefined)) as { errors?: Array<{ code: string }> } | undefined;
  return body?.errors?.[0]?.code;
}

/** Sends a request with the path exactly as given (fetch would normalize "%2e%2e" away). */
export function rawRequest(base: string, path: string, method = 'GET'): Promise<{ status: number; body: string }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path, method }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}
