/** `nubis network`: virtual networks, their port forwards, and probes run inside them. */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import type { Network, NetworkProbeResult, PortForward } from '../../wire/schemas.ts';
import { client, globals, parseInteger, projectQuery } from '../common.ts';
import { printJson, printTable } from '../output.ts';

interface NetworkCreateOptions {
  subnet: string;
  gateway?: string;
  dhcp?: boolean;
  nat?: boolean;
  vni?: number;
}

/** Registers `network` and its subcommands (with `network forward` and `network probe`) on the program. */
export function registerNetworkCommands(program: Command): void {
  const network = program
    .command('network')
    .description('Virtual networks (VXLAN overlays across hosts)')
    .option('--project <name>', 'project (default: default)');
  network
    .command('create <name>')
    .description('Create a virtual network')
    .requiredOption('--subnet <cidr>', 'IPv4 subnet, e.g. 10.10.0.0/24')
    .option('--gateway <ip>', 'gateway address handed to guests')
    .option('--dhcp', 'serve DHCP with fixed leases (otherwise guests get static settings)')
    .option('--nat', 'a NAT gateway at --gateway: VMs reach the outside; port forwards reach VMs')
    .option('--vni <n>', 'VXLAN network identifier (default: the next free one)', parseInteger('--vni'))
    .action(createNetwork);
  addListShowDelete(network);
  addForwardCommands(network);
  addProbe(network);
}

async function createNetwork(name: string, options: NetworkCreateOptions, command: Command): Promise<void> {
  const g = globals(command);
  const created = await client(command).request<Static<typeof Network>>('POST', '/v1/networks', {
    name,
    subnet: options.subnet,
    dhcp: Boolean(options.dhcp),
    nat: Boolean(options.nat),
    ...(options.gateway ? { gateway: options.gateway } : {}),
    ...(options.vni ? { vni: options.vni } : {}),
    ...(g.project ? { project: g.project } : {}),
  });
  if (g.json) return printJson(created);
  console.log(`${name}: created (subnet ${created.subnet}, VNI ${created.vni}${created.dhcp ? `, DHCP from ${created.dhcpAddress}` : ''})`);
}

function addListShowDelete(network: Command): void {
  network
    .command('list')
    .description('List networks')
    .action(async (_options: unknown, command: Command) => {
      const networks = await client(command).request<Array<Static<typeof Network>>>('GET', `/v1/networks${projectQuery(command)}`);
      if (globals(command).json) return printJson(networks);
      printTable(
        ['NAME', 'PROJECT', 'SUBNET', 'GATEWAY', 'DHCP', 'VNI', 'NICS', 'HOSTS'],
        networks.map((n) => [n.name, n.project, n.subnet, n.gateway, n.dhcp ? 'yes' : 'no', n.vni, n.nicCount, n.hosts.join(',') || undefined]),
      );
    });
  network
    .command('show <network>')
    .description('Show a network')
    .action(async (name: string, _options: unknown, command: Command) => {
      const found = await client(command).request<Static<typeof Network>>('GET', `/v1/networks/${encodeURIComponent(name)}${projectQuery(command)}`);
      if (globals(command).json) return printJson(found);
      for (const [key, value] of Object.entries(found)) console.log(`${`${key}:`.padEnd(13)} ${Array.isArray(value) ? value.join(', ') : value}`);
    });
  network
    .command('delete <network>')
    .description('Delete a network (refused while NICs use it)')
    .action(async (name: string, _options: unknown, command: Command) => {
      await client(command).request('DELETE', `/v1/networks/${encodeURIComponent(name)}${projectQuery(command)}`);
      if (globals(command).json) return printJson({ deleted: name });
      console.log(`${name}: deleted`);
    });
}

function addForwardCommands(network: Command): void {
  const forward = network.command('forward').description("Port forwards into VMs through the network's NAT gateway");
  forward
    .command('add <network>')
    .description('Forward a port of the gateway host to a VM, e.g. nubis network forward add net1 --port 8080 --to web1:80')
    .requiredOption('--port <port>', 'host port', parseInteger('--port'))
    .requiredOption('--to <vm:port>', 'the VM and its port')
    .option('--protocol <protocol>', 'tcp or udp', 'tcp')
    .action(async (name: string, options: { port: number; to: string; protocol: string }, command: Command) => {
      const match = /^([^:]+):(\d+)$/.exec(options.to);
      if (!match) throw new NubisError('VALIDATION_FAILED', `Cannot read --to ${options.to}; write VM:PORT, e.g. web1:80`);
      const added = await client(command).request<Static<typeof PortForward>>(
        'POST',
        `/v1/networks/${encodeURIComponent(name)}/forwards${projectQuery(command)}`,
        { protocol: options.protocol, hostPort: options.port, vm: match[1], vmPort: Number(match[2]) },
      );
      if (globals(command).json) return printJson(added);
      console.log(`${added.listenAddress ?? '?'}:${added.hostPort}/${added.protocol} -> ${added.vm}:${added.vmPort}`);
    });
  forward
    .command('list <network>')
    .description('List port forwards')
    .action(async (name: string, _options: unknown, command: Command) => {
      const forwards = await client(command).request<Array<Static<typeof PortForward>>>(
        'GET',
        `/v1/networks/${encodeURIComponent(name)}/forwards${projectQuery(command)}`,
      );
      if (globals(command).json) return printJson(forwards);
      printTable(
        ['LISTEN', 'PROTOCOL', 'VM', 'VM PORT', 'HOST'],
        forwards.map((f) => [`${f.listenAddress ?? '?'}:${f.hostPort}`, f.protocol, f.vm, f.vmPort, f.host]),
      );
    });
  forward
    .command('delete <network> <port>')
    .description('Remove a port forward')
    .option('--protocol <protocol>', 'tcp or udp', 'tcp')
    .action(async (name: string, port: string, options: { protocol: string }, command: Command) => {
      await client(command).request('DELETE', `/v1/networks/${encodeURIComponent(name)}/forwards/${options.protocol}/${Number(port)}${projectQuery(command)}`);
      if (globals(command).json) return printJson({ deleted: `${port}/${options.protocol}` });
      console.log(`${name}: forward of ${port}/${options.protocol} removed`);
    });
}

function addProbe(network: Command): void {
  network
    .command('probe <network> <command...>')
    .description('Run a command in a namespace attached to the network, e.g. nubis network probe net1 -- ping -c 3 10.10.0.2')
    .option('--on <host>', 'host to attach the probe on (default: the first carrying the network)')
    .option('--timeout <seconds>', 'deadline for the command', parseInteger('--timeout'), 30)
    .action(async (name: string, probeCommand: string[], options: { on?: string; timeout: number }, command: Command) => {
      const result = await client(command).request<Static<typeof NetworkProbeResult>>(
        'POST',
        `/v1/networks/${encodeURIComponent(name)}/probe${projectQuery(command)}`,
        { command: probeCommand, timeoutSeconds: options.timeout, ...(options.on ? { host: options.on } : {}) },
      );
      if (globals(command).json) printJson(result);
      else {
        process.stdout.write(result.stdout);
        process.stderr.write(result.stderr);
      }
      // The probed command's exit code is the CLI's, so scripts can test reachability.
      process.exitCode = result.exitCode;
    });
}
