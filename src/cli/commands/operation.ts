/** `nubis operation`: the long-running operations of the control plane. */
import type { Command } from 'commander';
import type { Operation } from '../../wire/schemas.ts';
import { client, globals, parseInteger } from '../common.ts';
import { printJson, printTable } from '../output.ts';

/** Registers `operation` and its subcommands on the program. */
export function registerOperationCommands(program: Command): void {
  const operation = program.command('operation').description('Long-running operations');
  operation
    .command('list')
    .description('Recent operations')
    .option('--limit <n>', 'how many', parseInteger('--limit'), 20)
    .action(async (options: { limit: number }, command: Command) => {
      const operations = await client(command).request<Operation[]>('GET', `/v1/operations?limit=${options.limit}`);
      if (globals(command).json) return printJson(operations);
      printTable(
        ['ID', 'KIND', 'TARGET', 'STATUS', 'STAGE', 'CREATED'],
        operations.map((o) => [o.id, o.kind, o.target.name, o.status, o.stage, o.createdAt]),
      );
    });
  operation
    .command('show <id>')
    .description('Show an operation')
    .action(async (id: string, _options: unknown, command: Command) => {
      const found = await client(command).request<Operation>('GET', `/v1/operations/${encodeURIComponent(id)}`);
      if (globals(command).json) return printJson(found);
      for (const [key, value] of Object.entries(found)) console.log(`${`${key}:`.padEnd(12)} ${typeof value === 'object' ? JSON.stringify(value) : value}`);
    });
  operation
    .command('cancel <id>')
    .description('Cancel a running operation')
    .action(async (id: string, _options: unknown, command: Command) => {
      const found = await client(command).request<Operation>('POST', `/v1/operations/${encodeURIComponent(id)}/cancel`);
      if (globals(command).json) return printJson(found);
      console.log(`${id}: cancel requested`);
    });
}
