/**
 * The records of desktop pools as the API shows them, the names their desktops take, and the
 * audit entries of what the broker does on its own (assignments, connects, leaves, resets): a
 * request's own entry is written by the access hook, but a reset after the grace time has no
 * request, and an assignment is a fact of its own worth finding in the log.
 */
import { appendAuditEntry } from '../audit/audit-store.ts';
import { NubisError } from '../core/errors.ts';
import type { Db } from '../state/database.ts';
import type { DesktopPoolsTable, DesktopsTable } from '../state/schema.ts';
import type { Desktop, DesktopPool } from '../wire/desktop-schemas.ts';

/** The VM of slot `slot` of pool `pool`. */
export function desktopVmName(pool: string, slot: number): string {
  return `${pool}-${slot}`;
}

/** The volume (in the base's storage pool) that is the disk of slot `slot`. */
export function desktopVolumeName(pool: string, slot: number): string {
  return `desktop-${pool}-${slot}`;
}

/** The read-only snapshot of the base that the pool's desktops are cloned from. */
export function desktopSnapshotName(pool: string): string {
  return `desktop-${pool}-base`;
}

/** A desktop's state as a user sees it: the work in progress, or its VM's state. */
export function desktopState(row: DesktopsTable, vmState: string | undefined): string {
  if (row.state !== 'available') return row.state;
  return vmState ?? 'unknown';
}

/** What one broker event records. */
export interface DesktopEvent {
  action:
    | 'desktop.assign'
    | 'desktop.connect'
    | 'desktop.leave'
    | 'desktop.reset'
    | 'desktop.release'
    | 'desktop.console-connect'
    | 'desktop.console-disconnect';
  pool: Pick<DesktopPoolsTable, 'name' | 'project_id'> & { projectName: string };
  desktop: Pick<DesktopsTable, 'vm_name'>;
  /** The user concerned (the one assigned, connecting, leaving, or whose leaving caused the reset). */
  user?: string;
  /** Why (a reset: `left`, `grace`, `broken`; a release: `user deleted`...). */
  reason?: string;
}

/** Appends a broker event to the audit log, in its own transaction. */
export async function recordDesktopEvent(db: Db, event: DesktopEvent): Promise<void> {
  await db.transaction().execute((trx) =>
    appendAuditEntry(trx, {
      ...(event.user ? { user: event.user } : {}),
      projectId: event.pool.project_id,
      project: event.pool.projectName,
      action: event.action,
      method: 'BROKER',
      route: 'desktop-broker',
      resource: { pool: event.pool.name, vm: event.desktop.vm_name },
      ...(event.reason ? { params: { reason: event.reason } } : {}),
      result: 'ok',
    }),
  );
}

/** Reads pool and desktop records and turns them into their API views. */
export class DesktopRecords {
  readonly #db: Db;

  constructor(db: Db) {
    this.#db = db;
  }

  /** Pool `name` of project `projectId`; `DESKTOP_POOL_NOT_FOUND` names the project. */
  async pool(name: string, project: { id: string; name: string }): Promise<DesktopPoolsTable> {
    const row = await this.#db.selectFrom('desktop_pools').selectAll().where('project_id', '=', project.id).where('name', '=', name).executeTakeFirst();
    if (!row) throw new NubisError('DESKTOP_POOL_NOT_FOUND', `No desktop pool ${name} in project ${project.name}; see nubis desktop pool list`);
    return row;
  }

  async poolById(id: string): Promise<DesktopPoolsTable | undefined> {
    return this.#db.selectFrom('desktop_pools').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async projectName(projectId: string): Promise<string> {
    return (await this.#db.selectFrom('projects').select('name').where('id', '=', projectId).executeTakeFirstOrThrow()).name;
  }

  async desktops(poolId: string): Promise<DesktopsTable[]> {
    return this.#db.selectFrom('desktops').selectAll().where('pool_id', '=', poolId).orderBy('slot').execute();
  }

  async desktop(id: string): Promise<DesktopsTable | undefined> {
    return this.#db.selectFrom('desktops').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async desktopOfVm(vmId: string): Promise<DesktopsTable | undefined> {
    return this.#db.selectFrom('desktops').selectAll().where('vm_id', '=', vmId).executeTakeFirst();
  }

  /** The state each VM reports, by VM id. */
  async vmStates(vmIds: string[]): Promise<Map<string, string>> {
    if (vmIds.length === 0) return new Map();
    const rows = await this.#db.selectFrom('vms').select(['id', 'actual_state']).where('id', 'in', vmIds).execute();
    return new Map(rows.map((row) => [row.id, row.actual_state]));
  }

  async userNames(userIds: string[]): Promise<Map<string, string>> {
    if (userIds.length === 0) return new Map();
    const rows = await this.#db.selectFrom('users').select(['id', 'name']).where('id', 'in', userIds).execute();
    return new Map(rows.map((row) => [row.id, row.name]));
  }

  /** Stage and progress of the operations still running among `ids` (a desktop's user may not read operations). */
  async #progress(ids: string[]): Promise<Map<string, { stage: string; fraction: number }>> {
    if (ids.length === 0) return new Map();
    const rows = await this.#db.selectFrom('operations').select(['id', 'stage', 'progress']).where('id', 'in', ids).where('status', '=', 'running').execute();
    return new Map(rows.map((row) => [row.id, { stage: row.stage.slice(0, 256), fraction: Math.min(1, Math.max(0, row.progress)) }]));
  }

  /** The API view of desktops of one pool. */
  async desktopViews(pool: DesktopPoolsTable, rows: DesktopsTable[]): Promise<Desktop[]> {
    const states = await this.vmStates(rows.flatMap((row) => (row.vm_id ? [row.vm_id] : [])));
    const users = await this.userNames(rows.flatMap((row) => (row.assigned_user_id ? [row.assigned_user_id] : [])));
    const work = await this.#progress(rows.flatMap((row) => (row.operation_id ? [row.operation_id] : [])));
    return rows.map((row) => ({
      id: row.id,
      pool: pool.name,
      slot: row.slot,
      vm: row.vm_name,
      ...(row.vm_id ? { vmId: row.vm_id } : {}),
      volume: `${pool.base_pool}/${row.volume}`,
      state: desktopState(row, row.vm_id ? states.get(row.vm_id) : undefined),
      ...(row.assigned_user_id ? { assignedTo: users.get(row.assigned_user_id) ?? row.assigned_user_id } : {}),
      ...(row.assigned_at ? { assignedAt: row.assigned_at } : {}),
      ...(row.connected_at ? { connectedAt: row.connected_at } : {}),
      ...(row.disconnected_at ? { disconnectedAt: row.disconnected_at } : {}),
      ...(row.operation_id ? { operationId: row.operation_id } : {}),
      ...(row.operation_id && work.has(row.operation_id) ? { progress: work.get(row.operation_id) } : {}),
      ...(row.error ? { error: row.error.slice(0, 1000) } : {}),
    }));
  }

  /** The API view of a pool with its desktops and who may use it. */
  async poolView(pool: DesktopPoolsTable): Promise<DesktopPool> {
    const image = await this.#db.selectFrom('images').select('name').where('id', '=', pool.image_id).executeTakeFirst();
    const subjects = await this.#db.selectFrom('desktop_entitlements').select('subject').where('pool_id', '=', pool.id).orderBy('subject').execute();
    const users = await this.userNames(subjects.map((s) => s.subject).filter((s) => !s.startsWith('group:')));
    return {
      id: pool.id,
      name: pool.name,
      project: await this.projectName(pool.project_id),
      image: image?.name ?? pool.image_id,
      base: `${pool.base_pool}/${pool.base_volume}`,
      snapshot: `${pool.base_pool}/${pool.snapshot_volume}`,
      mode: pool.mode,
      size: pool.size,
      spare: pool.spare,
      graceSeconds: pool.grace_seconds,
      cpus: pool.cpus,
      memoryMb: pool.memory_mb,
      ...(pool.network ? { network: pool.network } : {}),
      // By name: the subjects are user ids, whose order says nothing to a reader.
      entitled: subjects.map((s) => (s.subject.startsWith('group:') ? s.subject : (users.get(s.subject) ?? s.subject))).sort(),
      desktops: await this.desktopViews(pool, await this.desktops(pool.id)),
      createdAt: pool.created_at,
    };
  }
}
