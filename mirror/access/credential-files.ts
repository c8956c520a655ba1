// The two files client authentication reads: an htpasswd file (bcrypt entries only) and a
// tokens file (one bearer token per line, or its sha256). Pure parsers, shared with the
// operator, which checks a Secret's keys with them before it mounts the Secret. A problem
// names the line but repeats nothing of it (not even a user name: a misplaced password may
// sit where a user name belongs).

import { createHash } from 'node:crypto';

/** What `htpasswd -B` writes ($2y$), and what other bcrypt tools write ($2a$, $2b$). */
const bcryptHash = /^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$/;
const userName = /^[^\s:#][^\s:]{0,254}$/;
const sha256Entry = /^sha256:([a-f0-9]{64})$/;
/** Printable ASCII without spaces: what fits an Authorization header unchanged. */
const rawToken = /^[\x21-\x7e]+$/;
export const minTokenLength = 16;
const maxTokenLength = 4096;

export interface Parsed<T> {
  entries: T;
  problems: string[];
}

/** user -> bcrypt hash. */
export function parseHtpasswd(text: string): Parsed<Map<string, string>> {
  const entries = new Map<string, string>();
  const firstLine = new Map<string, number>();
  const problems: string[] = [];
  lines(text).forEach(({ line, n }) => {
    const i = line.indexOf(':');
    const user = i < 0 ? line : line.slice(0, i);
    const hash = i < 0 ? '' : line.slice(i + 1);
    if (i < 0 || !userName.test(user)) {
      problems.push(`line ${n}: expected user:bcrypt-hash`);
    } else if (!bcryptHash.test(hash)) {
      problems.push(`line ${n}: only bcrypt hashes are supported (htpasswd -B)`);
    } else if (entries.has(user)) {
      problems.push(`line ${n}: the user of line ${firstLine.get(user)} again`);
    } else {
      entries.set(user, hash);
      firstLine.set(user, n);
    }
  });
  return { entries, problems };
}

/** sha256 hex of each token. A line is a token, or "sha256:<hex>" of one. */
export function parseTokens(text: string): Parsed<Set<string>> {
  const entries = new Set<string>();
  const problems: string[] = [];
  lines(text).forEach(({ line, n }) => {
    const hashed = sha256Entry.exec(line);
    if (hashed) {
      entries.add(hashed[1]!);
    } else if (!rawToken.test(line) || line.length < minTokenLength || line.length > maxTokenLength) {
      problems.push(
        `line ${n}: a token must be ${minTokenLength} to ${maxTokenLength} printable ASCII characters without spaces, or sha256:<64 hex digits> of one`,
      );
    } else {
      entries.add(tokenHash(line));
    }
  });
  return { entries, problems };
}

export function tokenHash(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** Non-empty lines that are not comments, trimmed, with their 1-based numbers. */
function lines(text: string): Array<{ line: string; n: number }> {
  return text
    .split(/\r?\n/)
    .map((l, i) => ({ line: l.trim(), n: i + 1 }))
    .filter(({ line }) => line.length > 0 && !line.startsWith('#'));
}
