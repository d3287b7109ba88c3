/**
 * The command-line options of a VM's platform beyond its devices: a TPM 2.0 backed by the host's
 * swtpm (host/vm-tpm.ts), UEFI firmware (OVMF) in two pflash drives, and a paused start for a
 * launch that must be measured before the guest runs (host/launch-measurement.ts). Pure, like
 * the rest of the command line.
 */
import { NubisError } from '../../core/errors.ts';
import type { VmSpec } from '../vm-spec.ts';

/** The host-side files of a VM's platform, prepared by the agent before QEMU starts. */
export interface LaunchPlatform {
  /** The control socket of the VM's swtpm (when its spec asks for a TPM). */
  tpmSocket?: string;
  /** OVMF's read-only code and the VM's own copy of the variable store (when it boots UEFI). */
  uefi?: { codePath: string; varsPath: string };
  /** Start with the vCPUs stopped (`-S`): the launch is checked before the guest runs. */
  startPaused?: boolean;
  /** Open files QEMU inherits as its fds 3, 4, ... (the spec names them `/proc/self/fd/N`). */
  inheritFds?: number[];
  /**
   * The descriptor QEMU finds each tap NIC's tap open on (by NIC id), for a QEMU that runs as the
   * VM's user and cannot open /dev/net/tun (the launcher opens them); absent: QEMU opens them by name.
   */
  tapFds?: Record<string, number>;
  /**
   * The program QEMU is started through (host/vm-launcher.ts: as the VM's own user) and its
   * arguments up to QEMU's program name, which follows them; absent: QEMU is started directly.
   */
  launcher?: { command: string; args: string[] };
}

/**
 * A host path as an option value: no control character (NUL, newline) belongs in one, and a
 * comma is doubled, as QEMU's option syntax escapes it (the same rule as command-line.ts).
 */
function pathValue(value: string, what: string): string {
  if (!/^[^\u0000-\u001f\u007f]+$/u.test(value))
    throw new NubisError('QEMU_INVALID_OPTION', `The ${what} ${JSON.stringify(value).slice(0, 80)} is not a valid path for a QEMU option; nothing was started`);
  return value.replaceAll(',', ',,');
}

/** The options for `spec`'s TPM, firmware and paused start; none for a VM that asks for none. */
export function platformArgs(spec: Pick<VmSpec, 'name' | 'tpm' | 'firmware'>, platform: LaunchPlatform | undefined): string[] {
  const args: string[] = [];
  if (spec.tpm) {
    if (!platform?.tpmSocket) throw new NubisError('QEMU_INVALID_OPTION', `VM ${spec.name} asks for a TPM but no swtpm socket was prepared for it`);
    const socket = pathValue(platform.tpmSocket, 'swtpm socket');
    // QEMU docs/specs/tpm.rst: the emulator backend talks to swtpm's control channel; CRB is the
    // TPM 2.0 interface Linux's tpm_crb and OVMF both drive.
    args.push('-chardev', `socket,id=chrtpm,path=${socket}`, '-tpmdev', 'emulator,id=tpm0,chardev=chrtpm', '-device', 'tpm-crb,tpmdev=tpm0');
  }
  if (spec.firmware === 'uefi') {
    if (!platform?.uefi) throw new NubisError('QEMU_INVALID_OPTION', `VM ${spec.name} boots UEFI but no firmware was prepared for it`);
    const code = pathValue(platform.uefi.codePath, 'firmware path');
    const vars = pathValue(platform.uefi.varsPath, 'firmware variable store');
    args.push(
      '-blockdev',
      `driver=file,node-name=fw-code-file,filename=${code},read-only=on`,
      '-blockdev',
      'driver=raw,node-name=fw-code,file=fw-code-file,read-only=on',
      '-blockdev',
      `driver=file,node-name=fw-vars-file,filename=${vars}`,
      '-blockdev',
      'driver=raw,node-name=fw-vars,file=fw-vars-file',
      // A second -machine merges into the first (QEMU keeps one set of machine options).
      '-machine',
      'pflash0=fw-code,pflash1=fw-vars',
    );
  }
  if (platform?.startPaused) args.push('-S');
  return args;
}
