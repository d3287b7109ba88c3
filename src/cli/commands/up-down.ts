/** `nubis up`, `nubis down` and `nubis status`: the local control plane and host agents. */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import { DEFAULT_API_PORT } from '../../core/paths.ts';
import type { Status } from '../../wire/schemas.ts';
import { client, globals, parseInteger } from '../common.ts';
import { down, up } from '../local-services.ts';
import { printJson } from '../output.ts';
import { type AccessFlags, accessOptionsOf, addAccessOptions } from '../access-options.ts';
import { type TlsFlags, addTlsOptions, tlsOptionsOf } from '../tls-options.ts';

interface UpOptions extends TlsFlags, AccessFlags {
  port: number;
  host?: string;
  hosts: number;
  detach?: boolean;
  netns?: boolean;
}

/** Registers `up`, `down` and `status` on the program. */
export function registerUpDownCommands(program: Command): void {
  addAccessOptions(addTlsOptions(program.command('up')))
    .description('Start the control plane and the local host agent(s)')
    .option('--port <port>', 'API port', parseInteger('--port'), DEFAULT_API_PORT)
    .option('--host <address>', 'address the API listens on (default 127.0.0.1)')
    .option('--hosts <count>', 'number of local host agents', parseInteger('--hosts'), 1)
    .option('--netns', 'run each host in a network namespace with an underlay link (default as root with 2+ hosts)')
    .option('--no-netns', 'run host agents as plain processes (user-mode networking only)')
    .option('-d, --detach', 'return once everything runs, leaving it in the background')
    .action(runUp);

  program
    .command('down')
    .description('Stop what nubis up started; VMs are shut down cleanly first')
    .option('--keep-vms', 'leave the VMs running (the next nubis up re-adopts them)')
    .action(async (options: { keepVms?: boolean }, command: Command) => {
      const g = globals(command);
      const result = await down({ dataDir: g.data, keepVms: Boolean(options.keepVms), ca: g.ca }, (line) => void (g.json ? undefined : console.error(line)));
      if (g.json) printJson(result);
      else
        console.log(
          `Stopped ${result.stoppedProcesses.join(', ') || 'nothing (nothing was running)'}${result.stoppedVms.length ? `; VMs stopped: ${result.stoppedVms.join(', ')}` : ''}`,
        );
    });

  program
    .command('status')
    .description('Show whether Nubis runs, its hosts and VMs')
    .action(async (_options: unknown, command: Command) => {
      const status = await client(command).request<Static<typeof Status>>('GET', '/v1/status');
      if (globals(command).json) printJson(status);
      else
        console.log(
          `Nubis ${status.version}: ${status.hostsOnline}/${status.hosts} hosts online, ${status.vmsRunning}/${status.vms} VMs running (data ${status.dataDir})`,
        );
    });
}

/** Starts everything; without --detach, stays in the foreground until a signal, then stops it all. */
async function runUp(options: UpOptions, command: Command): Promise<void> {
  const g = globals(command);
  const say = (line: string): void => void (g.json ? undefined : console.error(line));
  if (options.hosts < 1 || options.hosts > 16) throw new NubisError('VALIDATION_FAILED', `--hosts must be from 1 to 16, not ${options.hosts}`);
  const netns = options.netns ?? (options.hosts > 1 && process.getuid?.() === 0);
  const tls = await tlsOptionsOf(options);
  const access = accessOptionsOf(options, g.data);
  const result = await up(
    {
      dataDir: g.data,
      port: options.port,
      hosts: options.hosts,
      detach: Boolean(options.detach),
      quiet: Boolean(g.json),
      netns,
      host: options.host,
      tls,
      access,
      ca: g.ca,
    },
    say,
  );
  if (g.json) printJson(result);
  else {
    console.log(`Nubis ${result.alreadyRunning ? 'was already running' : 'is running'}.`);
    console.log(`  API:          ${result.url}  (OpenAPI: ${result.url}/v1/openapi.json)`);
    console.log(`  Web console:  ${result.url}/  (sign in with a user's password, or with the admin token)`);
    console.log(`  Admin token:  ${result.adminTokenFile}`);
    if (result.caPath) console.log(`  CA:           ${result.caPath}  (other machines: nubis --ca FILE, or NUBIS_CA)`);
    console.log(`  Hosts:        ${result.hosts.join(', ')}`);
    console.log(`  Data folder:  ${result.dataDir}`);
    console.log('Next: npx nubis vm create web1 --image tiny --cpus 1 --memory 256');
  }
  if (options.detach) return;
  console.error('Running in the foreground: Ctrl-C stops Nubis and its VMs (nubis up --detach leaves it running).');
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  console.error('\nStopping Nubis');
  await down({ dataDir: g.data, keepVms: false, ca: g.ca }, (line) => console.error(line));
}
