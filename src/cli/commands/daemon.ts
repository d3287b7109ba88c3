/**
 * `nubis daemon`: the services `nubis up` starts, each run in the foreground until a signal.
 * Each service's code is imported when its command runs: the rest of the CLI never loads it.
 */
import { existsSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import { DEFAULT_API_PORT, cacheDir, dataPaths } from '../../core/paths.ts';
import { readTinyImage } from '../../images/build-tiny.ts';
import { globals, parseInteger } from '../common.ts';
import { type AccessFlags, accessOptionsOf, addAccessOptions } from '../access-options.ts';
import { type TlsFlags, addTlsOptions, tlsOptionsOf } from '../tls-options.ts';

interface AgentOptions {
  name: string;
  controlUrl: string;
  netns?: string;
  underlayIp?: string;
  listenUnderlay?: boolean;
}

/** Registers `daemon` and its subcommands (control-plane, agent, storage, backup-store) on the program. */
export function registerDaemonCommands(program: Command): void {
  const daemon = program.command('daemon').description('Run a Nubis service in the foreground (nubis up does this for you)');
  // Everything a service writes (the database, secrets, VM folders, QEMU's serial logs, pool
  // files) is its owner's alone unless a file says otherwise.
  daemon.hook('preAction', () => {
    process.umask(0o077);
  });
  addAccessOptions(addTlsOptions(daemon.command('control-plane')))
    .description('Run the control plane')
    .option('--port <port>', 'API port', parseInteger('--port'), DEFAULT_API_PORT)
    .option('--listen <address>', 'address to listen on', '127.0.0.1')
    .option('--agent-listen <host:port>', "also serve host agents on this address (e.g. the underlay's), plain HTTP with agent tokens")
    .action(runControlPlane);
  daemon
    .command('agent')
    .description('Run a host agent')
    .requiredOption('--name <name>', 'host name')
    .requiredOption('--control-url <url>', 'control plane URL (http://... or unix:/path)')
    .option('--netns <name>', 'the network namespace this host runs in')
    .option('--underlay-ip <address>', "this host's underlay address (VXLAN endpoint)")
    .option('--listen-underlay', 'serve the agent API on the underlay address (the control plane calls it there)')
    .action(runAgent);
  daemon
    .command('watchdog')
    .description("Run a host's watchdog: it kills the host's HA VMs when the host is cut off or its agent is gone")
    .requiredOption('--name <name>', 'host name')
    .option('--underlay-ip <address>', "this host's underlay address (the watchdog answers peers' probes there)")
    .action(runWatchdog);
  daemon
    .command('storage')
    .description('Run the storage node: pools, volumes and their NBD exports')
    .option('--nbd-tcp <host:port>', 'also serve NBD on TCP')
    .option('--nbd-tls-dir <dir>', "require TLS on TCP: server-cert.pem, server-key.pem and, for client certificates, ca-cert.pem (QEMU's file names)")
    .action(runStorageNode);
  daemon
    .command('backup-store')
    .description('Run the backup store: sealed chunks and backups, on a unix socket of root alone; it never sees a key')
    .action(runBackupStore);
}

async function runBackupStore(_options: unknown, command: Command): Promise<void> {
  const { startBackupStore } = await import('../../backup/store/store-app.ts');
  const { createLogger } = await import('../../core/logger.ts');
  const paths = dataPaths(globals(command).data);
  const logger = createLogger('backup-store');
  const store = await startBackupStore({ dir: paths.backupStore, socketPath: paths.backupStoreSocket });
  logger.info({ dir: paths.backupStore }, 'backup store serving');
  await waitForSignal();
  logger.info('stopping');
  await store.close();
}

async function runControlPlane(options: { port: number; listen: string; agentListen?: string } & TlsFlags & AccessFlags, command: Command): Promise<void> {
  const { startControlPlane } = await import('../../app/control-plane.ts');
  const { createLogger } = await import('../../core/logger.ts');
  const logger = createLogger('control-plane');
  const tls = await tlsOptionsOf(options);
  const access = accessOptionsOf(options, globals(command).data);
  const running = await startControlPlane({
    dataDir: globals(command).data,
    cacheDir: cacheDir(),
    host: options.listen,
    port: options.port,
    ...(options.agentListen ? { agentListen: parseHostPort(options.agentListen, '--agent-listen') } : {}),
    logger,
    tls,
    ...access,
  });
  await waitForSignal();
  logger.info('stopping');
  await running.stop();
}

async function runAgent(options: AgentOptions, command: Command): Promise<void> {
  const { startAgent } = await import('../../host/agent.ts');
  const { createLogger } = await import('../../core/logger.ts');
  const dataDir = globals(command).data;
  const tiny = readTinyImage(cacheDir());
  if (!tiny) throw new NubisError('IMAGE_NOT_FOUND', 'The tiny image is not built; run npx nubis image build tiny');
  const logger = createLogger(`agent ${options.name}`);
  const agent = await startAgent({
    name: options.name,
    hostDir: join(dataPaths(dataDir).hostsDir, options.name),
    controlUrl: options.controlUrl,
    joinToken: (await readFile(dataPaths(dataDir).joinToken, 'utf8')).trim(),
    probeGuest: { kernelPath: tiny.kernelPath, initrdPath: tiny.initrdPath, identity: tiny.sha256 },
    cacheDir: cacheDir(),
    logger,
    hostNs: options.netns,
    underlayIp: options.underlayIp,
    listenOnUnderlay: options.listenUnderlay === true,
  });
  await Promise.race([waitForSignal(), agent.ended]);
  logger.info('stopping; VMs keep running');
  await agent.stop();
}

async function runWatchdog(options: { name: string; underlayIp?: string }, command: Command): Promise<void> {
  const { Watchdog } = await import('../../host/watchdog.ts');
  const { createLogger } = await import('../../core/logger.ts');
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(options.name)) throw new NubisError('VALIDATION_FAILED', `--name ${options.name} is not a host name`);
  const logger = createLogger(`watchdog ${options.name}`);
  const watchdog = new Watchdog({ hostDir: join(dataPaths(globals(command).data).hostsDir, options.name), underlayIp: options.underlayIp, logger });
  await watchdog.start();
  logger.info('watching');
  await waitForSignal();
  await watchdog.stop();
}

/** `HOST:PORT` as given on a command line. */
function parseHostPort(value: string, option: string): { host: string; port: number } {
  const match = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(value);
  if (!match || Number(match[2]) > 65535) throw new NubisError('VALIDATION_FAILED', `${option} takes IPV4:PORT (e.g. 172.31.0.1:7900), not ${value}`);
  return { host: match[1]!, port: Number(match[2]) };
}

async function runStorageNode(options: { nbdTcp?: string; nbdTlsDir?: string }, command: Command): Promise<void> {
  const { startStorageNode, storageNodeFolders } = await import('../../storage/storage-node.ts');
  const { createLogger } = await import('../../core/logger.ts');
  const paths = dataPaths(globals(command).data);
  const logger = createLogger('storage');
  const tcp = options.nbdTcp ? /^(.+):(\d+)$/.exec(options.nbdTcp) : undefined;
  if (options.nbdTcp && !tcp) throw new NubisError('VALIDATION_FAILED', `--nbd-tcp takes HOST:PORT, not ${options.nbdTcp}`);
  if (options.nbdTlsDir && !tcp) throw new NubisError('VALIDATION_FAILED', '--nbd-tls-dir protects the TCP listener: give --nbd-tcp too');
  const tlsFile = (name: string): string => join(options.nbdTlsDir!, name);
  if (options.nbdTlsDir)
    for (const name of ['server-cert.pem', 'server-key.pem'])
      if (!existsSync(tlsFile(name))) throw new NubisError('VALIDATION_FAILED', `${tlsFile(name)} is missing`);
  const node = await startStorageNode({
    ...storageNodeFolders(paths),
    ...(tcp ? { nbdTcp: { host: tcp[1], port: Number(tcp[2]) } } : {}),
    ...(options.nbdTlsDir
      ? {
          nbdTls: {
            cert: readFileSync(tlsFile('server-cert.pem')),
            key: readFileSync(tlsFile('server-key.pem')),
            ...(existsSync(tlsFile('ca-cert.pem')) ? { ca: readFileSync(tlsFile('ca-cert.pem')) } : {}),
          },
        }
      : {}),
  });
  logger.info({ pools: node.service.listPools().map((pool) => pool.name) }, 'storage node serving');
  await waitForSignal();
  logger.info('stopping');
  await node.stop();
}

function waitForSignal(): Promise<void> {
  return new Promise((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
}
