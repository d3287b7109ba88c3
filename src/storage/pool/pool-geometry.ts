/**
 * Where everything of a pool lives: on each member a label, two checkpoint slots and a journal
 * (see metadata-format.ts), then the RAID data area; in the logical address space, allocation
 * units (AUs) of whole RAID rows. `planPool` computes it for new devices; a pool that exists
 * reads it back from its labels (`geometryFromLabel`).
 */
import { NubisError } from '../../core/errors.ts';
import { formatSize } from '../size.ts';
import { CHECKSUM_BLOCK_BYTES } from './checksum.ts';
import { CHECKPOINT_HEADER_BYTES, LABEL_BYTES, type PoolLabel } from './metadata-format.ts';
import { dataChunksPerRow, layoutRules, RAID_LAYOUTS, type RaidLayout } from './raid-array.ts';

const MiB = 1024 * 1024;
const DEFAULT_CHUNK_BYTES = 64 * 1024;
const DEFAULT_ALLOCATION_UNIT_BYTES = MiB;
const MIN_ALLOCATION_UNITS = 8;

/** The layout of a pool's members and its allocation unit; the same on every member's label. */
export type PoolGeometry = Pick<
  PoolLabel,
  'layout' | 'chunkBytes' | 'allocationUnitBytes' | 'slotBytes' | 'journalBytes' | 'dataStartBytes' | 'rows' | 'memberCount'
>;

/** The geometry a member's label records. */
export function geometryFromLabel(label: PoolLabel): PoolGeometry {
  return {
    layout: label.layout,
    chunkBytes: label.chunkBytes,
    allocationUnitBytes: label.allocationUnitBytes,
    slotBytes: label.slotBytes,
    journalBytes: label.journalBytes,
    dataStartBytes: label.dataStartBytes,
    rows: label.rows,
    memberCount: label.memberCount,
  };
}

/** Byte offset on every member of checkpoint slot `slot`. */
export function checkpointSlotOffset(geometry: Pick<PoolGeometry, 'slotBytes'>, slot: 0 | 1): number {
  return LABEL_BYTES + slot * geometry.slotBytes;
}

/** Byte offset on every member where the journal starts. */
export function journalStartOffset(geometry: Pick<PoolGeometry, 'slotBytes'>): number {
  return LABEL_BYTES + 2 * geometry.slotBytes;
}

/** Bytes of each member that the pool uses: metadata area and every RAID row. */
export function memberBytesUsed(geometry: Pick<PoolGeometry, 'dataStartBytes' | 'rows' | 'chunkBytes'>): number {
  return geometry.dataStartBytes + geometry.rows * geometry.chunkBytes;
}

/** Member bytes that no stripe can use: what each device has beyond `memberBytesUsed`. */
export function wasteBytes(deviceSizes: number[], usedPerMember: number): number {
  return deviceSizes.reduce((sum, size) => sum + (size - usedPerMember), 0);
}

/**
 * Splits the byte range `position`..`position + length` of a volume at allocation-unit
 * boundaries: each piece lies in one AU (`vAu`, from `inAu` within it) and starts `offset`
 * bytes into the caller's buffer.
 */
export function splitAtAllocationUnits(
  position: number,
  length: number,
  allocationUnitBytes: number,
): Array<{ vAu: number; inAu: number; offset: number; length: number }> {
  const au = allocationUnitBytes;
  const segments: Array<{ vAu: number; inAu: number; offset: number; length: number }> = [];
  for (let done = 0; done < length; ) {
    const pos = position + done;
    const vAu = Math.floor(pos / au);
    const inAu = pos - vAu * au;
    const n = Math.min(au - inAu, length - done);
    segments.push({ vAu, inAu, offset: done, length: n });
    done += n;
  }
  return segments;
}

/** Throws unless `layout` is known and `n` devices are enough for it. */
function checkLayout(layout: RaidLayout, n: number): void {
  if (!RAID_LAYOUTS.includes(layout)) {
    throw new NubisError('POOL_LAYOUT_INVALID', `Layout ${JSON.stringify(layout)} is not one of ${RAID_LAYOUTS.join(', ')}`, { details: { layout } });
  }
  const { minMembers } = layoutRules(layout, n);
  const needed = layout === 'raid1' ? 2 : minMembers;
  if (n < needed) {
    throw new NubisError('POOL_TOO_FEW_DEVICES', `A ${layout} pool needs at least ${needed} devices; ${n} given`, {
      details: { layout, devices: n, minimum: needed },
    });
  }
  if (layout === 'raid10' && n % 2 !== 0) {
    throw new NubisError('POOL_TOO_FEW_DEVICES', `A raid10 pool needs an even number of devices; ${n} given`, { details: { layout, devices: n } });
  }
}

/** The chunk size asked for (or the default); throws unless it is a power of two from 4 KiB to 16 MiB. */
function checkedChunkBytes(requested: number | undefined): number {
  const chunkBytes = requested ?? DEFAULT_CHUNK_BYTES;
  if (!Number.isInteger(chunkBytes) || chunkBytes < 4096 || chunkBytes > 16 * MiB || (chunkBytes & (chunkBytes - 1)) !== 0) {
    throw new NubisError('POOL_CHUNK_INVALID', `Chunk size ${chunkBytes} must be a power of two from 4 KiB to 16 MiB`, { details: { chunkBytes } });
  }
  return chunkBytes;
}

/** The allocation unit asked for (or the default), rounded up to whole rows of `rowData` bytes. */
function checkedAllocationUnitBytes(requested: number | undefined, rowData: number): number {
  const requestedAu = requested ?? DEFAULT_ALLOCATION_UNIT_BYTES;
  if (!Number.isInteger(requestedAu) || requestedAu < 4096 || requestedAu % 4096 !== 0) {
    throw new NubisError('POOL_ALLOCATION_UNIT_INVALID', `Allocation unit ${requestedAu} must be a multiple of 4 KiB`, {
      details: { allocationUnitBytes: requestedAu },
    });
  }
  // Whole rows per AU: no parity row is ever shared by two AUs, so a write to one AU can never
  // leave another's redundancy stale (the RAID 5 write hole stays inside the AU being written).
  return Math.ceil(requestedAu / rowData) * rowData;
}

/** Computes where everything lives for devices of the given sizes; throws on bad input. */
export function planPool(options: {
  layout: RaidLayout;
  deviceSizes: number[];
  devices: string[];
  chunkBytes?: number;
  allocationUnitBytes?: number;
}): PoolGeometry & { auCount: number; usableBytes: number; wasteBytes: number } {
  const { layout, deviceSizes, devices } = options;
  const n = deviceSizes.length;
  checkLayout(layout, n);
  const chunkBytes = checkedChunkBytes(options.chunkBytes);
  const rowData = dataChunksPerRow(layout, n) * chunkBytes;
  const allocationUnitBytes = checkedAllocationUnitBytes(options.allocationUnitBytes, rowData);
  const minSize = Math.min(...deviceSizes);
  const upperUsable = dataChunksPerRow(layout, n) * minSize;
  const upperBlocks = Math.ceil(upperUsable / CHECKSUM_BLOCK_BYTES);
  const upperAus = Math.ceil(upperUsable / allocationUnitBytes);
  // A checkpoint holds the checksums, map entries (budget: 8 mappers per AU) and volume records.
  const slotBytes = alignUp(CHECKPOINT_HEADER_BYTES + 256 * 1024 + upperAus * 8 * 8 + upperBlocks * 4, 4096);
  const journalBytes = Math.max(4 * MiB, slotBytes);
  const dataStartBytes = alignUp(LABEL_BYTES + 2 * slotBytes + journalBytes, MiB);
  const rows = Math.max(0, Math.floor((minSize - dataStartBytes) / chunkBytes));
  const auCount = Math.floor((rows * rowData) / allocationUnitBytes);
  if (auCount < MIN_ALLOCATION_UNITS) {
    const smallest = devices[deviceSizes.indexOf(minSize)];
    const neededPerDevice = dataStartBytes + Math.ceil((MIN_ALLOCATION_UNITS * allocationUnitBytes) / rowData) * chunkBytes;
    throw new NubisError(
      'POOL_DEVICE_TOO_SMALL',
      `Device ${smallest} has ${formatSize(minSize)}; a ${layout} pool over ${n} devices with ${formatSize(chunkBytes)} chunks needs at least ${formatSize(neededPerDevice)} per device`,
      { details: { device: smallest, sizeBytes: minSize, minimumBytes: neededPerDevice } },
    );
  }
  const geometry: PoolGeometry = { layout, chunkBytes, allocationUnitBytes, slotBytes, journalBytes, dataStartBytes, rows, memberCount: n };
  return { ...geometry, auCount, usableBytes: auCount * allocationUnitBytes, wasteBytes: wasteBytes(deviceSizes, memberBytesUsed(geometry)) };
}

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}
