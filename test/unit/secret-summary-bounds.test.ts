// Issue 12 item 4: the operator's Secret cache must not amplify memory. A Secret summary keeps
// counts and the first few problems (MAX_PROBLEMS_KEPT per key), a bounded list of key names,
// and no data; the check itself runs in chunks so its transient memory is bounded too.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import bcrypt from 'bcryptjs';
import { parseHtpasswd, parseTokens } from '../../mirror/access/credential-files.js';
import { authForm, CHECK_CHUNK_LINES, credentialsForm, MAX_KEY_NAMES_KEPT, MAX_PROBLEMS_KEPT, summarizeSecret } from '../../operator/secrets.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const b64 = (s: string) => Buffer.from(s).toString('base64');
const secret = (data: Record<string, string>, name = 's', uid = 'uid') =>
  summarizeSecret({ metadata: { name, namespace: 'tenant', uid }, data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, b64(v)])) });

describe('Secret summaries are bounded', () => {
  test('a 1 MiB tokens key of one-character lines keeps the count and the first problems only', () => {
    const s = secret({ tokens: 'a\n'.repeat(512 * 1024) });
    assert.equal(s.auth!.tokens!.problemCount, 512 * 1024);
    assert.equal(s.auth!.tokens!.problems.length, MAX_PROBLEMS_KEPT);
    assert.deepEqual(s.auth!.tokens!.problems.map((p) => p.split(':')[0]), ['line 1', 'line 2', 'line 3']);
    assert.ok(JSON.stringify(s).length < 4096, `summary is ${JSON.stringify(s).length} bytes`);
    const form = authForm(s) as { problem: string };
    assert.match(form.problem, /tokens and 524285 more problems/);
  });

  test('three 1 MiB Secrets with a tokens key retain less than 8 MiB of heap (was about 300 MiB)', () => {
    const tokens = b64('a\n'.repeat(512 * 1024));
    gc();
    const before = process.memoryUsage().heapUsed;
    const kept = [1, 2, 3].map((i) => summarizeSecret({ metadata: { name: `s${i}`, namespace: 'tenant', uid: `u${i}` }, data: { tokens } }));
    gc();
    const grew = process.memoryUsage().heapUsed - before;
    assert.equal(kept.length, 3);
    assert.ok(grew < 8 * 2 ** 20, `retained ${(grew / 2 ** 20).toFixed(1)} MiB`);
  });

  test('the chunked check gives the whole-file verdict on files spanning several chunks', () => {
    const good = 'x'.repeat(20);
    const lines: string[] = [];
    for (let i = 0; i < CHECK_CHUNK_LINES * 3 + 17; i++) {
      lines.push(i % 7 === 0 ? 'short' : i % 11 === 0 ? '' : i % 13 === 0 ? '# comment' : i % 5 === 0 ? good : `${good}-${i}`);
    }
    const text = lines.join('\r\n');
    const whole = parseTokens(text);
    const s = secret({ tokens: text }).auth!.tokens!;
    assert.equal(s.entries, whole.entries.size);
    assert.equal(s.problemCount, whole.problems.length);
    assert.deepEqual(s.problems, whole.problems.slice(0, MAX_PROBLEMS_KEPT));
    // Late problems keep the file's line numbers.
    const late = secret({ tokens: `${Array.from({ length: CHECK_CHUNK_LINES * 2 }, (_, i) => `${good}${i}`).join('\n')}\nbad\n` }).auth!.tokens!;
    assert.deepEqual(late.problems, parseTokens(`${'\n'.repeat(CHECK_CHUNK_LINES * 2)}bad\n`).problems);
  });

  test('htpasswd: entries, duplicate users across chunks and line numbers', () => {
    const hash = bcrypt.hashSync('pw', 4);
    const lines = Array.from({ length: CHECK_CHUNK_LINES + 10 }, (_, i) => `user${i % (CHECK_CHUNK_LINES + 5)}:${hash}`);
    const text = `${lines.join('\n')}\n`;
    const whole = parseHtpasswd(text);
    const s = secret({ htpasswd: text }).auth!.htpasswd!;
    assert.equal(s.entries, whole.entries.size);
    assert.equal(s.problemCount, whole.problems.length);
    assert.deepEqual(s.problems.map((p) => p.split(':')[0]), whole.problems.slice(0, MAX_PROBLEMS_KEPT).map((p) => p.split(':')[0]));
  });

  test('a Secret with thousands of keys keeps the keys the operator reads and a few names, with the count', () => {
    const data: Record<string, string> = {};
    for (let i = 0; i < 5000; i++) data[`k${String(i).padStart(5, '0')}-${'z'.repeat(200)}`] = 'eA==';
    data.username = 'dXNlcg==';
    data.password = 'cGFzcw==';
    const s = summarizeSecret({ metadata: { name: 'c', namespace: 'n', uid: 'u' }, data });
    assert.equal(s.keyCount, 5002);
    assert.equal(s.keys.length, MAX_KEY_NAMES_KEPT + 2);
    assert.ok(s.keys.includes('username') && s.keys.includes('password'));
    assert.deepEqual(credentialsForm(s), { form: 'basic', hash: s.dataHash });
    delete data.password;
    const bad = credentialsForm(summarizeSecret({ metadata: { name: 'c', namespace: 'n', uid: 'u' }, data })) as { problem: string };
    assert.match(bad.problem, /and 4990 more\)$/);
    assert.ok(bad.problem.length < 4096);
  });
});
