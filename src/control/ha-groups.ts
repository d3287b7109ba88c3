/**
 * HA groups: a named set of hosts that HA VMs prefer (as Proxmox's HA groups), restricted (they
 * run only there) or not, with failback (a VM moved off them goes back when one of them is in
 * service again) or not. The scheduler applies them (a filter when restricted, a weigher always).
 */
import { auditedTransaction } from '../audit/audit-context.ts';
import { NubisError } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import type { Db } from '../state/database.ts';
import type { HaGroupsTable } from '../state/schema.ts';
import type { HostRegistry } from './hosts.ts';

export interface HaGroupView {
  id: string;
  name: string;
  hosts: string[];
  restricted: boolean;
  failback: boolean;
  members: string[];
  createdAt: string;
}

export class HaGroups {
  readonly #db: Db;
  readonly #hosts: HostRegistry;

  constructor(deps: { db: Db; hosts: HostRegistry }) {
    this.#db = deps.db;
    this.#hosts = deps.hosts;
  }

  async create(request: { name: string; hosts: string[]; restricted?: boolean; failback?: boolean }): Promise<HaGroupView> {
    if (request.hosts.length === 0) throw new NubisError('VALIDATION_FAILED', 'An HA group needs at least one host (--hosts host-1,host-2)');
    const hostIds = [...new Set(await Promise.all(request.hosts.map(async (ref) => (await this.#hosts.row(ref)).id)))];
    const row: HaGroupsTable = {
      id: newId('hag'),
      name: request.name,
      hosts: JSON.stringify(hostIds),
      restricted: request.restricted ? 1 : 0,
      failback: request.failback ? 1 : 0,
      created_at: new Date().toISOString(),
    };
    await auditedTransaction(this.#db, async (trx) => {
      if (await trx.selectFrom('ha_groups').select('id').where('name', '=', request.name).executeTakeFirst())
        throw new NubisError('HA_GROUP_NAME_TAKEN', `An HA group named ${request.name} exists; choose another name`);
      await trx.insertInto('ha_groups').values(row).execute();
    });
    return this.get(row.id);
  }

  async row(ref: string): Promise<HaGroupsTable> {
    const row = await this.#db
      .selectFrom('ha_groups')
      .selectAll()
      .where((eb) => eb.or([eb('name', '=', ref), eb('id', '=', ref)]))
      .executeTakeFirst();
    if (!row) throw new NubisError('HA_GROUP_NOT_FOUND', `No HA group ${ref}; see nubis ha group list`);
    return row;
  }

  async get(ref: string): Promise<HaGroupView> {
    return (await this.#views([await this.row(ref)]))[0]!;
  }

  async list(): Promise<HaGroupView[]> {
    return this.#views(await this.#db.selectFrom('ha_groups').selectAll().orderBy('name').execute());
  }

  /** Deletes a group no VM is in. */
  async delete(ref: string): Promise<void> {
    const row = await this.row(ref);
    await auditedTransaction(this.#db, async (trx) => {
      const members = await trx.selectFrom('vms').select('name').where('ha_group_id', '=', row.id).execute();
      if (members.length > 0)
        throw new NubisError(
          'HA_GROUP_IN_USE',
          `HA group ${row.name} has ${members.length} VM(s) (${members.map((m) => m.name).join(', ')}); take them out first with nubis vm set VM --ha-group ''`,
        );
      await trx.deleteFrom('ha_groups').where('id', '=', row.id).execute();
    });
  }

  async #views(rows: HaGroupsTable[]): Promise<HaGroupView[]> {
    const names = new Map((await this.#db.selectFrom('hosts').select(['id', 'name']).execute()).map((h) => [h.id, h.name]));
    const members = await this.#db.selectFrom('vms').select(['name', 'ha_group_id']).where('ha_group_id', 'is not', null).orderBy('name').execute();
    return rows.map((row) => ({
      id: row.id,
      name: row.name,
      hosts: (JSON.parse(row.hosts) as string[]).map((id) => names.get(id) ?? id),
      restricted: row.restricted === 1,
      failback: row.failback === 1,
      members: members.filter((m) => m.ha_group_id === row.id).map((m) => m.name),
      createdAt: row.created_at,
    }));
  }
}
