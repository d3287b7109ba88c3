/**
 * Host maintenance: evacuate a host (nothing is placed there, its running VMs live-migrate away)
 * and restore it (it takes VMs again, and those that left it may move back). Each VM moves
 * through the migration service, so every move claims its VM from the one owner like any other.
 */
import { NubisError, messageOf } from '../core/errors.ts';
import type { HostRegistry } from '../control/hosts.ts';
import type { OperationContext, OperationManager } from '../control/operations.ts';
import type { Db } from '../state/database.ts';
import type { Operation } from '../wire/schemas.ts';
import type { MigrationService } from './migration-service.ts';
import { publishChange } from '../events/change-feed.ts';

export class HostMaintenance {
  readonly #db: Db;
  readonly #hosts: HostRegistry;
  readonly #operations: OperationManager;
  readonly #migrations: Pick<MigrationService, 'migrate'>;

  constructor(deps: { db: Db; hosts: HostRegistry; operations: OperationManager; migrations: Pick<MigrationService, 'migrate'> }) {
    this.#db = deps.db;
    this.#hosts = deps.hosts;
    this.#operations = deps.operations;
    this.#migrations = deps.migrations;
  }

  /**
   * Host maintenance: marks the host so nothing is placed there, then live-migrates every running
   * VM off it (destinations from the scheduler, `parallel` at a time) and reports each result.
   * VMs that are not running are left where they are (they hold no resources there while stopped).
   */
  async evacuate(hostRef: string, options: { parallel?: number } = {}): Promise<Operation> {
    const host = await this.#hosts.row(hostRef);
    await this.#db.updateTable('hosts').set({ maintenance: 1 }).where('id', '=', host.id).execute();
    publishChange(this.#db, 'host', 'updated', host.id);
    const vms = await this.#db.selectFrom('vms').select(['id', 'name', 'actual_state']).where('host_id', '=', host.id).orderBy('name').execute();
    return this.#operations.start('host.evacuate', { type: 'host', id: host.id, name: host.name }, async (op) => {
      const running = vms.filter((vm) => vm.actual_state === 'running');
      const left: Array<{ vm: string; status: string; error?: string }> = vms
        .filter((vm) => vm.actual_state !== 'running')
        .map((vm) => ({ vm: vm.name, status: `left ${vm.actual_state}` }));
      await op.report('evacuating', `Host ${host.name} is in maintenance; moving ${running.length} running VM(s)`, 0.05);
      const results = [...left, ...(await this.#migrateAll(op, 'evacuating', running, undefined, options.parallel ?? 2))];
      const failed = results.filter((r) => r.status === 'failed');
      if (failed.length > 0)
        throw new NubisError(
          'EVACUATION_INCOMPLETE',
          `${failed.length} VM(s) could not leave ${host.name}: ${failed.map((f) => `${f.vm} (${f.error})`).join('; ')}`,
          { details: { results } },
        );
      return { host: host.name, results };
    });
  }

  /**
   * Ends maintenance: the host takes new VMs again. With `moveBack`, the running VMs whose last
   * migration took them off this host come back, as an operation.
   */
  async restore(hostRef: string, options: { moveBack?: boolean; parallel?: number } = {}): Promise<Operation | undefined> {
    const host = await this.#hosts.row(hostRef);
    await this.#db.updateTable('hosts').set({ maintenance: 0 }).where('id', '=', host.id).execute();
    publishChange(this.#db, 'host', 'updated', host.id);
    if (!options.moveBack) return undefined;
    const elsewhere = await this.#db
      .selectFrom('vms')
      .select(['id', 'name', 'actual_state'])
      .where('host_id', '!=', host.id)
      .where('actual_state', '=', 'running')
      .orderBy('name')
      .execute();
    const moved: typeof elsewhere = [];
    for (const vm of elsewhere) {
      const last = await this.#db
        .selectFrom('vm_migrations')
        .select('from_host')
        .where('vm_id', '=', vm.id)
        .where('status', '=', 'completed')
        .orderBy('ended_at', 'desc')
        .executeTakeFirst();
      if (last?.from_host === host.name) moved.push(vm);
    }
    return this.#operations.start('host.restore', { type: 'host', id: host.id, name: host.name }, async (op) => {
      await op.report('restoring', `Host ${host.name} takes VMs again; moving ${moved.length} VM(s) back`, 0.05);
      const results = await this.#migrateAll(op, 'restoring', moved, host.name, options.parallel ?? 2);
      const failed = results.filter((r) => r.status === 'failed');
      if (failed.length > 0)
        throw new NubisError(
          'RESTORE_INCOMPLETE',
          `${failed.length} VM(s) could not move back to ${host.name}: ${failed.map((f) => `${f.vm} (${f.error})`).join('; ')}`,
          { details: { results } },
        );
      return { host: host.name, results };
    });
  }

  /** Live-migrates `vms` (`parallel` at a time) to `to` or where the scheduler says, reporting each result. */
  async #migrateAll(
    op: OperationContext,
    stage: 'evacuating' | 'restoring',
    vms: Array<{ id: string; name: string }>,
    to: string | undefined,
    parallel: number,
  ): Promise<Array<{ vm: string; status: string; to?: string; error?: string }>> {
    const results: Array<{ vm: string; status: string; to?: string; error?: string }> = [];
    const queue = [...vms];
    const worker = async (): Promise<void> => {
      for (let vm = queue.shift(); vm; vm = queue.shift()) {
        try {
          const reason = stage === 'evacuating' ? 'evacuate' : 'restore';
          const child = await this.#migrations.migrate(vm.id, { strategy: 'auto', reason, ...(to ? { to } : {}) });
          const final = await this.#operations.wait(child.id);
          const moved = final.result as { to?: string } | undefined;
          results.push({ vm: vm.name, status: final.status, ...(moved?.to ? { to: moved.to } : {}), ...(final.error ? { error: final.error.message } : {}) });
        } catch (error) {
          results.push({ vm: vm.name, status: 'failed', error: messageOf(error) });
        }
        const last = results.at(-1)!;
        await op.report(stage, `${vm.name}: ${last.status}${last.to ? ` to ${last.to}` : ''}`, 0.05 + (0.9 * results.length) / Math.max(1, vms.length));
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, parallel) }, worker));
    return results;
  }
}
