// pino JSON logs. Secret values never reach a log line: the Secret informer keeps no values
// at all, and these paths are redacted in case an object or request is ever logged whole.
import { pino, type Logger } from 'pino';

export const REDACT_PATHS = [
  'data',
  'stringData',
  '*.data',
  '*.stringData',
  'password',
  '*.password',
  'token',
  '*.token',
  'authorization',
  '*.authorization',
  'headers.authorization',
  '*.headers.authorization',
  'req.headers.authorization',
];

export function createLogger(level = 'info', destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      name: 'registry-mirror-operator',
      level,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      base: { pid: process.pid },
    },
    destination as any,
  );
}
