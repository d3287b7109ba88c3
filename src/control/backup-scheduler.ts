/**
 * The backup scheduler of the control plane: every `tickMs` it starts a backup
 * (BackupService.create, the same operation as `nubis backup create`) of each VM whose schedule
 * is due, and when that operation has succeeded, deletes the VM's backups that the schedule's
 * retention rules do not keep (backup-prune.ts, as Proxmox Backup Server prunes). Backups taken
 * by hand are the VM's backups too and are pruned with the scheduled ones, as PBS prunes a
 * backup group whoever made its snapshots. A backup that fails prunes nothing.
 *
 * What survives a restart is in `backup_schedules`: the next run, and the run under way (claimed
 * by one UPDATE, so one schedule never has two runs at once, also across two schedulers). At its
 * start the scheduler takes up the runs a stopped control plane left: their operation's record
 * (failed as interrupted, or succeeded) says how they ended, and a succeeded one is pruned then.
 * Runs missed while it was down are not caught up one by one: a due schedule runs once, then
 * keeps its phase.
 *
 * Every outcome is recorded in the schedule (`lastRun`) and published on the change feed as an
 * update of the schedule (GET /v1/events, type `backup-schedule`), so a failed run is seen where
 * every other change is, whether the backup failed or could not even start (the VM busy).
 *
 * Like vzdump, which backs up a node's VMs one after another, at most `runsPerHost` scheduled
 * backups run at once on one host; the others wait for the next rounds, still due.
 */
import { toWireError } from '../core/error-codes.ts';
import { NubisError, isNubisError, messageOf } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { publishChange } from '../events/change-feed.ts';
import type { Db } from '../state/database.ts';
import type { BackupsTable } from '../state/schema.ts';
import type { Operation } from '../wire/schemas.ts';
import { backupsToPrune } from './backup-prune.ts';
import { nextSlotAfter, rulesOf } from './backup-schedules.ts';
import type { BackupService } from './backups.ts';
import type { OperationManager } from './operations.ts';

export interface BackupSchedulerOptions {
  /** Milliseconds since the epoch; tests pass their own clock. Default `Date.now`. */
  now?: () => number;
  /** How often due schedules are looked for. Default 15 s (a schedule runs at most this late). */
  tickMs?: number;
  /** Scheduled backups running at once on one host, at most. Default 1. */
  runsPerHost?: number;
  logger?: Logger;
}

/** A due schedule, with what starting its backup needs. */
interface DueSchedule {
  vm_id: string;
  interval_seconds: number;
  next_run_at: string;
  host_id: string;
  project: string;
}

/** How a run ended, as the schedule records it. */
interface RunOutcome {
  status: 'succeeded' | 'failed';
  operationId: string | null;
  backupId?: string | null;
  pruned?: number;
  error?: { code: string; message: string };
}

export class BackupScheduler {
  readonly #db: Db;
  readonly #backups: Pick<BackupService, 'create' | 'remove'>;
  readonly #operations: Pick<OperationManager, 'wait'>;
  readonly #now: () => number;
  readonly #tickMs: number;
  readonly #runsPerHost: number;
  readonly #logger?: Logger;
  #timer?: NodeJS.Timeout;
  #ticking?: Promise<void>;
  #stopped = false;
  /** The clock at the last round: one earlier than it means the clock went back. */
  #lastNow = Number.NEGATIVE_INFINITY;
  /** The runs whose operation is being followed, by VM id. */
  readonly #following = new Map<string, Promise<void>>();

  constructor(
    deps: { db: Db; backups: Pick<BackupService, 'create' | 'remove'>; operations: Pick<OperationManager, 'wait'> },
    options: BackupSchedulerOptions = {},
  ) {
    this.#db = deps.db;
    this.#backups = deps.backups;
    this.#operations = deps.operations;
    this.#now = options.now ?? Date.now;
    this.#tickMs = options.tickMs ?? 15_000;
    this.#runsPerHost = options.runsPerHost ?? 1;
    this.#logger = options.logger;
  }

  /** Takes up the runs a stopped control plane left (see the file header), then starts the timer. */
  async start(): Promise<void> {
    this.#stopped = false;
    await this.#takeUpRuns();
    this.#timer = setInterval(() => void this.tick(), this.#tickMs);
    this.#timer.unref();
  }

  /** Stops the timer. Runs under way go on; the next start records how they ended. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    await this.#ticking;
  }

  /** Resolves once every run followed so far has recorded its outcome (tests). */
  async settled(): Promise<void> {
    while (this.#following.size > 0) await Promise.all(this.#following.values());
  }

  /** One round: starts the backups of the schedules that are due (the timer calls it; tests too). */
  tick(): Promise<void> {
    this.#ticking ??= this.#round()
      .catch((error: unknown) => this.#logger?.warn({ error: messageOf(error) }, 'backup scheduler round failed'))
      .finally(() => {
        this.#ticking = undefined;
      });
    return this.#ticking;
  }

  async #round(): Promise<void> {
    const now = this.#now();
    if (now < this.#lastNow) await this.#replanAfterClockWentBack(now);
    this.#lastNow = now;
    const due: DueSchedule[] = await this.#db
      .selectFrom('backup_schedules')
      .innerJoin('vms', 'vms.id', 'backup_schedules.vm_id')
      .innerJoin('projects', 'projects.id', 'vms.project_id')
      .select(['backup_schedules.vm_id', 'backup_schedules.interval_seconds', 'backup_schedules.next_run_at', 'vms.host_id', 'projects.name as project'])
      .where('backup_schedules.next_run_at', '<=', new Date(now).toISOString())
      .where('backup_schedules.run_started_at', 'is', null)
      .orderBy('backup_schedules.next_run_at')
      .execute();
    if (due.length === 0) return;
    const running = await this.#runsByHost();
    for (const schedule of due) {
      if (this.#stopped) return;
      const onHost = running.get(schedule.host_id) ?? 0;
      if (onHost >= this.#runsPerHost) continue;
      if (await this.#run(schedule, now)) running.set(schedule.host_id, onHost + 1);
    }
  }

  /** Scheduled runs under way, by the host of their VM. */
  async #runsByHost(): Promise<Map<string, number>> {
    const rows = await this.#db
      .selectFrom('backup_schedules')
      .innerJoin('vms', 'vms.id', 'backup_schedules.vm_id')
      .select((eb) => ['vms.host_id', eb.fn.countAll<number>().as('runs')])
      .where('backup_schedules.run_started_at', 'is not', null)
      .groupBy('vms.host_id')
      .execute();
    return new Map(rows.map((row) => [row.host_id, Number(row.runs)]));
  }

  /**
   * Claims the schedule's run (none under way, still due as read) and moves its next run on by
   * whole intervals past now, then starts the backup. True when a backup started.
   */
  async #run(schedule: DueSchedule, now: number): Promise<boolean> {
    const next = nextSlotAfter(Date.parse(schedule.next_run_at), schedule.interval_seconds * 1000, now);
    const claimed = await this.#db
      .updateTable('backup_schedules')
      .set({ run_started_at: new Date(now).toISOString(), run_operation_id: null, next_run_at: new Date(next).toISOString() })
      .where('vm_id', '=', schedule.vm_id)
      .where('run_started_at', 'is', null)
      .where('next_run_at', '=', schedule.next_run_at)
      .executeTakeFirst();
    // Replaced, deleted or claimed by another scheduler since it was read.
    if (Number(claimed.numUpdatedRows) !== 1) return false;
    publishChange(this.#db, 'backup-schedule', 'updated', schedule.vm_id);
    let operation: Operation;
    try {
      operation = await this.#backups.create(schedule.vm_id, schedule.project);
    } catch (error) {
      await this.#record(schedule.vm_id, { status: 'failed', operationId: null, error: toWireError(error).body });
      return false;
    }
    await this.#db.updateTable('backup_schedules').set({ run_operation_id: operation.id }).where('vm_id', '=', schedule.vm_id).execute();
    this.#follow(schedule.vm_id, schedule.project, operation.id);
    return true;
  }

  /** Waits for the run's operation, then prunes (when it succeeded) and records how it ended. */
  #follow(vmId: string, project: string, operationId: string): void {
    const followed = (async () => {
      let final: Operation;
      try {
        final = await this.#operations.wait(operationId);
      } catch (error) {
        // Its record gone: the run is over all the same, or the schedule would never run again.
        return this.#record(vmId, { status: 'failed', operationId, error: toWireError(error).body });
      }
      // A stopping control plane leaves the run marked: the next start takes it up from the operation's record.
      if (this.#stopped) return;
      if (final.status !== 'succeeded') {
        const error = final.error ?? { code: 'OPERATION_CANCELLED', message: `Operation ${operationId} ${final.status}` };
        return this.#record(vmId, { status: 'failed', operationId, error });
      }
      const backupId = (final.result as { id?: string } | undefined)?.id ?? null;
      try {
        const pruned = await this.#prune(vmId, project);
        await this.#record(vmId, { status: 'succeeded', operationId, backupId, pruned });
      } catch (error) {
        const pruned = (error as { pruned?: number }).pruned ?? 0;
        await this.#record(vmId, { status: 'failed', operationId, backupId, pruned, error: toWireError(error).body });
      }
    })()
      .catch((error: unknown) => this.#logger?.error({ vm: vmId, error: messageOf(error) }, 'recording a scheduled backup failed'))
      .finally(() => this.#following.delete(vmId));
    this.#following.set(vmId, followed);
  }

  /**
   * Deletes the VM's backups (scheduled or not) that the schedule's rules, as they are now, do
   * not keep; returns how many. One that cannot be deleted does not stop the others: the error
   * names the first, and says how many went.
   */
  async #prune(vmId: string, project: string): Promise<number> {
    const schedule = await this.#db.selectFrom('backup_schedules').selectAll().where('vm_id', '=', vmId).executeTakeFirst();
    // Deleted while the backup ran: its rules went with it.
    if (!schedule) return 0;
    // By the VM's id, not its name: the backups of an earlier VM of the same name are not this schedule's.
    const rows: Pick<BackupsTable, 'id' | 'created_at'>[] = await this.#db
      .selectFrom('backups')
      .select(['id', 'created_at'])
      .where('vm_id', '=', vmId)
      .execute();
    const doomed = backupsToPrune(
      rows.map((row) => ({ id: row.id, createdAt: row.created_at })),
      rulesOf(schedule),
      this.#now(),
    );
    let pruned = 0;
    const failures: Array<{ id: string; error: unknown }> = [];
    for (const backup of doomed) {
      try {
        await this.#backups.remove(backup.id, project);
        pruned += 1;
      } catch (error) {
        // Deleted by hand meanwhile: gone all the same.
        if (!isNubisError(error, 'BACKUP_NOT_FOUND')) failures.push({ id: backup.id, error });
      }
    }
    if (failures.length > 0) {
      const [first] = failures;
      throw Object.assign(
        new NubisError(
          'BACKUP_PRUNE_FAILED',
          `Retention deleted ${pruned} of ${doomed.length} backups; ${failures.length} could not be deleted, ${first.id}: ${messageOf(first.error)}`,
          { cause: first.error },
        ),
        { pruned },
      );
    }
    return pruned;
  }

  /** Records how the run under way ended, and publishes the schedule's update. */
  async #record(vmId: string, outcome: RunOutcome): Promise<void> {
    await this.#db
      .updateTable('backup_schedules')
      .set((eb) => ({
        // SQL reads every value of the row as it was before the update: this is the run's start.
        last_run_at: eb.ref('run_started_at'),
        last_finished_at: new Date(this.#now()).toISOString(),
        last_status: outcome.status,
        last_operation_id: outcome.operationId,
        last_backup_id: outcome.backupId ?? null,
        last_pruned: outcome.pruned ?? 0,
        last_error_code: outcome.error?.code ?? null,
        last_error: outcome.error?.message ?? null,
        run_started_at: null,
        run_operation_id: null,
      }))
      .where('vm_id', '=', vmId)
      .where('run_started_at', 'is not', null)
      .execute();
    publishChange(this.#db, 'backup-schedule', 'updated', vmId);
    if (outcome.error)
      this.#logger?.warn({ vm: vmId, code: outcome.error.code, operation: outcome.operationId }, `scheduled backup failed: ${outcome.error.message}`);
  }

  /** The runs a stopped control plane left under way: followed from their operation's record. */
  async #takeUpRuns(): Promise<void> {
    await this.#replanAfterClockWentBack(this.#now());
    const left = await this.#db
      .selectFrom('backup_schedules')
      .innerJoin('vms', 'vms.id', 'backup_schedules.vm_id')
      .innerJoin('projects', 'projects.id', 'vms.project_id')
      .select(['backup_schedules.vm_id', 'backup_schedules.run_operation_id', 'projects.name as project'])
      .where('backup_schedules.run_started_at', 'is not', null)
      .execute();
    for (const run of left) {
      if (this.#following.has(run.vm_id)) continue;
      if (run.run_operation_id) this.#follow(run.vm_id, run.project, run.run_operation_id);
      else
        await this.#record(run.vm_id, {
          status: 'failed',
          operationId: null,
          error: { code: 'OPERATION_INTERRUPTED', message: 'The control plane stopped before the scheduled backup started' },
        });
    }
  }

  /**
   * A next run more than one interval ahead can only come of a clock that went back (a next run
   * is never set further than one interval past its now): it is set one interval from now, so a
   * clock put back a day does not hold backups back a day.
   */
  async #replanAfterClockWentBack(now: number): Promise<void> {
    const ahead = await this.#db
      .selectFrom('backup_schedules')
      .select(['vm_id', 'interval_seconds', 'next_run_at'])
      .where('next_run_at', '>', new Date(now).toISOString())
      .execute();
    for (const row of ahead) {
      if (Date.parse(row.next_run_at) - now <= row.interval_seconds * 1000) continue;
      await this.#db
        .updateTable('backup_schedules')
        .set({ next_run_at: new Date(now + row.interval_seconds * 1000).toISOString() })
        .where('vm_id', '=', row.vm_id)
        .where('next_run_at', '=', row.next_run_at)
        .execute();
      this.#logger?.warn({ vm: row.vm_id, was: row.next_run_at }, 'the clock went back: backup schedule replanned one interval from now');
    }
  }
}
