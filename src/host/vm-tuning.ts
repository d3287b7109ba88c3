/**
 * A running VM's resource controls changed in place: its CPU controls (in its cgroup,
 * host/cgroups.ts) and its disks' IO limits (in QEMU, compute/qemu/disk-throttle.ts). The change
 * reaches the running QEMU first, then the spec the VM keeps for every later start: a refusal
 * by the host leaves the VM as it was.
 */
import type { CpuControls, DiskLimits, VmSpec } from '../compute/vm-spec.ts';
import { limitsAnything } from '../compute/qemu/disk-throttle.ts';
import { NubisError } from '../core/errors.ts';
import type { VmCgroups } from './cgroups.ts';
import type { VmQemu } from './vm-qemu.ts';

/** What one change sets: CPU controls (null: none), or one disk's IO limits (empty: none). */
export type VmTuning = { cpuControls: CpuControls | null } | { disk: string; limits: DiskLimits };

/** Applies `change` to the VM's running QEMU and cgroup (when it runs) and returns its spec after it. */
export async function applyTuning(
  spec: VmSpec,
  change: VmTuning,
  running: { vmName: string; qemu: VmQemu | undefined; cgroups: VmCgroups | undefined },
): Promise<VmSpec> {
  if ('cpuControls' in change) {
    const controls = change.cpuControls ?? undefined;
    if (running.qemu) await running.cgroups?.apply(spec.id, controls);
    const { cpuControls: _old, ...rest } = spec;
    return controls ? { ...rest, cpuControls: controls } : rest;
  }
  const disk = spec.disks.find((candidate) => candidate.id === change.disk);
  if (!disk) throw new NubisError('VM_DISK_NOT_FOUND', `VM ${running.vmName} has no disk ${change.disk}`);
  const limits = limitsAnything(change.limits) ? change.limits : undefined;
  await running.qemu?.setDiskLimits(disk.id, limits);
  return {
    ...spec,
    disks: spec.disks.map((candidate) => {
      if (candidate !== disk) return candidate;
      const { limits: _old, ...rest } = candidate;
      return limits ? { ...rest, limits } : rest;
    }),
  };
}
