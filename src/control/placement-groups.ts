/**
 * Placement groups of a project: VMs kept apart (anti-affinity) or together (affinity), on
 * separate hosts or zones; strict groups refuse a host that breaks the rule, soft ones only
 * prefer the others. The scheduler applies them (scheduler.ts); this is their record.
 */
import { NubisError } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import { auditedTransaction } from '../audit/audit-context.ts';
import type { Db } from '../state/database.ts';
import type { PlacementGroupsTable } from '../state/schema.ts';
import type { ProjectRef } from './volume-owners.ts';
import { projectIdByName, type VisibleProjects } from './projects.ts';

export interface PlacementGroupView {
  id: string;
  name: string;
  project: string;
  policy: 'affinity' | 'anti-affinity';
  scope: 'host' | 'zone';
  strict: boolean;
  members: Array<{ vm: string; host: string; zone?: string }>;
  createdAt: string;
}

export interface PlacementGroupCreate {
  name: string;
  project?: string;
  policy: 'affinity' | 'anti-affinity';
  scope?: 'host' | 'zone';
  strict?: boolean;
}

const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export class PlacementGroups {
  readonly #db: Db;

  constructor(db: Db) {
    this.#db = db;
  }

  async create(request: PlacementGroupCreate): Promise<PlacementGroupView> {
    if (!NAME.test(request.name))
      throw new NubisError('VALIDATION_FAILED', `Group name ${JSON.stringify(request.name)} is not valid: lowercase letters, digits and inner hyphens`);
    const projectName = request.project ?? 'default';
    const projectId = await projectIdByName(this.#db, projectName);
    const row: PlacementGroupsTable = {
      id: newId('pg'),
      project_id: projectId,
      name: request.name,
      policy: request.policy,
      scope: request.scope ?? 'host',
      strict: request.strict ? 1 : 0,
      created_at: new Date().toISOString(),
    };
    await auditedTransaction(this.#db, async (trx) => {
      // Checked inside the transaction that inserts: two creates of one name cannot both pass.
      if (await trx.selectFrom('placement_groups').select('id').where('project_id', '=', projectId).where('name', '=', request.name).executeTakeFirst())
        throw new NubisError('PLACEMENT_GROUP_NAME_TAKEN', `Project ${projectName} has a placement group ${request.name}; choose another name`);
      await trx.insertInto('placement_groups').values(row).execute();
    });
    return this.get(row.name, projectName);
  }

  /** The group `ref` (name or id) of the project, or `PLACEMENT_GROUP_NOT_FOUND`. */
  async row(ref: string, project: ProjectRef | string | undefined): Promise<PlacementGroupsTable> {
    const projectName = typeof project === 'object' ? project.name : (project ?? 'default');
    const projectId = typeof project === 'object' ? project.id : await projectIdByName(this.#db, projectName);
    const row = await this.#db
      .selectFrom('placement_groups')
      .selectAll()
      .where('project_id', '=', projectId)
      .where((eb) => eb.or([eb('name', '=', ref), eb('id', '=', ref)]))
      .executeTakeFirst();
    if (!row) throw new NubisError('PLACEMENT_GROUP_NOT_FOUND', `No placement group ${ref} in project ${projectName}; see nubis placement-group list`);
    return row;
  }

  async get(ref: string, project?: string): Promise<PlacementGroupView> {
    return (await this.#views([await this.row(ref, project)]))[0]!;
  }

  async list(project?: string, visible: VisibleProjects = 'all'): Promise<PlacementGroupView[]> {
    let query = this.#db.selectFrom('placement_groups').selectAll().orderBy('name');
    if (project) query = query.where('project_id', '=', await projectIdByName(this.#db, project));
    else if (visible !== 'all') {
      if (visible.length === 0) return [];
      query = query.where('project_id', 'in', visible);
    }
    return this.#views(await query.execute());
  }

  /** Deletes an empty group; one with members is refused (its rule still places them). */
  async delete(ref: string, project?: string): Promise<void> {
    const row = await this.row(ref, project);
    await auditedTransaction(this.#db, async (trx) => {
      const members = await trx.selectFrom('vms').select('name').where('placement_group_id', '=', row.id).orderBy('name').execute();
      if (members.length > 0)
        throw new NubisError(
          'PLACEMENT_GROUP_IN_USE',
          `Placement group ${row.name} has ${members.length} member(s) (${members.map((m) => m.name).join(', ')}); delete them or move them out with nubis vm set VM --group ''`,
        );
      await trx.deleteFrom('placement_groups').where('id', '=', row.id).execute();
    });
  }

  /** Views of `rows` with their members, in three queries whatever their number. */
  async #views(rows: PlacementGroupsTable[]): Promise<PlacementGroupView[]> {
    if (rows.length === 0) return [];
    const members = await this.#db
      .selectFrom('vms')
      .innerJoin('hosts', 'hosts.id', 'vms.host_id')
      .select(['vms.placement_group_id as group', 'vms.name as vm', 'hosts.name as host', 'hosts.labels as labels'])
      .where(
        'vms.placement_group_id',
        'in',
        rows.map((row) => row.id),
      )
      .orderBy('vms.name')
      .execute();
    const projects = new Map((await this.#db.selectFrom('projects').select(['id', 'name']).execute()).map((p) => [p.id, p.name]));
    return rows.map((row) => ({
      id: row.id,
      name: row.name,
      project: projects.get(row.project_id) ?? row.project_id,
      policy: row.policy,
      scope: row.scope,
      strict: row.strict === 1,
      members: members
        .filter((member) => member.group === row.id)
        .map((member) => {
          const zone = (JSON.parse(member.labels) as Record<string, string>).zone;
          return { vm: member.vm, host: member.host, ...(zone ? { zone } : {}) };
        }),
      createdAt: row.created_at,
    }));
  }
}
