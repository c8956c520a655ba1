#!/usr/bin/env node
// One binary, three roles (DESIGN.md §1): serve, operator, node-agent.

const usage = `usage:
  registry-mirror serve [--config FILE]        run the registry mirror
  registry-mirror verify [--config FILE] [--repair] [--force]
                                               rehash the store of a stopped mirror; --repair
                                               quarantines corrupt files, removes leftovers
  registry-mirror operator [--kubeconfig F]    run the RegistryMirror controller
  registry-mirror node-agent [--hosts-dir D]   write containerd hosts.toml on this node
`;

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'serve':
      return (await import('../mirror/main.js')).runServe(rest);
    case 'verify':
      return (await import('../mirror/verify.js')).runVerify(rest);
    case 'operator':
      return (await import('../operator/main.js')).runOperator(rest);
    case 'node-agent':
      return (await import('../operator/node-agent/main.js')).runNodeAgent(rest);
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(usage);
      return;
    default:
      process.stderr.write(`registry-mirror: unknown command "${command ?? ''}"\n${usage}`);
      process.exit(2);
  }
}

main(process.argv.slice(2)).catch((err) => {
  process.stderr.write(`registry-mirror: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
