// A throw-away certificate authority made with the `openssl` command line, the way a user
// without the operator would make one: a CA, then server and client certificates it signs.
// EC P-256 keys (fast to make); openssl 3 writes them as PKCS#8 "PRIVATE KEY", which Node,
// Go (containerd, skopeo) and every TLS stack here read. Go ignores the subject CN for host
// names, so server certificates carry their names as subjectAltName.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run, tempDir } from '../../tools/launch/proc.js';

export interface TestCa {
  dir: string;
  /** ca.crt and ca.key (PEM). */
  certFile: string;
  keyFile: string;
}

export interface IssuedCert {
  certFile: string;
  keyFile: string;
}

export interface IssueOptions {
  /** Subject common name (a client certificate's identity, e.g. node:worker-1). */
  cn: string;
  /** subjectAltName DNS names and IP addresses (server certificates). */
  dns?: string[];
  ips?: string[];
  /** Extended key usages; default both, so one certificate can serve and be a peer's client. */
  usage?: Array<'serverAuth' | 'clientAuth'>;
  days?: number;
  /** Where the pair is written; default a new directory under the CA's. */
  dir?: string;
  /** File names within dir (default tls.crt / tls.key, what a kubernetes.io/tls Secret holds). */
  certName?: string;
  keyName?: string;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  await run('openssl', args, { cwd, timeoutMs: 30_000 });
}

/** A new self-signed CA in its own temp directory. */
export async function createTestCa(name = 'registry-mirror test CA'): Promise<TestCa> {
  const dir = tempDir('test-ca');
  const certFile = join(dir, 'ca.crt');
  const keyFile = join(dir, 'ca.key');
  await openssl(
    [
      'req', '-x509', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', `/CN=${name}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
  return { dir, certFile, keyFile };
}

let serial = 0;

/** A certificate signed by ca for a fresh key. */
export async function issueCert(ca: TestCa, o: IssueOptions): Promise<IssuedCert> {
  const dir = o.dir ?? join(ca.dir, `cert-${++serial}`);
  mkdirSync(dir, { recursive: true });
  const certFile = join(dir, o.certName ?? 'tls.crt');
  const keyFile = join(dir, o.keyName ?? 'tls.key');
  const csr = join(dir, 'req.csr');
  const ext = join(dir, 'ext.cnf');
  const san = [...(o.dns ?? []).map((d) => `DNS:${d}`), ...(o.ips ?? []).map((ip) => `IP:${ip}`)];
  writeFileSync(
    ext,
    [
      'basicConstraints=CA:FALSE',
      'keyUsage=critical,digitalSignature',
      `extendedKeyUsage=${(o.usage ?? ['serverAuth', 'clientAuth']).join(',')}`,
      ...(san.length > 0 ? [`subjectAltName=${san.join(',')}`] : []),
      '',
    ].join('\n'),
  );
  await openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile, '-out', csr, '-subj', `/CN=${o.cn}`], dir);
  await openssl(
    ['x509', '-req', '-in', csr, '-CA', ca.certFile, '-CAkey', ca.keyFile, '-set_serial', String(Date.now() * 100 + (serial % 100)), '-days', String(o.days ?? 1), '-out', certFile, '-extfile', ext],
    dir,
  );
  return { certFile, keyFile };
}
