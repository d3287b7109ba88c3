/**
 * Managing desktop pools: creating one (everything that can be refused is refused before
 * anything is made; then a read-only snapshot of the base, so that later changes to the base do
 * not reach the desktops, and the spares booted in an operation), listing, showing, deleting
 * (its desktops, their clones and the snapshot), and who may use each pool.
 */
import { sql } from 'kysely';
import type { UserStore } from '../access/users.ts';
import { NubisError, isNubisError, messageOf } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import type { ImageCatalogue } from '../control/images.ts';
import type { NetworkService } from '../control/networks.ts';
import type { OperationContext, OperationManager } from '../control/operations.ts';
import { projectIdByName, type VisibleProjects } from '../control/projects.ts';
import type { StorageCatalogue } from '../control/storage.ts';
import { publishChange } from '../events/change-feed.ts';
import type { Db } from '../state/database.ts';
import type { DesktopPoolsTable } from '../state/schema.ts';
import type { DesktopPool, DesktopPoolCreateRequest } from '../wire/desktop-schemas.ts';
import type { Operation } from '../wire/schemas.ts';
import type { DesktopBroker } from './desktop-broker.ts';
import { type DesktopMachines, volumePath } from './desktop-machines.ts';
import { DesktopRecords, desktopSnapshotName, desktopVmName, desktopVolumeName } from './desktop-records.ts';

type ProjectRef = { id: string; name: string };

export interface DesktopPoolDeps {
  db: Db;
  storage: StorageCatalogue;
  images: ImageCatalogue;
  networks: NetworkService;
  operations: OperationManager;
  users: UserStore;
  machines: DesktopMachines;
  broker: DesktopBroker;
}

export class DesktopPools {
  readonly #deps: DesktopPoolDeps;
  readonly records: DesktopRecords;

  constructor(deps: DesktopPoolDeps) {
    this.#deps = deps;
    this.records = new DesktopRecords(deps.db);
  }

  /**
   * Creates a pool: checks everything, takes the base's snapshot, records the pool, then boots
   * its spares in an operation whose result is the pool.
   */
  async create(request: DesktopPoolCreateRequest, project: ProjectRef): Promise<Operation> {
    const { db, storage, operations } = this.#deps;
    const spare = request.spare ?? 1;
    if (spare > request.size)
      throw new NubisError('VALIDATION_FAILED', `--spare ${spare} is more than the pool's --size ${request.size}; a pool keeps at most all its desktops spare`);
    if (await db.selectFrom('desktop_pools').select('id').where('project_id', '=', project.id).where('name', '=', request.name).executeTakeFirst())
      throw new NubisError('DESKTOP_POOL_EXISTS', `A desktop pool named ${request.name} exists in project ${project.name}; choose another name`);
    const image = await this.#deps.images.row(request.image);
    if (request.network) await this.#deps.networks.row(request.network, project.name);
    const [basePool, baseVolume] = request.base.split('/') as [string, string];
    const base = await this.#cloneableBase(basePool, baseVolume, project);
    await this.#namesFree(request.name, request.size, basePool, project);
    const snapshot = desktopSnapshotName(request.name);
    // The snapshot counts its full size against the project's quota, as any snapshot does.
    const undo = await storage.owners.reserve(basePool, snapshot, project, base.sizeBytes);
    try {
      await storage.call({ method: 'POST', path: `${volumePath(basePool, baseVolume)}/snapshot`, body: { name: snapshot } });
    } catch (error) {
      await undo();
      throw error;
    }
    const pool: DesktopPoolsTable = {
      id: newId('dpl'),
      project_id: project.id,
      name: request.name,
      image_id: image.id,
      base_pool: basePool,
      base_volume: baseVolume,
      snapshot_volume: snapshot,
      mode: request.mode,
      size: request.size,
      spare,
      grace_seconds: request.graceSeconds ?? 300,
      cpus: request.cpus ?? 1,
      memory_mb: request.memoryMb ?? 256,
      network: request.network ?? null,
      created_at: new Date().toISOString(),
    };
    await db.insertInto('desktop_pools').values(pool).execute();
    publishChange(db, 'desktop-pool', 'created', pool.id);
    return operations.start('desktop-pool.create', { type: 'desktop-pool', id: pool.id, name: pool.name, projectId: project.id }, async (op) => {
      await op.report('snapshot', `Took snapshot ${basePool}/${snapshot} of ${request.base}`, 0.05);
      await this.#awaitAll(op, await this.#deps.broker.keepSpares(pool), `Booting ${spare} spare desktop(s)`);
      return this.records.poolView(pool);
    });
  }

  /**
   * Refuses a base the storage node cannot clone: a dir-pool volume (a qcow2 file on one host), a
   * volume that does not exist or belongs to another project. `STORAGE_UNAVAILABLE` passes.
   */
  async #cloneableBase(pool: string, volume: string, project: ProjectRef): Promise<{ sizeBytes: number }> {
    const refuse = (why: string): NubisError =>
      new NubisError('DESKTOP_BASE_UNCLONEABLE', `Base ${pool}/${volume} cannot be cloned: ${why}`, { details: { base: `${pool}/${volume}` } });
    if (await this.#deps.storage.dirPools.find(pool))
      throw refuse(`${pool} is a dir pool (qcow2 files on one host); desktops clone their base on the storage node, so copy it to a storage-node pool`);
    try {
      await this.#deps.storage.owners.requireIn(pool, volume, project);
      return await this.#deps.storage.call<{ sizeBytes: number }>({ method: 'GET', path: volumePath(pool, volume) });
    } catch (error) {
      if (isNubisError(error) && /_NOT_FOUND$/.test(error.code)) throw refuse(`${messageOf(error)}; see nubis volume list ${pool} --project ${project.name}`);
      throw error;
    }
  }

  /** The VM and volume names the pool's desktops will take must all be free, before anything is made. */
  async #namesFree(name: string, size: number, basePool: string, project: ProjectRef): Promise<void> {
    const vmNames = Array.from({ length: size }, (_, index) => desktopVmName(name, index + 1));
    const vmsTaken = await this.#deps.db.selectFrom('vms').select('name').where('project_id', '=', project.id).where('name', 'in', vmNames).execute();
    if (vmsTaken.length > 0)
      throw new NubisError(
        'DESKTOP_POOL_EXISTS',
        `VM ${vmsTaken[0]!.name} exists in project ${project.name}; the desktops of pool ${name} would be ${vmNames[0]}..${vmNames.at(-1)}: choose another pool name`,
      );
    const volumeNames = [desktopSnapshotName(name), ...Array.from({ length: size }, (_, index) => desktopVolumeName(name, index + 1))];
    const existing = new Set(
      (await this.#deps.storage.call<Array<{ name: string }>>({ method: 'GET', path: `/storage/pools/${encodeURIComponent(basePool)}/volumes` })).map(
        (v) => v.name,
      ),
    );
    const clash = volumeNames.find((volume) => existing.has(volume));
    if (clash) throw new NubisError('VOLUME_EXISTS', `Volume ${basePool}/${clash} exists; the pool needs that name for its desktops: choose another pool name`);
  }

  /** Waits for the operations started, reporting each as it ends; fails naming the first that failed. */
  async #awaitAll(op: OperationContext, started: Operation[], stage: string): Promise<void> {
    let done = 0;
    const failures: string[] = [];
    await op.report('desktops', stage, 0.1);
    await Promise.all(
      started.map(async (operation) => {
        const final = await this.#deps.operations.wait(operation.id);
        done += 1;
        if (final.status !== 'succeeded') failures.push(`${final.target.name}: ${final.error?.message ?? final.status}`);
        await op.report('desktops', `${final.target.name} ${final.status} (${done} of ${started.length})`, 0.1 + (0.9 * done) / started.length);
      }),
    );
    if (failures.length > 0) throw new NubisError('DESKTOP_PROVISION_FAILED', `Desktop(s) failed: ${failures.join('; ')}`);
  }

  /** Project `name` by id and name; `PROJECT_NOT_FOUND`. */
  async project(name: string): Promise<ProjectRef> {
    return { id: await projectIdByName(this.#deps.db, name), name };
  }

  /** The pools of `project`, or (without one) of the projects in `visible`. */
  async list(project: ProjectRef | undefined, visible: VisibleProjects = 'all'): Promise<DesktopPool[]> {
    let query = this.#deps.db.selectFrom('desktop_pools').selectAll().orderBy('name');
    if (project) query = query.where('project_id', '=', project.id);
    else if (visible !== 'all') query = visible.length > 0 ? query.where('project_id', 'in', visible) : query.where(sql<boolean>`0`);
    return Promise.all((await query.execute()).map((pool) => this.records.poolView(pool)));
  }

  async get(name: string, project: ProjectRef): Promise<DesktopPool> {
    return this.records.poolView(await this.records.pool(name, project));
  }

  /**
   * Deletes a pool with its desktops (VMs and clones) and its snapshot, in an operation. Refused
   * while desktops are assigned, unless `force`.
   */
  async delete(name: string, project: ProjectRef, force = false): Promise<Operation> {
    const pool = await this.records.pool(name, project);
    const desktops = await this.records.desktops(pool.id);
    const held = desktops.filter((row) => row.assigned_user_id !== null);
    if (held.length > 0 && !force) {
      const users = await this.records.userNames(held.map((row) => row.assigned_user_id!));
      throw new NubisError(
        'DESKTOP_POOL_IN_USE',
        `Desktop pool ${name} has ${held.length} desktop(s) assigned (to ${[...users.values()].sort().join(', ')}); they leave first, or delete with --force`,
      );
    }
    const { broker, machines, db } = this.#deps;
    await broker.closePool(pool.id);
    return this.#deps.operations.start('desktop-pool.delete', { type: 'desktop-pool', id: pool.id, name: pool.name, projectId: project.id }, async (op) => {
      try {
        // Provisioning and resets in flight end first: a VM created after its clone was deleted would be left over.
        for (const row of await this.records.desktops(pool.id)) if (row.operation_id) await this.#deps.operations.wait(row.operation_id).catch(() => undefined);
        const rows = await this.records.desktops(pool.id);
        for (const [index, desktop] of rows.entries()) {
          await op.report('desktops', `Deleting desktop ${desktop.vm_name} (${index + 1} of ${rows.length})`, (0.9 * index) / Math.max(1, rows.length));
          await machines.remove(pool, desktop);
        }
        await op.report('snapshot', `Deleting snapshot ${pool.base_pool}/${pool.snapshot_volume}`, 0.95);
        await machines.deleteVolume(pool.base_pool, pool.snapshot_volume);
        await db.transaction().execute(async (trx) => {
          await trx.deleteFrom('desktop_entitlements').where('pool_id', '=', pool.id).execute();
          await trx.deleteFrom('desktop_pools').where('id', '=', pool.id).execute();
        });
        publishChange(db, 'desktop-pool', 'deleted', pool.id, { name: pool.name, projectId: pool.project_id });
        return { deleted: pool.id };
      } finally {
        broker.reopenPool(pool.id);
      }
    });
  }

  /**
   * Takes the pool's snapshot of its base again (the base was changed on purpose). Free desktops
   * are reset onto it at once; floating ones held by users get it at their next reset; dedicated
   * ones held keep their disk. Refused while desktops are being readied.
   */
  async updateBase(name: string, project: ProjectRef): Promise<Operation> {
    const pool = await this.records.pool(name, project);
    const base = await this.#cloneableBase(pool.base_pool, pool.base_volume, project);
    const busy = (await this.records.desktops(pool.id)).filter(
      (row) => row.state === 'provisioning' || (row.state === 'resetting' && row.operation_id !== null),
    );
    if (busy.length > 0)
      throw new NubisError(
        'DESKTOP_POOL_BUSY',
        `Desktop pool ${name} is readying ${busy.map((row) => row.vm_name).join(', ')}; update its base once that has ended`,
      );
    const { storage, broker, machines } = this.#deps;
    return this.#deps.operations.start(
      'desktop-pool.update-base',
      { type: 'desktop-pool', id: pool.id, name: pool.name, projectId: project.id },
      async (op) => {
        await op.report('snapshot', `Taking ${pool.base_pool}/${pool.snapshot_volume} of ${pool.base_pool}/${pool.base_volume} again`, 0.05);
        await broker.whileDeciding(pool.id, async () => {
          await machines.deleteVolume(pool.base_pool, pool.snapshot_volume, { keepOwner: true });
          await storage.owners.resize(pool.base_pool, pool.snapshot_volume, project, base.sizeBytes);
          await storage.call({ method: 'POST', path: `${volumePath(pool.base_pool, pool.base_volume)}/snapshot`, body: { name: pool.snapshot_volume } });
        });
        await this.#awaitAll(op, await broker.resetFree(pool), 'Resetting the free desktops onto the new snapshot');
        return this.records.poolView(pool);
      },
    );
  }

  /** Lets a user (or an OpenID Connect group) use the pool. */
  async grant(name: string, project: ProjectRef, who: { user?: string; group?: string }): Promise<DesktopPool> {
    const pool = await this.records.pool(name, project);
    const subject = await this.#subject(who);
    await this.#deps.db
      .insertInto('desktop_entitlements')
      .values({ pool_id: pool.id, subject, created_at: new Date().toISOString() })
      .onConflict((oc) => oc.columns(['pool_id', 'subject']).doNothing())
      .execute();
    publishChange(this.#deps.db, 'desktop-pool', 'updated', pool.id);
    return this.records.poolView(pool);
  }

  /**
   * Takes a user's (or group's) access away. A desktop the user holds is taken back at once and
   * reset (also a dedicated one: it is no longer theirs to come back to).
   */
  async revoke(name: string, project: ProjectRef, who: { user?: string; group?: string }): Promise<DesktopPool> {
    const pool = await this.records.pool(name, project);
    const subject = await this.#subject(who);
    const removed = await this.#deps.db.deleteFrom('desktop_entitlements').where('pool_id', '=', pool.id).where('subject', '=', subject).executeTakeFirst();
    if (Number(removed.numDeletedRows) === 0)
      throw new NubisError('DESKTOP_GRANT_NOT_FOUND', `${who.user ?? `group:${who.group}`} has no access to desktop pool ${name} to revoke`);
    if (who.user) await this.#deps.broker.takeBack(pool, subject, who.user, 'access revoked');
    publishChange(this.#deps.db, 'desktop-pool', 'updated', pool.id);
    return this.records.poolView(pool);
  }

  /**
   * Forgets a deleted user in every pool: the desktop they held is taken back and reset (their
   * files do not wait there for whoever gets the name next), and their grants go.
   */
  async forgetUser(userId: string, userName: string): Promise<void> {
    const { db, broker } = this.#deps;
    const held = await db.selectFrom('desktops').select('pool_id').where('assigned_user_id', '=', userId).execute();
    for (const { pool_id } of held) {
      const pool = await this.records.poolById(pool_id);
      if (pool) await broker.takeBack(pool, userId, userName, 'user deleted');
    }
    const granted = await db.deleteFrom('desktop_entitlements').where('subject', '=', userId).returning('pool_id').execute();
    for (const { pool_id } of granted) publishChange(db, 'desktop-pool', 'updated', pool_id);
  }

  async #subject(who: { user?: string; group?: string }): Promise<string> {
    if ((who.user === undefined) === (who.group === undefined)) throw new NubisError('VALIDATION_FAILED', 'Name either a user or a --group, one of them');
    if (who.group) return `group:${who.group}`;
    return (await this.#deps.users.row(who.user!)).id;
  }
}
