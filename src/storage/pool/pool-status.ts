/** What `nubis pool show` reports of a pool: health, capacity and members in one snapshot. */
import { formatSize } from '../size.ts';
import type { MetadataStore } from './metadata-store.ts';
import type { PoolGeometry } from './pool-geometry.ts';
import type { MemberSlot, RaidArray, RaidLayout } from './raid-array.ts';

/** One member in `PoolStatus`, like a line of `zpool status`. */
export interface MemberStatus {
  index: number;
  path: string;
  state: MemberSlot['state'];
  sizeBytes: number;
  readErrors: number;
  writeErrors: number;
  checksumErrors: number;
}

/** What `nubis pool show` prints. */
export interface PoolStatus {
  name: string;
  uuid: string;
  layout: RaidLayout;
  chunkBytes: number;
  allocationUnitBytes: number;
  state: 'online' | 'degraded' | 'faulted';
  readOnly: boolean;
  readOnlyReason?: string;
  sizeBytes: number;
  allocatedBytes: number;
  freeBytes: number;
  provisionedBytes: number;
  overcommitRatio: number;
  /** Member bytes no stripe can use (members larger than the smallest, and the metadata area). */
  wasteBytes: number;
  warnings: string[];
  members: MemberStatus[];
  volumes: number;
}

/** Health, capacity and members, like `zpool status` and `zpool list` together. */
export function poolStatus(pool: {
  name: string;
  uuid: string;
  geometry: PoolGeometry;
  raid: RaidArray;
  store: MetadataStore;
  wasteBytes: number;
  fullWarningRatio: number;
}): PoolStatus {
  const { geometry, raid, store } = pool;
  const au = geometry.allocationUnitBytes;
  const auCount = store.allocation.auCount;
  const allocated = store.allocation.allocatedCount();
  const sizeBytes = auCount * au;
  const provisioned = [...store.state.volumes.values()].filter((v) => v.record.kind !== 'snapshot').reduce((sum, v) => sum + v.record.sizeBytes, 0);
  const health = raid.health();
  const readOnlyReason = store.readOnlyReason;
  const warnings: string[] = [];
  if (allocated * au > sizeBytes * pool.fullWarningRatio) warnings.push(`Pool is ${Math.round((100 * allocated * au) / sizeBytes)}% full`);
  if (provisioned > sizeBytes) warnings.push(`Volumes are overcommitted: ${formatSize(provisioned)} provisioned on ${formatSize(sizeBytes)} usable`);
  if (health.state !== 'online') warnings.push(`Pool is ${health.state}: ${health.lost} member(s) not online`);
  if (readOnlyReason) warnings.push(readOnlyReason);
  return {
    name: pool.name,
    uuid: pool.uuid,
    layout: geometry.layout,
    chunkBytes: geometry.chunkBytes,
    allocationUnitBytes: au,
    state: health.state,
    readOnly: readOnlyReason !== undefined,
    readOnlyReason,
    sizeBytes,
    allocatedBytes: allocated * au,
    freeBytes: (auCount - allocated) * au,
    provisionedBytes: provisioned,
    overcommitRatio: sizeBytes > 0 ? provisioned / sizeBytes : 0,
    wasteBytes: pool.wasteBytes,
    warnings,
    members: raid.members.map((m) => ({
      index: m.index,
      path: m.path,
      state: m.state,
      sizeBytes: m.device?.sizeBytes ?? 0,
      readErrors: m.readErrors,
      writeErrors: m.writeErrors,
      checksumErrors: m.checksumErrors,
    })),
    volumes: store.state.volumes.size,
  };
}
