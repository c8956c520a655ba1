// What the status page says about the configuration: the shape of it, never a secret. No
// credentials (not even whether a password is inline or in a file: only "configured"), no
// file contents, no S3 keys, and URLs without user info, query or fragment. Pure.

import type { MirrorConfig } from '../config.js';
import { formatDuration } from '../duration.js';
import { formatBytes } from '../format.js';

export type ConfigRow = [key: string, value: string];

/** A URL as origin and path only: user info, query and fragment can carry secrets. */
export function safeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname === '/' ? '' : u.pathname}`;
  } catch {
    return '(not a URL)';
  }
}

export function configSummary(c: MirrorConfig): ConfigRow[] {
  const rows: ConfigRow[] = [['listen', `${c.listen.host}:${c.listen.port}`]];
  const s3 = c.storage.s3;
  rows.push([
    'storage',
    s3
      ? `S3 bucket ${s3.bucket}${s3.prefix ? ` (prefix ${s3.prefix}/)` : ''} at ${s3.endpoint ? safeUrl(s3.endpoint) : 'AWS'}, region ${s3.region}${s3.redirect ? ', redirect' : ''}`
      : `filesystem ${c.storage.path}`,
  ]);
  rows.push(['storage.maxBytes', c.storage.maxBytes > 0 ? formatBytes(c.storage.maxBytes) : 'no bound']);
  rows.push(['cache', `ttl ${formatDuration(c.cache.ttlMs)}, tagTTL ${formatDuration(c.cache.tagTTLMs)}, notFoundTTL ${formatDuration(c.cache.notFoundTTLMs)}`]);
  rows.push(['defaultUpstream', c.defaultUpstream]);
  for (const u of Object.values(c.upstreams)) {
    const credentials = u.username !== undefined || u.usernameFile !== undefined || u.credentialsFile !== undefined ? 'credentials configured' : 'anonymous';
    const policy = [u.allow?.length ? `${u.allow.length} allow patterns` : '', u.deny?.length ? `${u.deny.length} deny patterns` : ''].filter(Boolean).join(', ');
    rows.push([`upstreams.${u.name}`, `${safeUrl(u.url)}, ${credentials}${policy ? `, ${policy}` : ''}`]);
  }
  rows.push(['v1', c.v1.enabled ? `on, source ${safeUrl(c.v1.source)}` : 'off']);
  const a = c.auth;
  rows.push(['auth', a ? [a.htpasswdFile ? 'htpasswd' : '', a.tokensFile ? 'tokens' : '', a.protectMetrics ? 'protectMetrics' : ''].filter(Boolean).join(', ') : 'off (anyone may pull)']);
  // File paths only say where a certificate is mounted; the page names none (nor their content).
  rows.push(['tls', c.tls ? ['https', c.tls.clientCAFile ? 'client certificates' : '', c.tls.peerCAFile ? 'peers verified' : ''].filter(Boolean).join(', ') : 'off (plain http)']);
  rows.push(['upstreamRetries', `${c.upstreamRetries.attempts} attempts, backoff ${formatDuration(c.upstreamRetries.backoffMs)}`]);
  rows.push(['upstreamBreaker', c.upstreamBreaker.failures > 0 ? `opens after ${c.upstreamBreaker.failures} failures for ${formatDuration(c.upstreamBreaker.openForMs)}` : 'off']);
  rows.push(['limits.maxConnections', String(c.limits.maxConnections)]);
  rows.push(['prefetch', c.prefetch.length > 0 ? `${c.prefetch.length} images` : 'none']);
  if (c.cluster) rows.push(['cluster', 'dns' in c.cluster.peers ? `peers from DNS ${c.cluster.peers.dns}` : `${c.cluster.peers.static.length} static peers`]);
  return rows;
}
