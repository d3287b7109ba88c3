/**
 * The trusted-launch migration (issue 14), in its own file because migrations.ts is at its size
 * limit: a project's requirement, and the expected launch digests (control/trusted-launch.ts).
 */
import type { Kysely, Migration } from 'kysely';

export const trustedLaunchMigrations: Record<string, Migration> = {
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
};
