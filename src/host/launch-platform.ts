/**
 * What the agent prepares before a VM's QEMU starts, beyond its devices: the swtpm of a VM with a
 * TPM (vm-tpm.ts), the UEFI firmware files (vm-firmware.ts), and the kernel and initrd opened
 * here and handed to QEMU as open files, so that what QEMU loads is the very file measured
 * (launch-measurement.ts) and not whatever a path names a moment later.
 */
import { closeSync, openSync } from 'node:fs';
import type { LaunchPlatform } from '../compute/qemu/platform-args.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import { INITRD_FD, KERNEL_FD } from './launch-measurement.ts';
import { prepareUefiFirmware } from './vm-firmware.ts';
import { startVmTpm, type VmTpm } from './vm-tpm.ts';

/** A prepared platform: the options and spec QEMU starts from, and how to undo it. */
export interface PreparedPlatform {
  platform: LaunchPlatform;
  /** The spec with the boot files named as QEMU's inherited fds. */
  qemuSpec: VmSpec;
  firmwareCodePath?: string;
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
    let qemuSpec = spec;
    if (spec.boot.kind === 'kernel') {
      fds.push(openBootFile(spec.boot.kernelPath, 'kernel'), openBootFile(spec.boot.initrdPath, 'initrd'));
      qemuSpec = { ...spec, boot: { ...spec.boot, kernelPath: `/proc/self/fd/${KERNEL_FD}`, initrdPath: `/proc/self/fd/${INITRD_FD}` } };
    }
    const uefi = spec.firmware === 'uefi' ? await prepareUefiFirmware(vmDir) : undefined;
    tpm = spec.tpm ? await startVmTpm(vmDir, { incoming: options.incoming }) : undefined;
    const started = tpm;
    return {
      platform: { tpmSocket: tpm?.socket, uefi, startPaused: options.startPaused, inheritFds: [...fds] },
      qemuSpec,
      firmwareCodePath: uefi?.codePath,
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
