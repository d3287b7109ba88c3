/** `nubis project`: projects (tenants). */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import { parseSize } from '../../storage/size.ts';
import type { ProjectDetail } from '../../wire/access-schemas.ts';
import type { Project } from '../../wire/schemas.ts';
import { client, globals } from '../common.ts';
import { formatSize, printJson, printTable } from '../output.ts';
import { collectLabel, formatLabels } from './placement.ts';

/** Registers `project` and its subcommands on the program. */
export function registerProjectCommands(program: Command): void {
  const project = program.command('project').description('Projects (tenants)');
  project
    .command('list')
    .description('List projects')
    .action(async (_options: unknown, command: Command) => {
      const projects = await client(command).request<Array<Static<typeof Project>>>('GET', '/v1/projects');
      if (globals(command).json) return printJson(projects);
      printTable(
        ['NAME', 'ID', 'CREATED'],
        projects.map((p) => [p.name, p.id, p.createdAt]),
      );
    });
  project
    .command('create <name>')
    .description('Create a project')
    .action(async (name: string, _options: unknown, command: Command) => {
      const created = await client(command).request<Static<typeof Project>>('POST', '/v1/projects', { name });
      if (globals(command).json) return printJson(created);
      console.log(`${name}: created`);
    });
  project
    .command('show <name>')
    .description('Show a project with each quota: its limit and its use')
    .action(async (name: string, _options: unknown, command: Command) => {
      const detail = await client(command).request<Static<typeof ProjectDetail>>('GET', `/v1/projects/${encodeURIComponent(name)}`);
      if (globals(command).json) return printJson(detail);
      printQuota(detail);
    });
  project
    .command('set <name>')
    .description("Set the labels the project's VMs' hosts and volumes' pools must carry (data residency), and whether its VMs need a trusted launch")
    .option('--require <key=value>', 'require a label; key= drops the requirement (repeatable)', collectLabel, {})
    .option('--require-trusted-launch', 'its VMs start only from launch measurements that match the expected ones (nubis vm attest)')
    .option('--no-require-trusted-launch', 'stop requiring trusted launch')
    .action(async (name: string, options: { require: Record<string, string>; requireTrustedLaunch?: boolean }, command: Command) => {
      if (Object.keys(options.require).length === 0 && options.requireTrustedLaunch === undefined)
        throw new NubisError('VALIDATION_FAILED', 'Give a requirement, e.g. --require region=eu or --require-trusted-launch');
      const path = `/v1/projects/${encodeURIComponent(name)}`;
      const results: unknown[] = [];
      if (Object.keys(options.require).length > 0) {
        const set = await client(command).request<{ project: string; requirements: Record<string, string> }>('PUT', `${path}/requirements`, {
          requirements: options.require,
        });
        results.push(set);
        if (!globals(command).json) console.log(`${set.project} requires ${formatLabels(set.requirements)} of its hosts and pools`);
      }
      if (options.requireTrustedLaunch !== undefined) {
        const set = await client(command).request<{ project: string; requireTrustedLaunch: boolean }>('PUT', `${path}/trusted-launch`, {
          required: options.requireTrustedLaunch,
        });
        results.push(set);
        if (!globals(command).json) console.log(`${set.project} ${set.requireTrustedLaunch ? 'requires' : 'does not require'} trusted launch of its VMs`);
      }
      if (globals(command).json) printJson(results.length === 1 ? results[0] : results);
    });
  project
    .command('quota')
    .description("A project's quotas")
    .command('set <name>')
    .description('Set quotas, e.g. nubis project quota set web --cpus 16 --memory 32G --vms 10; "none" removes one')
    .option('--cpus <n>', 'vCPUs over all VMs')
    .option('--memory <size>', 'memory over all VMs, e.g. 32G')
    .option('--vms <n>', 'number of VMs')
    .option('--volume-bytes <size>', 'bytes over all volumes, e.g. 500G (snapshots and clones count their size)')
    .option('--networks <n>', 'number of networks')
    .option('--port-forwards <n>', 'number of port forwards')
    .action(async (name: string, options: Record<string, string | undefined>, command: Command) => {
      const change = quotaChange(options);
      if (Object.keys(change).length === 0) throw new NubisError('VALIDATION_FAILED', 'Give at least one quota, e.g. --vms 10');
      const detail = await client(command).request<Static<typeof ProjectDetail>>('PUT', `/v1/projects/${encodeURIComponent(name)}/quota`, change);
      if (globals(command).json) return printJson(detail);
      printQuota(detail);
    });
}

/** The API's quota change from the CLI's options: counts as numbers, sizes parsed, `none` as null. */
function quotaChange(options: Record<string, string | undefined>): Record<string, number | null> {
  const change: Record<string, number | null> = {};
  const fields: Array<[option: string, field: string, size: boolean]> = [
    ['cpus', 'cpus', false],
    ['memory', 'memoryMb', true],
    ['vms', 'vms', false],
    ['volumeBytes', 'volumeBytes', true],
    ['networks', 'networks', false],
    ['portForwards', 'portForwards', false],
  ];
  for (const [option, field, size] of fields) {
    const value = options[option];
    if (value === undefined) continue;
    if (value === 'none') change[field] = null;
    else if (size) change[field] = field === 'memoryMb' ? Math.floor(parseSize(value) / 2 ** 20) : parseSize(value);
    else if (/^\d+$/.test(value)) change[field] = Number(value);
    else throw new NubisError('VALIDATION_FAILED', `--${option.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} ${value} is not a whole number (or none)`);
  }
  return change;
}

function printQuota(detail: Static<typeof ProjectDetail>): void {
  console.log(`${detail.name} (${detail.id}), created ${detail.createdAt}${detail.requireTrustedLaunch ? ', requires trusted launch' : ''}`);
  const shown = (name: string, value: number | undefined) =>
    value === undefined ? 'none' : name === 'volumeBytes' ? formatSize(value) : name === 'memoryMb' ? formatSize(value * 2 ** 20) : String(value);
  printTable(
    ['QUOTA', 'USED', 'LIMIT'],
    Object.entries(detail.quota).map(([name, { used, limit }]) => [name, shown(name, used), shown(name, limit)]),
  );
}
