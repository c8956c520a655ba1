// `registry-mirror verify [--config FILE] [--repair] [--force]`: rehashes every blob and
// manifest in the store (v1 json, ancestry and layers are blobs too) and checks the records
// that point at them. Run it on a store no server is using: it refuses while state/serve.pid
// names a live process (--force overrides, e.g. for a record left by a pod on another host),
// and a server refuses to start while it runs.
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
// With --repair, corrupt files are moved to <root>/quarantine/<time>/<same relative path>
// (never deleted: someone may want to look at them) and leftovers are removed; every action is
// printed. The server then fetches quarantined content again from the upstream on demand.

import { createHash } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { ConfigError } from './config.js';
import { isSignedSchema1, provesDigest } from './manifest-digest.js';
import { parseDigest, type Digest } from './reference.js';
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

/** Checks (and with repair, fixes) the store at root. Pure of any server state. */
export async function verifyStore(root: string, opts: { repair?: boolean; now?: Date } = {}): Promise<VerifyReport> {
  const t0 = Date.now();
  const stamp = (opts.now ?? new Date()).toISOString().replace(/[:.]/g, '-');
  const quarantineDir = join(root, 'quarantine', stamp);
  const report: VerifyReport = {
    root,
    checked: { blobs: 0, manifests: 0, bytes: 0, tags: 0, links: 0, v1Records: 0, tmp: 0 },
    findings: [],
    corrupt: 0,
    leftovers: 0,
    ms: 0,
  };
  const rel = (p: string) => relative(root, p).split(sep).join('/');
  const corrupt = async (path: string, problem: string, also: string[] = []) => {
    const f: Finding = { class: 'corrupt', path: rel(path), problem };
    if (opts.repair) {
      for (const p of [path, ...also]) {
        const to = join(quarantineDir, relative(root, p));
        await fs.mkdir(dirname(to), { recursive: true });
        await fs.rename(p, to).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') throw err;
        });
      }
      f.action = `quarantined to ${rel(join(quarantineDir, relative(root, path)))}`;
      report.quarantineDir = quarantineDir;
    }
    report.findings.push(f);
    report.corrupt++;
  };
  const leftover = async (path: string, problem: string) => {
    const f: Finding = { class: 'leftover', path: rel(path), problem };
    if (opts.repair) {
      await fs.rm(path, { force: true, recursive: true });
      f.action = 'removed';
    }
    report.findings.push(f);
    report.leftovers++;
  };

  // ---- content: blobs and manifests ------------------------------------------------------
  const present = { blob: new Set<string>(), manifest: new Set<string>() };
  for (const kind of ['blob', 'manifest'] as const) {
    const top = join(root, kind === 'blob' ? 'blobs' : 'manifests');
    for (const alg of await entries(top)) {
      const algDir = join(top, alg.name);
      if (!alg.isDirectory() || !(digestAlgorithms as readonly string[]).includes(alg.name)) {
        await corrupt(algDir, 'not a digest algorithm directory the mirror writes');
        continue;
      }
      for (const xx of await entries(algDir)) {
        const xxDir = join(algDir, xx.name);
        if (!xx.isDirectory() || !/^[a-f0-9]{2}$/.test(xx.name)) {
          await corrupt(xxDir, 'not a fan-out directory the mirror writes');
          continue;
        }
        const names = await entries(xxDir);
        const have = new Set(names.map((n) => n.name));
        for (const e of names) {
          const path = join(xxDir, e.name);
          if (kind === 'manifest' && e.name.endsWith('.type')) {
            if (!have.has(e.name.slice(0, -'.type'.length))) await leftover(path, 'media type of a manifest that is not there (a crash between two renames)');
            continue;
          }
          const digest = tryDigest(`${alg.name}:${e.name}`);
          if (!e.isFile() || !digest || !e.name.startsWith(xx.name)) {
            await corrupt(path, 'not named by a digest where the mirror would store it');
            continue;
          }
          let mediaType: string | undefined;
          if (kind === 'manifest') {
            mediaType = await fs.readFile(`${path}.type`, 'utf8').catch(() => undefined);
            if (!mediaType) {
              await corrupt(path, 'manifest without its media type (.type): not written by the mirror');
              continue;
            }
          }
          let bytes = 0;
          let actual: string;
          try {
            ({ hex: actual, bytes } = await hashFile(path, digest.algorithm));
          } catch (err) {
            await corrupt(path, `unreadable: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, kind === 'manifest' ? [`${path}.type`] : []);
            continue;
          }
          report.checked.bytes += bytes;
          if (kind === 'blob') report.checked.blobs++;
          else report.checked.manifests++;
          let ok = actual === digest.hex;
          // A signed schema1 manifest's digest covers its payload without the signatures.
          if (!ok && mediaType && isSignedSchema1(mediaType)) ok = provesDigest(await fs.readFile(path), mediaType, digest);
          if (!ok) {
            await corrupt(path, `content hashes to ${digest.algorithm}:${actual}, not its name`, kind === 'manifest' ? [`${path}.type`] : []);
            continue;
          }
          present[kind].add(digest.value);
        }
      }
    }
  }

  // ---- records: tags and links of v2 repositories ----------------------------------------
  const walkRepos = async (dir: string): Promise<void> => {
    for (const e of await entries(dir)) {
      const path = join(dir, e.name);
      if (!e.isDirectory()) continue;
      if (e.name === '_tags') {
        for (const t of await entries(path)) {
          const p = join(path, t.name);
          report.checked.tags++;
          const rec = await readJsonRecord(p);
          if (rec === 'invalid') await corrupt(p, 'tag record is not valid JSON');
          else if (rec === undefined || typeof rec.digest !== 'string' || !tryDigest(rec.digest)) await corrupt(p, 'tag record without a valid digest');
          else if (!present.manifest.has(rec.digest)) await leftover(p, `tag points at manifest ${rec.digest}, which is not in the store (expired or evicted)`);
        }
      } else if (e.name === '_links') {
        for (const alg of await entries(path)) {
          for (const l of await entries(join(path, alg.name))) {
            const p = join(path, alg.name, l.name);
            report.checked.links++;
            const d = tryDigest(`${alg.name}:${l.name}`);
            if (!d) await corrupt(p, 'link not named by a digest');
            else if (!present.blob.has(d.value) && !present.manifest.has(d.value)) await leftover(p, `link to ${d.value}, which is not in the store (expired or evicted)`);
          }
        }
      } else {
        await walkRepos(path);
      }
    }
  };
  await walkRepos(join(root, 'repos'));

  // ---- records: v1 pointers into the content store ---------------------------------------
  const walkV1 = async (dir: string): Promise<void> => {
    for (const e of await entries(dir)) {
      const path = join(dir, e.name);
      if (e.isDirectory()) {
        await walkV1(path);
        continue;
      }
      report.checked.v1Records++;
      const rec = await readJsonRecord(path);
      if (rec === 'invalid') await corrupt(path, 'v1 record is not valid JSON');
      else if (rec === undefined || typeof rec.digest !== 'string') await corrupt(path, 'v1 record without a digest');
      // An empty digest is a json record whose bytes could not be cached (disk full).
      else if (rec.digest !== '' && !present.blob.has(rec.digest)) await leftover(path, `points at ${rec.digest}, which is not in the store (expired or evicted)`);
    }
  };
  await walkV1(join(root, 'v1'));

  // ---- tmp/ ------------------------------------------------------------------------------
  for (const e of await entries(join(root, 'tmp'))) {
    report.checked.tmp++;
    await leftover(join(root, 'tmp', e.name), 'unfinished write of an earlier run (the server sweeps these at start)');
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
  let root: string;
  try {
    root = loadConfig(rest, process.env).storage.path;
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`registry-mirror: ${err.message.replace('registry-mirror serve', 'registry-mirror verify')}\n`);
      process.exit(2);
    }
    throw err;
  }
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
    report = await verifyStore(root, { repair });
  } finally {
    await release();
  }
  process.stdout.write(`${formatReport(report)}\n`);
  process.exitCode = report.corrupt > 0 ? 1 : 0;
}

async function entries(dir: string): Promise<import('node:fs').Dirent[]> {
  try {
    return (await fs.readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name));
  } catch {
    return [];
  }
}

function tryDigest(value: string): Digest | undefined {
  try {
    return parseDigest(value);
  } catch {
    return undefined;
  }
}

async function hashFile(path: string, algorithm: string): Promise<{ hex: string; bytes: number }> {
  const hash = createHash(algorithm);
  let bytes = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { hex: hash.digest('hex'), bytes };
}

async function readJsonRecord(path: string): Promise<{ digest?: unknown } | 'invalid' | undefined> {
  let text: string;
  try {
    text = await fs.readFile(path, 'utf8');
  } catch {
    return 'invalid';
  }
  try {
    const v = JSON.parse(text) as unknown;
    return v && typeof v === 'object' ? (v as { digest?: unknown }) : undefined;
  } catch {
    return 'invalid';
  }
}

function formatBytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}
