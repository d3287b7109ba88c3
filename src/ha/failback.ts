/**
 * Failback: a VM of an HA group with failback, running away from the group's hosts (an HA
 * restart or an evacuation took it there), live-migrates back to the best of the group's hosts
 * once one is in service and can take it. One VM at a time, so a returning host is not flooded.
 */
import { messageOf } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import type { OperationManager } from '../control/operations.ts';
import type { PlacementService } from '../control/placement.ts';
import type { VmOwner } from '../control/vm-owner.ts';
import type { MigrationService } from '../migration/migration-service.ts';
import type { Db } from '../state/database.ts';

export interface FailbackDeps {
  db: Db;
  placement: PlacementService;
  owner: VmOwner;
  migrations: Pick<MigrationService, 'migrate'>;
  operations: OperationManager;
  logger?: Logger;
}

export class Failback {
  readonly #deps: FailbackDeps;
  /** The failback migration under way, if any. */
  #moving: Promise<unknown> | undefined;

  constructor(deps: FailbackDeps) {
    this.#deps = deps;
  }

  /** Starts at most one failback migration; returns the VM it moves, if any. */
  async round(): Promise<string | undefined> {
    if (this.#moving) return undefined;
    const { db, placement } = this.#deps;
    for (const group of await db.selectFrom('ha_groups').selectAll().where('failback', '=', 1).execute()) {
      const home = new Set(JSON.parse(group.hosts) as string[]);
      const away = await db
        .selectFrom('vms')
        .selectAll()
        .where('ha_group_id', '=', group.id)
        .where('actual_state', '=', 'running')
        .where('host_id', 'not in', [...home])
        .orderBy('ha_priority', 'desc')
        .orderBy('name')
        .execute();
      for (const vm of away) {
        if (this.#deps.owner.busy(vm.id)) continue;
        const source = await db.selectFrom('hosts').selectAll().where('id', '=', vm.host_id).executeTakeFirstOrThrow();
        const decision = await placement.explain(placement.movingNeeds(vm, source));
        // Back home only: a VM no home host can take stays where it is rather than wander.
        if (!decision.hostId || !home.has(decision.hostId)) continue;
        try {
          const operation = await this.#deps.migrations.migrate(vm.id, { strategy: 'auto', reason: 'failback', to: decision.host! });
          this.#deps.logger?.info({ vm: vm.name, to: decision.host }, 'failback: moving the VM back to its HA group');
          this.#moving = this.#deps.operations.wait(operation.id).finally(() => {
            this.#moving = undefined;
          });
          return vm.name;
        } catch (error) {
          this.#deps.logger?.warn({ vm: vm.name }, `failback could not start: ${messageOf(error)}`);
        }
      }
    }
    return undefined;
  }
}
