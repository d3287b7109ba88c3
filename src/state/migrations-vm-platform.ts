/**
 * The migrations of what a VM runs on and as (issue 14), in their own file because migrations.ts
 * is at its size limit: trusted launch (a project's requirement, and the expected launch digests,
 * control/trusted-launch.ts), and the unprivileged user each VM runs as (compute/vm-user.ts).
 */
import { type Kysely, type Migration, sql } from 'kysely';
import { VM_UID_FIRST } from '../compute/vm-user.ts';
import { createHostsPlacementTrigger } from './placement-trigger.ts';

export const vmPlatformMigrations: Record<string, Migration> = {
  '0019-trusted-launch': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .alterTable('projects')
        .addColumn('require_trusted_launch', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
      // One expected digest per scope (an image, the hosts' software, one VM) and component.
      await db.schema
        .createTable('launch_references')
        .addColumn('scope', 'text', (c) => c.notNull())
        .addColumn('component', 'text', (c) => c.notNull())
        .addColumn('sha256', 'text', (c) => c.notNull())
        .addColumn('path', 'text', (c) => c.notNull())
        .addColumn('recorded_at', 'text', (c) => c.notNull())
        .addColumn('recorded_from_vm', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('launch_references_pk', ['scope', 'component'])
        .execute();
    },
  },
  '0020-vm-users': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('vms').addColumn('unix_uid', 'integer').execute();
      // VMs created before get a uid each, in their spec too (what hosts are sent).
      await sql`UPDATE vms SET unix_uid = ${sql.lit(VM_UID_FIRST)} + rowid - 1, spec = json_set(spec, '$.unixUid', ${sql.lit(VM_UID_FIRST)} + rowid - 1)`.execute(
        db,
      );
      await db.schema.createIndex('vms_unix_uid').unique().on('vms').column('unix_uid').execute();
    },
  },
  '0021-host-isolation': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('hosts').addColumn('isolation', 'text').execute();
      await createHostsPlacementTrigger(db, '0021-host-isolation');
    },
  },
  '0023-migration-tls': {
    /** The cluster's rule for live migration over TLS: optional (default) or required. */
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .alterTable('cluster_settings')
        .addColumn('migration_tls', 'text', (c) => c.notNull().defaultTo('optional'))
        .execute();
    },
  },
};
