/**
 * Which project each storage volume belongs to. Pools are platform resources; the volumes in
 * them are a project's, counted against its `volumeBytes` quota. A volume made before projects
 * owned volumes (no row here) belongs to `default`.
 */
import { enforceQuota } from '../access/quotas.ts';
import { auditedTransaction } from '../audit/audit-context.ts';
import { NubisError } from '../core/errors.ts';
import type { Db } from '../state/database.ts';
import { projectIdByName } from './projects.ts';

export interface ProjectRef {
  id: string;
  name: string;
}

export class VolumeOwners {
  readonly #db: Db;

  constructor(db: Db) {
    this.#db = db;
  }

  /** The project a volume belongs to (`default` for one older than ownership). */
  async projectOf(pool: string, volume: string): Promise<string> {
    const row = await this.#db.selectFrom('volume_owners').select('project_id').where('pool', '=', pool).where('volume', '=', volume).executeTakeFirst();
    return row?.project_id ?? (await projectIdByName(this.#db, 'default'));
  }

  /** Refuses (VOLUME_NOT_FOUND) a volume of another project, as if it were not there: a project sees only its own. */
  async requireIn(pool: string, volume: string, project: ProjectRef): Promise<void> {
    if ((await this.projectOf(pool, volume)) !== project.id)
      throw new NubisError(
        'VOLUME_NOT_FOUND',
        `No volume ${pool}/${volume} in project ${project.name}; see nubis volume list ${pool} --project ${project.name}`,
      );
  }

  /**
   * Records a new volume for `project` within its quota, before the storage does the work; the
   * returned undo forgets it when the storage refuses. Check and record are one transaction.
   */
  async reserve(pool: string, volume: string, project: ProjectRef, sizeBytes: number): Promise<() => Promise<void>> {
    await auditedTransaction(this.#db, async (trx) => {
      await enforceQuota(trx, project.id, project.name, { volumeBytes: sizeBytes });
      // A name another volume holds (in any project) is refused here, before the storage is asked.
      if (await trx.selectFrom('volume_owners').select('volume').where('pool', '=', pool).where('volume', '=', volume).executeTakeFirst())
        throw new NubisError('VOLUME_EXISTS', `A volume named ${volume} exists in pool ${pool}; choose another name`);
      await trx.insertInto('volume_owners').values({ pool, volume, project_id: project.id, size_bytes: sizeBytes }).execute();
    });
    return () => this.forget(pool, volume);
  }

  /** Changes a volume's recorded size within the quota (a shrink always fits); returns the undo. */
  async resize(pool: string, volume: string, project: ProjectRef, sizeBytes: number): Promise<() => Promise<void>> {
    const before = await this.#db.selectFrom('volume_owners').select('size_bytes').where('pool', '=', pool).where('volume', '=', volume).executeTakeFirst();
    await auditedTransaction(this.#db, async (trx) => {
      await enforceQuota(trx, project.id, project.name, { volumeBytes: sizeBytes - (before?.size_bytes ?? 0) });
      await trx
        .insertInto('volume_owners')
        .values({ pool, volume, project_id: project.id, size_bytes: sizeBytes })
        .onConflict((oc) => oc.columns(['pool', 'volume']).doUpdateSet({ size_bytes: sizeBytes }))
        .execute();
    });
    return async () => {
      if (before)
        await this.#db.updateTable('volume_owners').set({ size_bytes: before.size_bytes }).where('pool', '=', pool).where('volume', '=', volume).execute();
    };
  }

  async forget(pool: string, volume: string): Promise<void> {
    await this.#db.deleteFrom('volume_owners').where('pool', '=', pool).where('volume', '=', volume).execute();
  }

  /** The volumes of `pool` that belong to one of `projectIds` (`all`: every volume), as a name filter. */
  async visibleIn(pool: string, projectIds: 'all' | string[]): Promise<(name: string) => boolean> {
    if (projectIds === 'all') return () => true;
    const owners = new Map(
      (await this.#db.selectFrom('volume_owners').select(['volume', 'project_id']).where('pool', '=', pool).execute()).map((r) => [r.volume, r.project_id]),
    );
    const defaultId = await projectIdByName(this.#db, 'default');
    return (name) => projectIds.includes(owners.get(name) ?? defaultId);
  }
}
