// Load: LOAD_CLIENTS (200) concurrent clients pull for LOAD_SECONDS (15 here; the issue's
// figure is 60: `LOAD_SECONDS=60 node test/run.mjs integration/load`) from a real registry
// through the mirror. Each client loops: pick an image (70% from a small hot set, else any of
// them), GET its manifest by tag, then its config and layers (some only HEADed), every body
// hashed and compared with its digest. The store is bounded well below the images' total,
// so LRU eviction keeps turning warm content cold again: the mix stays warm and cold for the
// whole run, with shared cold downloads, eviction and tag revalidation under load.
// Asserted: no error of any kind, and the mirror's peak RSS (VmHWM) under LOAD_RSS_MB (300).
// LOAD_TRACE=1 prints RSS, V8 heap and external (Buffer) memory every 2 s.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { Agent, request } from 'undici';
import { startMirror, type MirrorHandle } from '../../tools/launch/mirror.js';
import { MANIFEST_ACCEPT } from '../../tools/oci/oci-client.js';
import { startRegistry, type RegistryHandle } from '../../tools/launch/registry.js';
import { getStats, pushRandomImage, type RandomImage } from './helpers.js';

const seconds = Number(process.env.LOAD_SECONDS ?? 15);
const clients = Number(process.env.LOAD_CLIENTS ?? 200);
const rssCeilingMb = Number(process.env.LOAD_RSS_MB ?? 300);
const imageCount = 24;
const hotCount = 5;

function statusKb(pid: number, field: 'VmHWM' | 'VmRSS'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

describe(`load: ${clients} clients for ${seconds} s`, { timeout: (seconds + 180) * 1000 }, () => {
  let registry: RegistryHandle;
  let mirror: MirrorHandle;
  const images: RandomImage[] = [];
  const agent = new Agent({ connections: clients, keepAliveTimeout: 10_000, headersTimeout: 60_000, bodyTimeout: 60_000 });

  before(async () => {
    registry = await startRegistry();
    for (let i = 0; i < imageCount; i++) {
      // 0.2 to 1.6 MB per image; ~20 MB in all.
      const big = 150_000 + ((i * 397_000) % 1_300_000);
      images.push(await pushRandomImage(registry.url, `load/app${i}`, 'v1', [big, 30_000 + i * 997, 2_000 + i], `load-${i}`));
    }
    mirror = await startMirror({
      // About half of what the images take: eviction runs all through the test.
      storage: { maxBytes: 10_000_000 },
      cache: { tagTTL: '2s' },
      upstreams: { 'docker.io': { url: registry.url } },
      logLevel: 'warn',
    });
  });

  after(async () => {
    await agent.close().catch(() => undefined);
    await mirror?.stop();
    await registry?.stop();
  });

  it('no errors, every body verified, peak RSS bounded', async () => {
    const counts = { requests: 0, manifests: 0, blobs: 0, heads: 0, bytes: 0, errors: 0 };
    const errors: string[] = [];
    const fail = (what: string) => {
      counts.errors++;
      if (errors.length < 20) errors.push(what);
    };
    const get = async (path: string, method: 'GET' | 'HEAD', headers: Record<string, string> = {}) => {
      counts.requests++;
      const res = await request(`${mirror.url}${path}`, { method, headers, dispatcher: agent });
      const hash = createHash('sha256');
      let bytes = 0;
      for await (const chunk of res.body) {
        hash.update(chunk as Buffer);
        bytes += (chunk as Buffer).length;
      }
      counts.bytes += bytes;
      return { status: res.statusCode, headers: res.headers, digest: `sha256:${hash.digest('hex')}`, bytes };
    };
    const pickImage = () => images[Math.random() < 0.7 ? Math.floor(Math.random() * hotCount) : Math.floor(Math.random() * images.length)]!;

    const deadline = Date.now() + seconds * 1000;
    let peakRssKb = 0;
    let tick = 0;
    const sampler = setInterval(() => {
      const rss = statusKb(mirror.pid(), 'VmRSS');
      peakRssKb = Math.max(peakRssKb, rss);
      if (process.env.LOAD_TRACE && tick++ % 8 === 0) {
        void fetch(`${mirror.url}/metrics`).then(async (r) => {
          const text = await r.text();
          const v = (n: string) => (Number(new RegExp(`^${n} (\\S+)`, 'm').exec(text)?.[1]) / 1e6).toFixed(0);
          process.stdout.write(
            `# rss ${(rss / 1024).toFixed(0)} MB, heap ${v('registry_mirror_nodejs_heap_size_used_bytes')}/${v('registry_mirror_nodejs_heap_size_total_bytes')} MB, external ${v('registry_mirror_nodejs_external_memory_bytes')} MB, ${counts.requests} requests\n`,
          );
        });
      }
    }, 250);
    const client = async () => {
      while (Date.now() < deadline) {
        const img = pickImage();
        try {
          const m = await get(`/v2/${img.repository}/manifests/${img.tag}`, 'GET', { accept: MANIFEST_ACCEPT });
          counts.manifests++;
          if (m.status !== 200 || m.digest !== img.digest) {
            fail(`manifest ${img.repository}: ${m.status} ${m.digest}`);
            continue;
          }
          for (const blob of [img.config, ...img.layers]) {
            const path = `/v2/${img.repository}/blobs/${blob.digest}`;
            if (Math.random() < 0.1) {
              const h = await get(path, 'HEAD');
              counts.heads++;
              if (h.status !== 200 || Number(h.headers['content-length']) !== blob.size) fail(`HEAD ${path}: ${h.status}`);
              continue;
            }
            const b = await get(path, 'GET');
            counts.blobs++;
            if (b.status !== 200 || b.digest !== blob.digest || b.bytes !== blob.size) fail(`GET ${path}: ${b.status}, ${b.bytes} bytes, ${b.digest}`);
          }
        } catch (err) {
          fail(`${img.repository}: ${(err as Error).message}`);
        }
      }
    };
    const t0 = Date.now();
    await Promise.all(Array.from({ length: clients }, client));
    clearInterval(sampler);
    const elapsed = (Date.now() - t0) / 1000;
    const hwmKb = statusKb(mirror.pid(), 'VmHWM');
    const stats = await getStats(mirror.url);
    const line =
      `# load: ${clients} clients, ${elapsed.toFixed(1)} s: ${counts.requests} requests (${counts.manifests} manifests, ${counts.blobs} blob GETs, ${counts.heads} HEADs), ` +
      `${(counts.requests / elapsed).toFixed(0)} req/s, ${(counts.bytes / 1e6).toFixed(0)} MB verified, errors ${counts.errors}; ` +
      `mirror hits ${stats.hits}, misses ${stats.misses}, from upstream ${(stats.bytesFromUpstream / 1e6).toFixed(0)} MB; peak RSS ${(hwmKb / 1024).toFixed(0)} MB (sampled ${(peakRssKb / 1024).toFixed(0)} MB)\n`;
    process.stdout.write(line);
    assert.deepEqual(errors, [], `${counts.errors} errors`);
    assert.equal(counts.errors, 0);
    assert.ok(counts.requests > clients * 5, 'the load was real');
    assert.ok(stats.misses > imageCount && stats.hits > stats.misses, `a warm and cold mix (hits ${stats.hits}, misses ${stats.misses})`);
    assert.ok(hwmKb / 1024 < rssCeilingMb, `peak RSS ${(hwmKb / 1024).toFixed(0)} MB under ${rssCeilingMb} MB`);
    assert.equal((await fetch(`${mirror.url}/healthz`)).status, 200);
    const bad = mirror.logText().split('\n').filter((l) => /"level":(50|60)/.test(l));
    assert.deepEqual(bad.slice(0, 5), [], 'no error logged');
  });
});
