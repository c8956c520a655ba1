// Cluster DNS for the e2e cluster (cluster.ts, `dns: true`): what CoreDNS's kubernetes plugin
// answers for Services, and nothing else. CoreDNS is neither packaged for Debian nor buildable
// here without fetching its whole module graph, and the mirror's fleet needs exactly this one
// thing from it: `<service>.<namespace>.svc.cluster.local` resolved by the pods' own libc
// (a headless Service's A records are its Endpoints' ready addresses, which with
// publishNotReadyAddresses are all of its pods; another Service's is its ClusterIP).
//
// UDP only, A records only (AAAA and other types of a known name: NOERROR with no answer, as
// CoreDNS does for an IPv4-only cluster); an unknown name under the cluster domain is NXDOMAIN,
// a name outside it REFUSED (no upstream: nothing leaves the machine). Answers carry TTL 1 and
// are built from the API at query time (cached for a second per name), so a pod that goes is
// gone from DNS as soon as from its Endpoints. At most MAX_ANSWERS records per answer: they
// then fit the 512 bytes of a plain UDP answer.
import { createSocket, type Socket } from 'node:dgram';
import { Agent } from 'undici';

export const CLUSTER_DOMAIN = 'cluster.local';
const MAX_ANSWERS = 24;
const CACHE_MS = 1000;
/** Bound on the per-name cache (names asked within CACHE_MS; the search list multiplies them). */
const MAX_CACHED = 1000;

const RCODE = { noError: 0, formErr: 1, servFail: 2, nxDomain: 3, refused: 5 } as const;
const TYPE_A = 1;
const CLASS_IN = 1;

export interface ClusterDnsHandle {
  /** ip:port it answers on. */
  address: string;
  /** Questions answered so far, by name (lower case), for a test's own checks. */
  queries(): Map<string, number>;
  stop(): Promise<void>;
}

interface Question {
  name: string;
  type: number;
  klass: number;
  /** The question section as sent, echoed in the answer. */
  raw: Buffer;
}

/** Parses the header and first question of a query; undefined when it is not one. */
export function parseQuery(msg: Buffer): { id: number; flags: number; question: Question } | undefined {
  if (msg.length < 12) return undefined;
  const flags = msg.readUInt16BE(2);
  if (flags & 0x8000 || msg.readUInt16BE(4) < 1) return undefined; // a response, or no question
  const labels: string[] = [];
  let off = 12;
  for (;;) {
    if (off >= msg.length) return undefined;
    const len = msg[off]!;
    off++;
    if (len === 0) break;
    if (len > 63 || off + len > msg.length) return undefined; // no compression in a question
    labels.push(msg.toString('latin1', off, off + len));
    off += len;
  }
  if (off + 4 > msg.length) return undefined;
  return {
    id: msg.readUInt16BE(0),
    flags,
    question: { name: labels.join('.').toLowerCase(), type: msg.readUInt16BE(off), klass: msg.readUInt16BE(off + 2), raw: msg.subarray(12, off + 4) },
  };
}

/** An answer to the query: A records for `addresses` when the question asks for A. */
export function buildAnswer(id: number, queryFlags: number, q: Question, rcode: number, addresses: string[]): Buffer {
  const answers = q.type === TYPE_A && q.klass === CLASS_IN ? addresses.slice(0, MAX_ANSWERS) : [];
  const head = Buffer.alloc(12);
  head.writeUInt16BE(id, 0);
  // QR, the query's opcode and RD, AA (this server is the authority for the cluster domain).
  head.writeUInt16BE(0x8000 | (queryFlags & 0x7800) | 0x0400 | (queryFlags & 0x0100) | rcode, 2);
  head.writeUInt16BE(1, 4);
  head.writeUInt16BE(answers.length, 6);
  const records = answers.map((ip) => {
    const r = Buffer.alloc(16);
    r.writeUInt16BE(0xc00c, 0); // the name: a pointer to the question's
    r.writeUInt16BE(TYPE_A, 2);
    r.writeUInt16BE(CLASS_IN, 4);
    r.writeUInt32BE(1, 6);
    r.writeUInt16BE(4, 10);
    ip.split('.').forEach((octet, i) => r.writeUInt8(Number(octet), 12 + i));
    return r;
  });
  return Buffer.concat([head, q.raw, ...records]);
}

/** `<service>.<namespace>` of a name under svc.<domain>, or undefined. */
function serviceOf(name: string): { service: string; namespace: string } | undefined {
  const suffix = `.svc.${CLUSTER_DOMAIN}`;
  if (!name.endsWith(suffix)) return undefined;
  const parts = name.slice(0, -suffix.length).split('.');
  return parts.length === 2 ? { service: parts[0]!, namespace: parts[1]! } : undefined;
}

const insecure = new Agent({ connect: { rejectUnauthorized: false } });

/**
 * Answers on host:port (the bridge address the pods route to). `server` and `token`: the
 * apiserver and a token that may read Services and Endpoints in every namespace.
 */
export async function startClusterDns(opts: { host: string; port?: number; server: string; token: string }): Promise<ClusterDnsHandle> {
  const asked = new Map<string, number>();
  const cache = new Map<string, { at: number; rcode: number; addresses: string[] }>();

  const api = async (path: string): Promise<any> => {
    const res = await fetch(`${opts.server}${path}`, {
      headers: { authorization: `Bearer ${opts.token}` },
      signal: AbortSignal.timeout(3000),
      // @ts-expect-error undici's dispatcher option on Node's fetch
      dispatcher: insecure,
    });
    if (res.status === 404) return undefined;
    if (!res.ok) throw new Error(`${path}: ${res.status}`);
    return res.json();
  };

  const resolve = async (name: string): Promise<{ rcode: number; addresses: string[] }> => {
    if (name !== CLUSTER_DOMAIN && !name.endsWith(`.${CLUSTER_DOMAIN}`)) return { rcode: RCODE.refused, addresses: [] };
    const svc = serviceOf(name);
    if (!svc) return { rcode: RCODE.nxDomain, addresses: [] };
    const base = `/api/v1/namespaces/${encodeURIComponent(svc.namespace)}`;
    const service = await api(`${base}/services/${encodeURIComponent(svc.service)}`);
    if (!service) return { rcode: RCODE.nxDomain, addresses: [] };
    if (service.spec?.clusterIP && service.spec.clusterIP !== 'None') return { rcode: RCODE.noError, addresses: [service.spec.clusterIP] };
    const endpoints = await api(`${base}/endpoints/${encodeURIComponent(svc.service)}`);
    const addresses: string[] = [];
    for (const subset of endpoints?.subsets ?? []) for (const a of subset.addresses ?? []) if (/^\d+\.\d+\.\d+\.\d+$/.test(a.ip)) addresses.push(a.ip);
    return { rcode: RCODE.noError, addresses: [...new Set(addresses)].sort() };
  };

  const answer = async (msg: Buffer): Promise<Buffer | undefined> => {
    const q = parseQuery(msg);
    if (!q) return undefined;
    const name = q.question.name;
    asked.set(name, (asked.get(name) ?? 0) + 1);
    let hit = cache.get(name);
    if (!hit || Date.now() - hit.at > CACHE_MS) {
      try {
        hit = { at: Date.now(), ...(await resolve(name)) };
      } catch {
        hit = { at: Date.now(), rcode: RCODE.servFail, addresses: [] };
      }
      if (cache.size >= MAX_CACHED) cache.clear();
      cache.set(name, hit);
    }
    return buildAnswer(q.id, q.flags, q.question, hit.rcode, hit.addresses);
  };

  const socket: Socket = createSocket('udp4');
  socket.on('message', (msg, from) => {
    void answer(msg).then((out) => out && socket.send(out, from.port, from.address));
  });
  await new Promise<void>((resolveBind, reject) => {
    socket.once('error', reject);
    socket.bind(opts.port ?? 53, opts.host, () => resolveBind());
  });
  socket.on('error', () => undefined);
  return {
    address: `${opts.host}:${opts.port ?? 53}`,
    queries: () => new Map(asked),
    stop: () => new Promise<void>((r) => socket.close(() => r())),
  };
}
