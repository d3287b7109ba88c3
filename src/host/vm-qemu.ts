/**
 * The QEMU side of a managed VM as the agent sees it: the part of `QemuProcess` a `ManagedVm`
 * drives, and the two ways to get one (launch, re-attach). A unit test passes in a driver of fake
 * processes that hang or fail on cue, as `src/storage/pool/member-device.ts` does for devices.
 */
import { QemuProcess, type QemuProcessEvents, runtimePathsOf } from '../compute/qemu/qemu-process.ts';
import type { QemuLaunchOptions } from '../compute/qemu/command-line.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import type { VmCgroups } from './cgroups.ts';
import { limitsAnything } from '../compute/qemu/disk-throttle.ts';
import { startBalloon } from './vm-memory.ts';
import type { LaunchMeasurement } from '../agent-api/contract.ts';
import { prepareLaunchPlatform } from './launch-platform.ts';
import { measureLaunch, verifyLaunch } from './launch-measurement.ts';
import { checkRunSocket } from './vm-files.ts';

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
  | 'loadMigrationTls'
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
  attach: (vmDir, events) => {
    checkRunSocket(runtimePathsOf(vmDir).qmpSocket);
    return QemuProcess.attach(vmDir, events);
  },
};

/** The measurements of each QEMU's launch, for the VM's status (see `launchMeasurementOf`). */
const launches = new WeakMap<VmQemu, LaunchMeasurement>();

/** What `launchInCgroup` measured of `qemu`'s launch; undefined when it could not measure. */
export function launchMeasurementOf(qemu: VmQemu): LaunchMeasurement | undefined {
  return launches.get(qemu);
}

/**
 * Starts `spec`'s QEMU through `driver` and puts it in the VM's cgroup with its CPU controls
 * (when the host has cgroups: `cgroups` undefined runs it where the agent runs), then sets its
 * disks' IO limits and its balloon. Its TPM and firmware are prepared first (launch-platform.ts),
 * and its launch is measured; a VM whose spec asks for a trusted launch starts paused and runs
 * only once its measurements match. A QEMU that cannot be given its controls or does not match
 * is stopped again: a VM never runs without the controls or the trust it asked for. Its swtpm
 * ends with it.
 */
export async function launchInCgroup(
  driver: QemuDriver,
  cgroups: VmCgroups | undefined,
  spec: VmSpec,
  vmDir: string,
  options: QemuLaunchOptions & { events: QemuProcessEvents },
): Promise<VmQemu> {
  const trusted = spec.trustedLaunch !== undefined;
  const prepared = await prepareLaunchPlatform(spec, vmDir, { incoming: options.incoming !== undefined, startPaused: trusted && !options.incoming });
  let qemu: VmQemu;
  try {
    qemu = await driver.launch(prepared.qemuSpec, vmDir, { ...options, platform: prepared.platform });
  } catch (error) {
    await prepared.release();
    throw error;
  }
  prepared.closeFiles();
  // A detached QEMU (agent shutdown) runs on with its swtpm; one that ended takes its swtpm along.
  void qemu.exited.then((ended) => (ended === 'stopped' || ended === 'crashed' ? prepared.release() : undefined));
  try {
    await cgroups?.place(spec.id, qemu.pid, spec.cpuControls);
    for (const disk of spec.disks) if (limitsAnything(disk.limits)) await qemu.setDiskLimits(disk.id, disk.limits);
    await startBalloon(qemu.qmp, spec, { incoming: options.incoming !== undefined });
    const measured = await measureLaunch(qemu.pid, vmDir, spec, prepared.firmwareCodePath).catch((error) => {
      if (trusted) throw error;
      return undefined; // measured where it can be; only a trusted launch depends on it
    });
    if (measured) launches.set(qemu, measured);
    if (trusted) {
      verifyLaunch(spec.name, measured!, spec.trustedLaunch!.expected);
      if (!options.incoming) await qemu.resume();
    }
  } catch (error) {
    await qemu.stop({ force: true }).catch(() => undefined);
    await cgroups?.remove(spec.id);
    await prepared.release();
    throw error;
  }
  return qemu;
}
