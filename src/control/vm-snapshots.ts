/**
 * Snapshots of VMs in the control plane: `vm snapshot VM NAME [--with-memory]`, `vm rollback`,
 * `vm snapshot list|delete`, and `vm template`. Each change is an operation under the VM's one
 * owner (`snapshot`: queued with lifecycle and disk actions, refused during a migration), carried
 * out by the VM's host agent (host/vm-snapshot-control.ts says which mechanism per disk kind and
 * why). The record of which snapshots a VM has is here, in `vm_snapshots`: it survives an agent
 * restart (the contents are in the host's files) and goes with its VM (ON DELETE CASCADE).
 *
 * A VM with snapshots does not migrate live: qcow2 internal snapshots and memory files stay in the
 * source host's files, and a disk mirror copies only the current contents (vm-template-rules.ts).
 */
import type { Transaction } from 'kysely';
import { messageOf, NubisError } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import type { Db } from '../state/database.ts';
import type { Database, VmSnapshotsTable, VmsTable } from '../state/schema.ts';
import { writeTransaction } from '../state/write-queue.ts';
import { publishChange } from '../events/change-feed.ts';
import type { Operation, Vm } from '../wire/schemas.ts';
import type { VmSnapshot } from '../wire/snapshot-schemas.ts';
import type { HostRegistry } from './hosts.ts';
import type { OperationContext, OperationManager } from './operations.ts';
import type { VmOwner } from './vm-owner.ts';
import type { VmService } from './vms.ts';
import { refuseTemplate } from './vm-template-rules.ts';
import { cloneVm } from './vm-clones.ts';
import type { StorageCatalogue } from './storage.ts';

/** Saving or loading a guest's memory under TCG may take minutes; the agent's own limit is 300 s. */
const SNAPSHOT_CALL_TIMEOUT_MS = 420_000;

export class VmSnapshots {
  readonly #db: Db;
  readonly #hosts: HostRegistry;
  readonly #owner: VmOwner;
  readonly #operations: OperationManager;
  readonly #vms: VmService;
  readonly #storage: StorageCatalogue;

  constructor(deps: { db: Db; hosts: HostRegistry; owner: VmOwner; operations: OperationManager; vms: VmService; storage: StorageCatalogue }) {
    this.#storage = deps.storage;
    this.#db = deps.db;
    this.#hosts = deps.hosts;
    this.#owner = deps.owner;
    this.#operations = deps.operations;
    this.#vms = deps.vms;
  }

  /** The snapshots of VM `ref`, oldest first. */
  async list(ref: string, project?: string): Promise<VmSnapshot[]> {
    const row = await this.#vms.row(ref, project);
    const rows = await this.#db.selectFrom('vm_snapshots').selectAll().where('vm_id', '=', row.id).orderBy('created_at').orderBy('id').execute();
    return rows.map((snapshot) => viewOf(snapshot, row.name));
  }

  async #snapshot(row: VmsTable, name: string): Promise<VmSnapshotsTable> {
    const found = await this.#db.selectFrom('vm_snapshots').selectAll().where('vm_id', '=', row.id).where('name', '=', name).executeTakeFirst();
    if (!found) throw new NubisError('VM_SNAPSHOT_NOT_FOUND', `VM ${row.name} has no snapshot ${name}; see nubis vm snapshot list ${row.name}`);
    return found;
  }

  /** Runs `work` as an operation under a `snapshot` claim on the VM (as VmService's own actions run). */
  async #operate<T>(row: VmsTable, kind: string, work: (op: OperationContext) => Promise<T>): Promise<Operation> {
    const claim = this.#owner.claim(row.id, 'snapshot', row.name);
    return this.#operations.startClaimed(claim, kind, { type: 'vm', id: row.id, name: row.name, projectId: row.project_id }, work);
  }

  /** Takes snapshot `name` of the VM's disks, and with `withMemory` of its running state, of one instant. */
  async take(ref: string, request: { name: string; withMemory?: boolean }, project?: string): Promise<Operation> {
    const row = await this.#vms.row(ref, project);
    refuseTemplate(row, 'snapshot');
    const withMemory = request.withMemory ?? false;
    await this.#refuseTaken(row, request.name);
    return this.#operate(row, 'vm.snapshot', async (op) => {
      const current = await this.#vms.row(row.id, project);
      await this.#refuseTaken(current, request.name);
      const host = await this.#hosts.row(current.host_id);
      const id = newId('snap');
      const what = withMemory ? 'disks and memory (the guest pauses while its memory is saved)' : 'disks';
      await op.report('snapshot', `Taking snapshot ${request.name} of VM ${row.name}: ${what}`, 0.2);
      const taken = await this.#hosts.agent(host).takeSnapshot(row.id, id, withMemory, { timeoutMs: SNAPSHOT_CALL_TIMEOUT_MS, signal: op.signal });
      const record: VmSnapshotsTable = {
        id,
        vm_id: row.id,
        name: request.name,
        with_memory: withMemory ? 1 : 0,
        memory_bytes: taken.memoryBytes ?? null,
        disks: JSON.stringify(taken.disks),
        vm_state: current.actual_state,
        created_at: new Date().toISOString(),
      };
      try {
        await writeTransaction(this.#db, (trx: Transaction<Database>) => trx.insertInto('vm_snapshots').values(record).execute());
      } catch (error) {
        // Not recorded: its contents go too, so nothing on the host is left that no record names.
        await this.#hosts
          .agent(host)
          .deleteSnapshot(row.id, id)
          .catch((undoError: unknown) => op.report('undo', `Snapshot ${id} stays in the files of VM ${row.name}: ${messageOf(undoError)}`, 0.9));
        throw error;
      }
      publishChange(this.#db, 'vm', 'updated', row.id);
      const size = taken.memoryBytes !== undefined ? `, memory ${(taken.memoryBytes / 1048576).toFixed(0)} MiB` : '';
      await op.report('taken', `Snapshot ${request.name}: disks ${taken.disks.join(', ') || 'none'}${size}`, 0.95);
      return viewOf(record, row.name);
    });
  }

  async #refuseTaken(row: VmsTable, name: string): Promise<void> {
    if (await this.#db.selectFrom('vm_snapshots').select('id').where('vm_id', '=', row.id).where('name', '=', name).executeTakeFirst())
      throw new NubisError('VM_SNAPSHOT_NAME_TAKEN', `VM ${row.name} already has a snapshot ${name}; choose another name or delete it first`);
  }

  /**
   * Rolls the VM back to snapshot `name`: its disks, and for a memory snapshot its running state
   * (the guest goes on from that instant). Without memory a running VM restarts from the disks.
   */
  async rollback(ref: string, name: string, project?: string): Promise<Operation> {
    const row = await this.#vms.row(ref, project);
    refuseTemplate(row, 'roll back');
    const snapshot = await this.#snapshot(row, name);
    return this.#operate(row, 'vm.rollback', async (op) => {
      const host = await this.#hosts.row(row.host_id);
      const withMemory = snapshot.with_memory === 1;
      const how = withMemory ? 'its disks and memory; the guest continues from there' : 'its disks; a running VM restarts';
      await op.report('rollback', `Rolling VM ${row.name} back to snapshot ${name}: ${how}`, 0.2);
      const status = await this.#hosts
        .agent(host)
        .rollbackSnapshot(
          row.id,
          snapshot.id,
          { disks: JSON.parse(snapshot.disks) as string[], withMemory },
          { timeoutMs: SNAPSHOT_CALL_TIMEOUT_MS, signal: op.signal },
        );
      if (withMemory) await this.#db.updateTable('vms').set({ desired_state: 'running' }).where('id', '=', row.id).execute();
      await this.#vms.reports.applyStatus(host.id, status);
      await op.report('rolled-back', `VM ${row.name} is ${status.state} at snapshot ${name}`, 0.95);
      return this.#vms.viewById(row.id);
    });
  }

  /** Deletes snapshot `name` of the VM: its contents on the host, then its record. */
  async remove(ref: string, name: string, project?: string): Promise<Operation> {
    const row = await this.#vms.row(ref, project);
    const snapshot = await this.#snapshot(row, name);
    return this.#operate(row, 'vm.snapshot-delete', async (op) => {
      const host = await this.#hosts.row(row.host_id);
      await op.report('deleting', `Deleting snapshot ${name} of VM ${row.name} on host ${host.name}`, 0.3);
      await this.#hosts.agent(host).deleteSnapshot(row.id, snapshot.id, { timeoutMs: 60_000, signal: op.signal });
      await this.#db.deleteFrom('vm_snapshots').where('id', '=', snapshot.id).execute();
      publishChange(this.#db, 'vm', 'updated', row.id);
      return { deleted: snapshot.id };
    });
  }

  /**
   * Makes the stopped VM `ref` a template: read-only from now on (it never starts again), the
   * source of `vm clone`. Its snapshots stay, but none can be rolled back to.
   */
  async makeTemplate(ref: string, project?: string): Promise<Vm> {
    const row = await this.#vms.row(ref, project);
    refuseTemplate(row, 'make a template of');
    const claim = this.#owner.claim(row.id, 'snapshot', row.name);
    await claim.run(async () => {
      const current = await this.#vms.row(row.id, project);
      if (current.actual_state !== 'stopped' || current.desired_state !== 'stopped')
        throw new NubisError('VM_INVALID_STATE', `VM ${row.name} is ${current.actual_state}; stop it first (nubis vm stop ${row.name}), a template never runs`);
      await this.#hosts.agent(await this.#hosts.row(current.host_id)).sealTemplate(row.id);
      await this.#db.updateTable('vms').set({ template: 1 }).where('id', '=', row.id).execute();
    });
    publishChange(this.#db, 'vm', 'updated', row.id);
    return this.#vms.viewById(row.id);
  }

  /** Makes VM `request.name` of template `ref`: a full copy, or `linked` copy-on-write (vm-clones.ts). */
  clone(ref: string, request: { name: string; linked?: boolean }, project?: string): Promise<Operation> {
    return cloneVm({ db: this.#db, hosts: this.#hosts, storage: this.#storage, vms: this.#vms }, ref, request, project);
  }
}

function viewOf(row: VmSnapshotsTable, vmName: string): VmSnapshot {
  return {
    id: row.id,
    name: row.name,
    vm: vmName,
    withMemory: row.with_memory === 1,
    ...(row.memory_bytes !== null ? { memoryBytes: row.memory_bytes } : {}),
    disks: JSON.parse(row.disks) as string[],
    vmState: row.vm_state,
    createdAt: row.created_at,
  };
}
