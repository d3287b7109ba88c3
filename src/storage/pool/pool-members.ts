/**
 * Devices becoming members of a pool and found again: the check that a device holds nothing
 * worth keeping, the labels and empty metadata a new pool writes, and the label reading that
 * sorts the devices of a pool into its member slots when it opens.
 */
import { randomUUID } from 'node:crypto';
import { NubisError } from '../../core/errors.ts';
import { readDeviceSignature } from './device-signature.ts';
import type { MemberDevice } from './member-device.ts';
import {
  decodeLabel,
  encodeCheckpoint,
  encodeLabel,
  JOURNAL_HEADER_BYTES,
  JournalWriter,
  LABEL_BYTES,
  type PoolLabel,
  type PoolState,
} from './metadata-format.ts';
import { checkpointSlotOffset, journalStartOffset, type PoolGeometry } from './pool-geometry.ts';
import type { MemberSlot } from './raid-array.ts';

/** Opens a member device by path; the default handles files, block devices and NBD URIs. */
export type OpenMemberDevice = (path: string) => Promise<MemberDevice>;

/** A label as written during a rebuild: the member holds the pool's metadata, not yet its data. */
type RebuildingLabel = PoolLabel & { rebuilding?: boolean };

/**
 * Refuses a device that holds something (see device-signature.ts) unless `force`; a member of
 * a pool this node serves is refused even then, since overwriting it breaks a live pool.
 */
export async function refuseDeviceWithData(device: MemberDevice, options: { force?: boolean; livePoolUuids?: ReadonlySet<string> }): Promise<void> {
  const found = await readDeviceSignature(device);
  if (!found) return;
  const details = { device: device.path, found: found.kind, ...(found.pool ? { pool: found.pool } : {}) };
  if (found.poolUuid && options.livePoolUuids?.has(found.poolUuid)) {
    throw new NubisError(
      'POOL_DEVICE_IN_USE',
      `Device ${device.path} already belongs to pool ${found.pool}, which this node serves; take it out of that pool first`,
      { details },
    );
  }
  if (options.force) return;
  if (found.kind === 'nubis-pool') {
    const owner = found.pool ? `already belongs to pool ${found.pool} (it holds ${found.description})` : `holds ${found.description}`;
    throw new NubisError('POOL_DEVICE_IN_USE', `Device ${device.path} ${owner}; pass --force to overwrite it`, { details });
  }
  throw new NubisError('POOL_DEVICE_HAS_DATA', `Device ${device.path} holds ${found.description}; pass --force to overwrite it`, { details });
}

/** The encoded label of member `memberIndex`; `rebuilding` marks a member whose data is not there yet. */
export function encodeMemberLabel(
  geometry: PoolGeometry,
  pool: { poolUuid: string; poolName: string; memberIndex: number; createdAt: string; rebuilding?: boolean },
): Buffer {
  const label: RebuildingLabel = {
    poolUuid: pool.poolUuid,
    poolName: pool.poolName,
    memberIndex: pool.memberIndex,
    memberCount: geometry.memberCount,
    layout: geometry.layout,
    chunkBytes: geometry.chunkBytes,
    allocationUnitBytes: geometry.allocationUnitBytes,
    slotBytes: geometry.slotBytes,
    journalBytes: geometry.journalBytes,
    dataStartBytes: geometry.dataStartBytes,
    rows: geometry.rows,
    createdAt: pool.createdAt,
  };
  if (pool.rebuilding) label.rebuilding = true;
  return encodeLabel(label);
}

/** Writes an empty pool (checkpoint, journal, label) on each of `devices`, in member order. */
export async function formatMembers(devices: MemberDevice[], geometry: PoolGeometry, state: PoolState, poolName: string): Promise<void> {
  const poolUuid = randomUUID();
  const createdAt = new Date().toISOString();
  const checkpoint = encodeCheckpoint(state, 1, 0);
  const marker = new JournalWriter().encode(1, 1);
  for (let index = 0; index < devices.length; index++) {
    const device = devices[index]!;
    // Metadata first, label last: a device with a label always has valid metadata.
    await device.write(checkpoint, 0, checkpoint.length, checkpointSlotOffset(geometry, 0));
    // Zeroes over the header of slot 1, so that no checkpoint an earlier pool left there is read.
    await device.write(Buffer.alloc(JOURNAL_HEADER_BYTES), 0, JOURNAL_HEADER_BYTES, checkpointSlotOffset(geometry, 1));
    await device.write(marker, 0, marker.length, journalStartOffset(geometry));
    await device.flush();
    const labelBlock = encodeMemberLabel(geometry, { poolUuid, poolName, memberIndex: index, createdAt });
    await device.write(labelBlock, 0, labelBlock.length, 0);
    await device.flush();
  }
}

/**
 * Opens `paths` and sorts the devices that carry a label of one pool (the first found) into its
 * member slots; a slot no device claims stays 'missing'. Throws POOL_NOT_FOUND when no device
 * has a readable label.
 */
export async function findMembers(paths: string[], openDevice: OpenMemberDevice): Promise<{ label: PoolLabel; members: MemberSlot[] }> {
  const found: Array<{ path: string; device: MemberDevice; label: PoolLabel }> = [];
  const problems: string[] = [];
  for (const path of paths) {
    let device: MemberDevice | undefined;
    try {
      device = await openDevice(path);
      const block = Buffer.alloc(LABEL_BYTES);
      await device.read(block, 0, LABEL_BYTES, 0);
      const label = decodeLabel(block);
      if (!label) throw new Error('no pool label');
      found.push({ path, device, label });
    } catch (error) {
      problems.push(`${path}: ${(error as Error).message}`);
      await device?.close().catch(() => undefined);
    }
  }
  if (found.length === 0) {
    throw new NubisError('POOL_NOT_FOUND', `None of the devices holds a readable pool label (${problems.join('; ')})`, {
      details: { devices: paths },
    });
  }
  const reference = found[0]!.label;
  const members: MemberSlot[] = Array.from({ length: reference.memberCount }, (_, index) => ({
    index,
    path: '',
    state: 'missing' as const,
    rebuiltRows: 0,
    readErrors: 0,
    writeErrors: 0,
    checksumErrors: 0,
  }));
  for (const entry of found) {
    const slot = members[entry.label.memberIndex];
    if (entry.label.poolUuid !== reference.poolUuid || !slot || slot.device) {
      await entry.device.close();
      continue;
    }
    slot.device = entry.device;
    slot.path = entry.path;
    slot.state = (entry.label as RebuildingLabel).rebuilding ? 'rebuilding' : 'online';
  }
  return { label: reference, members };
}
