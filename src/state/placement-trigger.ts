/**
 * The trigger that bumps the placement version (migration 0018) when a host changes in anything
 * placement reads: every column of `hosts` but `last_seen_at`, which heartbeats rewrite and
 * placement reads from memory. A migration that adds a column to `hosts` recreates it with the
 * column added here (src/control/placement-cache.test.ts compares it with the table).
 */
import { type Kysely, sql } from 'kysely';

export const PLACEMENT_BUMP = 'UPDATE placement_state SET version = version + 1 WHERE id = 1';

/** The columns of `hosts` whose change bumps the version, as of the latest migration. */
const HOST_COLUMNS_BY_MIGRATION: Record<string, string[]> = {
  '0018-scale': [
    ...['id', 'name', 'endpoint', 'agent_token_sha256', 'accelerator', 'accelerator_reason', 'cpus', 'memory_mb', 'maintenance'],
    ...['joined_at', 'underlay_ip', 'qemu_version', 'labels', 'cpu_overcommit', 'memory_overcommit', 'fenced_at', 'lost_at', 'storage_fenced'],
  ],
  '0021-host-isolation': ['isolation'],
};

/** A trigger's WHEN: any of `columns` differs between the old and the new row (NULL-safe). */
export function changedAny(columns: readonly string[]): string {
  return columns.map((column) => `old.${column} IS NOT new.${column}`).join(' OR ');
}

/** (Re)creates the hosts trigger with the columns of every migration up to and including `migration`. */
export async function createHostsPlacementTrigger(db: Kysely<unknown>, migration: string): Promise<void> {
  const names = Object.keys(HOST_COLUMNS_BY_MIGRATION);
  const columns = names.slice(0, names.indexOf(migration) + 1).flatMap((name) => HOST_COLUMNS_BY_MIGRATION[name]);
  await sql.raw('DROP TRIGGER IF EXISTS placement_hosts_changed').execute(db);
  await sql.raw(`CREATE TRIGGER placement_hosts_changed AFTER UPDATE ON hosts WHEN ${changedAny(columns)} BEGIN ${PLACEMENT_BUMP}; END`).execute(db);
}
