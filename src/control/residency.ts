/**
 * Data residency: a project may require labels (`region=eu`) of every host its VMs run on and
 * every pool its volumes live on. The scheduler enforces it for VMs (a required label is a
 * filter); this module holds the rule, checks volumes, and refuses a change of a rule or of a
 * label that would leave a project's VM or volume where its rule forbids.
 */
import { NubisError } from '../core/errors.ts';
import { auditedTransaction } from '../audit/audit-context.ts';
import type { Db } from '../state/database.ts';
import { checkLabels, formatLabels, type Labels, mergeLabels, parseStoredLabels, unmetRequirement } from './labels.ts';
import { projectIdByName } from './projects.ts';

/** Labels of a storage-node pool; a dir pool's volume takes the labels of the host it lives on. */
export async function poolLabels(db: Db, pool: string): Promise<Labels> {
  const row = await db.selectFrom('pool_labels').select('labels').where('pool', '=', pool).executeTakeFirst();
  return row ? parseStoredLabels(row.labels) : {};
}

export class Residency {
  readonly #db: Db;

  constructor(db: Db) {
    this.#db = db;
  }

  async requirementsOf(projectId: string): Promise<Labels> {
    const row = await this.#db.selectFrom('projects').select('requirements').where('id', '=', projectId).executeTakeFirstOrThrow();
    return parseStoredLabels(row.requirements);
  }

  /**
   * Sets the project's required labels (an empty value removes one). Refused, naming them, while
   * any of its VMs or volumes is where the new rule forbids: move them first.
   */
  async setRequirements(projectName: string, change: Labels): Promise<Labels> {
    const projectId = await projectIdByName(this.#db, projectName);
    const required = checkLabels(mergeLabels(await this.requirementsOf(projectId), change), `project ${projectName}'s requirements`);
    const breaking = await this.#breakingPlacements(projectId, required, {});
    if (breaking.length > 0)
      throw new NubisError(
        'RESIDENCY_VIOLATED',
        `Project ${projectName} cannot require ${formatLabels(required)}: ${breaking.join('; ')}. Move them first (nubis vm migrate, or a volume in a pool that has the labels)`,
        { details: { breaking } },
      );
    await auditedTransaction(this.#db, (trx) =>
      trx
        .updateTable('projects')
        .set({ requirements: JSON.stringify(required) })
        .where('id', '=', projectId)
        .execute(),
    );
    return required;
  }

  /**
   * Where the project's VMs and volumes break `required`, as sentences. `override` gives labels a
   * change is about to set (`host:ID` or `pool:NAME` to labels) in place of the stored ones.
   */
  async #breakingPlacements(projectId: string, required: Labels, override: Record<string, Labels>): Promise<string[]> {
    if (Object.keys(required).length === 0) return [];
    const breaking: string[] = [];
    const vms = await this.#db
      .selectFrom('vms')
      .innerJoin('hosts', 'hosts.id', 'vms.host_id')
      .select(['vms.name as vm', 'hosts.id as hostId', 'hosts.name as host', 'hosts.labels as labels'])
      .where('vms.project_id', '=', projectId)
      .execute();
    for (const vm of vms) {
      const unmet = unmetRequirement(override[`host:${vm.hostId}`] ?? parseStoredLabels(vm.labels), required);
      if (unmet) breaking.push(`VM ${vm.vm} runs on ${vm.host}, which lacks ${unmet}`);
    }
    const volumes = await this.#db.selectFrom('volume_owners').select(['pool', 'volume']).where('project_id', '=', projectId).execute();
    for (const volume of volumes) {
      const unmet = unmetRequirement(await this.#volumeLabels(volume.pool, volume.volume, override), required);
      if (unmet) breaking.push(`volume ${volume.pool}/${volume.volume} lives where ${unmet} is missing`);
    }
    return breaking;
  }

  /** The labels of where a volume lives: its dir pool's host, or its storage-node pool. */
  async #volumeLabels(pool: string, volume: string, override: Record<string, Labels> = {}): Promise<Labels> {
    const onHost = await this.#db
      .selectFrom('dir_volumes')
      .innerJoin('dir_pools', 'dir_pools.id', 'dir_volumes.pool_id')
      .innerJoin('hosts', 'hosts.id', 'dir_volumes.host_id')
      .select(['hosts.id as hostId', 'hosts.labels as labels'])
      .where('dir_pools.name', '=', pool)
      .where('dir_volumes.name', '=', volume)
      .executeTakeFirst();
    if (onHost) return override[`host:${onHost.hostId}`] ?? parseStoredLabels(onHost.labels);
    return override[`pool:${pool}`] ?? (await poolLabels(this.#db, pool));
  }

  /** Refuses a new volume of the project in a storage-node pool (or on a dir-pool host) its rule forbids. */
  async checkVolume(projectId: string, projectName: string, where: { pool: string; hostLabels?: Labels; hostName?: string }): Promise<void> {
    const required = await this.requirementsOf(projectId);
    const labels = where.hostLabels ?? (await poolLabels(this.#db, where.pool));
    const unmet = unmetRequirement(labels, required);
    if (unmet)
      throw new NubisError(
        'RESIDENCY_VIOLATED',
        `Project ${projectName}'s residency rule requires ${unmet}, which ${where.hostName ? `host ${where.hostName} (of dir pool ${where.pool})` : `pool ${where.pool}`} lacks; choose a pool with the label or label it (nubis ${where.hostName ? 'host' : 'pool'} set)`,
      );
  }

  /** Refuses new labels of a host or pool (`target` as `host:ID` / `pool:NAME`) that would break a project's rule. */
  async checkLabelChange(target: string, labels: Labels, what: string): Promise<void> {
    const projects = await this.#db.selectFrom('projects').select(['id', 'name', 'requirements']).where('requirements', '!=', '{}').execute();
    const breaking: string[] = [];
    for (const project of projects) {
      for (const sentence of await this.#breakingPlacements(project.id, parseStoredLabels(project.requirements), { [target]: labels }))
        breaking.push(`project ${project.name}: ${sentence}`);
    }
    // Only what the change itself breaks: placements that broke before (none should) are not its fault.
    if (breaking.length > 0)
      throw new NubisError('RESIDENCY_VIOLATED', `${what} would break residency rules: ${breaking.join('; ')}`, { details: { breaking } });
  }

  /** Sets labels of a storage-node pool (an empty value removes one). */
  async setPoolLabels(pool: string, change: Labels): Promise<Labels> {
    const labels = checkLabels(mergeLabels(await poolLabels(this.#db, pool), change), `pool ${pool}`);
    await this.checkLabelChange(`pool:${pool}`, labels, `Labelling pool ${pool} ${formatLabels(labels)}`);
    await auditedTransaction(this.#db, (trx) =>
      trx
        .insertInto('pool_labels')
        .values({ pool, labels: JSON.stringify(labels) })
        .onConflict((oc) => oc.column('pool').doUpdateSet({ labels: JSON.stringify(labels) }))
        .execute(),
    );
    return labels;
  }
}
