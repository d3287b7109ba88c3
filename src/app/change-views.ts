/**
 * How the change feed builds each resource into its event: the same views the API's GET routes
 * show (EVENTS-CONTRACT: `resource` exactly as the GET shows it). Pools and volumes are seen
 * through the storage node, so the pool routes describe those themselves.
 */
import type { AppServices } from '../api/app.ts';
import { vmViews } from '../control/vm-view.ts';
import { type ChangeFeed, type ChangeProject, type DescribedResource, publishChange } from '../events/change-feed.ts';

/** The project of `projectId`, as events name it. */
async function projectOf(services: Pick<AppServices, 'db'>, projectId: string): Promise<ChangeProject> {
  const row = await services.db.selectFrom('projects').select('name').where('id', '=', projectId).executeTakeFirst();
  return { id: projectId, name: row?.name ?? projectId };
}

/** Registers the views of VMs, hosts, networks, operations, migrations and backup schedules with `feed`. */
export function describeResources(feed: ChangeFeed, services: AppServices): void {
  const { db } = services;
  // VMs and operations change many times a second in a busy cluster: their events are built in
  // batches, a few queries for all the VMs (or operations) whose events wait together.
  feed.describeMany('vm', async (ids) => {
    const rows = await db.selectFrom('vms').selectAll().where('id', 'in', ids).execute();
    const views = await vmViews(db, rows);
    const described = new Map<string, DescribedResource>();
    for (const [index, row] of rows.entries()) {
      described.set(row.id, { name: row.name, project: { id: row.project_id, name: views[index].project }, resource: views[index] });
    }
    return described;
  });
  feed.describe('host', async (id) => {
    const host = await services.hosts.get(id).catch(() => undefined);
    return host && { name: host.name, project: null, resource: host };
  });
  feed.describe('network', async (id) => {
    const row = await db.selectFrom('networks').select(['project_id']).where('id', '=', id).executeTakeFirst();
    if (!row) return undefined;
    const project = await projectOf(services, row.project_id);
    const network = await services.networks.get(id, project.name);
    return { name: network.name, project, resource: network };
  });
  feed.describeMany('operation', async (ids) => {
    const described = new Map<string, DescribedResource>();
    for (const [id, { operation, project }] of await services.operations.getMany(ids)) {
      described.set(id, { name: operation.kind, project, resource: operation });
    }
    return described;
  });
  feed.describe('migration', async (id) => {
    const row = await db
      .selectFrom('vm_migrations')
      .innerJoin('vms', 'vms.id', 'vm_migrations.vm_id')
      .select(['vm_migrations.vm_id', 'vms.name', 'vms.project_id'])
      .where('vm_migrations.id', '=', id)
      .executeTakeFirst();
    if (!row) return undefined;
    const entry = (await services.migrations.history(row.vm_id)).find((migration) => migration.id === id);
    return entry && { name: row.name, project: await projectOf(services, row.project_id), resource: { vm: row.name, ...entry } };
  });
  // A schedule's event (its id is its VM's) follows each run: a failed one shows in `lastRun`.
  feed.describe('backup-schedule', async (id) => {
    const described = await services.backupSchedules.describe(id);
    return described && { name: described.name, project: await projectOf(services, described.projectId), resource: described.schedule };
  });
  describeDesktops(feed, services);
}

/**
 * Desktops and desktop pools as their GET shows them (a desktop with its pool's project), and a
 * desktop's event whenever its VM or the operation readying it changes: its state is theirs, and
 * its user, who may not read VMs or operations, follows it through the desktop.
 */
function describeDesktops(feed: ChangeFeed, services: AppServices): void {
  const { db } = services;
  const records = services.desktopPools.records;
  feed.describe('desktop', async (id) => {
    const row = await records.desktop(id);
    const pool = row && (await records.poolById(row.pool_id));
    if (!row || !pool) return undefined;
    const project = await projectOf(services, pool.project_id);
    const [desktop] = await records.desktopViews(pool, [row]);
    return { name: row.vm_name, project, resource: { ...desktop, project: project.name }, ...(row.assigned_user_id ? { users: [row.assigned_user_id] } : {}) };
  });
  feed.describe('desktop-pool', async (id) => {
    const pool = await records.poolById(id);
    if (!pool) return undefined;
    return { name: pool.name, project: await projectOf(services, pool.project_id), resource: await records.poolView(pool) };
  });
  // A desktop's event follows its VM's and its readying operation's: the ids of a burst's events
  // are looked up together, one query for all of them.
  const changed = { vms: new Set<string>(), operations: new Set<string>() };
  let lookupQueued = false;
  feed.subscribe((change) => {
    const { type, id } = change.event;
    if (type !== 'vm' && type !== 'operation') return;
    (type === 'vm' ? changed.vms : changed.operations).add(id);
    if (lookupQueued) return;
    lookupQueued = true;
    setImmediate(() => {
      lookupQueued = false;
      const vmIds = [...changed.vms];
      const operationIds = [...changed.operations];
      changed.vms.clear();
      changed.operations.clear();
      void db
        .selectFrom('desktops')
        .select('id')
        .where((where) =>
          where.or([where('vm_id', 'in', vmIds.length > 0 ? vmIds : ['']), where('operation_id', 'in', operationIds.length > 0 ? operationIds : [''])]),
        )
        .execute()
        .then((rows) => {
          for (const row of rows) publishChange(db, 'desktop', 'updated', row.id);
        })
        .catch(() => undefined);
    });
  });
}
