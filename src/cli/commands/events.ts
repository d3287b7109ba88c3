/** `nubis events`: the cluster-wide change stream, one line per change, until interrupted. */
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import { CHANGE_TYPE_NAMES, type ChangeEventBody } from '../../wire/event-schemas.ts';
import { client, globals } from '../common.ts';

/** What a change line shows of a resource: its state or status, when it has one. */
function stateOf(resource: unknown): string {
  const fields = (resource ?? {}) as { state?: unknown; status?: unknown; stage?: unknown };
  const shown = [fields.state, fields.status, fields.stage].filter((value) => typeof value === 'string');
  return shown.join(' ');
}

/** Registers `events` on the program. */
export function registerEventCommands(program: Command): void {
  program
    .command('events')
    .description('Follow every change in the cluster you may see (VMs, hosts, networks, pools, volumes, operations, migrations)')
    .option('--types <list>', `only these types, comma-separated: ${CHANGE_TYPE_NAMES.join(',')}`)
    .action(async (options: { types?: string }, command: Command) => {
      const types = options.types?.split(',').map((type) => type.trim()) ?? [];
      const unknown = types.filter((type) => !(CHANGE_TYPE_NAMES as readonly string[]).includes(type));
      if (unknown.length > 0) throw new NubisError('VALIDATION_FAILED', `Unknown type ${unknown.join(', ')}: choose from ${CHANGE_TYPE_NAMES.join(', ')}`);
      const json = globals(command).json;
      await client(command).followEvents(types.length > 0 ? `?types=${types.join(',')}` : '', (event, data) => {
        if (json) return console.log(JSON.stringify({ event, ...(data as object) }));
        if (event === 'reset') return console.log(`reset: ${(data as { reason: string }).reason} (refetch what you show)`);
        const change = data as ChangeEventBody;
        const where = change.project ? ` (${change.project})` : '';
        console.log(`${change.time} ${change.type} ${change.action} ${change.name}${where} ${stateOf(change.resource)}`.trimEnd());
      });
    });
}
