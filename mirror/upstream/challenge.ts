// Parsing of WWW-Authenticate challenges (RFC 7235 auth-params) as registries send them:
//   Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:x:pull"
//   Basic realm="Registry Realm"

export interface Challenge {
  scheme: 'bearer' | 'basic';
  params: Record<string, string>;
}

export function parseChallenge(header: string | string[] | undefined): Challenge | undefined {
  const values = Array.isArray(header) ? header : header ? [header] : [];
  for (const value of values) {
    const m = /^\s*(\w+)\s*(.*)$/s.exec(value);
    if (!m) continue;
    const scheme = m[1]!.toLowerCase();
    if (scheme !== 'bearer' && scheme !== 'basic') continue;
    const params: Record<string, string> = {};
    const re = /([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?\s*/gy;
    re.lastIndex = 0;
    const rest = m[2]!;
    for (let p = re.exec(rest); p; p = re.exec(rest)) {
      params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3]!;
      if (re.lastIndex >= rest.length) break;
    }
    return { scheme, params };
  }
  return undefined;
}
