// The throughput ceiling: a trivial static file server (node:http + fs.createReadStream),
// run as its own process like the servers it is compared with.
//   node dist/bench/static-server.js ROOT PORT [HIGH_WATER_MARK]
// GET/HEAD /<path under ROOT> -> 200 with Content-Length, or 404. Nothing else.
import { createReadStream, promises as fs } from 'node:fs';
import { createServer } from 'node:http';
import { join, normalize, sep } from 'node:path';
import { pipeline } from 'node:stream/promises';

const [root, portArg, hwmArg] = process.argv.slice(2);
if (!root || !portArg) {
  process.stderr.write('usage: static-server ROOT PORT [HIGH_WATER_MARK]\n');
  process.exit(2);
}
const highWaterMark = hwmArg ? Number(hwmArg) : 1 << 20;
const base = normalize(root) + sep;

const server = createServer(async (req, res) => {
  const path = normalize(join(base, decodeURIComponent((req.url ?? '/').split('?')[0]!)));
  const st = path.startsWith(base) ? await fs.stat(path).catch(() => undefined) : undefined;
  if (!st?.isFile() || (req.method !== 'GET' && req.method !== 'HEAD')) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': st.size });
  if (req.method === 'HEAD') {
    res.end();
    return;
  }
  await pipeline(createReadStream(path, { highWaterMark }), res).catch(() => undefined);
});
server.listen(Number(portArg), '127.0.0.1', () => process.stdout.write(`static-server listening on 127.0.0.1:${portArg}\n`));
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => server.close(() => process.exit(0)).closeAllConnections());
