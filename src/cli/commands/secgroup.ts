/** `nubis secgroup`: security groups and their allow rules. */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import type { Secgroup, SecgroupRule } from '../../wire/schemas.ts';
import { client, globals, projectQuery } from '../common.ts';
import { printJson, printTable } from '../output.ts';

interface RuleAddOptions {
  protocol: string;
  port?: string;
  cidr?: string;
  remoteGroup?: string;
  direction: string;
}

/** Registers `secgroup` and its subcommands (with `secgroup rule`) on the program. */
export function registerSecgroupCommands(program: Command): void {
  const secgroup = program
    .command('secgroup')
    .description('Security groups: allow rules for traffic towards VMs')
    .option('--project <name>', 'project (default: default)');
  secgroup
    .command('create <name>')
    .description('Create a security group (members reach each other; everything else needs a rule)')
    .option('--description <text>', 'what the group is for')
    .action(async (name: string, options: { description?: string }, command: Command) => {
      const g = globals(command);
      const created = await client(command).request<Static<typeof Secgroup>>('POST', '/v1/secgroups', {
        name,
        ...(options.description ? { description: options.description } : {}),
        ...(g.project ? { project: g.project } : {}),
      });
      if (g.json) return printJson(created);
      console.log(`${name}: created`);
    });
  secgroup
    .command('list')
    .description('List security groups')
    .action(async (_options: unknown, command: Command) => {
      const groups = await client(command).request<Array<Static<typeof Secgroup>>>('GET', `/v1/secgroups${projectQuery(command)}`);
      if (globals(command).json) return printJson(groups);
      printTable(
        ['NAME', 'PROJECT', 'RULES', 'MEMBERS'],
        groups.map((group) => [group.name, group.project, group.rules.length, group.members.join(',') || undefined]),
      );
    });
  addShowAndDelete(secgroup);
  addRuleCommands(secgroup);
}

function addShowAndDelete(secgroup: Command): void {
  secgroup
    .command('show <group>')
    .description('Show a security group with its rules and members')
    .action(async (name: string, _options: unknown, command: Command) => {
      const group = await client(command).request<Static<typeof Secgroup>>('GET', `/v1/secgroups/${encodeURIComponent(name)}${projectQuery(command)}`);
      if (globals(command).json) return printJson(group);
      console.log(`${group.name} (${group.project}): members ${group.members.join(', ') || 'none'}`);
      printTable(
        ['RULE', 'DIRECTION', 'PROTOCOL', 'PORTS', 'PEER'],
        group.rules.map((rule) => [
          rule.id,
          rule.direction,
          rule.protocol,
          rule.portMin === undefined ? 'all' : rule.portMin === rule.portMax ? rule.portMin : `${rule.portMin}-${rule.portMax}`,
          rule.remoteGroup ? `group ${rule.remoteGroup}` : rule.cidr,
        ]),
      );
    });
  secgroup
    .command('delete <group>')
    .description('Delete a security group no VM uses')
    .action(async (name: string, _options: unknown, command: Command) => {
      await client(command).request('DELETE', `/v1/secgroups/${encodeURIComponent(name)}${projectQuery(command)}`);
      if (globals(command).json) return printJson({ deleted: name });
      console.log(`${name}: deleted`);
    });
}

function addRuleCommands(secgroup: Command): void {
  const rule = secgroup.command('rule').description('Rules of a security group');
  rule
    .command('add <group>')
    .description("Allow traffic towards (or with --direction egress, from) the group's VMs, e.g. nubis secgroup rule add web --protocol tcp --port 80")
    .requiredOption('--protocol <protocol>', 'tcp, udp, icmp or any')
    .option('--port <port[-port]>', 'port or port range (tcp and udp)')
    .option('--cidr <cidr>', 'allowed sources (ingress) or destinations (egress); default 0.0.0.0/0')
    .option('--remote-group <group>', 'the members of this group instead of a CIDR')
    .option('--direction <direction>', 'ingress (towards the VMs) or egress (from them)', 'ingress')
    .action(addRule);
  rule
    .command('delete <group> <rule>')
    .description('Delete a rule by its id (nubis secgroup show GROUP lists them)')
    .action(async (name: string, ruleId: string, _options: unknown, command: Command) => {
      await client(command).request('DELETE', `/v1/secgroups/${encodeURIComponent(name)}/rules/${encodeURIComponent(ruleId)}${projectQuery(command)}`);
      if (globals(command).json) return printJson({ deleted: ruleId });
      console.log(`${name}: rule ${ruleId} deleted`);
    });
}

async function addRule(name: string, options: RuleAddOptions, command: Command): Promise<void> {
  let ports = {};
  if (options.port !== undefined) {
    const match = /^(\d+)(?:-(\d+))?$/.exec(options.port);
    if (!match) throw new NubisError('VALIDATION_FAILED', `Cannot read --port ${options.port}; write a port (80) or a range (8000-8080)`);
    ports = { portMin: Number(match[1]), portMax: Number(match[2] ?? match[1]) };
  }
  const body = {
    direction: options.direction,
    protocol: options.protocol,
    ...ports,
    ...(options.cidr ? { cidr: options.cidr } : {}),
    ...(options.remoteGroup ? { remoteGroup: options.remoteGroup } : {}),
  };
  const added = await client(command).request<Static<typeof SecgroupRule>>(
    'POST',
    `/v1/secgroups/${encodeURIComponent(name)}/rules${projectQuery(command)}`,
    body,
  );
  if (globals(command).json) return printJson(added);
  console.log(`${name}: rule ${added.id} added`);
}
