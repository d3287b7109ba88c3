/**
 * Backup schedules, as a Proxmox user knows them from vzdump jobs and Proxmox Backup Server's
 * prune options: `nubis backup schedule VM --every 1h --keep-last 24 --keep-daily 7` makes or
 * replaces the VM's one schedule; `list`, `show` and `delete` (routes/backup-schedules.ts). The
 * scheduler (backup-scheduler.ts) runs them; this file keeps their settings and shows them.
 *
 * Times: a new schedule first runs one interval after it is made, then keeps that phase (made at
 * 02:10 with --every 1d, it runs at about 02:10 UTC each day). Replacing a schedule with the same
 * interval keeps its next run; with another interval the next run is one new interval after the
 * last run (or the schedule's making), at once if that is past.
 */
import { auditedTransaction } from '../audit/audit-context.ts';
import { NubisError } from '../core/errors.ts';
import { publishChange } from '../events/change-feed.ts';
import type { Db } from '../state/database.ts';
import type { BackupSchedulesTable } from '../state/schema.ts';
import type { BackupRetention, BackupSchedule, BackupScheduleRequest } from '../wire/backup-schemas.ts';
import { projectIdByName } from './projects.ts';
import { refuseTemplate } from './vm-template-rules.ts';
import type { VmService } from './vms.ts';

const UNIT_SECONDS = { m: 60, h: 3_600, d: 86_400, w: 604_800 } as const;
/**
 * The shortest interval, for tests and small VMs: a run never starts beside the one before it,
 * so a backup that takes longer than the interval only makes the runs back to back.
 */
const MIN_INTERVAL_SECONDS = 60;
const MAX_INTERVAL_SECONDS = 366 * 86_400;

/** The retention rules and the columns that keep them. */
const RULE_COLUMNS = {
  keepLast: 'keep_last',
  keepHourly: 'keep_hourly',
  keepDaily: 'keep_daily',
  keepWeekly: 'keep_weekly',
  keepMonthly: 'keep_monthly',
  keepYearly: 'keep_yearly',
} as const satisfies Record<keyof BackupRetention, keyof BackupSchedulesTable>;
const RULES = Object.keys(RULE_COLUMNS) as Array<keyof BackupRetention>;
type RuleColumns = Pick<BackupSchedulesTable, (typeof RULE_COLUMNS)[keyof BackupRetention]>;

/** The seconds of an interval such as 15m, 1h, 6h, 1d or 2w, from 1m to 366d. */
export function intervalSecondsOf(every: string): number {
  const match = /^([1-9][0-9]{0,5})([mhdw])$/.exec(every);
  const seconds = match ? Number(match[1]) * UNIT_SECONDS[match[2] as keyof typeof UNIT_SECONDS] : Number.NaN;
  if (!(seconds >= MIN_INTERVAL_SECONDS && seconds <= MAX_INTERVAL_SECONDS))
    throw new NubisError(
      'BACKUP_SCHEDULE_INTERVAL_INVALID',
      `Interval ${every.slice(0, 32)} is not a whole number of minutes, hours, days or weeks from 1m to 366d: write e.g. 15m, 1h, 6h or 1d`,
    );
  return seconds;
}

/** An interval written in its largest whole unit: 3600 is 1h, 5400 is 90m. */
export function everyOf(seconds: number): string {
  for (const unit of ['w', 'd', 'h'] as const) if (seconds % UNIT_SECONDS[unit] === 0) return `${seconds / UNIT_SECONDS[unit]}${unit}`;
  return `${Math.round(seconds / 60)}m`;
}

/** The first time of the schedule's phase (`scheduledMs` plus whole intervals) after `nowMs`. */
export function nextSlotAfter(scheduledMs: number, intervalMs: number, nowMs: number): number {
  if (scheduledMs > nowMs) return scheduledMs;
  return scheduledMs + (Math.floor((nowMs - scheduledMs) / intervalMs) + 1) * intervalMs;
}

/** The retention rules a schedule row keeps (the rules it does not use left out). */
export function rulesOf(row: BackupSchedulesTable): BackupRetention {
  const rules: BackupRetention = {};
  for (const rule of RULES) {
    const value = row[RULE_COLUMNS[rule]];
    if (value !== null) rules[rule] = value;
  }
  return rules;
}

/** A schedule as the API shows it. */
export function scheduleViewOf(row: BackupSchedulesTable, vmName: string): BackupSchedule {
  const ended = row.last_status && row.last_run_at && row.last_finished_at;
  return {
    vm: vmName,
    every: everyOf(row.interval_seconds),
    intervalSeconds: row.interval_seconds,
    retention: rulesOf(row),
    nextRunAt: row.next_run_at,
    running: row.run_started_at ? { since: row.run_started_at, operation: row.run_operation_id } : null,
    lastRun: ended
      ? {
          status: row.last_status!,
          startedAt: row.last_run_at!,
          finishedAt: row.last_finished_at!,
          operation: row.last_operation_id,
          backup: row.last_backup_id,
          pruned: row.last_pruned ?? 0,
          error: row.last_error === null ? null : { code: row.last_error_code ?? 'INTERNAL_ERROR', message: row.last_error },
        }
      : null,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

export class BackupSchedules {
  readonly #db: Db;
  readonly #vms: Pick<VmService, 'row'>;
  readonly #now: () => number;

  /** `options.now`: milliseconds since the epoch (tests pass their own clock; default `Date.now`). */
  constructor(deps: { db: Db; vms: Pick<VmService, 'row'> }, options: { now?: () => number } = {}) {
    this.#db = deps.db;
    this.#vms = deps.vms;
    this.#now = options.now ?? Date.now;
  }

  /** The project's schedules, by VM name. */
  async list(project?: string): Promise<BackupSchedule[]> {
    const projectId = await projectIdByName(this.#db, project);
    const rows = await this.#db
      .selectFrom('backup_schedules')
      .innerJoin('vms', 'vms.id', 'backup_schedules.vm_id')
      .selectAll('backup_schedules')
      .select('vms.name as vm_name')
      .where('vms.project_id', '=', projectId)
      .orderBy('vms.name')
      .execute();
    return rows.map((row) => scheduleViewOf(row, row.vm_name));
  }

  /** The schedule of VM `ref`, or BACKUP_SCHEDULE_NOT_FOUND. */
  async show(ref: string, project?: string): Promise<BackupSchedule> {
    const vm = await this.#vms.row(ref, project);
    const row = await this.#db.selectFrom('backup_schedules').selectAll().where('vm_id', '=', vm.id).executeTakeFirst();
    if (!row) throw notFound(vm.name);
    return scheduleViewOf(row, vm.name);
  }

  /** A schedule by its VM's id, with the project it is in: how the change feed shows it. */
  async describe(vmId: string): Promise<{ name: string; projectId: string; schedule: BackupSchedule } | undefined> {
    const row = await this.#db
      .selectFrom('backup_schedules')
      .innerJoin('vms', 'vms.id', 'backup_schedules.vm_id')
      .selectAll('backup_schedules')
      .select(['vms.name as vm_name', 'vms.project_id'])
      .where('backup_schedules.vm_id', '=', vmId)
      .executeTakeFirst();
    return row && { name: row.vm_name, projectId: row.project_id, schedule: scheduleViewOf(row, row.vm_name) };
  }

  /** Makes or replaces the schedule of VM `ref` (see the file header for its next run); `created` tells which. */
  async set(ref: string, request: BackupScheduleRequest, project?: string): Promise<{ schedule: BackupSchedule; created: boolean }> {
    const vm = await this.#vms.row(ref, project);
    refuseTemplate(vm, 'be backed up on a schedule');
    const intervalSeconds = intervalSecondsOf(request.every);
    const retention = request.retention ?? {};
    const rules = {} as RuleColumns;
    for (const rule of RULES) rules[RULE_COLUMNS[rule]] = retention[rule] ?? null;
    const now = this.#now();
    const at = new Date(now).toISOString();
    const created = await auditedTransaction(this.#db, async (trx) => {
      const existing = await trx.selectFrom('backup_schedules').selectAll().where('vm_id', '=', vm.id).executeTakeFirst();
      if (!existing) {
        const next = new Date(now + intervalSeconds * 1000).toISOString();
        await trx
          .insertInto('backup_schedules')
          .values({ ...emptyRun, vm_id: vm.id, interval_seconds: intervalSeconds, ...rules, next_run_at: next, created_at: at, updated_at: at })
          .execute();
        return true;
      }
      const base = Date.parse(existing.last_run_at ?? existing.created_at);
      const next = existing.interval_seconds === intervalSeconds ? existing.next_run_at : new Date(Math.max(base + intervalSeconds * 1000, now)).toISOString();
      await trx
        .updateTable('backup_schedules')
        .set({ interval_seconds: intervalSeconds, ...rules, next_run_at: next, updated_at: at })
        .where('vm_id', '=', vm.id)
        .execute();
      return false;
    });
    publishChange(this.#db, 'backup-schedule', created ? 'created' : 'updated', vm.id);
    return { schedule: await this.show(vm.id, project), created };
  }

  /** Deletes the schedule of VM `ref`. A run under way ends as it would have, but prunes nothing. */
  async remove(ref: string, project?: string): Promise<{ deleted: string }> {
    const vm = await this.#vms.row(ref, project);
    const result = await auditedTransaction(this.#db, (trx) => trx.deleteFrom('backup_schedules').where('vm_id', '=', vm.id).executeTakeFirst());
    if (Number(result.numDeletedRows) === 0) throw notFound(vm.name);
    publishChange(this.#db, 'backup-schedule', 'deleted', vm.id, { name: vm.name, projectId: vm.project_id });
    return { deleted: vm.name };
  }
}

/** A schedule's run columns before its first run. */
const emptyRun = {
  run_started_at: null,
  run_operation_id: null,
  last_run_at: null,
  last_finished_at: null,
  last_status: null,
  last_operation_id: null,
  last_backup_id: null,
  last_pruned: null,
  last_error_code: null,
  last_error: null,
} satisfies Partial<BackupSchedulesTable>;

function notFound(vm: string): NubisError {
  return new NubisError('BACKUP_SCHEDULE_NOT_FOUND', `VM ${vm} has no backup schedule; make one with nubis backup schedule ${vm} --every 1d`);
}
