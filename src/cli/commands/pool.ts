/** `nubis pool`: storage pools (RAID over devices on the storage node, or qcow2 folders on hosts). */
import { resolve } from 'node:path';
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import type { Accepted, Pool } from '../../wire/schemas.ts';
import { client, collect, globals, parseInteger, runOperation } from '../common.ts';
import { formatSize, printJson, printTable } from '../output.ts';
import { NubisError } from '../../core/errors.ts';
import { collectLabel, formatLabels } from './placement.ts';

/** A pool as the API answers; a dir pool also names the hosts that hold its folders. */
type PoolAnswer = Static<typeof Pool> & { hosts?: string[] };

interface PoolCreateOptions {
  kind: string;
  layout?: string;
  device: string[];
  chunk?: string;
  host: string[];
  force?: boolean;
}

/** What a scrub found and mended. */
interface ScrubResult {
  scannedBytes: number;
  checksumErrors: number;
  repairedBlocks: number;
  unrepairedBlocks: number;
}

/** Registers `pool` and its subcommands on the program. */
export function registerPoolCommands(program: Command): void {
  const pool = program.command('pool').description('Storage pools: devices mapped into one address space with RAID');
  pool
    .command('create <name>')
    .description(
      'Create a pool: on the storage node, e.g. nubis pool create p1 --layout raid5 --device /srv/a.img --device /srv/b.img --device /srv/c.img; or a dir pool of qcow2 files on hosts, e.g. nubis pool create local --kind dir',
    )
    .option('--kind <kind>', 'san (storage node, shared by every host) or dir (a folder on each host)', 'san')
    .option('--layout <layout>', 'san: raid0, raid1, raid5, raid6 or raid10')
    .option('--device <path>', 'san: member device, a file, a block device or nbd://... (repeatable)', collect, [])
    .option('--chunk <size>', 'san: chunk size, e.g. 64K')
    .option('--host <host>', 'dir: a host that gets a folder (repeatable; default every host)', collect, [])
    .option('--force', 'san: overwrite devices that hold a filesystem, a partition table or another pool (refused otherwise)')
    .action(createPool);
  addListAndShow(pool);
  addRepairAndDelete(pool);
}

async function createPool(name: string, options: PoolCreateOptions, command: Command): Promise<void> {
  // Device paths are the storage node's: relative ones are made absolute here, where they were typed.
  const devices = options.device.map((device) => (device.startsWith('nbd') ? device : resolve(device)));
  const body =
    options.kind === 'dir'
      ? {
          name,
          kind: 'dir',
          ...(options.host.length ? { hosts: options.host } : {}),
          ...(options.layout ? { layout: options.layout } : {}),
          ...(devices.length ? { devices } : {}),
        }
      : {
          name,
          kind: options.kind,
          ...(options.layout ? { layout: options.layout } : {}),
          ...(devices.length ? { devices } : {}),
          ...(options.chunk ? { chunk: options.chunk } : {}),
          ...(options.host.length ? { hosts: options.host } : {}),
          ...(options.force ? { force: true } : {}),
        };
  const created = await client(command).request<PoolAnswer>('POST', '/v1/pools', body);
  if (globals(command).json) return printJson(created);
  if (created.kind === 'dir') console.log(`${name}: dir pool of qcow2 files on ${created.hosts?.join(', ')}, ${formatSize(created.freeBytes)} free`);
  else
    console.log(
      `${name}: ${created.layout}, ${formatSize(created.sizeBytes)} usable, ${formatSize(created.wasteBytes)} unusable (unequal members and metadata)`,
    );
}

function addListAndShow(pool: Command): void {
  pool
    .command('list')
    .description('List pools with health and capacity')
    .action(async (_options: unknown, command: Command) => {
      const pools = await client(command).request<PoolAnswer[]>('GET', '/v1/pools');
      if (globals(command).json) return printJson(pools);
      printTable(
        ['NAME', 'KIND', 'LAYOUT', 'STATE', 'SIZE', 'ALLOCATED', 'PROVISIONED', 'VOLUMES'],
        pools.map((p) => [
          p.name,
          p.kind,
          p.layout,
          p.state,
          formatSize(p.sizeBytes),
          formatSize(p.allocatedBytes),
          `${formatSize(p.provisionedBytes)} (${p.overcommitRatio.toFixed(2)}x)`,
          p.volumes,
        ]),
      );
    });
  pool
    .command('set <pool>')
    .description("Set a storage-node pool's labels (for projects' residency rules; a dir pool's volumes take their host's labels)")
    .option('--label <key=value>', 'set a label; key= removes it (repeatable)', collectLabel, {})
    .action(async (name: string, options: { label: Record<string, string> }, command: Command) => {
      if (Object.keys(options.label).length === 0) throw new NubisError('VALIDATION_FAILED', 'Give a label, e.g. --label region=eu');
      const set = await client(command).request<{ pool: string; labels: Record<string, string> }>('PUT', `/v1/pools/${encodeURIComponent(name)}/labels`, {
        labels: options.label,
      });
      if (globals(command).json) return printJson(set);
      console.log(`${set.pool}: labels ${formatLabels(set.labels)}`);
    });
  pool
    .command('show <pool>')
    .description('Show a pool like zpool status: state, members and their error counters')
    .action(async (name: string, _options: unknown, command: Command) => {
      const p = await client(command).request<PoolAnswer>('GET', `/v1/pools/${encodeURIComponent(name)}`);
      if (globals(command).json) return printJson(p);
      console.log(
        `pool: ${p.name}  state: ${p.state}${p.readOnly ? ` (read-only: ${p.readOnlyReason})` : ''}  layout: ${p.layout}  chunk: ${p.chunkBytes / 1024}K`,
      );
      console.log(
        `size ${formatSize(p.sizeBytes)}, allocated ${formatSize(p.allocatedBytes)}, free ${formatSize(p.freeBytes)}, provisioned ${formatSize(p.provisionedBytes)} (${p.overcommitRatio.toFixed(2)}x)`,
      );
      if (p.labels) console.log(`labels: ${formatLabels(p.labels)}`);
      for (const warning of p.warnings) console.log(`warning: ${warning}`);
      printTable(
        ['#', 'DEVICE', 'STATE', 'READ', 'WRITE', 'CKSUM'],
        p.members.map((m) => [m.index, m.path, m.state, m.readErrors, m.writeErrors, m.checksumErrors]),
      );
    });
}

function addRepairAndDelete(pool: Command): void {
  pool
    .command('scrub <pool>')
    .description('Read everything, find silent corruption by checksum and repair it from redundancy')
    .option('--max-rate <MiB/s>', 'throttle', parseInteger('--max-rate'))
    .action(async (name: string, options: { maxRate?: number }, command: Command) => {
      const { operation } = await client(command).request<Static<typeof Accepted>>(
        'POST',
        `/v1/pools/${encodeURIComponent(name)}/scrub`,
        options.maxRate ? { maxMbPerSec: options.maxRate } : {},
      );
      const final = await runOperation(command, `Scrubbing ${name}`, operation);
      if (globals(command).json) return printJson(final.result);
      const r = final.result as ScrubResult;
      console.log(
        `${name}: scanned ${formatSize(r.scannedBytes)}, ${r.checksumErrors} checksum errors, ${r.repairedBlocks} blocks repaired, ${r.unrepairedBlocks} unrepairable`,
      );
    });
  pool
    .command('replace <pool> <member> <device>')
    .description('Replace a member (index or path) with a new device and rebuild online')
    .option('--max-rate <MiB/s>', 'throttle the rebuild so VMs keep running', parseInteger('--max-rate'))
    .option('--force', 'overwrite a new device that holds a filesystem, a partition table or another pool (refused otherwise)')
    .action(async (name: string, member: string, device: string, options: { maxRate?: number; force?: boolean }, command: Command) => {
      const body = {
        member: /^\d+$/.test(member) ? Number(member) : member,
        device: device.startsWith('nbd') ? device : resolve(device),
        ...(options.maxRate ? { maxMbPerSec: options.maxRate } : {}),
        ...(options.force ? { force: true } : {}),
      };
      const { operation } = await client(command).request<Static<typeof Accepted>>('POST', `/v1/pools/${encodeURIComponent(name)}/replace`, body);
      const final = await runOperation(command, `Rebuilding ${name}`, operation);
      if (globals(command).json) return printJson(final.result);
      console.log(`${name}: ${(final.result as { state: string }).state}`);
    });
  pool
    .command('delete <pool>')
    .description('Delete an empty pool')
    .action(async (name: string, _options: unknown, command: Command) => {
      await client(command).request('DELETE', `/v1/pools/${encodeURIComponent(name)}`);
      if (globals(command).json) return printJson({ deleted: name });
      console.log(`${name}: deleted`);
    });
}
