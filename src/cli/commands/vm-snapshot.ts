/** `nubis vm snapshot|rollback|template|clone`: snapshots of VMs, templates and their clones. */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import type { Accepted, Vm } from '../../wire/schemas.ts';
import type { VmSnapshot } from '../../wire/snapshot-schemas.ts';
import { client, globals, projectQuery, runOperation } from '../common.ts';
import { formatSize } from '../../storage/size.ts';
import { printJson, printTable } from '../output.ts';

const vmPath = (vm: string): string => `/v1/vms/${encodeURIComponent(vm)}`;

/** Registers the snapshot, rollback, template and clone commands under `vm`. */
export function addSnapshotCommands(vm: Command): void {
  const snapshot = vm.command('snapshot').description('Snapshots of a VM: nubis vm snapshot VM NAME [--with-memory] takes one; list and delete below');
  snapshot
    .command('take <vm> <name>', { isDefault: true })
    .description("Snapshot a VM's disks (qcow2), and with --with-memory its running state, all of one instant")
    .option('--with-memory', 'save the running state too: a rollback continues the guest from here, without a reboot')
    .action(async (name: string, snapshotName: string, options: { withMemory?: boolean }, command: Command) => {
      const body = { name: snapshotName, ...(options.withMemory ? { withMemory: true } : {}) };
      const { operation } = await client(command).request<Static<typeof Accepted>>('POST', `${vmPath(name)}/snapshots${projectQuery(command)}`, body);
      const final = await runOperation(command, `Snapshot ${snapshotName} of ${name}`, operation);
      if (globals(command).json) return printJson(final.result);
      const taken = final.result as VmSnapshot;
      const memory = taken.memoryBytes !== undefined ? `, memory ${formatSize(taken.memoryBytes)}` : '';
      console.log(`${name}: snapshot ${taken.name} of disks ${taken.disks.join(', ') || 'none'}${memory}`);
    });
  snapshot
    .command('list <vm>')
    .description("List a VM's snapshots, oldest first")
    .action(async (name: string, _options: unknown, command: Command) => {
      const snapshots = await client(command).request<VmSnapshot[]>('GET', `${vmPath(name)}/snapshots${projectQuery(command)}`);
      if (globals(command).json) return printJson(snapshots);
      printTable(
        ['NAME', 'MEMORY', 'DISKS', 'VM WAS', 'TAKEN'],
        snapshots.map((s) => [s.name, s.withMemory ? formatSize(s.memoryBytes ?? 0) : 'no', s.disks.join(',') || '-', s.vmState, s.createdAt]),
      );
    });
  snapshot
    .command('delete <vm> <name>')
    .description('Delete a snapshot of a VM')
    .action(async (name: string, snapshotName: string, _options: unknown, command: Command) => {
      const path = `${vmPath(name)}/snapshots/${encodeURIComponent(snapshotName)}${projectQuery(command)}`;
      const { operation } = await client(command).request<Static<typeof Accepted>>('DELETE', path);
      const final = await runOperation(command, `Deleting snapshot ${snapshotName} of ${name}`, operation);
      if (globals(command).json) return printJson(final.result);
      console.log(`${name}: snapshot ${snapshotName} deleted`);
    });
  vm.command('rollback <vm> <snapshot>')
    .description('Roll a VM back to a snapshot: its disks (a running VM restarts), or with a memory snapshot its running state too')
    .action(async (name: string, snapshotName: string, _options: unknown, command: Command) => {
      const path = `${vmPath(name)}/snapshots/${encodeURIComponent(snapshotName)}/rollback${projectQuery(command)}`;
      const { operation } = await client(command).request<Static<typeof Accepted>>('POST', path);
      const final = await runOperation(command, `Rolling ${name} back to ${snapshotName}`, operation);
      if (globals(command).json) return printJson(final.result);
      console.log(`${name}: at snapshot ${snapshotName}, ${(final.result as Vm).state}`);
    });
  addTemplateCommands(vm);
}

function addTemplateCommands(vm: Command): void {
  vm.command('template <vm>')
    .description('Make a stopped VM a template: read-only, never started again; nubis vm clone makes VMs of it')
    .action(async (name: string, _options: unknown, command: Command) => {
      const made = await client(command).request<Vm>('POST', `${vmPath(name)}/template${projectQuery(command)}`);
      if (globals(command).json) return printJson(made);
      console.log(`${name}: template`);
    });
  vm.command('clone <template> <name>')
    .description("Make a VM of a template: a full copy of its disks, or with --linked copy-on-write over them (the template's host)")
    .option('--linked', 'a linked clone: instant, only what it writes takes space; the template cannot be deleted while it has one')
    .action(async (template: string, name: string, options: { linked?: boolean }, command: Command) => {
      const body = { name, ...(options.linked ? { linked: true } : {}) };
      const { operation } = await client(command).request<Static<typeof Accepted>>('POST', `${vmPath(template)}/clone${projectQuery(command)}`, body);
      const final = await runOperation(command, `Cloning ${template} as ${name}`, operation);
      if (globals(command).json) return printJson(final.result);
      const vm = final.result as Vm;
      console.log(`${vm.name}: ${options.linked ? 'linked' : 'full'} clone of ${template} on ${vm.host}, ${vm.state}`);
    });
}
