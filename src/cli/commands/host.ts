/** `nubis host`: the hosts of the cluster, and maintenance (evacuate, restore). */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import type { Accepted, Host, HostIsolation } from '../../wire/schemas.ts';
import { client, globals, parseInteger, runOperation } from '../common.ts';
import { printJson, printTable } from '../output.ts';
import { NubisError } from '../../core/errors.ts';
import { collectLabel, formatLabels } from './placement.ts';
import { addUsageCommand } from './usage.ts';

/** The result of an evacuate or restore operation: what became of each VM it moved. */
interface MoveResults {
  results: Array<{ vm: string; status: string; to?: string }>;
}

/** Registers `host` and its subcommands on the program. */
export function registerHostCommands(program: Command): void {
  const host = program.command('host').description('Hosts of the cluster');
  addUsageCommand(host, 'host');
  host
    .command('list')
    .description('List hosts with their accelerator, capacity and allocation')
    .action(async (_options: unknown, command: Command) => {
      const hosts = await client(command).request<Array<Static<typeof Host>>>('GET', '/v1/hosts');
      if (globals(command).json) return printJson(hosts);
      printTable(
        ['NAME', 'STATUS', 'ACCEL', 'VMS', 'VCPUS', 'MEMORY (USED/TOTAL)', 'LABELS'],
        hosts.map((h) => [
          h.name,
          h.status,
          h.accelerator,
          h.vmCount,
          `${h.allocatedCpus}/${h.cpus}`,
          `${h.allocatedMemoryMb}/${h.memoryMb} MiB`,
          formatLabels(h.labels),
        ]),
      );
    });
  host
    .command('show <host>')
    .description('Show a host, with why its accelerator was chosen')
    .action(async (name: string, _options: unknown, command: Command) => {
      const h = await client(command).request<Static<typeof Host>>('GET', `/v1/hosts/${encodeURIComponent(name)}`);
      if (globals(command).json) return printJson(h);
      const shown = (key: string, value: unknown) =>
        key === 'labels' ? formatLabels(h.labels) : key === 'isolation' && h.isolation ? isolationText(h.isolation) : value;
      for (const [key, value] of Object.entries(h)) console.log(`${`${key}:`.padEnd(20)} ${shown(key, value)}`);
    });
  host
    .command('set <host>')
    .description("Set a host's labels (zone, region, rack, ...) and overcommit ratios")
    .option('--label <key=value>', 'set a label; key= removes it (repeatable)', collectLabel, {})
    .option('--cpu-overcommit <ratio>', 'vCPUs placement may give VMs per core (default 4)', parseRatio)
    .option('--memory-overcommit <ratio>', 'guest memory per MiB of host memory (default 1)', parseRatio)
    .action(async (name: string, options: { label: Record<string, string>; cpuOvercommit?: number; memoryOvercommit?: number }, command: Command) => {
      const body = {
        ...(Object.keys(options.label).length > 0 ? { labels: options.label } : {}),
        ...(options.cpuOvercommit !== undefined ? { cpuOvercommit: options.cpuOvercommit } : {}),
        ...(options.memoryOvercommit !== undefined ? { memoryOvercommit: options.memoryOvercommit } : {}),
      };
      if (Object.keys(body).length === 0) throw new NubisError('VALIDATION_FAILED', 'Give something to set, e.g. --label zone=a or --cpu-overcommit 2');
      const h = await client(command).request<Static<typeof Host>>('PATCH', `/v1/hosts/${encodeURIComponent(name)}`, body);
      if (globals(command).json) return printJson(h);
      console.log(`${h.name}: labels ${formatLabels(h.labels)}, overcommit CPU ${h.cpuOvercommit}x, memory ${h.memoryOvercommit}x`);
    });
  addMaintenanceCommands(host);
}

function parseRatio(value: string): number {
  const ratio = Number(value);
  if (!/^\d+(\.\d+)?$/.test(value) || !(ratio >= 0.1 && ratio <= 64))
    throw new NubisError('VALIDATION_FAILED', `${value} is not a ratio between 0.1 and 64 (e.g. 1.5)`);
  return ratio;
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

/** `cgroup v1, every VM its own user` */
function isolationText(isolation: HostIsolation): string {
  const cgroups = isolation.cgroups === 'none' ? 'no cgroups (no CPU controls)' : `cgroup ${isolation.cgroups}`;
  return `${cgroups}, ${isolation.vmUsers ? 'every VM its own unprivileged user' : "VMs run as the agent's user (it is not root)"}`;
}
