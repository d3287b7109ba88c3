/** `nubis volume`: thin volumes of storage pools, their snapshots and clones. */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import type { Volume } from '../../wire/schemas.ts';
import { client, globals, projectQuery } from '../common.ts';
import { formatSize, printJson, printTable } from '../output.ts';

/** The API path of a volume written as POOL/VOLUME. */
function volumePath(ref: string): string {
  const [poolName, volumeName] = ref.split('/');
  if (!poolName || !volumeName) throw new NubisError('VALIDATION_FAILED', `Write the volume as POOL/VOLUME, not ${ref}`);
  return `/v1/pools/${encodeURIComponent(poolName)}/volumes/${encodeURIComponent(volumeName)}`;
}

/** Registers `volume` and its subcommands on the program. */
export function registerVolumeCommands(program: Command): void {
  const volume = program
    .command('volume')
    .description('Thin volumes of storage pools, served over NBD; each belongs to a project (its quota counts it)')
    .option('--project <name>', 'project (default: default)');
  volume
    .command('create <name>')
    .description('Create a thin volume, e.g. nubis volume create data1 --pool p1 --size 20G')
    .requiredOption('--pool <pool>', 'pool')
    .requiredOption('--size <size>', 'size, e.g. 512M or 20G')
    .option('--host <host>', 'dir pools: the host that holds the qcow2 file (needed when the pool spans several)')
    .option('--encrypted', 'storage-node pools: encrypt its blocks (XTS-AES-256) with a data key of its own')
    .action(async (name: string, options: { pool: string; size: string; host?: string; encrypted?: boolean }, command: Command) => {
      const created = await client(command).request<Static<typeof Volume>>(
        'POST',
        `/v1/pools/${encodeURIComponent(options.pool)}/volumes${projectQuery(command)}`,
        {
          name,
          size: options.size,
          ...(options.host ? { host: options.host } : {}),
          ...(options.encrypted ? { encrypted: true } : {}),
        },
      );
      if (globals(command).json) return printJson(created);
      console.log(
        `${options.pool}/${name}: ${formatSize(created.sizeBytes)}${created.host ? ` on ${created.host}` : ''}${created.encrypted ? ', encrypted' : ''}`,
      );
    });
  volume
    .command('list')
    .description("List volumes (of one pool with --pool; a project user names the pool, pools are the platform's)")
    .option('--pool <pool>', 'only this pool')
    .action(async (options: { pool?: string }, command: Command) => {
      const api = client(command);
      const pools = options.pool ? [options.pool] : (await api.request<Array<{ name: string }>>('GET', '/v1/pools')).map((p) => p.name);
      const volumes = (
        await Promise.all(
          pools.map((p) => api.request<Array<Static<typeof Volume>>>('GET', `/v1/pools/${encodeURIComponent(p)}/volumes${projectQuery(command)}`)),
        )
      ).flat();
      if (globals(command).json) return printJson(volumes);
      printTable(
        ['VOLUME', 'KIND', 'SIZE', 'ALLOCATED', 'ENCRYPTED', 'ORIGIN', 'HOST', 'USED BY'],
        volumes.map((v) => [
          `${v.pool}/${v.name}`,
          v.kind,
          formatSize(v.sizeBytes),
          formatSize(v.allocatedBytes),
          v.encrypted ? 'yes' : 'no',
          v.originName,
          v.host,
          v.usedBy,
        ]),
      );
    });
  addChanges(volume);
}

function addChanges(volume: Command): void {
  volume
    .command('show <pool/volume>')
    .description('Show a volume')
    .action(async (ref: string, _options: unknown, command: Command) => {
      const found = await client(command).request<Static<typeof Volume>>('GET', `${volumePath(ref)}${projectQuery(command)}`);
      if (globals(command).json) return printJson(found);
      for (const [key, value] of Object.entries(found)) console.log(`${`${key}:`.padEnd(16)} ${value}`);
    });
  for (const action of ['snapshot', 'clone'] as const) {
    volume
      .command(`${action} <pool/volume> <name>`)
      .description(action === 'snapshot' ? 'Take a read-only snapshot (instant, copy-on-write)' : 'Make a writable clone (instant, copy-on-write)')
      .action(async (ref: string, name: string, _options: unknown, command: Command) => {
        const made = await client(command).request<Static<typeof Volume>>('POST', `${volumePath(ref)}/${action}${projectQuery(command)}`, { name });
        if (globals(command).json) return printJson(made);
        console.log(`${ref.split('/')[0]}/${name}: ${action} of ${ref}`);
      });
  }
  volume
    .command('resize <pool/volume> <size>')
    .description('Grow or shrink a volume (never below its data)')
    .action(async (ref: string, size: string, _options: unknown, command: Command) => {
      const resized = await client(command).request<Static<typeof Volume>>('POST', `${volumePath(ref)}/resize${projectQuery(command)}`, { size });
      if (globals(command).json) return printJson(resized);
      console.log(`${ref}: ${formatSize(resized.sizeBytes)}`);
    });
  volume
    .command('delete <pool/volume>')
    .description('Delete a volume no VM uses; its space returns to the pool')
    .action(async (ref: string, _options: unknown, command: Command) => {
      await client(command).request('DELETE', `${volumePath(ref)}${projectQuery(command)}`);
      if (globals(command).json) return printJson({ deleted: ref });
      console.log(`${ref}: deleted`);
    });
}
