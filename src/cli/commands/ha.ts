/** `nubis ha status`: host states, and what high availability restarted where and how fast. */
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import { client, globals } from '../common.ts';
import { printJson, printTable } from '../output.ts';

interface HaStatus {
  hosts: Array<{ name: string; status: string; lostAt?: string; fencedAt?: string }>;
  events: Array<{ vm: string; from: string; to?: string; status: string; message: string; hostLostAt: string; failoverSeconds?: number }>;
}

interface HaGroup {
  name: string;
  hosts: string[];
  restricted: boolean;
  failback: boolean;
  members: string[];
}

export function registerHaCommands(program: Command): void {
  const ha = program.command('ha').description('High availability');
  addGroupCommands(ha);
  ha.command('status')
    .description('Host states, and which VMs were restarted where and how long their failover took')
    .action(async (_options: unknown, command: Command) => {
      const status = await client(command).request<HaStatus>('GET', '/v1/ha');
      if (globals(command).json) return printJson(status);
      printTable(
        ['HOST', 'STATUS', 'LOST AT', 'FENCED AT'],
        status.hosts.map((h) => [h.name, h.status, h.lostAt ?? '-', h.fencedAt ?? '-']),
      );
      if (status.events.length === 0) return console.log('\nNo HA restarts yet');
      console.log('');
      printTable(
        ['VM', 'FROM', 'TO', 'RESULT', 'HOST LOST AT', 'FAILOVER', 'DETAIL'],
        status.events.map((e) => [
          e.vm,
          e.from,
          e.to ?? '-',
          e.status,
          e.hostLostAt,
          e.failoverSeconds !== undefined ? `${e.failoverSeconds} s` : '-',
          e.message,
        ]),
      );
    });
}

function addGroupCommands(ha: Command): void {
  const group = ha.command('group').description('HA groups: the hosts HA VMs prefer');
  group
    .command('create <name>')
    .description('Create an HA group; VMs join it with vm create/set --ha-group')
    .requiredOption('--hosts <hosts>', 'its hosts, comma-separated (host-1,host-2)')
    .option('--restricted', 'its VMs run only on its hosts (default: they prefer them)')
    .option('--failback', 'a VM away from its hosts moves back when one is in service again')
    .action(async (name: string, options: { hosts: string; restricted?: boolean; failback?: boolean }, command: Command) => {
      const hosts = options.hosts.split(',').filter(Boolean);
      if (hosts.length === 0) throw new NubisError('VALIDATION_FAILED', 'Give the group its hosts, e.g. --hosts host-1,host-2');
      const created = await client(command).request<HaGroup>('POST', '/v1/ha/groups', {
        name,
        hosts,
        restricted: Boolean(options.restricted),
        failback: Boolean(options.failback),
      });
      if (globals(command).json) return printJson(created);
      console.log(
        `Created HA group ${created.name}: ${created.hosts.join(', ')}${created.restricted ? ', restricted' : ''}${created.failback ? ', failback' : ''}`,
      );
    });
  group
    .command('list')
    .description('List HA groups')
    .action(async (_options: unknown, command: Command) => {
      const groups = await client(command).request<HaGroup[]>('GET', '/v1/ha/groups');
      if (globals(command).json) return printJson(groups);
      printTable(
        ['NAME', 'HOSTS', 'RESTRICTED', 'FAILBACK', 'VMS'],
        groups.map((g) => [g.name, g.hosts.join(','), g.restricted ? 'yes' : 'no', g.failback ? 'yes' : 'no', g.members.join(',') || '-']),
      );
    });
  group
    .command('delete <name>')
    .description('Delete an HA group no VM is in')
    .action(async (name: string, _options: unknown, command: Command) => {
      await client(command).request('DELETE', `/v1/ha/groups/${encodeURIComponent(name)}`);
      if (globals(command).json) return printJson({ deleted: name });
      console.log(`Deleted HA group ${name}`);
    });
}
