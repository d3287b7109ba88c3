/**
 * `nubis backup restore BACKUP --as NAME [--pool POOL] [--host HOST]`: a new VM made of a backup.
 * Each backed-up volume becomes a new dir-pool volume `<NAME>-<volume>` (in the volume's own pool
 * when that is a dir pool, else in `--pool`), written on its host from the store's chunks, each
 * checked as it is opened (host/vm-backup.ts); then the VM is created on them with the backed-up
 * settings (image, CPUs, memory, networks; new addresses). Everything is checked before anything
 * is written: the name, the pools, and that each pool's host has room for the data twice (the
 * restore writes a raw copy before its qcow2 file). A restore that fails part-way removes the
 * volumes it made.
 *
 * A VM that booted from an imported disk image gets its root disk back too: the root disk is
 * restored into a file of the host's own (`<host>/restores`), the new VM's root disk is made as a
 * full copy of it (as a full clone's is of its template's), and the file is removed.
 *
 * With `--live` the VM starts at once on volumes that read their backup on first use, while each
 * disk's blocks are pulled into its volume in the background (host/live-restore.ts): the time to
 * a running VM does not grow with its disks. The operation ends when every block is in; if the
 * pull fails (the store or the agent gone), the VM and its volumes are removed, as for any failed
 * restore. A root disk of an imported image is restored in full only (refused with `--live`).
 */
import { NubisError, messageOf } from '../core/errors.ts';
import { CHUNK_BYTES } from '../backup/chunk-crypto.ts';
import type { TakenBackup } from '../agent-api/contract.ts';
import type { Db } from '../state/database.ts';
import type { BackupsTable } from '../state/schema.ts';
import type { Operation, Vm } from '../wire/schemas.ts';
import type { BackupSettings } from '../wire/backup-schemas.ts';
import type { HostRegistry } from './hosts.ts';
import type { OperationContext, OperationManager } from './operations.ts';
import type { StorageCatalogue } from './storage.ts';
import type { VmService } from './vms.ts';

const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

interface PlannedVolume {
  disk: string;
  pool: string;
  name: string;
  sizeBytes: number;
  dataBytes: number;
}

/** What `backup restore` is asked (wire/backup-schemas.ts). */
type RestoreRequest = { name: string; pool?: string; host?: string; live?: boolean };

type Deps = { db: Db; hosts: HostRegistry; operations: OperationManager; vms: VmService; storage: StorageCatalogue };

/** Checks the restore of `row` as `request.name` and starts it as an operation (see the file header). */
export async function restoreBackup(
  deps: Deps,
  job: { row: BackupsTable; key: () => Promise<Buffer>; request: RestoreRequest; project?: string },
): Promise<Operation> {
  const { row, request, project } = job;
  const settings = JSON.parse(row.settings) as BackupSettings;
  const root = (JSON.parse(row.disks) as TakenBackup['disks']).find((disk) => disk.source === 'root');
  if (root && request.live)
    throw new NubisError(
      'VALIDATION_FAILED',
      `Backup ${row.id} holds the root disk of a VM booted from an imported disk image, which is restored in full only; restore it without --live`,
    );
  const plan = await planRestore(deps, row, request, project);
  // A root disk is restored on the VM's host: that of its volumes' pool, else the one asked, else its old one.
  const rootHost = root
    ? await deps.hosts.row(plan.length > 0 ? (await deps.storage.dirPools.hostOf(plan[0].pool, request.host)).id : (request.host ?? settings.host))
    : undefined;
  return deps.operations.start('backup.restore', { type: 'backup', id: row.id, name: request.name, projectId: row.project_id }, async (op) => {
    const made: PlannedVolume[] = [];
    const started = Date.now();
    try {
      const key = (await job.key()).toString('base64');
      for (const [index, volume] of plan.entries()) {
        await op.report('restore', `Restoring disk ${volume.disk} into volume ${volume.pool}/${volume.name}`, 0.05 + (0.7 * index) / plan.length);
        const undo = await deps.storage.owners.reserve(volume.pool, volume.name, { id: row.project_id, name: project ?? 'default' }, volume.sizeBytes);
        try {
          await deps.storage.dirPools.restoreVolume(
            volume.pool,
            volume.name,
            request.host,
            { backup: row.id, disk: volume.disk, key, ...(request.live ? { live: true } : {}) },
            { signal: op.signal },
          );
        } catch (error) {
          await undo();
          throw error;
        }
        made.push(volume);
      }
      if (!root || !rootHost) {
        const vm = await createVm(deps, op, settings, plan, request, project);
        const runningAfterMs = Date.now() - started;
        if (!request.live) return { ...vm, restore: { live: false, runningAfterMs } };
        return {
          ...vm,
          restore: { live: true, runningAfterMs, ...(await pullDisks(deps, op, vm, runningAfterMs, project)), doneAfterMs: Date.now() - started },
        };
      }
      await op.report('restore', `Restoring the root disk on host ${rootHost.name}`, 0.7);
      const agent = deps.hosts.agent(rootHost);
      const { path } = await agent.restoreBootDisk(row.id, root.id, key, { timeoutMs: 3_600_000, signal: op.signal });
      try {
        const vm = await createVm(deps, op, settings, plan, { ...request, host: rootHost.name }, project, { kind: 'disk', path, format: 'qcow2', copy: true });
        return { ...vm, restore: { live: false, runningAfterMs: Date.now() - started } };
      } finally {
        await agent
          .removeRestoredDisk(row.id, root.id)
          .catch((undoError: unknown) => op.report('undo', `The restored root disk ${path} stays: ${messageOf(undoError)}`, 0.99));
      }
    } catch (error) {
      for (const volume of made.reverse()) {
        await deps.storage.dirPools
          .deleteVolume(volume.pool, volume.name)
          .catch((undoError: unknown) => op.report('undo', `Volume ${volume.pool}/${volume.name} stays: ${messageOf(undoError)}`, 0.99));
        await deps.storage.owners.forget(volume.pool, volume.name);
      }
      throw error;
    }
  });
}

/**
 * Pulls into the running VM's volumes what they still read from the backup. When that fails the
 * VM cannot go on (blocks it has not got are gone with the export): it is removed, and the caller
 * removes its volumes.
 */
async function pullDisks(deps: Deps, op: OperationContext, vm: Vm, runningAfterMs: number, project?: string): Promise<{ pulledBytes: number }> {
  await op.report('pull', `VM ${vm.name} runs after ${(runningAfterMs / 1000).toFixed(1)} s; pulling the rest of its disks from the backup`, 0.85);
  try {
    const { disks } = await deps.hosts.agent(await deps.hosts.row(vm.host)).pullRestoredDisks(vm.id, { timeoutMs: 6 * 3_600_000, signal: op.signal });
    return { pulledBytes: disks.reduce((sum, disk) => sum + disk.fetchedBytes, 0) };
  } catch (error) {
    await op.report('undo', `Pulling the disks of ${vm.name} failed (${messageOf(error)}); removing the VM`, 0.95);
    const removal = await deps.operations.wait((await deps.vms.delete(vm.id, project)).id);
    if (removal.status !== 'succeeded') await op.report('undo', `VM ${vm.name} stays: ${removal.error?.message ?? removal.status}`, 0.99);
    throw error;
  }
}

async function createVm(
  deps: Deps,
  op: OperationContext,
  settings: BackupSettings,
  plan: PlannedVolume[],
  request: { name: string; host?: string },
  project: string | undefined,
  boot?: { kind: 'disk'; path: string; format: 'qcow2'; copy: true },
): Promise<Vm> {
  await op.report('create', `Creating VM ${request.name} on the restored volumes`, 0.8);
  const created = await deps.vms.create(
    {
      name: request.name,
      image: settings.image,
      cpus: settings.cpus,
      memoryMb: settings.memoryMb,
      ...(request.host ? { host: request.host } : {}),
      ...(project ? { project } : {}),
      ...(settings.networks.length > 0 ? { networks: settings.networks.map((network) => ({ network })) } : {}),
      ...(plan.length > 0 ? { disks: plan.map((volume) => `${volume.pool}/${volume.name}`) } : {}),
      waitReady: true,
    },
    boot ? { boot } : undefined,
  );
  const done = await deps.operations.wait(created.id);
  if (done.status !== 'succeeded')
    throw new NubisError(done.error?.code ?? 'BACKUP_RESTORE_FAILED', `Creating VM ${request.name} failed: ${done.error?.message ?? done.status}`);
  return deps.vms.get(request.name, project);
}

/**
 * The volumes a restore makes, after checking that nothing is in the way and the pools have room:
 * twice the data for a restore in full (a raw copy, then the qcow2 file), the data for a live one.
 */
async function planRestore(deps: Deps, row: BackupsTable, request: RestoreRequest, project?: string): Promise<PlannedVolume[]> {
  const disks = (JSON.parse(row.disks) as TakenBackup['disks']).filter((disk) => disk.source !== 'root');
  if (await deps.db.selectFrom('vms').select('id').where('project_id', '=', row.project_id).where('name', '=', request.name).executeTakeFirst())
    throw new NubisError('VM_NAME_TAKEN', `A VM named ${request.name} exists in project ${project ?? 'default'}; choose another name`);
  const plan: PlannedVolume[] = [];
  for (const disk of disks) {
    const [sourcePool, sourceVolume] = disk.source.includes('/') ? disk.source.split('/') : [undefined, disk.id];
    const pool = request.pool ?? sourcePool;
    if (!pool || !(await deps.storage.dirPools.find(pool)))
      throw new NubisError(
        'VALIDATION_FAILED',
        `Disk ${disk.id} of backup ${row.id} (${disk.source}) is restored into a dir pool; name one with --pool (see nubis pool list)`,
      );
    const name = `${request.name}-${sourceVolume}`;
    if (!NAME.test(name)) throw new NubisError('VALIDATION_FAILED', `The restored volume would be named ${name}, which is too long; choose a shorter VM name`);
    plan.push({ disk: disk.id, pool, name, sizeBytes: disk.sizeBytes, dataBytes: (disk.chunks - disk.zeroChunks) * CHUNK_BYTES });
  }
  for (const pool of new Set(plan.map((volume) => volume.pool))) {
    const host = await deps.storage.dirPools.hostOf(pool, request.host);
    const needed = plan.filter((volume) => volume.pool === pool).reduce((sum, volume) => sum + (request.live ? 1 : 2) * volume.dataBytes, 0);
    const { freeBytes } = await deps.hosts.agent(host).dirPool(pool);
    if (freeBytes < needed)
      throw new NubisError(
        'POOL_FULL',
        `Dir pool ${pool} on host ${host.name} has ${(freeBytes / 1048576).toFixed(0)} MiB free, and the restore needs ${(needed / 1048576).toFixed(0)} MiB; free space or restore into another pool (--pool)`,
        { details: { pool, freeBytes, neededBytes: needed } },
      );
  }
  return plan;
}
