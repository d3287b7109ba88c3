/**
 * What host agents report about their VMs, applied to the records: each VM's state, VMs a host
 * no longer has, creates a control-plane restart interrupted, and a migration's switch-over.
 */
import type { VmSpec } from '../compute/vm-spec.ts';
import type { VmStatus } from '../agent-api/contract.ts';
import type { Db } from '../state/database.ts';
import { writeTransaction } from '../state/write-queue.ts';
import { recordLaunchReferences } from './trusted-launch.ts';
import type { HostsTable, VmsTable } from '../state/schema.ts';
import type { Vm } from '../wire/schemas.ts';
import type { HostRegistry } from './hosts.ts';
import type { OperationManager } from './operations.ts';
import type { VmOwner } from './vm-owner.ts';
import type { PlacementAction, PlacementService } from './placement.ts';
import type { PlacementDecision } from './scheduler.ts';
import { publishChange } from '../events/change-feed.ts';

/** States whose VM is not on its host yet (a create, an HA restart): a full report without it says nothing. */
const UNSETTLED = ['pending', 'restarting'];
/** Ids in one `IN (...)` list at most. */
const IN_LIST_MAX = 500;

export class VmReports {
  readonly #db: Db;
  readonly #hosts: HostRegistry;
  readonly #operations: OperationManager;
  readonly #owner: VmOwner;
  readonly #placement: PlacementService;
  readonly #view: (id: string) => Promise<Vm>;
  readonly #forget: (row: Pick<VmsTable, 'id' | 'project_id'>, host: HostsTable) => Promise<void>;

  /** `view` shows a VM by id; `forget` drops a VM's record and what it held (VmService's). */
  constructor(deps: {
    db: Db;
    hosts: HostRegistry;
    operations: OperationManager;
    owner: VmOwner;
    placement: PlacementService;
    view: (id: string) => Promise<Vm>;
    forget: (row: Pick<VmsTable, 'id' | 'project_id'>, host: HostsTable) => Promise<void>;
  }) {
    this.#db = deps.db;
    this.#hosts = deps.hosts;
    this.#operations = deps.operations;
    this.#owner = deps.owner;
    this.#placement = deps.placement;
    this.#view = deps.view;
    this.#forget = deps.forget;
  }

  /**
   * A control plane that stopped mid-create left a VM `pending` (before its QEMU started) or
   * running with its operation failed. With the host's full report the truth is known: a VM
   * the host has is finished, and its operation says so; a `pending` VM the host does not have
   * is undone, freeing its name, addresses and capacity. VMs an action of this control plane
   * holds are left to it.
   */
  async #reconcileInterruptedCreates(hostId: string, statuses: VmStatus[]): Promise<void> {
    // Runs on every full report (each host, every 10 s): only VMs that can need settling are read,
    // those still `pending` and those with an unsettled interrupted create (normally none).
    const interrupted = await this.#operations.interrupted('vm.create');
    const rows = await this.#db
      .selectFrom('vms')
      .selectAll()
      .where('host_id', '=', hostId)
      .where((eb) =>
        eb.or([
          eb('actual_state', '=', 'pending'),
          ...(interrupted.length > 0
            ? [
                eb(
                  'id',
                  'in',
                  interrupted.map((op) => op.target_id),
                ),
              ]
            : []),
        ]),
      )
      .execute();
    if (rows.length === 0) return;
    const reported = new Set(statuses.map((status) => status.id));
    const host = await this.#hosts.row(hostId);
    for (const row of rows) {
      if (this.#owner.busy(row.id)) continue;
      const operation = interrupted.find((op) => op.target_id === row.id);
      if (reported.has(row.id)) {
        if (operation)
          await this.#operations.settleInterrupted(operation.id, {
            status: 'succeeded',
            message: `The control plane restarted while this ran; host ${host.name} runs the VM, so it is done`,
            result: await this.#view(row.id),
          });
      } else if (row.actual_state === 'pending') {
        await this.#forget(row, host);
        if (operation)
          await this.#operations.settleInterrupted(operation.id, {
            status: 'failed',
            message: `The control plane stopped while this ran, before host ${host.name} started the VM; it was undone (its name, addresses and capacity are free)`,
          });
      }
    }
  }

  /**
   * A VM now lives on `host` (a migration's switch-over, or a restart elsewhere): its host,
   * state, status and spec change in one write with the record of its placement, so no reader
   * ever sees it half moved and no move goes unrecorded.
   */
  async recordMove(
    vm: { id: string; name: string; projectId: string },
    host: Pick<HostsTable, 'id' | 'name'>,
    status: VmStatus,
    spec: VmSpec,
    placement: { action: PlacementAction; actor?: string; decision: PlacementDecision },
  ): Promise<void> {
    await writeTransaction(this.#db, async (trx) => {
      await trx
        .updateTable('vms')
        .set({ host_id: host.id, actual_state: status.state, status: JSON.stringify(status), spec: JSON.stringify(spec), updated_at: new Date().toISOString() })
        .where('id', '=', vm.id)
        .execute();
      await this.#placement.record(trx, { vm, host, ...placement });
    });
    publishChange(this.#db, 'vm', 'updated', vm.id);
  }

  /** Records what a host reports about one of its VMs. Reports about unknown VMs are ignored. */
  async applyStatus(hostId: string, status: VmStatus): Promise<void> {
    // Through the write queue: committed with the other writes of the moment, not on its own.
    await writeTransaction(this.#db, (trx) => this.#writeStatus(trx, hostId, status));
    publishChange(this.#db, 'vm', 'updated', status.id);
  }

  /**
   * A report: each VM's status, and with `full` the VMs of the host that the agent does not know
   * are `missing`. Only what changed is written, all of it in one transaction: a thousand hosts
   * each send a full report every 10 s, and a report that tells nothing new writes nothing.
   */
  async applyReport(hostId: string, statuses: VmStatus[], full: boolean): Promise<void> {
    const recorded = await this.#recordedStates(hostId, full ? undefined : statuses.map((status) => status.id));
    const changed = statuses.filter((status) => {
      const row = recorded.get(status.id);
      // Reports about unknown VMs (or another host's) are ignored.
      return row !== undefined && (row.actual_state !== status.state || row.status !== JSON.stringify(status));
    });
    if (changed.length > 0)
      await writeTransaction(this.#db, async (trx) => {
        for (const status of changed) await this.#writeStatus(trx, hostId, status);
      });
    // Published once committed: a reader woken by the feed sees the new state.
    for (const status of changed) publishChange(this.#db, 'vm', 'updated', status.id);
    if (!full) return;
    await this.#reconcileInterruptedCreates(hostId, statuses);
    const reported = new Set(statuses.map((status) => status.id));
    // A VM being created, or restarted here by HA, is not yet on its host: its action settles it.
    const missing = [...recorded.values()].filter((row) => !reported.has(row.id) && !UNSETTLED.includes(row.actual_state) && row.actual_state !== 'missing');
    for (let from = 0; from < missing.length; from += IN_LIST_MAX) {
      const marked = await this.#db
        .updateTable('vms')
        .set({ actual_state: 'missing', updated_at: new Date().toISOString() })
        .where('host_id', '=', hostId)
        .where(
          'id',
          'in',
          missing.slice(from, from + IN_LIST_MAX).map((row) => row.id),
        )
        // Read again in the write: one that became `pending` or `restarting` meanwhile is left alone.
        .where('actual_state', 'not in', UNSETTLED)
        .returning('id')
        .execute();
      for (const { id } of marked) publishChange(this.#db, 'vm', 'updated', id);
    }
  }

  /** The recorded state and status of the host's VMs (of `ids` only, when given). */
  async #recordedStates(hostId: string, ids: string[] | undefined): Promise<Map<string, Pick<VmsTable, 'id' | 'actual_state' | 'status'>>> {
    if (ids?.length === 0) return new Map();
    let query = this.#db.selectFrom('vms').select(['id', 'actual_state', 'status']).where('host_id', '=', hostId);
    // A long list reads the whole host instead (SQLite bounds a statement's parameters).
    if (ids && ids.length <= IN_LIST_MAX) query = query.where('id', 'in', ids);
    return new Map((await query.execute()).map((row) => [row.id, row]));
  }

  async #writeStatus(db: Db, hostId: string, status: VmStatus): Promise<void> {
    await db
      .updateTable('vms')
      .set({ actual_state: status.state, status: JSON.stringify(status), updated_at: new Date().toISOString() })
      .where('id', '=', status.id)
      .where('host_id', '=', hostId)
      .execute();
    // A first launch from an image (or on these hosts' software) sets what later ones must match.
    if (status.launch) await recordLaunchReferences(db, status.id, status.launch);
  }
}
