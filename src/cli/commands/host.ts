/** `nubis host`: the hosts of the cluster, and maintenance (evacuate, restore). */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import type { Accepted, Host } from '../../wire/schemas.ts';
import { client, globals, parseInteger, runOperation } from '../common.ts';
import { printJson, printTable } from '../output.ts';

/** The result of an evacuate or restore operation: what became of each VM it moved. */
interface MoveResults {
  results: Array<{ vm: string; status: string; to?: string }>;
}

/** Registers `host` and its subcommands on the program. */
export function registerHostCommands(program: Command): void {
  const host = program.command('host').description('Hosts of the cluster');
  host
    .command('list')
    .description('List hosts with their accelerator, capacity and allocation')
    .action(async (_options: unknown, command: Command) => {
      const hosts = await client(command).request<Array<Static<typeof Host>>>('GET', '/v1/hosts');
      if (globals(command).json) return printJson(hosts);
      printTable(
        ['NAME', 'STATUS', 'ACCEL', 'VMS', 'VCPUS', 'MEMORY (USED/TOTAL)'],
        hosts.map((h) => [h.name, h.status, h.accelerator, h.vmCount, `${h.allocatedCpus}/${h.cpus}`, `${h.allocatedMemoryMb}/${h.memoryMb} MiB`]),
      );
    });
  host
    .command('show <host>')
    .description('Show a host, with why its accelerator was chosen')
    .action(async (name: string, _options: unknown, command: Command) => {
      const h = await client(command).request<Static<typeof Host>>('GET', `/v1/hosts/${encodeURIComponent(name)}`);
      if (globals(command).json) return printJson(h);
      for (const [key, value] of Object.entries(h)) console.log(`${`${key}:`.padEnd(20)} ${value}`);
    });
  addMaintenanceCommands(host);
}

function addMaintenanceCommands(host: Command): void {
  host
    .command('evacuate <host>')
    .description('Maintenance: place nothing on the host and live-migrate its running VMs away')
    .option('--parallel <n>', 'migrations at a time', parseInteger('--parallel'), 2)
    .action(async (name: string, options: { parallel: number }, command: Command) => {
      const { operation } = await client(command).request<Static<typeof Accepted>>('POST', `/v1/hosts/${encodeURIComponent(name)}/evacuate`, {
        parallel: options.parallel,
      });
      const final = await runOperation(command, `Evacuating ${name}`, operation);
      if (globals(command).json) return printJson(final.result);
      printMoveResults(final.result as MoveResults);
    });
  host
    .command('restore <host>')
    .description('End maintenance: the host takes VMs again')
    .option('--move-back', 'live-migrate back the running VMs whose last migration took them off this host')
    .option('--parallel <n>', 'migrations at a time', parseInteger('--parallel'), 2)
    .action(async (name: string, options: { moveBack?: boolean; parallel: number }, command: Command) => {
      // The API answers with the host, or with an operation when VMs move back.
      const answer = await client(command).request<Static<typeof Host> | Static<typeof Accepted>>('POST', `/v1/hosts/${encodeURIComponent(name)}/restore`, {
        moveBack: Boolean(options.moveBack),
        parallel: options.parallel,
      });
      if ('operation' in answer) {
        const final = await runOperation(command, `Moving VMs back to ${name}`, answer.operation);
        if (globals(command).json) return printJson(final.result);
        return printMoveResults(final.result as MoveResults);
      }
      if (globals(command).json) return printJson(answer);
      console.log(`${name}: ${answer.status}`);
    });
}

function printMoveResults(moves: MoveResults): void {
  printTable(
    ['VM', 'RESULT', 'NOW ON'],
    moves.results.map((r) => [r.vm, r.status, r.to]),
  );
}
