// Issue 12 item 3: merging a node's existing hosts.toml keeps every setting of the original,
// server-level and per host, and removal restores the original byte for byte. The originals
// are real-world shapes from containerd's hosts.toml documentation (docs/hosts.md), parsed
// by smol-toml like the agent does.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parse as parseToml } from 'smol-toml';
import { HostsDir } from '../../operator/node-agent/files.js';
import { BACKUP_SUFFIX, renderHostsToml, type HostsEntry } from '../../operator/node-agent/hosts-toml.js';

type Table = Record<string, unknown>;
/** smol-toml's tables have a null prototype; compare plain copies. */
const parse = (text: string): Table => JSON.parse(JSON.stringify(parseToml(text))) as Table;
const MIRROR = 'http://10.96.0.10:5000';

function entry(registry: string, server: string): HostsEntry {
  return { registry, server, mirrorUrl: MIRROR, owner: 'infra/m' };
}

/** A private registry behind client certs and a static Authorization header (server-level). */
const PRIVATE_SERVER_LEVEL = `# written by the node's bootstrap
server = "https://registry.corp.example:5000"
ca = "/etc/containerd/certs.d/registry.corp.example:5000/ca.crt"
client = [["/etc/certs/client.cert", "/etc/certs/client.key"], ["/etc/certs/client.pem", ""]]
skip_verify = false
override_path = false
capabilities = ["pull", "resolve", "push"]
dial_timeout = "3s"
proxy = "http://my-proxy:8080"
x_future_key = { nested = [1, 2, 3] }

[header]
  Authorization = "Basic dXNlcjpwYXNz"
  x-custom-1 = ["custom header part a", "part b"]

[host."https://docker-mirror.internal"]
  capabilities = ["pull", "resolve"]
  ca = "docker-mirror.crt"
`;

/** No server at all: the top-level settings apply to the registry's default server. */
const NO_SERVER = `ca = ["/etc/certs/test-1-ca.pem", "/etc/certs/special.pem"]
skip_verify = true
[header]
  Authorization = "Bearer abc"
`;

/** containerd docs' per-host example, with a server-level header too. */
const DOCS_HOSTS = `server = "https://registry-1.docker.io"    # Exclude this to not use upstream
[header]
  x-custom-1 = "custom header"
  x-custom-1-2 = "another custom header"

[host."https://mirror.registry"]
  capabilities = ["pull"]
  ca = "/etc/certs/mirror.pem"
  skip_verify = false
  [host."https://mirror.registry".header]
    x-custom-2 = ["value1", "value2"]

[host."https://mirror-bak.registry/us"]
  capabilities = ["pull"]
  skip_verify = true

[host."https://test-1.registry"]
  capabilities = ["pull", "resolve", "push"]
  ca = ["/etc/certs/test-1-ca.pem", "/etc/certs/special.pem"]
  client = [["/etc/certs/client.cert", "/etc/certs/client.key"],["/etc/certs/client.pem", ""]]

[host."https://test-2.registry"]
  client = "/etc/certs/client.pem"

[host."https://non-compliant-mirror.registry/v2/upstream"]
  capabilities = ["pull"]
  override_path = true
`;

function serverLevel(doc: Table): Table {
  return Object.fromEntries(Object.entries(doc).filter(([k]) => k !== 'server' && k !== 'host'));
}
function hostsOf(doc: Table): Record<string, Table> {
  return (doc.host ?? {}) as Record<string, Table>;
}

describe('hosts.toml merge keeps every setting of the original', () => {
  it('keeps server-level ca, client, [header] with Authorization, skip_verify, override_path and unknown keys when the server is ours', () => {
    const merged = parse(renderHostsToml(entry('registry.corp.example:5000', 'https://registry.corp.example:5000'), PRIVATE_SERVER_LEVEL)) as Table;
    const original = parse(PRIVATE_SERVER_LEVEL) as Table;
    assert.equal(merged.server, 'https://registry.corp.example:5000');
    assert.deepEqual(serverLevel(merged), serverLevel(original));
    assert.deepEqual(hostsOf(merged)['https://docker-mirror.internal'], hostsOf(original)['https://docker-mirror.internal']);
    // The mirror host gets none of the registry's settings (its Authorization stays with the registry).
    assert.deepEqual(hostsOf(merged)[MIRROR], { capabilities: ['pull', 'resolve'], dial_timeout: '200ms' });
    assert.deepEqual(Object.keys(hostsOf(merged)), [MIRROR, 'https://docker-mirror.internal']);
  });

  it("moves the settings of a different previous server onto that server's host, before our server", () => {
    const merged = parse(renderHostsToml(entry('registry.corp.example:5000', 'https://upstream.example.com'), PRIVATE_SERVER_LEVEL)) as Table;
    const original = parse(PRIVATE_SERVER_LEVEL) as Table;
    assert.equal(merged.server, 'https://upstream.example.com');
    assert.deepEqual(serverLevel(merged), {});
    assert.deepEqual(Object.keys(hostsOf(merged)), [MIRROR, 'https://docker-mirror.internal', 'https://registry.corp.example:5000']);
    // Everything the server had, including its own explicit capabilities.
    assert.deepEqual(hostsOf(merged)['https://registry.corp.example:5000'], serverLevel(original));
  });

  it("applies a file without server to the registry's default server", () => {
    const ours = parse(renderHostsToml(entry('myregistry.io:5000', 'https://myregistry.io:5000'), NO_SERVER)) as Table;
    assert.deepEqual(serverLevel(ours), serverLevel(parse(NO_SERVER) as Table));
    const other = parse(renderHostsToml(entry('myregistry.io:5000', 'https://elsewhere.example'), NO_SERVER)) as Table;
    assert.deepEqual(hostsOf(other)['https://myregistry.io:5000'], { capabilities: ['pull', 'resolve'], ...serverLevel(parse(NO_SERVER) as Table) });
    // docker.io's default server is registry-1.docker.io.
    const hub = parse(renderHostsToml(entry('docker.io', 'https://registry-1.docker.io'), NO_SERVER)) as Table;
    assert.deepEqual(serverLevel(hub), serverLevel(parse(NO_SERVER) as Table));
    assert.deepEqual(Object.keys(hostsOf(hub)), [MIRROR]);
  });

  it("keeps every host of containerd's documented example with all its keys, in order", () => {
    const original = parse(DOCS_HOSTS) as Table;
    const merged = parse(renderHostsToml(entry('docker.io', 'https://registry-1.docker.io'), DOCS_HOSTS)) as Table;
    assert.deepEqual(Object.keys(hostsOf(merged)), [MIRROR, ...Object.keys(hostsOf(original))]);
    for (const [url, t] of Object.entries(hostsOf(original))) assert.deepEqual(hostsOf(merged)[url], t, url);
    assert.deepEqual(serverLevel(merged), serverLevel(original));
  });

  it("adds a previous server's settings to an existing host of the same URL without overriding the host's own", () => {
    const prev = 'server = "https://a.example"\nca = "srv.pem"\n[header]\n  Authorization = "Basic x"\n[host."https://a.example"]\n  ca = "host.pem"\n';
    const merged = parse(renderHostsToml(entry('a.example', 'https://upstream.example'), prev)) as Table;
    assert.deepEqual(hostsOf(merged)['https://a.example'], { ca: 'host.pem', header: { Authorization: 'Basic x' } });
  });

  it('never hands the previous settings to the mirror host, even if the previous file named the mirror', () => {
    const prev = `server = "${MIRROR}"\n[header]\n  Authorization = "Basic x"\n[host."${MIRROR}/"]\n  skip_verify = true\n`;
    const merged = parse(renderHostsToml(entry('a.example', 'https://a.example'), prev)) as Table;
    assert.deepEqual(hostsOf(merged), { [MIRROR]: { capabilities: ['pull', 'resolve'], dial_timeout: '200ms' } });
  });
});

describe('hosts.toml original restored byte for byte', () => {
  const root = mkdtempSync(join(tmpdir(), 'hosts-merge-'));
  after(() => rmSync(root, { recursive: true, force: true }));

  for (const [name, text] of [
    ['server-level', PRIVATE_SERVER_LEVEL],
    ['no-server', NO_SERVER],
    ['docs', DOCS_HOSTS.replace(/\n/g, '\r\n')],
    ['unparsable', 'server = "https://x\n[[[ nope\n'],
  ] as const) {
    it(`restores the ${name} original exactly after write, rewrite and removal`, () => {
      const dir = join(root, name);
      const registry = 'registry.corp.example:5000';
      mkdirSync(join(dir, registry), { recursive: true });
      const file = join(dir, registry, 'hosts.toml');
      const bytes = Buffer.from(text);
      writeFileSync(file, bytes, { mode: 0o640 });
      const hd = new HostsDir(dir);
      hd.write(entry(registry, 'https://registry.corp.example:5000'));
      assert.deepEqual(readFileSync(file + BACKUP_SUFFIX), bytes);
      hd.write({ ...entry(registry, 'https://other.example'), dialTimeout: '1s' });
      assert.deepEqual(readFileSync(file + BACKUP_SUFFIX), bytes);
      hd.remove(registry);
      assert.deepEqual(readFileSync(file), bytes);
    });
  }
});
