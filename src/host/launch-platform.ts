/**
 * What the agent prepares before a VM's QEMU starts, beyond its devices: the VM's user and the
 * files it owns (vm-files.ts, vm-launcher.ts), the swtpm of a VM with a TPM (vm-tpm.ts), the
 * UEFI firmware files (vm-firmware.ts), its taps opened for it, and the kernel and initrd opened
 * here and handed to QEMU as open files, so that what QEMU loads is the very file measured
 * (launch-measurement.ts) and not whatever a path names a moment later.
 */
import { closeSync, openSync } from 'node:fs';
import type { LaunchPlatform } from '../compute/qemu/platform-args.ts';
import { runtimePathsOf } from '../compute/qemu/qemu-process.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import { type VmUser, vmUserOf } from '../compute/vm-user.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import { INITRD_FD, KERNEL_FD } from './launch-measurement.ts';
import { giveDisksTo, giveFileTo, prepareVmFolder, templateGroupsOf } from './vm-files.ts';
import { prepareUefiFirmware } from './vm-firmware.ts';
import { launcherFor, vmUsersAvailable } from './vm-launcher.ts';
import { startVmTpm, type VmTpm } from './vm-tpm.ts';

/** A prepared platform: the options and spec QEMU starts from, and how to undo it. */
export interface PreparedPlatform {
  platform: LaunchPlatform;
  /** The spec with the boot files named as QEMU's inherited fds. */
  qemuSpec: VmSpec;
  firmwareCodePath?: string;
  /** The user QEMU runs as; undefined when the agent is not root and QEMU runs as the agent does. */
  user?: VmUser;
  /** Closes the agent's copies of the handed-over files (QEMU keeps its own). */
  closeFiles(): void;
  /** Ends the swtpm; called when QEMU ends or fails to start. */
  release(): Promise<void>;
}

/**
 * Prepares the platform of `spec` in `vmDir`. `incoming` starts the TPM empty (a migration brings
 * its state); `startPaused` starts QEMU with its vCPUs stopped, for a launch checked before it runs.
 */
export async function prepareLaunchPlatform(spec: VmSpec, vmDir: string, options: { incoming: boolean; startPaused: boolean }): Promise<PreparedPlatform> {
  const fds: number[] = [];
  let tpm: VmTpm | undefined;
  const closeFiles = () => {
    for (const fd of fds.splice(0)) closeSync(fd);
  };
  try {
    const user = vmUsersAvailable() ? vmUserOf(spec) : undefined;
    let templateGroups: number[] = [];
    if (user) {
      await prepareVmFolder(vmDir, runtimePathsOf(vmDir).runDir, user);
      await giveDisksTo(spec, user);
      templateGroups = templateGroupsOf(spec);
    }
    let qemuSpec = spec;
    if (spec.boot.kind === 'kernel') {
      fds.push(openBootFile(spec.boot.kernelPath, 'kernel'), openBootFile(spec.boot.initrdPath, 'initrd'));
      qemuSpec = { ...spec, boot: { ...spec.boot, kernelPath: `/proc/self/fd/${KERNEL_FD}`, initrdPath: `/proc/self/fd/${INITRD_FD}` } };
    }
    const uefi = spec.firmware === 'uefi' ? await prepareUefiFirmware(vmDir) : undefined;
    if (uefi && user) await giveFileTo(uefi.varsPath, user, `UEFI variable store of VM ${spec.name}`);
    tpm = spec.tpm ? await startVmTpm(vmDir, { incoming: options.incoming, launcher: user && (await launcherFor(user)) }) : undefined;
    const started = tpm;
    // A QEMU running as the VM's user gets its taps opened, on the descriptors after the boot files.
    const taps = user ? spec.nics.flatMap((nic) => (nic.mode === 'tap' && nic.tapName ? [{ nic: nic.id, name: nic.tapName }] : [])) : [];
    const tapFds = Object.fromEntries(taps.map((tap, index) => [tap.nic, 3 + fds.length + index]));
    const launcher =
      user &&
      (await launcherFor(
        user,
        taps.map((tap) => ({ fd: tapFds[tap.nic], name: tap.name })),
        templateGroups,
      ));
    return {
      platform: {
        tpmSocket: tpm?.socket,
        uefi,
        startPaused: options.startPaused,
        inheritFds: [...fds],
        ...(launcher ? { launcher: { command: launcher.command, args: launcher.args }, tapFds } : {}),
      },
      qemuSpec,
      firmwareCodePath: uefi?.codePath,
      user,
      closeFiles,
      release: async () => {
        closeFiles();
        await started?.stop();
      },
    };
  } catch (error) {
    closeFiles();
    await tpm?.stop();
    throw error;
  }
}

function openBootFile(path: string, what: string): number {
  try {
    return openSync(path, 'r');
  } catch (error) {
    throw new NubisError('VM_START_FAILED', `Cannot open the ${what} ${path}: ${messageOf(error)}`, { cause: error });
  }
}
