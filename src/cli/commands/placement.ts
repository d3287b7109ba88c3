/** `nubis placement-group` and `nubis schedule explain`: where VMs go and why. */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import type { PlacementDecision, PlacementGroup } from '../../wire/placement-schemas.ts';
import { client, globals, parseInteger, projectQuery } from '../common.ts';
import { printJson, printTable } from '../output.ts';
import { formatLabels } from '../../wire/label-format.ts';

export { formatLabels };

type Decision = Static<typeof PlacementDecision>;
type Group = Static<typeof PlacementGroup>;

/** Prints a scheduler decision: the chosen host, the scores of the best, and every refusal with its rule. */
export function printDecision(decision: Decision): void {
  console.log(decision.host ? `Chosen host: ${decision.host}` : 'No host can take it');
  if (decision.ranked.length > 0) {
    console.log('\nHosts that passed every filter (best first):');
    printTable(
      ['HOST', 'SCORE', 'WEIGHTS'],
      decision.ranked.map((r) => [
        r.host,
        r.score,
        Object.entries(r.weights)
          .map(([name, weight]) => `${name}=${weight}`)
          .join(' '),
      ]),
    );
  }
  if (decision.refused.length > 0) {
    console.log('\nRefused:');
    printTable(
      ['HOST', 'RULE', 'WHY'],
      decision.refused.map((r) => [r.host, r.filter, r.reason]),
    );
  }
}

/** `KEY=VALUE` options collected into labels (`--label zone=a`; `--label zone=` removes zone). */
export function collectLabel(value: string, previous: Record<string, string> = {}): Record<string, string> {
  const at = value.indexOf('=');
  if (at <= 0) throw new NubisError('VALIDATION_FAILED', `${JSON.stringify(value)} is not KEY=VALUE (e.g. zone=a; zone= removes the label)`);
  return { ...previous, [value.slice(0, at)]: value.slice(at + 1) };
}

export function registerPlacementCommands(program: Command): void {
  const group = program
    .command('placement-group')
    .description('Placement groups: VMs kept apart (anti-affinity) or together (affinity) on hosts or zones')
    .option('--project <name>', 'project (default: default)');
  group
    .command('create <name>')
    .description('Create a placement group; VMs join it with vm create --group')
    .requiredOption('--policy <policy>', 'anti-affinity or affinity')
    .option('--scope <scope>', "host, or zone (the hosts' zone label)", 'host')
    .option('--strict', 'refuse a host that breaks the policy (default: only prefer the others)')
    .action(async (name: string, options: { policy: string; scope: string; strict?: boolean }, command: Command) => {
      const g = globals(command);
      const created = await client(command).request<Group>('POST', '/v1/placement-groups', {
        name,
        policy: options.policy,
        scope: options.scope,
        strict: Boolean(options.strict),
        ...(g.project ? { project: g.project } : {}),
      });
      if (g.json) return printJson(created);
      console.log(`Created ${created.strict ? 'strict' : 'soft'} ${created.policy} group ${created.name} (per ${created.scope})`);
    });
  group
    .command('list')
    .description('List placement groups with their members')
    .action(async (_options: unknown, command: Command) => {
      const groups = await client(command).request<Group[]>('GET', `/v1/placement-groups${projectQuery(command)}`);
      if (globals(command).json) return printJson(groups);
      printTable(
        ['NAME', 'PROJECT', 'POLICY', 'SCOPE', 'STRICT', 'MEMBERS'],
        groups.map((x) => [x.name, x.project, x.policy, x.scope, x.strict ? 'yes' : 'no', x.members.map((m) => `${m.vm}@${m.host}`).join(' ') || '-']),
      );
    });
  group
    .command('show <name>')
    .description('Show a placement group and where its members run')
    .action(async (name: string, _options: unknown, command: Command) => {
      const shown = await client(command).request<Group>('GET', `/v1/placement-groups/${encodeURIComponent(name)}${projectQuery(command)}`);
      if (globals(command).json) return printJson(shown);
      console.log(`${shown.name}: ${shown.strict ? 'strict' : 'soft'} ${shown.policy} per ${shown.scope} (project ${shown.project})`);
      printTable(
        ['VM', 'HOST', 'ZONE'],
        shown.members.map((m) => [m.vm, m.host, m.zone ?? '-']),
      );
    });
  group
    .command('delete <name>')
    .description('Delete a placement group without members')
    .action(async (name: string, _options: unknown, command: Command) => {
      await client(command).request('DELETE', `/v1/placement-groups/${encodeURIComponent(name)}${projectQuery(command)}`);
      if (globals(command).json) return printJson({ deleted: name });
      console.log(`Deleted placement group ${name}`);
    });
  addScheduleExplain(program);
}

function addScheduleExplain(program: Command): void {
  program
    .command('schedule')
    .description("The scheduler's decisions")
    .command('explain')
    .description('Where a VM of this size would go (or, with --vm, where that VM could migrate), each host refused by which rule')
    .option('--project <name>', 'project whose rules apply (default: default)')
    .option('--cpus <n>', 'virtual CPUs', parseInteger('--cpus'), 1)
    .option('--memory <mib>', 'memory in MiB', parseInteger('--memory'), 256)
    .option('--host <host>', 'only this host')
    .option('--group <group>', 'placement group it would join')
    .option('--networks', 'it would be on virtual networks')
    .option('--vm <vm>', 'explain migrating this VM instead')
    .action(
      async (options: { project?: string; cpus: number; memory: number; host?: string; group?: string; networks?: boolean; vm?: string }, command: Command) => {
        const decision = await client(command).request<Decision>('POST', '/v1/schedule/explain', {
          cpus: options.cpus,
          memoryMb: options.memory,
          ...(options.project ? { project: options.project } : {}),
          ...(options.host ? { host: options.host } : {}),
          ...(options.group ? { group: options.group } : {}),
          ...(options.networks ? { networks: true } : {}),
          ...(options.vm ? { vm: options.vm } : {}),
        });
        if (globals(command).json) return printJson(decision);
        printDecision(decision);
      },
    );
}
