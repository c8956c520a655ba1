// skopeo as a real registry client: pushes the test fixtures and the bench's images, and pulls
// through the mirror.
//
// Every call passes --insecure-policy (no dependency on /etc/containers/policy.json) and an
// empty auth file via REGISTRY_AUTH_FILE, so credentials lying around on the machine never
// leak into a test; credentials are given explicitly with --src-creds/--dest-creds.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run, tempDir } from './proc.js';
import { sha256 } from '../oci/oci-client.js';

export interface SkopeoOptions {
  timeoutMs?: number;
  /** "user:password" */
  creds?: string;
}

let authFile: string | undefined;
function authEnv(): Record<string, string> {
  if (!authFile) {
    authFile = join(tempDir('skopeo-auth'), 'auth.json');
    // c/image wants a readable JSON object here; an empty one means "no stored credentials".
    writeFileSync(authFile, '{"auths":{}}');
  }
  return { REGISTRY_AUTH_FILE: authFile };
}

async function skopeo(args: string[], timeoutMs: number): Promise<string> {
  const r = await run('skopeo', ['--insecure-policy', ...args], { timeoutMs, env: authEnv() });
  return r.stdout;
}

export interface CopyOptions extends SkopeoOptions {
  /** Copy every platform of an index, not just the one matching this machine. */
  all?: boolean;
  /** Convert manifests, e.g. "v2s2" for Docker schema 2 (and manifest lists with all). */
  format?: 'oci' | 'v2s2';
  srcCreds?: string;
  destCreds?: string;
  /**
   * A containers-certs.d directory for the source (*.crt CAs, client.cert/client.key): the
   * source is then reached over verified https.
   */
  srcCertDir?: string;
}

/**
 * skopeo copy SRC DST with TLS verification off on both sides (everything is plain HTTP on
 * loopback), except a source with srcCertDir. Throws with skopeo's stderr on failure or after the timeout.
 */
export async function skopeoCopy(src: string, dest: string, opts: CopyOptions = {}): Promise<void> {
  const args = ['copy', opts.srcCertDir ? '--src-tls-verify=true' : '--src-tls-verify=false', '--dest-tls-verify=false'];
  if (opts.srcCertDir) args.push('--src-cert-dir', opts.srcCertDir);
  if (opts.all) args.push('--all');
  if (opts.format) args.push('--format', opts.format);
  if (opts.srcCreds) args.push('--src-creds', opts.srcCreds);
  if (opts.destCreds) args.push('--dest-creds', opts.destCreds);
  // Progress bars are noise in a log and slow skopeo down on a pipe.
  args.push('--quiet', src, dest);
  await skopeo(args, opts.timeoutMs ?? 120000);
}

/**
 * Pulls docker://REF into a dir: layout and returns the digest of the manifest it wrote
 * (for all: the index/list digest). ref is "HOST/REPO:TAG" or "HOST/REPO@DIGEST", without
 * the docker:// transport.
 */
export async function skopeoCopyToDir(ref: string, outDir: string, opts: CopyOptions = {}): Promise<{ manifestDigest: string }> {
  await skopeoCopy(`docker://${ref}`, `dir:${outDir}`, { ...opts, srcCreds: opts.srcCreds ?? opts.creds });
  return { manifestDigest: sha256(readFileSync(join(outDir, 'manifest.json'))) };
}

/** The digest skopeo resolves for docker://REF (of the list/index for multi-platform tags). */
export async function skopeoInspectDigest(ref: string, opts: SkopeoOptions = {}): Promise<string> {
  const args = ['inspect', '--raw', '--tls-verify=false'];
  if (opts.creds) args.push('--creds', opts.creds);
  const raw = await skopeo([...args, `docker://${ref}`], opts.timeoutMs ?? 60000);
  // --raw gives the manifest bytes exactly as served; their sha256 is the manifest digest
  // (plain `inspect` would pick this machine's platform out of an index).
  return sha256(Buffer.from(raw, 'utf8'));
}
