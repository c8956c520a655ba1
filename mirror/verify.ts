// `registry-mirror verify [--config FILE] [--repair] [--force]`: rehashes every blob and
// manifest in the store (v1 json, ancestry and layers are blobs too) and checks the records
// that point at them, on either store driver. Run it on a directory no server is using: it
// refuses while state/serve.pid names a live process (--force overrides, e.g. for a record
// left by a pod on another host), and a server refuses to start while it runs. An S3 bucket is
// shared by design and has no owner record: verify runs beside the servers (a repair moves
// corrupt content away and they fetch it again; a record it removes as a leftover is written
// again by the next request that needs it).
//
// What it finds, in two classes:
// - corrupt: content whose bytes do not match the digest it is stored under, unreadable
//   files, files in the content trees the mirror never writes (not named by a digest, a
//   manifest without its media type), records that are not valid JSON. The store cannot
//   produce these by crashing (everything appears by rename of a finished, fsynced file), so
//   they mean the disk or someone else changed it. Exit code 1.
// - leftovers: unfinished downloads in tmp/ (a crash; the server sweeps them at start), a
//   manifest's .type without the manifest (a crash between the two renames), tag, link and v1
//   records whose content was expired or evicted (the server treats them as absent). Harmless;
//   reported, exit code 0.
// With --repair, corrupt files are moved to quarantine/<time>/<same key> in the store
// (never deleted: someone may want to look at them) and leftovers are removed; every action is
// printed. The server then fetches quarantined content again from the upstream on demand.

import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { ConfigError, type MirrorConfig } from './config.js';
import { formatBytes } from './format.js';
import { isSignedSchema1, provesDigest } from './manifest-digest.js';
import { parseDigest, type Digest } from './reference.js';
import { isStoreUnavailable, type ObjectInfo, type StoreDriver } from './store/driver.js';
import { ProgressReporter, type VerifyProgress } from './verify-progress.js';
import { createDriver } from './store/drivers/create.js';
import { activeOwner, claimStore, describeOwner } from './store/owner.js';

export type FindingClass = 'corrupt' | 'leftover';

export interface Finding {
  class: FindingClass;
  /** Path relative to the store root. */
  path: string;
  problem: string;
  /** What --repair did: "quarantined to ..." or "removed". */
  action?: string;
}

export interface VerifyReport {
  root: string;
  checked: { blobs: number; manifests: number; bytes: number; tags: number; links: number; v1Records: number; tmp: number };
  findings: Finding[];
  corrupt: number;
  leftovers: number;
  quarantineDir?: string;
  ms: number;
}

const digestAlgorithms = ['sha256', 'sha512'] as const;

/**
 * Checks (and with repair, fixes) a store. Pure of any server state. `onProgress` hears of
 * every chunk rehashed (the bytes and objects of the content listed at the start).
 */
export async function verifyStore(driver: StoreDriver, opts: { repair?: boolean; now?: Date; onProgress?: (p: VerifyProgress) => void } = {}): Promise<VerifyReport> {
  const t0 = Date.now();
  const stamp = (opts.now ?? new Date()).toISOString().replace(/[:.]/g, '-');
  const quarantinePrefix = `quarantine/${stamp}`;
  const report: VerifyReport = {
    root: driver.location,
    checked: { blobs: 0, manifests: 0, bytes: 0, tags: 0, links: 0, v1Records: 0, tmp: 0 },
    findings: [],
    corrupt: 0,
    leftovers: 0,
    ms: 0,
  };
  const corrupt = async (key: string, problem: string, also: string[] = []) => {
    const f: Finding = { class: 'corrupt', path: key, problem };
    if (opts.repair) {
      for (const k of [key, ...also]) await driver.move(k, `${quarantinePrefix}/${k}`);
      f.action = `quarantined to ${quarantinePrefix}/${key}`;
      report.quarantineDir = driver.kind === 'filesystem' ? join(driver.location, quarantinePrefix) : `${quarantinePrefix}/ in ${driver.location}`;
    }
    report.findings.push(f);
    report.corrupt++;
  };
  const leftover = async (key: string, problem: string) => {
    const f: Finding = { class: 'leftover', path: key, problem };
    if (opts.repair) {
      await driver.delete(key);
      f.action = 'removed';
    }
    report.findings.push(f);
    report.leftovers++;
  };
  const objectsUnder = async (prefix: string): Promise<ObjectInfo[]> => {
    const objects: ObjectInfo[] = [];
    for await (const o of driver.list(prefix)) objects.push(o);
    return objects.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  };
  const keysUnder = async (prefix: string): Promise<string[]> => (await objectsUnder(prefix)).map((o) => o.key);

  // ---- content: blobs and manifests ------------------------------------------------------
  const present = { blob: new Set<string>(), manifest: new Set<string>() };
  // Listed first, so progress can say how much is left.
  const listed = { blob: await objectsUnder('blobs/'), manifest: await objectsUnder('manifests/') };
  const content = [...listed.blob, ...listed.manifest].filter((o) => !o.key.endsWith('.type'));
  const progress: VerifyProgress = { objects: 0, totalObjects: content.length, bytes: 0, totalBytes: content.reduce((n, o) => n + o.size, 0), elapsedMs: 0 };
  const tell = (done = false) => opts.onProgress?.({ ...progress, elapsedMs: Date.now() - t0, ...(done ? { done } : {}) });
  tell();
  for (const kind of ['blob', 'manifest'] as const) {
    const keys = listed[kind].map((o) => o.key);
    const have = new Set(keys);
    for (const key of keys) {
      if (!key.endsWith('.type')) {
        progress.objects++;
        tell();
      }
      const [, alg = '', xx = '', name = '', ...deeper] = key.split('/');
      if (!(digestAlgorithms as readonly string[]).includes(alg)) {
        await corrupt(key, 'not under a digest algorithm the mirror writes');
        continue;
      }
      if (!/^[a-f0-9]{2}$/.test(xx) || deeper.length > 0 || !name) {
        await corrupt(key, 'not in a fan-out directory the mirror writes');
        continue;
      }
      if (kind === 'manifest' && name.endsWith('.type')) {
        if (!have.has(key.slice(0, -'.type'.length))) await leftover(key, 'media type of a manifest that is not there (a crash between two writes)');
        continue;
      }
      const digest = tryDigest(`${alg}:${name}`);
      if (!digest || !name.startsWith(xx)) {
        await corrupt(key, 'not named by a digest where the mirror would store it');
        continue;
      }
      let mediaType: string | undefined;
      if (kind === 'manifest') {
        mediaType = (await driver.get(`${key}.type`).catch(() => undefined))?.toString('utf8');
        if (!mediaType) {
          await corrupt(key, 'manifest without its media type (.type): not written by the mirror');
          continue;
        }
      }
      const typeKey = kind === 'manifest' ? [`${key}.type`] : [];
      let bytes = 0;
      let actual: string;
      try {
        ({ hex: actual, bytes } = await hashObject(driver, key, digest.algorithm, (n) => {
          progress.bytes += n;
          tell();
        }));
      } catch (err) {
        if (isStoreUnavailable(err)) throw err;
        await corrupt(key, `unreadable: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, typeKey);
        continue;
      }
      report.checked.bytes += bytes;
      if (kind === 'blob') report.checked.blobs++;
      else report.checked.manifests++;
      let ok = actual === digest.hex;
      // A signed schema1 manifest's digest covers its payload without the signatures.
      if (!ok && mediaType && isSignedSchema1(mediaType)) ok = provesDigest((await driver.get(key)) ?? Buffer.alloc(0), mediaType, digest);
      if (!ok) {
        await corrupt(key, `content hashes to ${digest.algorithm}:${actual}, not its name`, typeKey);
        continue;
      }
      present[kind].add(digest.value);
    }
  }

  tell(true);

  // ---- records: tags and links of v2 repositories ----------------------------------------
  for (const key of await keysUnder('repos/')) {
    const parts = key.split('/');
    if (parts.at(-2) === '_tags') {
      report.checked.tags++;
      const rec = await readJsonRecord(driver, key);
      if (rec === 'invalid') await corrupt(key, 'tag record is not valid JSON');
      else if (rec === undefined || typeof rec.digest !== 'string' || !tryDigest(rec.digest)) await corrupt(key, 'tag record without a valid digest');
      else if (!present.manifest.has(rec.digest)) await leftover(key, `tag points at manifest ${rec.digest}, which is not in the store (expired or evicted)`);
    } else if (parts.at(-3) === '_links') {
      report.checked.links++;
      const d = tryDigest(`${parts.at(-2)}:${parts.at(-1)}`);
      if (!d) await corrupt(key, 'link not named by a digest');
      else if (!present.blob.has(d.value) && !present.manifest.has(d.value)) await leftover(key, `link to ${d.value}, which is not in the store (expired or evicted)`);
    }
  }

  // ---- records: v1 pointers into the content store ---------------------------------------
  for (const key of await keysUnder('v1/')) {
    report.checked.v1Records++;
    const rec = await readJsonRecord(driver, key);
    if (rec === 'invalid') await corrupt(key, 'v1 record is not valid JSON');
    else if (rec === undefined || typeof rec.digest !== 'string') await corrupt(key, 'v1 record without a digest');
    // An empty digest is a json record whose bytes could not be cached (disk full).
    else if (rec.digest !== '' && !present.blob.has(rec.digest)) await leftover(key, `points at ${rec.digest}, which is not in the store (expired or evicted)`);
  }

  // ---- temp files (local scratch) --------------------------------------------------------
  const scratchName = driver.kind === 'filesystem' ? relative(driver.location, driver.scratchDir).split(sep).join('/') : driver.scratchDir;
  for (const name of (await fs.readdir(driver.scratchDir).catch(() => [])).sort()) {
    report.checked.tmp++;
    const f: Finding = { class: 'leftover', path: `${scratchName}/${name}`, problem: 'unfinished write of an earlier run (the server sweeps these at start)' };
    if (opts.repair) {
      await fs.rm(join(driver.scratchDir, name), { force: true, recursive: true });
      f.action = 'removed';
    }
    report.findings.push(f);
    report.leftovers++;
  }

  report.ms = Date.now() - t0;
  return report;
}

export function formatReport(r: VerifyReport): string {
  const lines: string[] = [];
  for (const f of r.findings) lines.push(`${f.class.padEnd(8)} ${f.path}: ${f.problem}${f.action ? ` [${f.action}]` : ''}`);
  const c = r.checked;
  lines.push(
    `verify: ${r.root}: ${c.blobs} blobs and ${c.manifests} manifests rehashed (${formatBytes(c.bytes)}), ` +
      `${c.tags} tag records, ${c.links} links, ${c.v1Records} v1 records checked in ${(r.ms / 1000).toFixed(1)} s`,
  );
  lines.push(
    r.corrupt === 0
      ? `verify: store consistent${r.leftovers ? ` (${r.leftovers} harmless leftovers${r.findings.some((f) => f.action) ? ', removed' : ''})` : ''}`
      : `verify: CORRUPTION: ${r.corrupt} corrupt file(s)${r.quarantineDir ? `, quarantined in ${r.quarantineDir}` : '; run with --repair to quarantine them'}` +
          (r.leftovers ? `; ${r.leftovers} harmless leftovers` : ''),
  );
  return lines.join('\n');
}

export async function runVerify(argv: string[]): Promise<void> {
  const repair = argv.includes('--repair');
  const force = argv.includes('--force');
  const rest = argv.filter((a) => a !== '--repair' && a !== '--force');
  // Loaded here, not at the top: main.js pulls in the whole server.
  const { loadConfig } = await import('./main.js');
  let config: MirrorConfig;
  try {
    config = loadConfig(rest, process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`registry-mirror: ${err.message.replace('registry-mirror serve', 'registry-mirror verify')}\n`);
      process.exit(2);
    }
    throw err;
  }
  const driver = createDriver(config);
  if (config.storage.s3) {
    // A bucket is shared by design: servers may keep running. open() proves access first.
    try {
      await driver.open();
    } catch (err) {
      process.stderr.write(`registry-mirror: config: storage.s3: ${driver.location}: ${(err as Error).message}\n`);
      process.exit(2);
    }
    let report: VerifyReport;
    try {
      report = await verifyStore(driver, { repair, onProgress: progressOnStderr() });
    } finally {
      await driver.close();
    }
    process.stdout.write(`${formatReport(report)}\n`);
    process.exitCode = report.corrupt > 0 ? 1 : 0;
    return;
  }
  const root = config.storage.path;
  if (!(await fs.stat(root).catch(() => undefined))?.isDirectory()) {
    process.stderr.write(`registry-mirror: verify: ${root} is not a store directory\n`);
    process.exit(2);
  }
  const server = activeOwner(root, 'serve');
  if (server && !force) {
    process.stderr.write(
      `registry-mirror: verify: a server is using ${root} (${describeOwner(server)}); stop it first ` +
        `(or pass --force if that record is stale, e.g. left by a pod on another host)\n`,
    );
    process.exit(2);
  }
  const release = await claimStore(root, 'verify');
  let report: VerifyReport;
  try {
    report = await verifyStore(driver, { repair, onProgress: progressOnStderr() });
  } finally {
    await release();
  }
  process.stdout.write(`${formatReport(report)}\n`);
  process.exitCode = report.corrupt > 0 ? 1 : 0;
}

/** Progress lines on stderr (verify-progress.ts): rewritten in place on a terminal, plain otherwise. */
function progressOnStderr(): (p: VerifyProgress) => void {
  const reporter = new ProgressReporter(process.stderr.isTTY === true);
  return (p) => {
    const out = p.done ? reporter.finish(p) : reporter.update(p, Date.now());
    if (out !== undefined) process.stderr.write(out);
  };
}

function tryDigest(value: string): Digest | undefined {
  try {
    return parseDigest(value);
  } catch {
    return undefined;
  }
}

async function hashObject(driver: StoreDriver, key: string, algorithm: string, onBytes: (n: number) => void): Promise<{ hex: string; bytes: number }> {
  const hash = createHash(algorithm);
  let bytes = 0;
  const size = (await driver.stat(key))?.size ?? 0;
  const body = await driver.openRead(key, 0, size - 1);
  if (!body) throw Object.assign(new Error('gone while verifying'), { code: 'ENOENT' });
  for await (const chunk of body) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
    onBytes((chunk as Buffer).length);
  }
  return { hex: hash.digest('hex'), bytes };
}

async function readJsonRecord(driver: StoreDriver, key: string): Promise<{ digest?: unknown } | 'invalid' | undefined> {
  let text: string;
  try {
    const bytes = await driver.get(key);
    if (!bytes) return 'invalid';
    text = bytes.toString('utf8');
  } catch (err) {
    if (isStoreUnavailable(err)) throw err;
    return 'invalid';
  }
  try {
    const v = JSON.parse(text) as unknown;
    return v && typeof v === 'object' ? (v as { digest?: unknown }) : undefined;
  } catch {
    return 'invalid';
  }
}
