// Fuzzing the HTTP surface with fast-check: random and hostile requests written raw on a TCP
// socket (not fetch, not even node:http, which normalize or refuse what an attacker can still
// send): "..", "%2e%2e%2f", overlong-UTF-8 dots, NUL and CR/LF, overlong names, invalid digests
// and tags, odd ?ns= and pagination, invalid and huge Range headers, huge headers, odd methods,
// /v1, /v2 and the operational paths. Upstream and v1 source are real and up, so no 5xx is an
// upstream's (except where the upstream itself fails: distribution answers 500 to a manifest
// GET by a blob's digest, and that 500, checked in its access log, may come back as 503
// UNAVAILABLE): the mirror must never answer 5xx of its own, never die (/healthz after every batch), never
// create or change a file outside its store root (a snapshot of the directories around it,
// with a sentinel, taken before and after), and leave a store `verify` finds consistent.
//
// FUZZ_RUNS (default 5000) and FUZZ_SECONDS (default 60, a cap) bound the run; FUZZ_SEED
// replays one.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { mirrorBin, startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { run, tempDir, waitFor } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { buildV1Fixture, startV1Source, type V1SourceHandle } from '../rig/v1-source.js';
import { pushRandomImage, type RandomImage } from './helpers.js';

const runs = Number(process.env.FUZZ_RUNS ?? 5000);
const seconds = Number(process.env.FUZZ_SECONDS ?? 60);
const seed = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED);

interface RawAnswer {
  /** 0 when the server closed the connection without an answer. */
  status: number;
  head: string;
}

/**
 * Writes the bytes as they are and reads the answer until the server closes (every request
 * says Connection: close, though a fuzzed header may say otherwise). No answer within 15 s,
 * our side closed included, is a hang, and fails.
 */
function sendRaw(port: number, bytes: Buffer): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let size = 0;
    // A second of silence: the request waits for more, or the answer is complete but the
    // connection kept alive (conflicting Connection headers): close our side.
    let quiet = setTimeout(() => sock.end(), 1000);
    const hang = setTimeout(() => {
      sock.destroy();
      reject(new Error('no answer within 15 s'));
    }, 15_000);
    sock.on('data', (c: Buffer) => {
      clearTimeout(quiet);
      quiet = setTimeout(() => sock.end(), 1000);
      // Only the head matters; keep memory flat on large bodies.
      if (size < 8192) chunks.push(c);
      size += c.length;
    });
    sock.on('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNRESET' || err.code === 'EPIPE' ? finish() : reject(err)));
    sock.on('close', () => finish());
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(quiet);
      clearTimeout(hang);
      const text = Buffer.concat(chunks).toString('latin1');
      // The final answer: after any interim 1xx (Expect: 100-continue).
      const finals = [...text.matchAll(/(?:^|\r\n)HTTP\/1\.[01] (\d{3})/g)].map((m) => Number(m[1])).filter((st) => st >= 200);
      resolve({ status: finals[0] ?? 0, head: text.slice(0, 600) });
    };
    sock.write(bytes);
  });
}

/** Every file and directory under dir (except `skip`), with size and mtime. */
function snapshot(dir: string, skip: string[] = []): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (skip.includes(p)) continue;
      const st = statSync(p);
      out.push(`${rel}${name}${st.isDirectory() ? '/' : ` ${st.size} ${st.mtimeMs}`}`);
      if (st.isDirectory()) walk(p, `${rel}${name}/`);
    }
  };
  walk(dir, '');
  return out.sort();
}

describe('fuzzing the HTTP surface', { timeout: (seconds + 120) * 1000 }, () => {
  let registry: RegistryHandle;
  let source: V1SourceHandle;
  let mirror: MirrorHandle;
  let image: RandomImage;
  let jail: string;
  let store: string;
  const v1 = buildV1Fixture({ 'library/fuzz': [10_000, 2_000] });

  before(async () => {
    registry = await startRegistry();
    image = await pushRandomImage(registry.url, 'fuzz/app', 'v1', [5_000, 700], 'fuzz');
    source = await startV1Source(v1);
    // The store sits in a "jail" beside a sentinel: a request that escaped the store root
    // with ../ would land here first.
    jail = tempDir('fuzz-jail');
    store = join(jail, 'store');
    mkdirSync(join(jail, 'sentinel'));
    writeFileSync(join(jail, 'sentinel', 'secret'), 'do not touch');
    mirror = await startMirror({
      storage: { path: store },
      upstreams: { 'docker.io': { url: registry.url }, 'registry.fuzz.test': { url: registry.url } },
      v1: { enabled: true, source: source.url },
      logLevel: 'warn',
    });
  });

  after(async () => {
    await mirror?.stop();
    await source?.stop();
    await registry?.stop();
  });

  it(`${runs} hostile requests: no 5xx, no crash, nothing written outside the store`, async () => {
    const id = v1.images[1]!.id;
    const digest = image.layers[0]!.digest;
    const segment = fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom('fuzz', 'app', 'library', 'registry.fuzz.test', 'docker.io', 'manifests', 'blobs', 'tags', 'list', 'uploads', 'v1', 'latest', digest, image.digest, '_catalog', 'images', 'repositories', id, 'json', 'ancestry', 'layer', '_ping', 'sentinel', 'store') },
      { weight: 4, arbitrary: fc.constantFrom('..', '.', '%2e%2e', '%2e%2e%2f', '..%2f', '%2E%2E%2F', '..%252f', '%c0%ae%c0%ae', '..\\', '%5c', '%00', '\0', '%', '%zz', '%u002e', '%0d%0a', '\r\nX-Injected: 1', '//', '~', ';', '$', '*', '%20', ' ', '\t', '\x7f', 'é', '%ff%fe', '_links', '_tags', 'tmp', 'quarantine') },
      { weight: 3, arbitrary: fc.constantFrom('sha256:xyz', `sha256:${'A'.repeat(64)}`, `sha256:${'a'.repeat(63)}`, `sha512:${'a'.repeat(64)}`, `md5:${'a'.repeat(32)}`, 'sha256:', ':', `sha256:${'a'.repeat(64)}/../..`, `sha256:${'0'.repeat(64)}`) },
      { weight: 2, arbitrary: fc.integer({ min: 1, max: 9000 }).map((n) => 'a'.repeat(n)) },
      { weight: 3, arbitrary: fc.string({ maxLength: 40 }) },
      { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 12 }) },
    );
    // Paths shaped like the API's, with valid and hostile parts: these reach the caches, the
    // store and the upstreams (most of the random ones below stop at validation).
    const hostile = fc.constantFrom('..', '%2e%2e%2f..', '..%2f..%2fsentinel', '%00', 'a%2fb', '%2e', '.', '', 'A', 'a..b', '-a', 'a-', '_a', `${'a'.repeat(256)}`, '%c0%ae%c0%ae', 'a\\b');
    const name = fc.oneof(
      fc.constantFrom('fuzz/app', 'library/fuzz', 'fuzz', 'registry.fuzz.test/fuzz/app', 'docker.io/fuzz/app', 'unknown/repo', 'a/b/c/d/e', 'x'.repeat(255), `${'a/'.repeat(130)}a`),
      fc.stringMatching(/^[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,4})?(?:\/[a-z0-9]{1,8}){0,3}$/),
      fc.tuple(fc.constantFrom('fuzz', 'library', 'registry.fuzz.test'), hostile, fc.constantFrom('app', 'fuzz', '')).map((p) => p.join('/')),
    );
    const ref = fc.oneof(
      fc.constantFrom('v1', 'latest', image.digest, digest, 'sha256:', `sha256:${'A'.repeat(64)}`, `sha512:${'b'.repeat(128)}`, `sha256:${'c'.repeat(64)}`, 'a'.repeat(129), '..', '%2e%2e', '_', '-x', 'v1%00', 'v1/../v1'),
      fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}$/),
    );
    const v1Name = fc.oneof(fc.constantFrom('library/fuzz', 'fuzz', 'team/none', '../x', 'library/..', 'library/.hidden', 'ab/c', 'a--b/c', id), fc.stringMatching(/^[a-z0-9_-]{1,10}\/[a-z0-9_.-]{1,10}$/));
    const structured = fc.oneof(
      fc.tuple(name, ref).map(([n, r]) => `/v2/${n}/manifests/${r}`),
      fc.tuple(name, ref).map(([n, r]) => `/v2/${n}/blobs/${r}`),
      name.map((n) => `/v2/${n}/tags/list`),
      name.map((n) => `/v2/${n}/blobs/uploads/`),
      fc.tuple(fc.oneof(fc.constantFrom(id, v1.images[0]!.id, 'f'.repeat(64), 'F'.repeat(64), '..', 'a'.repeat(65)), hostile), fc.constantFrom('json', 'ancestry', 'layer', 'layer/', 'x')).map(([i, p]) => `/v1/images/${i}/${p}`),
      fc.tuple(v1Name, fc.constantFrom('tags', 'images', 'json', 'tags/latest', 'tags/..', 'tags/%2e%2e', 'tags/', 'x')).map(([n, p]) => `/v1/repositories/${n}/${p}`),
    );
    const query = fc.oneof(
      fc.constant(''),
      fc.constantFrom('?ns=docker.io', '?ns=registry.fuzz.test', '?ns=../../sentinel', '?ns=127.0.0.1:1', '?ns=', '?ns=%00', '?n=1000000', '?n=-1', '?n=abc', '?last=..%2f..', '?ns=docker.io&ns=x', '?%zz'),
      fc.string({ maxLength: 30 }).map((q) => `?${q}`),
    );
    const randomPath = fc
      .tuple(
        fc.constantFrom('/v2/', '/v2', '/v1/', '/v1/repositories/', '/v1/images/', '/', '', '/healthz', '/readyz', '/metrics', '/stats', '/v2/_catalog', '//v2/', '/V2/', 'http://127.0.0.1/v2/', '*'),
        fc.array(segment, { maxLength: 8 }),
      )
      .map(([prefix, segs]) => prefix + segs.join('/'));
    const path = fc.tuple(fc.oneof({ weight: 3, arbitrary: structured }, { weight: 2, arbitrary: randomPath }), query).map(([p, q]) => p + q);
    const header = fc.oneof(
      { weight: 8, arbitrary: fc.constantFrom(
        'Range: bytes=0-0',
        'Range: bytes=-1',
        'Range: bytes=5-1',
        'Range: bytes=99999999999999999999999-',
        'Range: bytes=0-1,3-4,0-99999',
        'Range: bytes=a-b',
        'Range: items=0-1',
        'Range: bytes=-0',
        'Range: ',
        'Accept: */*',
        'Accept: application/vnd.oci.image.index.v1+json',
        'Accept: ;;;,,,',
        'If-None-Match: "sha256:x", W/"*"',
        'If-None-Match: *',
        'Authorization: Basic Og==',
        'Authorization: Bearer ../../x',
        'Content-Length: 5',
        'Content-Length: -1',
        'Content-Length: 1, 2',
        'Transfer-Encoding: chunked',
        'Transfer-Encoding: gzip, chunked',
        'Expect: 100-continue',
        'Host: ../../sentinel',
        'Host:',
        'Connection: keep-alive, Upgrade',
        'Upgrade: websocket',
        'X-Forwarded-For: 127.0.0.1',
      ) },
      fc.integer({ min: 8_000, max: 40_000 }).map((n) => `X-Huge: ${'h'.repeat(n)}`),
      fc.integer({ min: 1, max: 300 }).map((n) => Array.from({ length: n }, (_, i) => `X-Many-${i}: ${i}`).join('\r\n')),
      fc.tuple(fc.stringMatching(/^[A-Za-z-]{1,20}$/), fc.string({ maxLength: 50 })).map(([k, v]) => `${k}: ${v}`),
    );
    const request = fc.record({
      method: fc.oneof(
        { weight: 8, arbitrary: fc.constantFrom('GET', 'HEAD') },
        { weight: 3, arbitrary: fc.constantFrom('POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE', 'PROPFIND', 'M-SEARCH', 'get', 'FOO', 'G\0T', 'GET GET', 'CONNECT') },
      ),
      path,
      headers: fc.oneof(fc.constant([] as string[]), fc.array(header, { maxLength: 4 })),
      version: fc.oneof({ weight: 10, arbitrary: fc.constant('HTTP/1.1') }, { weight: 1, arbitrary: fc.constantFrom('HTTP/1.0', 'HTTP/2.0', 'HTTP/9.9', 'HTTP/1.1 x', '') }),
      body: fc.oneof({ weight: 5, arbitrary: fc.constant('') }, { weight: 1, arbitrary: fc.string({ maxLength: 200 }) }),
    });

    // The surroundings of the store: the jail (sentinel included) and the mirror's own
    // directory (its cwd, config and log), and which names exist at the store's top level.
    const mirrorDir = join(mirror.configFile, '..');
    const outside = () => [...snapshot(jail, [store]), ...snapshot(mirrorDir, [mirror.logFile, join(mirrorDir, 'data')]).map((l) => `mirror:${l}`)];
    const before = outside();
    const rootEntries = new Set(['blobs', 'manifests', 'repos', 'v1', 'state', 'tmp']);

    const statuses = new Map<number, number>();
    let upstream5xx = 0;
    let passedOn = 0;
    let cases = 0;
    const t0 = Date.now();
    await fc.assert(
      fc.asyncProperty(request, async (r) => {
        const raw = Buffer.from(`${r.method} ${r.path} ${r.version}\r\nHost: 127.0.0.1\r\nConnection: close\r\n${r.headers.map((h) => `${h}\r\n`).join('')}\r\n${r.body}`, 'utf8');
        const answer = await sendRaw(mirror.port, raw).catch(async (err: Error) => {
          // Tell a hang of this one request from a server that stopped answering at all.
          const probe = await fetch(`${mirror.url}/healthz`, { signal: AbortSignal.timeout(2000) }).then(
            (res) => `healthz ${res.status}`,
            (e: Error) => `healthz failed: ${e.message}`,
          );
          throw new Error(`${err.message} (${probe}); log tail:\n${mirror.logText().split('\n').slice(-4).join('\n')}`);
        });
        cases++;
        if (process.env.FUZZ_TRACE) process.stdout.write(`# ${answer.status} ${JSON.stringify(raw.toString('latin1').slice(0, 200))}\n`);
        statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1);
        if (answer.status >= 500) {
          // Allowed only as the upstream's own 5xx passed on as UNAVAILABLE: distribution 2.8
          // answers 500 to a manifest GET by the digest of a blob, for one.
          const passed = answer.status === 503 && (r.method === 'HEAD' || /"code":"UNAVAILABLE","message":"upstream [^"]+ answered 5\d\d"/.test(answer.head));
          assert.ok(passed, `${JSON.stringify(r).slice(0, 400)} -> ${answer.head}`);
          const seen = await waitFor(async () => {
            const n = (await registry.requests()).filter((e) => e.status >= 500).length;
            return n > upstream5xx ? n : 0;
          }, 5000, 'the upstream 5xx in the registry log');
          upstream5xx = seen;
          passedOn++;
        }
        if (cases % 250 === 0) {
          const h = await fetch(`${mirror.url}/healthz`);
          assert.equal(h.status, 200, 'alive');
        }
      }),
      { numRuns: runs, interruptAfterTimeLimit: seconds * 1000, ...(seed !== undefined ? { seed } : {}) },
    );
    const ms = Date.now() - t0;
    const summary = [...statuses].sort((a, b) => a[0] - b[0]).map(([s, n]) => `${s || 'closed'}:${n}`).join(' ');
    process.stdout.write(`# fuzz: ${cases} cases in ${(ms / 1000).toFixed(1)} s, answers ${summary} (${passedOn} upstream 5xx passed on as UNAVAILABLE)\n`);

    assert.equal((await fetch(`${mirror.url}/healthz`)).status, 200, 'alive at the end');
    assert.deepEqual(outside(), before, 'nothing created or changed outside the store root');
    assert.equal(readFileSync(join(jail, 'sentinel', 'secret'), 'utf8'), 'do not touch');
    for (const name of readdirSync(store)) assert.ok(rootEntries.has(name), `unexpected ${name} at the store root`);
    // Every path the mirror created under repos/ is made of valid components (a run whose
    // random requests never reached a real repository creates no repos/ at all).
    const repos = join(store, 'repos');
    for (const line of existsSync(repos) ? snapshot(repos) : []) {
      for (const part of line.split(' ')[0]!.split('/').filter(Boolean)) {
        assert.match(part, /^(?:[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?::\d+)?|_links|_tags|sha256|sha512|[a-f0-9]{64,128}|[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$/, line);
      }
    }
    const bad = mirror.logText().split('\n').filter((l) => /"level":(50|60)/.test(l));
    assert.deepEqual(bad.slice(0, 3), [], 'no error logged');
    assert.ok(cases >= Math.min(runs, 1000), `${cases} cases ran`);

    await mirror.stop();
    const v = await run(process.execPath, [mirrorBin(), 'verify', '--config', mirror.configFile], { allowFail: true });
    assert.equal(v.code, 0, v.stdout + v.stderr);
    // A blob that valid requests fetched is intact, too.
    const blobFile = join(store, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));
    if (existsSync(blobFile)) assert.equal(`sha256:${createHash('sha256').update(readFileSync(blobFile)).digest('hex')}`, digest);
  });
});
