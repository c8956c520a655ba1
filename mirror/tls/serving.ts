// HTTPS for the mirror (config `tls`): the serving certificate and key, the optional client
// and peer CAs, read at start and re-read while serving. A Secret mounted into a pod is
// updated by swapping a `..data` symlink to a new directory: the files' own paths and mtimes
// say little, so the reloader compares the content (a sha256 over all files) every
// reloadInterval. New content is applied with server.setSecureContext(): new handshakes get
// it, open connections keep theirs, nothing restarts. Content that cannot be used (a file
// missing or unreadable, not PEM, a key that does not belong to the certificate) keeps the
// old context, is logged once (the reason, never the content) and counted.

import { createHash, createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import type { SecureContextOptions, TlsOptions } from 'node:tls';
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import { ConfigError, type TlsConfig } from '../config.js';

/** A PEM file larger than this is refused unread: a certificate chain is a few KiB. */
export const maxPemFileBytes = 1 << 20;
/** The oldest protocol a client may speak. */
export const minTlsVersion = 'TLSv1.2';

/** The usable content of the `tls` files at one moment. */
export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  clientCa?: Buffer;
  peerCa?: Buffer;
  /** The serving certificate's expiry. */
  notAfter: Date;
  /** SHA-256 fingerprint of the serving certificate (public; what clients see). */
  fingerprint: string;
  /** Over every file's bytes: what the reloader compares. */
  hash: string;
}

/** A file of `tls` that cannot be used; key is the config key naming the file. */
export class TlsMaterialError extends Error {
  constructor(readonly key: string, message: string) {
    super(message);
    this.name = 'TlsMaterialError';
  }
}

type FileKey = 'certFile' | 'keyFile' | 'clientCAFile' | 'peerCAFile';

function readPem(tls: TlsConfig, k: FileKey): Buffer {
  const path = tls[k]!;
  const key = `tls.${k}`;
  try {
    const size = statSync(path).size;
    if (size > maxPemFileBytes) throw new TlsMaterialError(key, `${path} is ${size} bytes; a PEM file may have at most ${maxPemFileBytes}`);
    return readFileSync(path);
  } catch (err) {
    if (err instanceof TlsMaterialError) throw err;
    throw new TlsMaterialError(key, `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/** The bytes of every configured file and their hash; throws TlsMaterialError when one cannot be read. */
function readFiles(tls: TlsConfig): { files: Partial<Record<FileKey, Buffer>>; hash: string } {
  const files: Partial<Record<FileKey, Buffer>> = {};
  const h = createHash('sha256');
  for (const k of ['certFile', 'keyFile', 'clientCAFile', 'peerCAFile'] as const) {
    if (tls[k] === undefined) continue;
    files[k] = readPem(tls, k);
    h.update(k).update('\0').update(files[k]!).update('\0');
  }
  return { files, hash: h.digest('hex') };
}

/**
 * Checks what was read: the certificate parses, the key parses (unencrypted) and is the
 * certificate's, each CA file holds a certificate. Messages name the file, never its bytes.
 */
function checkMaterial(tls: TlsConfig, files: Partial<Record<FileKey, Buffer>>, hash: string): TlsMaterial {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(files.certFile!);
  } catch {
    throw new TlsMaterialError('tls.certFile', `${tls.certFile} holds no PEM certificate`);
  }
  let matches: boolean;
  try {
    matches = cert.checkPrivateKey(createPrivateKey(files.keyFile!));
  } catch {
    throw new TlsMaterialError('tls.keyFile', `${tls.keyFile} holds no unencrypted PEM private key`);
  }
  if (!matches) throw new TlsMaterialError('tls.keyFile', `the key in ${tls.keyFile} does not belong to the certificate in ${tls.certFile}`);
  for (const k of ['clientCAFile', 'peerCAFile'] as const) {
    if (files[k] === undefined) continue;
    try {
      new X509Certificate(files[k]!);
    } catch {
      throw new TlsMaterialError(`tls.${k}`, `${tls[k]} holds no PEM certificate`);
    }
  }
  return {
    cert: files.certFile!,
    key: files.keyFile!,
    ...(files.clientCAFile ? { clientCa: files.clientCAFile } : {}),
    ...(files.peerCAFile ? { peerCa: files.peerCAFile } : {}),
    notAfter: new Date(cert.validTo),
    fingerprint: cert.fingerprint256,
    hash,
  };
}

/** Reads and checks the files; throws TlsMaterialError. */
export function readTlsMaterial(tls: TlsConfig): TlsMaterial {
  const { files, hash } = readFiles(tls);
  return checkMaterial(tls, files, hash);
}

/** At start-up a file that cannot be used is a setting to fix: a ConfigError (exit 2). */
export function loadTlsMaterial(tls: TlsConfig): TlsMaterial {
  try {
    return readTlsMaterial(tls);
  } catch (err) {
    if (err instanceof TlsMaterialError) throw new ConfigError(err.key, err.message);
    throw err;
  }
}

/** What a new handshake uses: the parts setSecureContext() replaces. */
export function secureContextOptions(m: TlsMaterial): SecureContextOptions {
  return { cert: m.cert, key: m.key, minVersion: minTlsVersion, ...(m.clientCa ? { ca: m.clientCa } : {}) };
}

/**
 * The https server's options. With a client CA a certificate is asked for but not required
 * at the handshake (rejectUnauthorized: false): clients with Basic or bearer credentials, and
 * probes, still connect; client-auth.ts decides per request from socket.authorized.
 */
export function httpsServerOptions(m: TlsMaterial, handshakeTimeoutMs: number): TlsOptions {
  return {
    ...secureContextOptions(m),
    handshakeTimeout: handshakeTimeoutMs,
    ...(m.clientCa ? { requestCert: true, rejectUnauthorized: false } : {}),
  };
}

/** Re-reads the `tls` files every reloadInterval and applies new, usable content. */
export class TlsReloader {
  private material: TlsMaterial;
  /** The hash (or read error) of content that failed, so it is counted and logged once. */
  private lastFailure: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly reloads: Counter<'result'>;
  private readonly listeners: Array<(m: TlsMaterial) => void> = [];

  constructor(
    private readonly tls: TlsConfig,
    initial: TlsMaterial,
    private readonly apply: (options: SecureContextOptions) => void,
    registry: Registry,
    private readonly log: Logger,
  ) {
    this.material = initial;
    this.reloads = new Counter({
      name: 'registry_mirror_tls_reloads_total',
      help: 'New content of the tls files: ok (applied to new connections), error (unusable, the previous certificate stays)',
      labelNames: ['result'],
      registers: [registry],
    });
    for (const result of ['ok', 'error']) this.reloads.inc({ result }, 0);
    const self = this;
    new Gauge({
      name: 'registry_mirror_tls_certificate_not_after_seconds',
      help: 'Expiry (unix time) of the certificate the mirror serves',
      registers: [registry],
      collect() {
        this.set(Math.floor(self.material.notAfter.getTime() / 1000));
      },
    });
  }

  /** The material in use now. */
  get current(): TlsMaterial {
    return this.material;
  }

  /** Called with each newly applied material (the peer client follows the CA and certificate). */
  onChange(listener: (m: TlsMaterial) => void): void {
    this.listeners.push(listener);
  }

  start(): void {
    this.timer = setInterval(() => this.check(), this.tls.reloadIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** One poll: applies changed, usable content. Exposed for tests. */
  check(): void {
    let next: TlsMaterial;
    let hash: string | undefined;
    try {
      const read = readFiles(this.tls);
      hash = read.hash;
      if (hash === this.material.hash || hash === this.lastFailure) return;
      next = checkMaterial(this.tls, read.files, hash);
    } catch (err) {
      const reason = (err as Error).message;
      const failure = hash ?? `unreadable:${reason}`;
      if (failure === this.lastFailure) return;
      this.lastFailure = failure;
      this.reloads.inc({ result: 'error' });
      this.log.warn({ key: (err as TlsMaterialError).key, reason }, 'tls files changed but cannot be used: still serving the previous certificate');
      return;
    }
    try {
      this.apply(secureContextOptions(next));
    } catch (err) {
      // OpenSSL may still refuse what node:crypto accepted (say, a key type it cannot serve).
      this.lastFailure = hash;
      this.reloads.inc({ result: 'error' });
      this.log.warn({ reason: (err as Error).message }, 'new tls certificate refused: still serving the previous one');
      return;
    }
    this.material = next;
    this.lastFailure = undefined;
    this.reloads.inc({ result: 'ok' });
    this.log.info({ notAfter: next.notAfter.toISOString(), fingerprint: next.fingerprint }, 'tls certificate reloaded');
    for (const l of this.listeners) l(next);
  }
}
