/** `vm create --tpm --firmware`, `vm attest` and how `vm show` prints a VM's platform (control/trusted-launch.ts). */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import type { Vm } from '../../wire/schemas.ts';
import type { VmAttestation } from '../../wire/trusted-launch-schemas.ts';
import { client, globals, projectQuery } from '../common.ts';
import { printJson, printTable } from '../output.ts';

/** What the platform options parse to. */
export interface PlatformOptions {
  tpm?: boolean;
  firmware?: 'bios' | 'uefi';
}

/** Adds --tpm and --firmware to `vm create`. */
export function addPlatformOptions(command: Command): Command {
  return command
    .option('--tpm', 'give it a TPM 2.0 (swtpm on its host; its state moves with it in live migration)')
    .option('--firmware <bios|uefi>', 'bios (default: direct kernel boot or SeaBIOS) or uefi (OVMF, with a variable store of its own)', (value: string) => {
      if (value !== 'bios' && value !== 'uefi') throw new NubisError('VALIDATION_FAILED', `--firmware takes bios or uefi, not ${value}`);
      return value;
    });
}

/** The request fields of the options given. */
export function platformOf(options: PlatformOptions): Record<string, unknown> {
  return { ...(options.tpm ? { tpm: true } : {}), ...(options.firmware ? { firmware: options.firmware } : {}) };
}

/** `vm show`'s line: its firmware and TPM. */
export function describePlatform(vm: Pick<Vm, 'tpm' | 'firmware'>): string {
  return `${vm.firmware === 'uefi' ? 'UEFI (OVMF)' : 'BIOS / direct kernel'}${vm.tpm ? ', TPM 2.0' : ''}`;
}

/** Registers `vm attest`. */
export function addAttestCommand(vm: Command): void {
  vm.command('attest <vm>')
    .description("Show the VM's launch measurements (what its QEMU really runs), each with its expected value and whether it matches")
    .action(async (name: string, _options: unknown, command: Command) => {
      const attestation = await client(command).request<Static<typeof VmAttestation>>(
        'GET',
        `/v1/vms/${encodeURIComponent(name)}/attestation${projectQuery(command)}`,
      );
      if (globals(command).json) return printJson(attestation);
      const required = attestation.requireTrustedLaunch ? 'required by its project' : 'not required by its project';
      console.log(
        `${attestation.vm}: ${attestation.verdict}${attestation.measuredAt ? `, launch measured ${attestation.measuredAt}` : ''} (trusted launch ${required})`,
      );
      const short = (digest: string | undefined) => (digest ? `${digest.slice(0, 16)}...` : '-');
      printTable(
        ['COMPONENT', 'MEASURED', 'EXPECTED', 'MATCH', 'PATH'],
        attestation.components.map((c) => [
          c.component,
          short(c.measured),
          short(c.expected),
          c.matches === undefined ? 'first seen' : c.matches ? 'yes' : 'NO',
          c.component === 'command-line' ? '(canonical command line)' : c.path,
        ]),
      );
    });
}
