/** `nubis ha status`: host states, and what high availability restarted where and how fast. */
import type { Command } from 'commander';
import { client, globals } from '../common.ts';
import { printJson, printTable } from '../output.ts';

interface HaStatus {
  hosts: Array<{ name: string; status: string; lostAt?: string; fencedAt?: string }>;
  events: Array<{ vm: string; from: string; to?: string; status: string; message: string; hostLostAt: string; failoverSeconds?: number }>;
}

export function registerHaCommands(program: Command): void {
  program
    .command('ha')
    .description('High availability')
    .command('status')
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
