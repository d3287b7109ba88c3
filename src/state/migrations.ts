/**
 * Schema migrations, applied in order at start. A released migration never changes: a new
 * change is a new entry. Kysely's Migrator records which ran in its own table.
 */
import { createHash } from 'node:crypto';
import { sql, type Kysely, type Migration, type MigrationProvider } from 'kysely';
import { vmPlatformMigrations } from './migrations-vm-platform.ts';
import { vmSnapshotMigrations } from './migrations-vm-snapshots.ts';
import { backupMigrations } from './migrations-backups.ts';
import { backupScheduleMigrations } from './migrations-backup-schedules.ts';
import { changedAny, createHostsPlacementTrigger, PLACEMENT_BUMP } from './placement-trigger.ts';

const migrations: Record<string, Migration> = {
  '0001-initial': {
    /** Size: the first schema, every table at once; a released migration never changes. */
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('projects')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('tokens')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('secret_sha256', 'text', (c) => c.notNull().unique())
        .addColumn('role', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('hosts')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('endpoint', 'text', (c) => c.notNull())
        .addColumn('agent_token', 'text', (c) => c.notNull())
        .addColumn('accelerator', 'text', (c) => c.notNull())
        .addColumn('accelerator_reason', 'text', (c) => c.notNull())
        .addColumn('cpus', 'integer', (c) => c.notNull())
        .addColumn('memory_mb', 'integer', (c) => c.notNull())
        .addColumn('maintenance', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('last_seen_at', 'text', (c) => c.notNull())
        .addColumn('joined_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('images')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('format', 'text', (c) => c.notNull())
        .addColumn('files', 'text', (c) => c.notNull())
        .addColumn('size_bytes', 'integer', (c) => c.notNull())
        .addColumn('builtin', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('vms')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('project_id', 'text', (c) => c.notNull().references('projects.id'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('host_id', 'text', (c) => c.notNull().references('hosts.id'))
        .addColumn('image_id', 'text', (c) => c.notNull().references('images.id'))
        .addColumn('cpus', 'integer', (c) => c.notNull())
        .addColumn('memory_mb', 'integer', (c) => c.notNull())
        .addColumn('desired_state', 'text', (c) => c.notNull())
        .addColumn('actual_state', 'text', (c) => c.notNull())
        .addColumn('spec', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('vms_project_name', ['project_id', 'name'])
        .execute();
      await db.schema
        .createTable('operations')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('project_id', 'text')
        .addColumn('target_type', 'text', (c) => c.notNull())
        .addColumn('target_id', 'text', (c) => c.notNull())
        .addColumn('target_name', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('stage', 'text', (c) => c.notNull())
        .addColumn('progress', 'real', (c) => c.notNull())
        .addColumn('error_code', 'text')
        .addColumn('error_message', 'text')
        .addColumn('result', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('operation_events')
        .addColumn('seq', 'integer', (c) => c.primaryKey().autoIncrement())
        .addColumn('operation_id', 'text', (c) => c.notNull().references('operations.id'))
        .addColumn('at', 'text', (c) => c.notNull())
        .addColumn('stage', 'text', (c) => c.notNull())
        .addColumn('message', 'text', (c) => c.notNull())
        .addColumn('progress', 'real', (c) => c.notNull())
        .addColumn('data', 'text')
        .execute();
      await sql`CREATE INDEX operation_events_by_operation ON operation_events (operation_id, seq)`.execute(db);
    },
  },
  '0002-networks': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('hosts').addColumn('underlay_ip', 'text').execute();
      await db.schema
        .createTable('networks')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('project_id', 'text', (c) => c.notNull().references('projects.id'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('subnet', 'text', (c) => c.notNull())
        .addColumn('gateway', 'text')
        .addColumn('dhcp', 'integer', (c) => c.notNull())
        .addColumn('dhcp_address', 'text')
        .addColumn('vni', 'integer', (c) => c.notNull().unique())
        .addColumn('mtu', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('networks_project_name', ['project_id', 'name'])
        .execute();
      await db.schema
        .createTable('nics')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('vm_id', 'text', (c) => c.notNull())
        .addColumn('network_id', 'text', (c) => c.notNull().references('networks.id'))
        .addColumn('device_index', 'integer', (c) => c.notNull())
        .addColumn('mac', 'text', (c) => c.notNull().unique())
        .addColumn('ip', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('nics_network_ip', ['network_id', 'ip'])
        .execute();
    },
  },
  '0003-security-groups': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('secgroups')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('project_id', 'text', (c) => c.notNull().references('projects.id'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('description', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('secgroups_project_name', ['project_id', 'name'])
        .execute();
      await db.schema
        .createTable('secgroup_rules')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('group_id', 'text', (c) => c.notNull().references('secgroups.id'))
        .addColumn('direction', 'text', (c) => c.notNull())
        .addColumn('protocol', 'text', (c) => c.notNull())
        .addColumn('port_min', 'integer')
        .addColumn('port_max', 'integer')
        .addColumn('cidr', 'text')
        .addColumn('remote_group_id', 'text', (c) => c.references('secgroups.id'))
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('vm_secgroups')
        .addColumn('vm_id', 'text', (c) => c.notNull())
        .addColumn('group_id', 'text', (c) => c.notNull().references('secgroups.id'))
        .addPrimaryKeyConstraint('vm_secgroups_pk', ['vm_id', 'group_id'])
        .execute();
    },
  },
  '0004-vm-disks': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('vm_disks')
        .addColumn('vm_id', 'text', (c) => c.notNull())
        .addColumn('device_index', 'integer', (c) => c.notNull())
        .addColumn('pool', 'text', (c) => c.notNull())
        .addColumn('volume', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('vm_disks_pk', ['vm_id', 'device_index'])
        .addUniqueConstraint('vm_disks_volume', ['pool', 'volume'])
        .execute();
    },
  },
  '0005-nat-gateways': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .alterTable('networks')
        .addColumn('nat', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
      await db.schema
        .createTable('port_forwards')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('network_id', 'text', (c) => c.notNull().references('networks.id'))
        .addColumn('protocol', 'text', (c) => c.notNull())
        .addColumn('host_port', 'integer', (c) => c.notNull())
        .addColumn('vm_id', 'text', (c) => c.notNull())
        .addColumn('vm_port', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('port_forwards_port', ['network_id', 'protocol', 'host_port'])
        .execute();
    },
  },
  '0006-vm-migrations': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('vm_migrations')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('vm_id', 'text', (c) => c.notNull())
        .addColumn('from_host', 'text', (c) => c.notNull())
        .addColumn('to_host', 'text', (c) => c.notNull())
        .addColumn('strategy', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('figures', 'text', (c) => c.notNull())
        .addColumn('started_at', 'text', (c) => c.notNull())
        .addColumn('ended_at', 'text')
        .execute();
    },
  },
  '0007-vm-allow-postcopy': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .alterTable('vms')
        .addColumn('allow_postcopy', 'integer', (c) => c.notNull().defaultTo(1))
        .execute();
    },
  },
  '0008-dir-pools': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('dir_pools')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('hosts', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('dir_volumes')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('pool_id', 'text', (c) => c.notNull().references('dir_pools.id'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('host_id', 'text', (c) => c.notNull())
        .addColumn('size_bytes', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('dir_volumes_pool_name', ['pool_id', 'name'])
        .execute();
    },
  },
  '0009-host-qemu-version': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('hosts').addColumn('qemu_version', 'text').execute();
    },
  },
  '0010-host-agent-token-hash': {
    // The agent's credential was kept as it is; a copy of the database gave it away. Only its
    // sha256 is kept now (the control plane's own credential towards agents is derived from a key
    // file, see HostRegistry).
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .alterTable('hosts')
        .addColumn('agent_token_sha256', 'text', (c) => c.notNull().defaultTo(''))
        .execute();
      const hosts = await sql<{ id: string; agent_token: string }>`select id, agent_token from hosts`.execute(db);
      for (const host of hosts.rows) {
        await sql`update hosts set agent_token_sha256 = ${createHash('sha256').update(host.agent_token).digest('hex')} where id = ${host.id}`.execute(db);
      }
      await db.schema.alterTable('hosts').dropColumn('agent_token').execute();
    },
  },
  '0011-access-control': {
    /**
     * Size: users, roles, bindings, scoped tokens, quotas and the audit log arrive together; the
     * admin token of older releases becomes a token of the first platform admin user.
     */
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('users')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('password_hash', 'text')
        .addColumn('totp_secret', 'text')
        .addColumn('totp_enabled', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('totp_last_step', 'integer')
        .addColumn('oidc_subject', 'text')
        .addColumn('source', 'text', (c) => c.notNull().defaultTo('local'))
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('roles')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('description', 'text', (c) => c.notNull())
        .addColumn('permissions', 'text', (c) => c.notNull())
        .addColumn('builtin', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('role_bindings')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('subject_type', 'text', (c) => c.notNull())
        .addColumn('subject', 'text', (c) => c.notNull())
        .addColumn('role_id', 'text', (c) => c.notNull().references('roles.id'))
        .addColumn('project_id', 'text', (c) => c.references('projects.id'))
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await sql`CREATE UNIQUE INDEX role_bindings_unique ON role_bindings (subject_type, subject, role_id, coalesce(project_id, ''))`.execute(db);
      await db.schema.alterTable('tokens').addColumn('user_id', 'text').execute();
      await db.schema
        .alterTable('tokens')
        .addColumn('kind', 'text', (c) => c.notNull().defaultTo('api'))
        .execute();
      await db.schema.alterTable('tokens').addColumn('project_id', 'text').execute();
      await db.schema.alterTable('tokens').addColumn('role_id', 'text').execute();
      await db.schema.alterTable('tokens').addColumn('groups', 'text').execute();
      await db.schema.alterTable('tokens').addColumn('expires_at', 'text').execute();
      await db.schema.alterTable('tokens').addColumn('revoked_at', 'text').execute();
      await db.schema.alterTable('tokens').addColumn('last_used_at', 'text').execute();
      await db.schema
        .createTable('project_quotas')
        .addColumn('project_id', 'text', (c) => c.primaryKey().references('projects.id'))
        .addColumn('cpus', 'integer')
        .addColumn('memory_mb', 'integer')
        .addColumn('vms', 'integer')
        .addColumn('volume_bytes', 'integer')
        .addColumn('networks', 'integer')
        .addColumn('port_forwards', 'integer')
        .execute();
      await db.schema
        .createTable('volume_owners')
        .addColumn('pool', 'text', (c) => c.notNull())
        .addColumn('volume', 'text', (c) => c.notNull())
        .addColumn('project_id', 'text', (c) => c.notNull().references('projects.id'))
        .addColumn('size_bytes', 'integer', (c) => c.notNull())
        .addPrimaryKeyConstraint('volume_owners_pk', ['pool', 'volume'])
        .execute();
      await db.schema
        .createTable('audit_entries')
        .addColumn('seq', 'integer', (c) => c.primaryKey())
        .addColumn('data', 'text', (c) => c.notNull())
        .addColumn('leaf_hash', 'text', (c) => c.notNull())
        .addColumn('at', 'text', (c) => c.notNull())
        .addColumn('user_name', 'text')
        .addColumn('project_id', 'text')
        .execute();
      await sql`CREATE INDEX audit_entries_by_project ON audit_entries (project_id, seq)`.execute(db);
      await db.schema
        .createTable('audit_heads')
        .addColumn('tree_size', 'integer', (c) => c.primaryKey())
        .addColumn('root_hash', 'text', (c) => c.notNull())
        .addColumn('timestamp', 'text', (c) => c.notNull())
        .addColumn('signature', 'text', (c) => c.notNull())
        .execute();
      // The admin token of an older release: it becomes a token of the user `admin`, who holds
      // the platform role `admin` (the roles themselves are written at every start, roles.ts).
      const admins = await sql<{ id: string; created_at: string }>`select id, created_at from tokens where role = 'admin'`.execute(db);
      if (admins.rows.length > 0) {
        const now = new Date().toISOString();
        await sql`insert into users (id, name, created_at, source) values ('usr-admin', 'admin', ${now}, 'local')`.execute(db);
        await sql`update tokens set user_id = 'usr-admin', kind = 'api' where role = 'admin'`.execute(db);
        await sql`insert into roles (id, name, description, permissions, builtin, created_at) values ('role-admin', 'admin', 'Platform administrator', '["*"]', 1, ${now})`.execute(
          db,
        );
        await sql`insert into role_bindings (id, subject_type, subject, role_id, project_id, created_at) values ('bnd-admin', 'user', 'usr-admin', 'role-admin', null, ${now})`.execute(
          db,
        );
      }
    },
  },
  '0012-placement': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .alterTable('hosts')
        .addColumn('labels', 'text', (c) => c.notNull().defaultTo('{}'))
        .execute();
      await db.schema
        .alterTable('hosts')
        .addColumn('cpu_overcommit', 'real', (c) => c.notNull().defaultTo(4))
        .execute();
      await db.schema
        .alterTable('hosts')
        .addColumn('memory_overcommit', 'real', (c) => c.notNull().defaultTo(1))
        .execute();
      await db.schema
        .alterTable('projects')
        .addColumn('requirements', 'text', (c) => c.notNull().defaultTo('{}'))
        .execute();
      await db.schema
        .createTable('placement_groups')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('project_id', 'text', (c) => c.notNull().references('projects.id'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('policy', 'text', (c) => c.notNull())
        .addColumn('scope', 'text', (c) => c.notNull())
        .addColumn('strict', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('placement_groups_name', ['project_id', 'name'])
        .execute();
      await db.schema
        .alterTable('vms')
        .addColumn('placement_group_id', 'text', (c) => c.references('placement_groups.id'))
        .execute();
      await db.schema
        .createTable('pool_labels')
        .addColumn('pool', 'text', (c) => c.primaryKey())
        .addColumn('labels', 'text', (c) => c.notNull())
        .execute();
      // Kept after the VM is deleted (its name and project are copied): the record of where a
      // tenant's workloads have run.
      await db.schema
        .createTable('placement_events')
        .addColumn('seq', 'integer', (c) => c.primaryKey().autoIncrement())
        .addColumn('vm_id', 'text', (c) => c.notNull())
        .addColumn('vm_name', 'text', (c) => c.notNull())
        .addColumn('project_id', 'text', (c) => c.notNull())
        .addColumn('host_id', 'text', (c) => c.notNull())
        .addColumn('host_name', 'text', (c) => c.notNull())
        .addColumn('action', 'text', (c) => c.notNull())
        .addColumn('actor', 'text')
        .addColumn('at', 'text', (c) => c.notNull())
        .addColumn('decision', 'text', (c) => c.notNull())
        .execute();
      await sql`CREATE INDEX placement_events_by_vm ON placement_events (vm_id, seq)`.execute(db);
    },
  },
  '0013-cluster-settings': {
    /** The balancer's settings and its last run: one row, `id` = 'cluster'. */
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('cluster_settings')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('balance', 'text', (c) => c.notNull().defaultTo('manual'))
        .addColumn('threshold', 'integer', (c) => c.notNull().defaultTo(3))
        .addColumn('interval_seconds', 'integer', (c) => c.notNull().defaultTo(300))
        .addColumn('cooldown_seconds', 'integer', (c) => c.notNull().defaultTo(3600))
        .addColumn('max_moves', 'integer', (c) => c.notNull().defaultTo(8))
        .addColumn('last_run', 'text')
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
    },
  },
  '0014-high-availability': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .alterTable('vms')
        .addColumn('ha', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
      await db.schema
        .alterTable('vms')
        .addColumn('ha_priority', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
      await db.schema
        .alterTable('vms')
        .addColumn('autostart', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
      await db.schema
        .alterTable('vms')
        .addColumn('boot_order', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
      await db.schema
        .alterTable('vms')
        .addColumn('boot_delay_seconds', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
      await db.schema.alterTable('hosts').addColumn('fenced_at', 'text').execute();
      await db.schema.alterTable('hosts').addColumn('lost_at', 'text').execute();
      await db.schema
        .alterTable('hosts')
        .addColumn('storage_fenced', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
      await db.schema
        .createTable('ha_groups')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('hosts', 'text', (c) => c.notNull())
        .addColumn('restricted', 'integer', (c) => c.notNull())
        .addColumn('failback', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .alterTable('vms')
        .addColumn('ha_group_id', 'text', (c) => c.references('ha_groups.id'))
        .execute();
      await db.schema
        .createTable('ha_events')
        .addColumn('seq', 'integer', (c) => c.primaryKey().autoIncrement())
        .addColumn('vm_id', 'text', (c) => c.notNull())
        .addColumn('vm_name', 'text', (c) => c.notNull())
        .addColumn('from_host', 'text', (c) => c.notNull())
        .addColumn('to_host', 'text')
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('message', 'text', (c) => c.notNull())
        .addColumn('host_lost_at', 'text', (c) => c.notNull())
        .addColumn('fenced_at', 'text', (c) => c.notNull())
        .addColumn('ended_at', 'text')
        .execute();
    },
  },
  '0015-network-carriers': {
    /**
     * A conntrack zone per network (overlapping subnets on one host never share connection
     * state), the host that runs its DHCP server and NAT gateway (it stays put while VMs move),
     * and the hosts the network is plumbed on (so one that no longer needs it is always cleared).
     */
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('networks').addColumn('ct_zone', 'integer').execute();
      await db.schema.alterTable('networks').addColumn('service_host_id', 'text').execute();
      const networks = await sql<{ id: string }>`select id from networks order by created_at, id`.execute(db);
      for (const [index, network] of networks.rows.entries()) await sql`update networks set ct_zone = ${index + 1} where id = ${network.id}`.execute(db);
      await sql`CREATE UNIQUE INDEX networks_ct_zone ON networks (ct_zone)`.execute(db);
      await db.schema
        .createTable('network_hosts')
        .addColumn('network_id', 'text', (c) => c.notNull().references('networks.id'))
        .addColumn('host_id', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('network_hosts_pk', ['network_id', 'host_id'])
        .execute();
      // What the release before plumbed: the hosts of the networks' VMs.
      await sql`insert into network_hosts (network_id, host_id) select distinct nics.network_id, vms.host_id from nics join vms on vms.id = nics.vm_id`.execute(
        db,
      );
    },
  },
  '0016-vm-balance-policy': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .alterTable('vms')
        .addColumn('balance', 'text', (c) => c.notNull().defaultTo('auto'))
        .execute();
    },
  },
  '0017-desktop-pools': {
    /** Desktop pools, who may use each, and their desktops. */
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('desktop_pools')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('project_id', 'text', (c) => c.notNull().references('projects.id'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('image_id', 'text', (c) => c.notNull())
        .addColumn('base_pool', 'text', (c) => c.notNull())
        .addColumn('base_volume', 'text', (c) => c.notNull())
        .addColumn('snapshot_volume', 'text', (c) => c.notNull())
        .addColumn('mode', 'text', (c) => c.notNull())
        .addColumn('size', 'integer', (c) => c.notNull())
        .addColumn('spare', 'integer', (c) => c.notNull())
        .addColumn('grace_seconds', 'integer', (c) => c.notNull())
        .addColumn('cpus', 'integer', (c) => c.notNull())
        .addColumn('memory_mb', 'integer', (c) => c.notNull())
        .addColumn('network', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('desktop_pools_project_name', ['project_id', 'name'])
        .execute();
      await db.schema
        .createTable('desktop_entitlements')
        .addColumn('pool_id', 'text', (c) => c.notNull().references('desktop_pools.id'))
        .addColumn('subject', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('desktop_entitlements_pk', ['pool_id', 'subject'])
        .execute();
      await db.schema
        .createTable('desktops')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('pool_id', 'text', (c) => c.notNull().references('desktop_pools.id'))
        .addColumn('slot', 'integer', (c) => c.notNull())
        .addColumn('vm_id', 'text')
        .addColumn('vm_name', 'text', (c) => c.notNull())
        .addColumn('volume', 'text', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('error', 'text')
        .addColumn('operation_id', 'text')
        .addColumn('assigned_user_id', 'text')
        .addColumn('assigned_at', 'text')
        .addColumn('connected_at', 'text')
        .addColumn('disconnected_at', 'text')
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('desktops_pool_slot', ['pool_id', 'slot'])
        .execute();
    },
  },
  '0018-scale': {
    /**
     * What a thousand hosts and a hundred thousand VMs need (bench/scale): indexes for the reads
     * that run per heartbeat, per report and per HA round (a VM's host, its state, a VM's NICs,
     * interrupted operations), and a counter that every change to what placement reads bumps
     * (a VM added, removed, moved or resized; a host added, removed or changed other than its
     * heartbeat time), kept by triggers so that no writer, in any module, can forget it: the
     * placement cache (control/host-usage.ts) reads the hosts again only when it moved.
     */
    async up(db: Kysely<unknown>): Promise<void> {
      // By host: a heartbeat's HA VMs, and (covering) what is allocated on each host.
      await sql`CREATE INDEX vms_by_host ON vms (host_id, ha, cpus, memory_mb)`.execute(db);
      // The list of every VM one may see, a page at a time (by name, then id).
      await sql`CREATE INDEX vms_by_name ON vms (name, id)`.execute(db);
      await sql`CREATE INDEX vms_by_state ON vms (actual_state)`.execute(db);
      await sql`CREATE INDEX nics_by_vm ON nics (vm_id, device_index)`.execute(db);
      await sql`CREATE INDEX operations_by_error ON operations (error_code, kind)`.execute(db);
      await sql`CREATE INDEX operations_by_status ON operations (status, created_at)`.execute(db);
      await sql`CREATE INDEX operations_by_created ON operations (created_at)`.execute(db);
      await sql`CREATE TABLE placement_state (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)`.execute(db);
      await sql`INSERT INTO placement_state (id, version) VALUES (1, 0)`.execute(db);
      const bump = PLACEMENT_BUMP;
      for (const [name, event] of [
        ['vms_inserted', 'AFTER INSERT ON vms'],
        ['vms_deleted', 'AFTER DELETE ON vms'],
        ['hosts_inserted', 'AFTER INSERT ON hosts'],
        ['hosts_deleted', 'AFTER DELETE ON hosts'],
      ])
        await sql.raw(`CREATE TRIGGER placement_${name} ${event} BEGIN ${bump}; END`).execute(db);
      await sql
        .raw(`CREATE TRIGGER placement_vms_moved AFTER UPDATE ON vms WHEN ${changedAny(['host_id', 'cpus', 'memory_mb'])} BEGIN ${bump}; END`)
        .execute(db);
      await createHostsPlacementTrigger(db, '0018-scale');
    },
  },
};

/** Hands Kysely's Migrator the migrations defined in this file. */
export const inlineMigrations: MigrationProvider = {
  getMigrations: async () => ({ ...migrations, ...vmPlatformMigrations, ...vmSnapshotMigrations, ...backupMigrations, ...backupScheduleMigrations }),
};
