/**
 * The migration of backups (issue 15): the control plane's record of each backup in the backup
 * store (what it holds, what it cost), and each project's backup key, wrapped by the control
 * plane's key-encryption key (never stored in the clear, never on a host).
 */
import type { Kysely, Migration } from 'kysely';

export const backupMigrations: Record<string, Migration> = {
  '0024-backups': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('backup_keys')
        .addColumn('project_id', 'text', (c) => c.primaryKey().references('projects.id').onDelete('cascade'))
        .addColumn('kek_id', 'text', (c) => c.notNull())
        .addColumn('wrapped', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('backups')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('project_id', 'text', (c) => c.notNull().references('projects.id'))
        // The VM may be deleted later: its backups stay, known by the VM's name.
        .addColumn('vm_id', 'text')
        .addColumn('vm_name', 'text', (c) => c.notNull())
        .addColumn('vm_state', 'text', (c) => c.notNull())
        .addColumn('disks', 'text', (c) => c.notNull())
        .addColumn('size_bytes', 'integer', (c) => c.notNull())
        .addColumn('sent_bytes', 'integer', (c) => c.notNull())
        .addColumn('stored_bytes', 'integer', (c) => c.notNull())
        .addColumn('duration_ms', 'integer', (c) => c.notNull())
        .addColumn('settings', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('backups_project_vm').on('backups').columns(['project_id', 'vm_name', 'created_at']).execute();
    },
  },
  '0025-backup-audits': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .alterTable('backups')
        .addColumn('catalog_files', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
      await db.schema
        .alterTable('backups')
        .addColumn('catalog_notes', 'text', (c) => c.notNull().defaultTo('[]'))
        .execute();
      // Each proof-of-retrievability challenge of a backup and its outcome (control/backup-audits.ts).
      await db.schema
        .createTable('backup_audits')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('backup_id', 'text', (c) => c.notNull().references('backups.id').onDelete('cascade'))
        .addColumn('at', 'text', (c) => c.notNull())
        .addColumn('blocks', 'integer', (c) => c.notNull())
        .addColumn('passed', 'integer', (c) => c.notNull())
        .addColumn('proof_bytes', 'integer', (c) => c.notNull())
        .addColumn('store_ms', 'integer', (c) => c.notNull())
        .addColumn('verify_ms', 'integer', (c) => c.notNull())
        .addColumn('error', 'text')
        .execute();
      await db.schema.createIndex('backup_audits_backup').on('backup_audits').columns(['backup_id', 'at']).execute();
    },
  },
};
