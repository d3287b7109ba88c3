/**
 * What the balancer plans from, read from the state as it is now: the hosts as the scheduler sees
 * them, every VM with the scheduler's question for moving it (placement.request of
 * placement.movingNeeds: the same rules as a user's migration), why a running VM may not move at
 * all, when it last moved, and what moving it would cost on each link.
 */
import { canMigrateBetween } from '../compute/qemu/qemu-version.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import type { BalanceVm } from '../control/balance-plan.ts';
import type { DirPoolCatalogue } from '../control/dir-pools.ts';
import type { PlacementService } from '../control/placement.ts';
import type { SchedulerHost } from '../control/scheduler.ts';
import type { VmOwner } from '../control/vm-owner.ts';
import type { Db } from '../state/database.ts';
import type { VmsTable } from '../state/schema.ts';
import {
  ASSUMED_DIRTY_RATE_BYTES_PER_SEC,
  ASSUMED_LINK_BYTES_PER_SEC,
  type MigrationCost,
  lastSampledDirtyRate,
  measuredLinks,
  predictMigrationCost,
} from './migration-cost.ts';
import { AUTO_TARGET_DOWNTIME_MS, DEFAULT_MAX_DOWNTIME_MS } from './migration-service.ts';

/** A VM as planned with, and what its cost is computed from. */
export interface BalanceCandidate extends BalanceVm {
  project: string;
  /** Set for running VMs that may move: their dirty rate (and where it came from) and local disk bytes. */
  dirtyRate?: { bytesPerSec: number; source: MigrationCost['dirtyRateSource'] };
  diskBytes?: number;
}

export interface BalanceInputs {
  hosts: SchedulerHost[];
  vms: BalanceCandidate[];
  cost(vm: BalanceVm, from: SchedulerHost, to: SchedulerHost): MigrationCost;
}

export interface BalanceInputDeps {
  db: Db;
  placement: PlacementService;
  owner: VmOwner;
  dirPools: DirPoolCatalogue;
}

/**
 * Reads everything a plan needs, at once, so that planning itself is pure. `trigger` is who
 * starts the run: a person (`manual`, also for a dry run) or the background balancer (`auto`).
 */
export async function loadBalanceInputs(deps: BalanceInputDeps, trigger: 'manual' | 'auto'): Promise<BalanceInputs> {
  const { db } = deps;
  const hosts = await deps.placement.schedulerHosts();
  const byId = new Map(hosts.map((host) => [host.id, host]));
  const qemuOf = new Map((await db.selectFrom('hosts').select(['id', 'qemu_version']).execute()).map((h) => [h.id, h.qemu_version]));
  const rows = await db.selectFrom('vms').selectAll().orderBy('name').execute();
  const projects = new Map((await db.selectFrom('projects').select(['id', 'name']).execute()).map((p) => [p.id, p.name]));
  const lastMoves = await db
    .selectFrom('placement_events')
    .select((eb) => ['vm_id', eb.fn.max('at').as('at')])
    .where('action', '!=', 'create')
    .groupBy('vm_id')
    .execute();
  const lastMovedAt = new Map(lastMoves.map((row) => [row.vm_id, Date.parse(String(row.at))]));
  const vms: BalanceCandidate[] = [];
  for (const row of rows) {
    const base: BalanceCandidate = {
      id: row.id,
      name: row.name,
      hostId: row.host_id,
      cpus: row.cpus,
      memoryMb: row.memory_mb,
      groupId: row.placement_group_id,
      project: projects.get(row.project_id) ?? row.project_id,
      ...(lastMovedAt.has(row.id) ? { lastMovedAtMs: lastMovedAt.get(row.id) } : {}),
    };
    const source = byId.get(row.host_id);
    // Only running VMs on online hosts are candidates; the others count only for their groups.
    if (row.actual_state !== 'running' || source?.status !== 'online') vms.push(base);
    else vms.push(await candidate(deps, row, { source, hosts, qemuOf, trigger }, base));
  }
  const links = await measuredLinks(db);
  return {
    hosts,
    vms,
    cost(vm, from, to) {
      const c = vm as BalanceCandidate;
      const measured = links(from.name, to.name);
      const cost = predictMigrationCost({
        memoryMb: vm.memoryMb,
        dirtyRateBytesPerSec: c.dirtyRate?.bytesPerSec ?? ASSUMED_DIRTY_RATE_BYTES_PER_SEC,
        linkBytesPerSec: measured ?? ASSUMED_LINK_BYTES_PER_SEC,
        diskBytes: c.diskBytes ?? 0,
        // A balancing move is an `auto` migration with the default limits (cluster-balancer.ts).
        downtimeLimitMs: AUTO_TARGET_DOWNTIME_MS,
        maxDowntimeLimitMs: DEFAULT_MAX_DOWNTIME_MS,
      });
      return { ...cost, dirtyRateSource: c.dirtyRate?.source ?? 'assumed', linkSource: measured === undefined ? 'assumed' : 'measured' };
    },
  };
}

/** A running VM as a candidate: the scheduler's question for it, or why it may not move. */
async function candidate(
  deps: BalanceInputDeps,
  row: VmsTable,
  where: { source: SchedulerHost; hosts: SchedulerHost[]; qemuOf: Map<string, string | null>; trigger: 'manual' | 'auto' },
  base: BalanceCandidate,
): Promise<BalanceCandidate> {
  const { source, hosts, qemuOf } = where;
  const spec = JSON.parse(row.spec) as VmSpec;
  const request = await deps.placement.request(deps.placement.movingNeeds(row, source), hosts);
  const forbidden = forbiddenByPolicy(row, where.trigger);
  if (forbidden) return { ...base, request, blocked: forbidden };
  const claims = deps.owner.claimsOf(row.id);
  if (claims.length > 0) {
    const operation = claims[0].operationId ? ` (operation ${claims[0].operationId})` : '';
    return { ...base, request, blocked: `busy with ${claims[0].action}${operation}` };
  }
  // As the migration service refuses them (MIGRATION_USER_NETWORK, MIGRATION_LOCAL_DISK).
  if (spec.nics.some((nic) => nic.mode === 'user'))
    return { ...base, request, blocked: 'it uses user-mode networking, which cannot keep its address on another host' };
  let diskBytes = 0;
  // As the migration service checks: QEMU loads the streams of its own and older releases only.
  const loadsStream = hosts.filter((host) => canMigrateBetween(qemuOf.get(source.id), qemuOf.get(host.id)));
  let reachableHostIds = loadsStream.length < hosts.length ? new Set(loadsStream.map((host) => host.id)) : undefined;
  for (const disk of spec.disks) {
    if (disk.kind !== 'file') continue;
    const [pool, volume] = (disk.localVolume ?? '').split('/');
    if (!pool || !volume) return { ...base, request, blocked: `it has a local file disk ${disk.path} that is no pool volume, so it cannot be mirrored` };
    const poolRow = await deps.dirPools.find(pool);
    const reach = new Set((JSON.parse(poolRow?.hosts ?? '[]') as Array<{ hostId: string }>).map((entry) => entry.hostId));
    reachableHostIds = new Set([...(reachableHostIds ?? reach)].filter((id) => reach.has(id)));
    diskBytes += (await deps.dirPools.diskOf(pool, volume, disk.id)).sizeBytes;
  }
  const sampled = await lastSampledDirtyRate(deps.db, row.id);
  return {
    ...base,
    request,
    diskBytes,
    ...(reachableHostIds ? { reachableHostIds } : {}),
    dirtyRate: sampled === undefined ? { bytesPerSec: ASSUMED_DIRTY_RATE_BYTES_PER_SEC, source: 'assumed' } : { bytesPerSec: sampled, source: 'sampled' },
  };
}

/** Why the VM's own balancing policy keeps it where it is for a run of `trigger`, if it does. */
function forbiddenByPolicy(row: VmsTable, trigger: 'manual' | 'auto'): string | undefined {
  if (row.balance === 'never') return `its balancing policy is never (nubis vm set ${row.name} --balance auto allows it)`;
  if (row.balance === 'manual' && trigger === 'auto') return 'its balancing policy is manual: only a run a person starts moves it';
  return undefined;
}
