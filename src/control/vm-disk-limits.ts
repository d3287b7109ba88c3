/**
 * A VM's disk IO limits between the API and its spec. The API names a disk by the device the
 * guest sees (`vdb`: the VM's disk with device index 1, as `vm show` lists it); the spec keeps the
 * limits on the disk itself (`disk1`), where the host applies them at every start, on a migration's
 * destination and live (compute/qemu/disk-throttle.ts).
 */
import type { DiskLimits, VmSpec } from '../compute/vm-spec.ts';
import { checkDiskLimits, limitsAnything, specWithDiskLimits } from '../compute/qemu/disk-throttle.ts';
import { NubisError } from '../core/errors.ts';

/** The API's form: limits by guest device; null (on update) lifts a disk's limits. */
export type DiskLimitFields = Record<string, DiskLimits | null>;

const DEVICE = /^vd([a-p])$/;

/** The spec's disk id of guest device `device` (vdb -> disk1), refusing a name that is no device. */
export function diskIdOfDevice(device: string, vmName: string): string {
  const match = DEVICE.exec(device);
  if (!match)
    throw new NubisError(
      'VALIDATION_FAILED',
      `${JSON.stringify(device.slice(0, 32))} is not a disk device of VM ${vmName}; name one as vm show lists it (vda, vdb, ...)`,
    );
  return `disk${match[1].charCodeAt(0) - 97}`;
}

/** The guest device of the spec's disk `diskId` (disk1 -> vdb). */
function deviceOfDiskId(diskId: string): string | undefined {
  const match = /^disk(\d{1,2})$/.exec(diskId);
  return match && Number(match[1]) < 16 ? `vd${String.fromCharCode(97 + Number(match[1]))}` : undefined;
}

/**
 * The disks whose limits `change` sets, each checked: the VM must have the disk, and the limits
 * must mean something QEMU can apply. Returns the spec's disk id with its limits (empty: none).
 */
export function diskLimitChanges(spec: Pick<VmSpec, 'disks'>, change: DiskLimitFields, vmName: string): Array<{ diskId: string; limits: DiskLimits }> {
  return Object.entries(change).map(([device, limits]) => {
    const diskId = diskIdOfDevice(device, vmName);
    if (!spec.disks.some((disk) => disk.id === diskId))
      throw new NubisError('VM_DISK_NOT_FOUND', `VM ${vmName} has no disk ${device}; vm show lists its disks`);
    if (limits) checkDiskLimits(limits, device);
    return { diskId, limits: limits ?? {} };
  });
}

/** The spec after `changes` (from diskLimitChanges). */
export function withDiskLimits(spec: VmSpec, changes: ReadonlyArray<{ diskId: string; limits: DiskLimits }>): VmSpec {
  let next = spec;
  for (const change of changes) next = { ...next, ...specWithDiskLimits(next, change.diskId, change.limits) };
  return next;
}

/** The API's view of a spec's disk limits: by guest device, only disks that have some. */
export function diskLimitFields(spec: Pick<VmSpec, 'disks'>): { diskLimits?: Record<string, DiskLimits> } {
  const limited = spec.disks.flatMap((disk) => {
    const device = deviceOfDiskId(disk.id);
    return device && limitsAnything(disk.limits) ? [[device, disk.limits!] as const] : [];
  });
  return limited.length > 0 ? { diskLimits: Object.fromEntries(limited) } : {};
}
