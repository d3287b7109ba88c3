/**
 * The migration of VM snapshots, templates and clones (issue 15): a VM's snapshots are the
 * control plane's record (the host keeps only their contents, host/vm-snapshot-control.ts), so
 * they survive an agent restart and go with their VM (ON DELETE CASCADE); a template is a VM
 * that never starts again, and a linked clone names the template whose disks back its own.
 */
import type { Kysely, Migration } from 'kysely';

export const vmSnapshotMigrations: Record<string, Migration> = {
  '0022-vm-snapshots': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('vm_snapshots')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('vm_id', 'text', (c) => c.notNull().references('vms.id').onDelete('cascade'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('with_memory', 'integer', (c) => c.notNull())
        .addColumn('memory_bytes', 'integer')
        .addColumn('disks', 'text', (c) => c.notNull())
        .addColumn('vm_state', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('vm_snapshots_vm_name', ['vm_id', 'name'])
        .execute();
      await db.schema
        .alterTable('vms')
        .addColumn('template', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
      await db.schema
        .alterTable('vms')
        .addColumn('linked_to', 'text', (c) => c.references('vms.id'))
        .execute();
    },
  },
};
