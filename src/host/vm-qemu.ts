/**
 * The QEMU side of a managed VM as the agent sees it: the part of `QemuProcess` a `ManagedVm`
 * drives, and the two ways to get one (launch, re-attach). A unit test passes in a driver of fake
 * processes that hang or fail on cue, as `src/storage/pool/member-device.ts` does for devices.
 */
import { QemuProcess, type QemuProcessEvents } from '../compute/qemu/qemu-process.ts';
import type { QemuLaunchOptions } from '../compute/qemu/command-line.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import type { VmCgroups } from './cgroups.ts';
import { limitsAnything } from '../compute/qemu/disk-throttle.ts';
import { startBalloon } from './vm-memory.ts';

/** What a `ManagedVm` calls on its QEMU process. */
export type VmQemu = Pick<
  QemuProcess,
  | 'pid'
  | 'qmp'
  | 'state'
  | 'stopRequested'
  | 'exited'
  | 'pause'
  | 'resume'
  | 'reset'
  | 'stop'
  | 'detach'
  | 'queryRunState'
  | 'blockStats'
  | 'attachDisk'
  | 'detachDisk'
  | 'setDiskLimits'
  | 'setMigrationCapabilities'
  | 'acceptIncomingMigration'
  | 'startMigration'
  | 'migrationStatus'
  | 'setMigrationParameters'
  | 'sampleDirtyRate'
  | 'pauseMigration'
  | 'recoverIncomingMigration'
  | 'resumeMigration'
  | 'continueMigration'
  | 'startPostcopy'
  | 'cancelMigration'
  | 'exportDisksForMirror'
  | 'stopDiskExports'
  | 'startDiskMirrors'
  | 'diskMirrors'
  | 'endDiskMirrors'
  | 'announceSelf'
  | 'setVncPassword'
  | 'expireVncPassword'
>;

/** Starts a VM's QEMU, or finds the one still running in its folder after an agent restart. */
export interface QemuDriver {
  launch(spec: VmSpec, vmDir: string, options: QemuLaunchOptions & { events: QemuProcessEvents }): Promise<VmQemu>;
  /** Undefined when no QEMU of this VM runs; rejects when one runs but does not answer. */
  attach(vmDir: string, events: QemuProcessEvents): Promise<VmQemu | undefined>;
}

/** The real driver: QEMU processes on this host. */
export const qemuProcessDriver: QemuDriver = {
  launch: (spec, vmDir, options) => QemuProcess.launch(spec, vmDir, options),
  attach: (vmDir, events) => QemuProcess.attach(vmDir, events),
};

/**
 * Starts `spec`'s QEMU through `driver`, puts it in the VM's cgroup with its CPU controls (when
 * the host has cgroups: `cgroups` undefined runs it where the agent runs), sets its disks' IO
 * limits and its balloon. A QEMU that cannot be given them is stopped again: a VM never runs
 * without the controls it asked for.
 */
export async function launchInCgroup(
  driver: QemuDriver,
  cgroups: VmCgroups | undefined,
  spec: VmSpec,
  vmDir: string,
  options: QemuLaunchOptions & { events: QemuProcessEvents },
): Promise<VmQemu> {
  const qemu = await driver.launch(spec, vmDir, options);
  try {
    await cgroups?.place(spec.id, qemu.pid, spec.cpuControls);
    for (const disk of spec.disks) if (limitsAnything(disk.limits)) await qemu.setDiskLimits(disk.id, disk.limits);
    await startBalloon(qemu.qmp, spec, { incoming: options.incoming !== undefined });
  } catch (error) {
    await qemu.stop({ force: true }).catch(() => undefined);
    await cgroups?.remove(spec.id);
    throw error;
  }
  return qemu;
}
