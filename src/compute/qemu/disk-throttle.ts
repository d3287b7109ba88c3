/**
 * A disk's IO limits as QEMU applies them: the arguments of QMP `block_set_io_throttle` for the
 * disk's virtio-blk device (QAPI block.json, BlockIOThrottle). The throttling lives in the
 * device's block backend, so it is set after QEMU starts (before the guest can have done much
 * IO), again on a migration's destination (it is not part of the migration stream), on a disk
 * attached while the VM runs, and live when the limits change. All six rates are required by
 * QMP; 0 means "no limit".
 */
import type { DiskLimits, VmSpec } from '../vm-spec.ts';
import { NubisError } from '../../core/errors.ts';

/** The QMP arguments of `block_set_io_throttle` (QAPI BlockIOThrottle, the subset Nubis sets). */
export interface BlockIoThrottleArgs {
  id: string;
  iops: number;
  iops_rd: number;
  iops_wr: number;
  bps: number;
  bps_rd: number;
  bps_wr: number;
  iops_max?: number;
  bps_max?: number;
  iops_max_length?: number;
  bps_max_length?: number;
}

const RATE_LIMIT = 1e12;

/**
 * Refuses limits QEMU would refuse, or that could never mean what they say, naming the disk:
 * a total rate beside a read or write rate of the same kind (QEMU takes one or the other), a
 * burst below its limit or with no limit to burst above, a burst length without a burst.
 */
export function checkDiskLimits(limits: DiskLimits, disk: string): void {
  const fail = (why: string) => {
    throw new NubisError('VALIDATION_FAILED', `IO limits of disk ${disk}: ${why}`);
  };
  for (const [key, value] of Object.entries(limits)) {
    if (!Number.isInteger(value) || value < 1 || value > RATE_LIMIT) fail(`${key} must be a whole number from 1 to ${RATE_LIMIT}, not ${value}`);
  }
  if (limits.iops !== undefined && (limits.iopsRead !== undefined || limits.iopsWrite !== undefined))
    fail('give iops for reads and writes together, or iopsRead/iopsWrite, not both');
  if (limits.bytesPerSec !== undefined && (limits.bytesReadPerSec !== undefined || limits.bytesWritePerSec !== undefined))
    fail('give bytesPerSec for reads and writes together, or bytesReadPerSec/bytesWritePerSec, not both');
  if (limits.iopsBurst !== undefined) {
    if (limits.iops === undefined) fail('an operations burst needs an iops limit to burst above');
    else if (limits.iopsBurst < limits.iops) fail(`the operations burst (${limits.iopsBurst}) is below the iops limit (${limits.iops})`);
  }
  if (limits.bytesPerSecBurst !== undefined) {
    if (limits.bytesPerSec === undefined) fail('a bytes burst needs a bytesPerSec limit to burst above');
    else if (limits.bytesPerSecBurst < limits.bytesPerSec)
      fail(`the bytes burst (${limits.bytesPerSecBurst}) is below the bytes limit (${limits.bytesPerSec})`);
  }
  if (limits.burstSeconds !== undefined && limits.iopsBurst === undefined && limits.bytesPerSecBurst === undefined)
    fail('burstSeconds needs an iopsBurst or bytesPerSecBurst');
}

/** The QMP arguments that set `limits` (none: every limit off) on the device `deviceId`. */
export function blockIoThrottleArgs(deviceId: string, limits: DiskLimits | undefined): BlockIoThrottleArgs {
  const given = limits ?? {};
  checkDiskLimits(given, deviceId);
  return {
    id: deviceId,
    iops: given.iops ?? 0,
    iops_rd: given.iopsRead ?? 0,
    iops_wr: given.iopsWrite ?? 0,
    bps: given.bytesPerSec ?? 0,
    bps_rd: given.bytesReadPerSec ?? 0,
    bps_wr: given.bytesWritePerSec ?? 0,
    ...(given.iopsBurst !== undefined ? { iops_max: given.iopsBurst, iops_max_length: given.burstSeconds ?? 1 } : {}),
    ...(given.bytesPerSecBurst !== undefined ? { bps_max: given.bytesPerSecBurst, bps_max_length: given.burstSeconds ?? 1 } : {}),
  };
}

/** Whether `limits` limit anything. */
export function limitsAnything(limits: DiskLimits | undefined): boolean {
  return limits !== undefined && Object.keys(limits).length > 0;
}

/**
 * The disks of `spec` with disk `diskId`'s limits replaced by `limits` (undefined: none);
 * refuses a disk the VM does not have.
 */
export function specWithDiskLimits(spec: Pick<VmSpec, 'name' | 'disks'>, diskId: string, limits: DiskLimits | undefined): Pick<VmSpec, 'disks'> {
  if (!spec.disks.some((disk) => disk.id === diskId)) throw new NubisError('VM_DISK_NOT_FOUND', `VM ${spec.name} has no disk ${diskId}`);
  return {
    disks: spec.disks.map((disk) => {
      if (disk.id !== diskId) return disk;
      const { limits: _old, ...rest } = disk;
      return limitsAnything(limits) ? { ...rest, limits } : rest;
    }),
  };
}
