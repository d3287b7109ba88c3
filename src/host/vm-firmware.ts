/**
 * A VM's UEFI firmware: Debian's OVMF (package `ovmf`), its code shared read-only by every VM
 * and its variable store (boot entries, settings) copied once into the VM's folder, where it
 * lasts from boot to boot and goes with the VM.
 */
import { constants, copyFile, mkdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { NubisError } from '../core/errors.ts';

/** OVMF without Secure Boot's SMM requirement, 4 MiB flash layout (Debian 12's ovmf package). */
export const OVMF_CODE_PATH = '/usr/share/OVMF/OVMF_CODE_4M.fd';
export const OVMF_VARS_TEMPLATE_PATH = '/usr/share/OVMF/OVMF_VARS_4M.fd';

/** The firmware files of the VM in `vmDir`, its variable store created from the template when missing. */
export async function prepareUefiFirmware(vmDir: string): Promise<{ codePath: string; varsPath: string }> {
  if (!existsSync(OVMF_CODE_PATH) || !existsSync(OVMF_VARS_TEMPLATE_PATH))
    throw new NubisError('VM_START_FAILED', `UEFI firmware is missing on this host (${OVMF_CODE_PATH}); install the ovmf package`);
  const varsPath = join(vmDir, 'OVMF_VARS.fd');
  await mkdir(vmDir, { recursive: true });
  // COPYFILE_EXCL: an existing store holds the VM's own variables and is never overwritten.
  if (!existsSync(varsPath)) await copyFile(OVMF_VARS_TEMPLATE_PATH, varsPath, constants.COPYFILE_EXCL);
  return { codePath: OVMF_CODE_PATH, varsPath };
}
