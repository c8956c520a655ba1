// `registry-mirror serve [--config FILE]`: loads the config (embedded default when no file),
// starts the mirror and drains it on SIGTERM/SIGINT.

import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { ConfigError, parseConfigText, type MirrorConfig } from './config.js';
import { createMirror, loggerOptions } from './server.js';
import { activeOwner, claimStore, describeOwner } from './store/owner.js';

const shutdownGraceMs = 25_000;

export function loadConfig(argv: string[], env: NodeJS.ProcessEnv): MirrorConfig {
  let file: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--config' || a === '-c') file = argv[++i];
    else if (a.startsWith('--config=')) file = a.slice('--config='.length);
    else throw new ConfigError('(arguments)', `unknown argument "${a}" (usage: registry-mirror serve [--config FILE])`);
  }
  if (file === undefined && argv.includes('--config')) throw new ConfigError('(arguments)', '--config needs a file');
  let text = '';
  if (file !== undefined) {
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError('(file)', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  }
  return parseConfigText(text, env);
}

export async function runServe(argv: string[]): Promise<void> {
  let config: MirrorConfig;
  try {
    config = loadConfig(argv, process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`registry-mirror: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const logger = pino(loggerOptions(config.logLevel));
  // `verify --repair` moves files around: never serve from a store it is working on. An S3
  // store is shared by design (several replicas): it has no owner record.
  const ownedStore = !config.storage.s3;
  const verifier = ownedStore ? activeOwner(config.storage.path, 'verify') : undefined;
  if (verifier) {
    process.stderr.write(`registry-mirror: registry-mirror verify is running on ${config.storage.path} (${describeOwner(verifier)}); start the server when it is done\n`);
    process.exit(2);
  }
  let mirror;
  try {
    mirror = await createMirror(config, logger);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`registry-mirror: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  // Tells `registry-mirror verify` that this store is in use (store/owner.ts).
  const releaseStore = ownedStore ? await claimStore(config.storage.path, 'serve') : async () => {};
  await mirror.app.listen({ host: config.listen.host, port: config.listen.port });
  logger.info(
    { listen: `${config.listen.host}:${config.listen.port}`, scheme: config.tls ? 'https' : 'http', storage: mirror.store.driver.location, upstreams: Object.keys(config.upstreams), defaultUpstream: config.defaultUpstream },
    'registry-mirror serving',
  );

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    mirror.beginDrain();
    if (config.shutdownDelayMs > 0) {
      logger.info({ signal, shutdownDelayMs: config.shutdownDelayMs }, 'not ready; still serving until the shutdown delay ends');
      await new Promise((r) => setTimeout(r, config.shutdownDelayMs));
    }
    logger.info({ signal }, 'draining in-flight requests');
    const force = setTimeout(() => {
      logger.warn('grace period over: closing remaining connections');
      mirror.app.server.closeAllConnections();
    }, shutdownGraceMs);
    force.unref();
    // A keep-alive connection whose response finishes after close() began would otherwise
    // hold the server open until its keep-alive timeout.
    const reap = setInterval(() => mirror.app.server.closeIdleConnections(), 200);
    await mirror.app.close();
    clearInterval(reap);
    await mirror.shutdown();
    await releaseStore().catch(() => undefined);
    clearTimeout(force);
    logger.info('stopped');
    logger.flush?.();
  };
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.once('SIGINT', () => void stop('SIGINT'));
}
