/**
 * The migration of backup schedules (control/backup-schedules.ts): at most one schedule per VM,
 * gone with its VM (ON DELETE CASCADE), with its interval, its retention rules (a rule left NULL
 * is not used), when it runs next, the run under way (so that a restart neither loses it nor
 * starts a second one beside it), and the outcome of the last run that ended.
 */
import type { Kysely, Migration } from 'kysely';

export const backupScheduleMigrations: Record<string, Migration> = {
  '0026-backup-schedules': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('backup_schedules')
        .addColumn('vm_id', 'text', (c) => c.primaryKey().references('vms.id').onDelete('cascade'))
        .addColumn('interval_seconds', 'integer', (c) => c.notNull())
        .addColumn('keep_last', 'integer')
        .addColumn('keep_hourly', 'integer')
        .addColumn('keep_daily', 'integer')
        .addColumn('keep_weekly', 'integer')
        .addColumn('keep_monthly', 'integer')
        .addColumn('keep_yearly', 'integer')
        .addColumn('next_run_at', 'text', (c) => c.notNull())
        // The run under way: set when it is claimed, cleared when its outcome is recorded.
        .addColumn('run_started_at', 'text')
        .addColumn('run_operation_id', 'text')
        // The last run that ended.
        .addColumn('last_run_at', 'text')
        .addColumn('last_finished_at', 'text')
        .addColumn('last_status', 'text')
        .addColumn('last_operation_id', 'text')
        .addColumn('last_backup_id', 'text')
        .addColumn('last_pruned', 'integer')
        .addColumn('last_error_code', 'text')
        .addColumn('last_error', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('backup_schedules_due').on('backup_schedules').columns(['next_run_at']).execute();
    },
  },
};
