// `registry-mirror verify` shows its progress on stderr and leaves stdout to the report: plain
// lines when stderr is a pipe, one line rewritten with \r on a terminal (a real pty from
// util-linux's `script`). The store is a real mirror's after a pull from a real registry.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { mirrorBin, startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { run } from '../../tools/launch/proc.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { pullImage, pushRandomImage } from './helpers.js';

const progressLine = /^verify: (\d+)\/(\d+) objects, [\d.]+ (?:B|KiB|MiB) of [\d.]+ (?:B|KiB|MiB) \((?:[\d.]+%|-)\), [\d.]+ (?:B|KiB|MiB)\/s, ETA \S+$/;

describe('registry-mirror verify progress', { timeout: 120_000 }, () => {
  let registry: RegistryHandle;
  let mirror: MirrorHandle;

  before(async () => {
    registry = await startRegistry();
    await pushRandomImage(registry.url, 'verify/app', 'v1', [300_000, 200_000, 1000], 'verify-progress');
    mirror = await startMirror({ upstreams: { 'docker.io': { url: registry.url } } });
    await pullImage(mirror.url, '', 'verify/app', 'v1');
    await mirror.stop();
  });

  after(async () => {
    await mirror?.stop();
    await registry?.stop();
  });

  it('without a terminal: plain progress lines on stderr, the report alone on stdout', async () => {
    const r = await run(process.execPath, [mirrorBin(), 'verify', '--config', mirror.configFile], { timeoutMs: 60_000 });
    const lines = r.stderr.split('\n').filter(Boolean);
    assert.ok(lines.length >= 2, `progress lines:\n${r.stderr}`);
    for (const l of lines) assert.match(l, progressLine);
    assert.ok(!/[\r\x1b]/.test(r.stderr), 'no control characters in a log');
    const [, done, total] = progressLine.exec(lines.at(-1)!)!;
    assert.equal(done, total, 'the last line has every object');
    assert.equal(Number(total), 5, 'manifest, config and three layers');
    assert.match(lines.at(-1)!, /\(100%\)/);
    assert.match(r.stdout, /^verify: .*: 4 blobs and 1 manifests rehashed/);
    assert.match(r.stdout, /verify: store consistent\n$/);
    assert.ok(!r.stdout.includes('objects,'), 'no progress on stdout');
  });

  it('on a terminal: one line rewritten in place, ended once', async () => {
    const cmd = [process.execPath, mirrorBin(), 'verify', '--config', mirror.configFile].map((a) => `'${a}'`).join(' ');
    const r = await run('script', ['-qec', cmd, '/dev/null'], { timeoutMs: 60_000 });
    const out = r.stdout;
    assert.match(out, /\rverify: 5\/5 objects, .*\(100%\).*\x1b\[K\r?\n/, `the rewritten line, finished:\n${JSON.stringify(out)}`);
    const progress = out.split(/\r\n|\n/).filter((l) => l.includes('objects,'));
    assert.equal(progress.length, 1, `progress takes one line of the terminal: ${JSON.stringify(progress)}`);
    assert.match(out, /verify: store consistent/);
  });
});
