/** `nubis project`: projects (tenants). */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import type { Project } from '../../wire/schemas.ts';
import { client, globals } from '../common.ts';
import { printJson, printTable } from '../output.ts';

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
}
