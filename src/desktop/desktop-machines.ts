/**
 * The work on one desktop's VM and disk: provisioning (a fresh copy-on-write clone of the pool's
 * snapshot, and a VM booted on it), resetting (the VM stopped, its clone deleted and cloned
 * afresh, the VM started again), booting a stopped one, and removing one. Each is an operation
 * with progress. A reset claims the VM from the one owner (control/vm-owner.ts) before anything
 * else, so it never races a migration, an HA restart or a user's action on that VM; creates,
 * starts and deletes go through the VM service, which claims for itself.
 */
import { NubisError, isNubisError, messageOf } from '../core/errors.ts';
import type { HostRegistry } from '../control/hosts.ts';
import type { ImageCatalogue } from '../control/images.ts';
import type { OperationContext, OperationManager } from '../control/operations.ts';
import type { StorageCatalogue } from '../control/storage.ts';
import type { VmClaim, VmOwner } from '../control/vm-owner.ts';
import type { VmService } from '../control/vms.ts';
import { publishChange } from '../events/change-feed.ts';
import type { Db } from '../state/database.ts';
import type { DesktopPoolsTable, DesktopsTable } from '../state/schema.ts';
import type { Operation } from '../wire/schemas.ts';
import { DesktopRecords } from './desktop-records.ts';

/** How long a reset desktop's guest may take to print its readiness line (TCG on a busy host). */
const READY_TIMEOUT_MS = 180_000;

export interface DesktopMachineDeps {
  db: Db;
  hosts: HostRegistry;
  images: ImageCatalogue;
  vms: VmService;
  storage: StorageCatalogue;
  operations: OperationManager;
  owner: VmOwner;
}

export class DesktopMachines {
  readonly #deps: DesktopMachineDeps;
  readonly #records: DesktopRecords;

  constructor(deps: DesktopMachineDeps) {
    this.#deps = deps;
    this.#records = new DesktopRecords(deps.db);
  }

  async #update(id: string, values: Partial<DesktopsTable>): Promise<void> {
    await this.#deps.db
      .updateTable('desktops')
      .set({ ...values, updated_at: new Date().toISOString() })
      .where('id', '=', id)
      .execute();
    publishChange(this.#deps.db, 'desktop', 'updated', id);
  }

  /**
   * Records the operation of work in progress, unless that work has ended already (it may end
   * before `start` returns: then the row says so and is left alone).
   */
  async #noteOperation(id: string, state: 'provisioning' | 'resetting', operationId: string): Promise<void> {
    await this.#deps.db
      .updateTable('desktops')
      .set({ operation_id: operationId })
      .where('id', '=', id)
      .where('state', '=', state)
      .where('operation_id', 'is', null)
      .execute();
    publishChange(this.#deps.db, 'desktop', 'updated', id);
  }

  /** Marks a desktop broken with the reason its work failed; the broker retries later. */
  async #broken(id: string, error: unknown): Promise<void> {
    await this.#update(id, { state: 'broken', error: messageOf(error), operation_id: null });
  }

  /**
   * Starts the operation that gives slot `desktop` its clone and its VM (the row is marked
   * `provisioning` with the operation). A desktop whose clone is left from an earlier attempt
   * gets a fresh one.
   */
  async provision(pool: DesktopPoolsTable, desktop: DesktopsTable): Promise<Operation> {
    await this.#update(desktop.id, { state: 'provisioning', operation_id: null, error: null });
    const target = { type: 'desktop', id: desktop.id, name: desktop.vm_name, projectId: pool.project_id };
    const operation = await this.#deps.operations.start('desktop.provision', target, async (op) => {
      try {
        await this.#provisionWork(op, pool, desktop);
        await this.#update(desktop.id, { state: 'available', error: null, operation_id: null });
        return { desktop: desktop.vm_name };
      } catch (error) {
        await this.#broken(desktop.id, error);
        throw error;
      }
    });
    await this.#noteOperation(desktop.id, 'provisioning', operation.id);
    return operation;
  }

  async #provisionWork(op: OperationContext, pool: DesktopPoolsTable, desktop: DesktopsTable): Promise<void> {
    const project = { id: pool.project_id, name: await this.#records.projectName(pool.project_id) };
    await op.report('clone', `Cloning ${pool.base_pool}/${pool.snapshot_volume} to ${pool.base_pool}/${desktop.volume}`, 0.1);
    await this.#freshClone(pool, desktop.volume, project);
    const image = await this.#deps.images.row(pool.image_id);
    await op.report('create', `Creating VM ${desktop.vm_name}`, 0.2);
    const created = await this.#deps.vms.create({
      name: desktop.vm_name,
      image: image.name,
      cpus: pool.cpus,
      memoryMb: pool.memory_mb,
      project: project.name,
      disks: [`${pool.base_pool}/${desktop.volume}`],
      ...(pool.network ? { networks: [{ network: pool.network }] } : {}),
      waitReady: true,
    });
    await this.#update(desktop.id, { vm_id: created.target.id });
    await op.report('boot', `Booting ${desktop.vm_name} (operation ${created.id})`, 0.4, { vmOperation: created.id });
    await this.#succeeded(await this.#deps.operations.wait(created.id), `Creating VM ${desktop.vm_name}`);
  }

  /** Throws the error of a failed operation, named. */
  async #succeeded(operation: Operation, what: string): Promise<void> {
    if (operation.status !== 'succeeded')
      throw new NubisError(operation.error?.code ?? 'OPERATION_FAILED', `${what} ${operation.status}: ${operation.error?.message ?? ''}`);
  }

  /**
   * Claims the desktop's VM for a reset at once (`VM_BUSY` when a migration, an HA restart or
   * another action holds it: the caller retries later), then starts the reset operation. A
   * desktop whose VM is gone (deleted by hand) is provisioned afresh instead.
   */
  async reset(pool: DesktopPoolsTable, desktop: DesktopsTable): Promise<Operation> {
    const vm = desktop.vm_id ? await this.#deps.db.selectFrom('vms').selectAll().where('id', '=', desktop.vm_id).executeTakeFirst() : undefined;
    if (!vm) {
      await this.#update(desktop.id, { vm_id: null });
      return this.provision(pool, { ...desktop, vm_id: null });
    }
    const claim = this.#deps.owner.claim(vm.id, 'reset', vm.name);
    let operation: Operation;
    try {
      await this.#update(desktop.id, { state: 'resetting', operation_id: null });
      const target = { type: 'vm', id: vm.id, name: vm.name, projectId: pool.project_id };
      operation = await this.#deps.operations.start('desktop.reset', target, (op) =>
        claim.run(async () => {
          try {
            await this.#resetWork(op, pool, desktop, claim);
            await this.#update(desktop.id, { state: 'available', error: null, operation_id: null });
            return { desktop: desktop.vm_name };
          } catch (error) {
            await this.#broken(desktop.id, error);
            throw error;
          }
        }),
      );
      claim.setOperation(operation.id);
    } catch (error) {
      claim.release();
      throw error;
    }
    await this.#noteOperation(desktop.id, 'resetting', operation.id);
    return operation;
  }

  /** Under the claim: stop, a fresh clone of the snapshot under the same name, start, ready. */
  async #resetWork(op: OperationContext, pool: DesktopPoolsTable, desktop: DesktopsTable, claim: VmClaim): Promise<void> {
    const { db, hosts, vms } = this.#deps;
    // Read again under the claim: the VM may have moved (a migration that ended) meanwhile.
    const vm = await db.selectFrom('vms').selectAll().where('id', '=', claim.vmId).executeTakeFirstOrThrow();
    const host = await hosts.row(vm.host_id);
    const agent = hosts.agent(host);
    await op.report('stop', `Stopping ${vm.name} on host ${host.name}`, 0.1);
    await db.updateTable('vms').set({ desired_state: 'stopped' }).where('id', '=', vm.id).execute();
    // Forced: whatever the guest holds is thrown away with the disk.
    try {
      await vms.reports.applyStatus(host.id, await agent.stopVm(vm.id, { force: true }, { timeoutMs: 60_000, signal: op.signal }));
    } catch (error) {
      // Already stopped (or crashed): nothing to stop.
      if (!isNubisError(error) || error.code !== 'VM_INVALID_STATE') throw error;
    }
    await op.report('clone', `Replacing ${pool.base_pool}/${desktop.volume} with a fresh clone of ${pool.base_pool}/${pool.snapshot_volume}`, 0.3);
    await this.#freshClone(pool, desktop.volume, { id: pool.project_id, name: await this.#records.projectName(pool.project_id) });
    await op.report('start', `Starting ${vm.name} on its fresh disk`, 0.5);
    await db.updateTable('vms').set({ desired_state: 'running' }).where('id', '=', vm.id).execute();
    await vms.reports.applyStatus(host.id, await agent.startVm(vm.id, { timeoutMs: 60_000, signal: op.signal }));
    if ((await this.#deps.images.row(vm.image_id)).builtin === 1) {
      await op.report('booting', 'Waiting for the guest to print its readiness line', 0.6);
      await vms.reports.applyStatus(host.id, await agent.waitReady(vm.id, READY_TIMEOUT_MS, { timeoutMs: READY_TIMEOUT_MS + 10_000, signal: op.signal }));
    }
  }

  /**
   * Makes `volume` a fresh writable clone of the pool's snapshot: an old one of that name is
   * deleted first (its changes are what a reset throws away). The volume belongs to the pool's
   * project and counts against its quota like any clone.
   */
  async #freshClone(pool: DesktopPoolsTable, volume: string, project: { id: string; name: string }): Promise<void> {
    const { storage } = this.#deps;
    await this.deleteVolume(pool.base_pool, volume, { keepOwner: true });
    const snapshot = await storage.call<{ sizeBytes: number }>({ method: 'GET', path: volumePath(pool.base_pool, pool.snapshot_volume) });
    const owned = await this.#deps.db
      .selectFrom('volume_owners')
      .select('project_id')
      .where('pool', '=', pool.base_pool)
      .where('volume', '=', volume)
      .executeTakeFirst();
    const undo = owned ? async () => undefined : await storage.owners.reserve(pool.base_pool, volume, project, snapshot.sizeBytes);
    try {
      await storage.call({ method: 'POST', path: `${volumePath(pool.base_pool, pool.snapshot_volume)}/clone`, body: { name: volume } });
    } catch (error) {
      await undo();
      throw error;
    }
  }

  /** Deletes a volume of the storage node (a missing one is fine); forgets its owner unless told to keep it. */
  async deleteVolume(pool: string, volume: string, options: { keepOwner?: boolean } = {}): Promise<void> {
    try {
      await this.#deps.storage.call({ method: 'DELETE', path: volumePath(pool, volume) });
    } catch (error) {
      if (!isNubisError(error) || error.code !== 'VOLUME_NOT_FOUND') throw error;
    }
    if (!options.keepOwner) await this.#deps.storage.owners.forget(pool, volume);
  }

  /** Boots a desktop whose VM is stopped (or crashed), as the VM service's start. */
  async boot(pool: DesktopPoolsTable, desktop: DesktopsTable): Promise<Operation> {
    if (!desktop.vm_id) throw new NubisError('DESKTOP_NOT_READY', `Desktop ${desktop.vm_name} has no VM yet`);
    const operation = await this.#deps.vms.act(desktop.vm_id, 'start', { project: await this.#records.projectName(pool.project_id) });
    await this.#update(desktop.id, { operation_id: operation.id });
    return operation;
  }

  /** Deletes a desktop's VM (waiting for it) and its clone, then its record. */
  async remove(pool: DesktopPoolsTable, desktop: DesktopsTable): Promise<void> {
    const { db, vms, operations } = this.#deps;
    const vm = desktop.vm_id ? await db.selectFrom('vms').select(['id', 'name']).where('id', '=', desktop.vm_id).executeTakeFirst() : undefined;
    if (vm) {
      const deleted = await vms.delete(vm.id, await this.#records.projectName(pool.project_id));
      await this.#succeeded(await operations.wait(deleted.id), `Deleting VM ${vm.name}`);
    }
    await this.deleteVolume(pool.base_pool, desktop.volume);
    await db.deleteFrom('desktops').where('id', '=', desktop.id).execute();
    publishChange(db, 'desktop', 'deleted', desktop.id, { name: desktop.vm_name, projectId: pool.project_id });
  }
}

/** The storage node's path of a volume. */
export function volumePath(pool: string, volume: string): string {
  return `/storage/pools/${encodeURIComponent(pool)}/volumes/${encodeURIComponent(volume)}`;
}
