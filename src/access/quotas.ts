/**
 * Project quotas: vCPUs, memory, VMs, volume bytes, networks and port forwards. A quota is
 * checked inside the same database transaction that records the new resource: SQLite runs one
 * write transaction at a time, so two creates racing for the last unit cannot both pass.
 */
import type { Transaction } from 'kysely';
import { NubisError } from '../core/errors.ts';
import type { Db } from '../state/database.ts';
import type { Database, ProjectQuotasTable } from '../state/schema.ts';

/** The quota names as the API and CLI spell them. */
export const QUOTA_NAMES = ['cpus', 'memoryMb', 'vms', 'volumeBytes', 'networks', 'portForwards'] as const;
export type QuotaName = (typeof QUOTA_NAMES)[number];
export type QuotaAmounts = Partial<Record<QuotaName, number>>;

const COLUMN: Record<QuotaName, keyof Omit<ProjectQuotasTable, 'project_id'>> = {
  cpus: 'cpus',
  memoryMb: 'memory_mb',
  vms: 'vms',
  volumeBytes: 'volume_bytes',
  networks: 'networks',
  portForwards: 'port_forwards',
};

const UNIT: Record<QuotaName, string> = {
  cpus: 'vCPUs',
  memoryMb: 'MiB of memory',
  vms: 'VMs',
  volumeBytes: 'bytes of volumes',
  networks: 'networks',
  portForwards: 'port forwards',
};

/** One quota as `project show` gives it: the limit (absent: none) and the use. */
export type QuotaUsage = Record<QuotaName, { limit?: number; used: number }>;

type Reader = Db | Transaction<Database>;

/** What a project uses now, counted from the records (nothing is kept as a counter that could drift). */
export async function projectUsage(db: Reader, projectId: string): Promise<Record<QuotaName, number>> {
  const vms = await db
    .selectFrom('vms')
    .select((eb) => [eb.fn.countAll<number>().as('count'), eb.fn.sum<number>('cpus').as('cpus'), eb.fn.sum<number>('memory_mb').as('memory')])
    .where('project_id', '=', projectId)
    .executeTakeFirstOrThrow();
  const networks = await db
    .selectFrom('networks')
    .select((eb) => eb.fn.countAll<number>().as('count'))
    .where('project_id', '=', projectId)
    .executeTakeFirstOrThrow();
  const forwards = await db
    .selectFrom('port_forwards')
    .innerJoin('networks', 'networks.id', 'port_forwards.network_id')
    .select((eb) => eb.fn.countAll<number>().as('count'))
    .where('networks.project_id', '=', projectId)
    .executeTakeFirstOrThrow();
  const volumes = await db
    .selectFrom('volume_owners')
    .select((eb) => eb.fn.sum<number>('size_bytes').as('bytes'))
    .where('project_id', '=', projectId)
    .executeTakeFirstOrThrow();
  return {
    cpus: Number(vms.cpus ?? 0),
    memoryMb: Number(vms.memory ?? 0),
    vms: Number(vms.count),
    volumeBytes: Number(volumes.bytes ?? 0),
    networks: Number(networks.count),
    portForwards: Number(forwards.count),
  };
}

async function limitsOf(db: Reader, projectId: string): Promise<QuotaAmounts> {
  const row = await db.selectFrom('project_quotas').selectAll().where('project_id', '=', projectId).executeTakeFirst();
  const limits: QuotaAmounts = {};
  for (const name of QUOTA_NAMES) {
    const value = row?.[COLUMN[name]];
    if (value !== null && value !== undefined) limits[name] = value;
  }
  return limits;
}

/**
 * Refuses (QUOTA_EXCEEDED, naming the quota, its limit and the use) when adding `adding` to
 * what the project uses would pass a limit. Call it inside the transaction that records the
 * new resource, so the check and the record are one step.
 */
export async function enforceQuota(db: Reader, projectId: string, projectName: string, adding: QuotaAmounts): Promise<void> {
  const limits = await limitsOf(db, projectId);
  const relevant = QUOTA_NAMES.filter((name) => limits[name] !== undefined && (adding[name] ?? 0) > 0);
  if (relevant.length === 0) return;
  const used = await projectUsage(db, projectId);
  for (const name of relevant) {
    const limit = limits[name] as number;
    const want = adding[name] as number;
    if (used[name] + want > limit)
      throw new NubisError(
        'QUOTA_EXCEEDED',
        `Project ${projectName} would exceed its ${name} quota: limit ${limit} ${UNIT[name]}, in use ${used[name]}, this request adds ${want}; free some or ask a platform admin to raise it (nubis project quota set)`,
        { details: { quota: name, limit, used: used[name], requested: want } },
      );
  }
}

/** A project's quotas with their use. */
export async function quotaUsage(db: Db, projectId: string): Promise<QuotaUsage> {
  const [limits, used] = await Promise.all([limitsOf(db, projectId), projectUsage(db, projectId)]);
  const usage = {} as QuotaUsage;
  for (const name of QUOTA_NAMES) usage[name] = { ...(limits[name] !== undefined ? { limit: limits[name] } : {}), used: used[name] };
  return usage;
}

/** Sets some of a project's limits; `null` removes one. Lowering below the use is allowed (nothing new fits until use drops). */
export async function setQuota(db: Reader, projectId: string, change: Partial<Record<QuotaName, number | null>>): Promise<void> {
  const values: Partial<ProjectQuotasTable> = {};
  for (const name of QUOTA_NAMES) if (change[name] !== undefined) values[COLUMN[name]] = change[name];
  await db
    .insertInto('project_quotas')
    .values({ project_id: projectId, cpus: null, memory_mb: null, vms: null, volume_bytes: null, networks: null, port_forwards: null, ...values })
    .onConflict((oc) => oc.column('project_id').doUpdateSet(values))
    .execute();
}
