/** `vm create --tpm --firmware`, `vm attest` and how `vm show` prints a VM's platform (control/trusted-launch.ts). */
import type { Static } from '@sinclair/typebox';
import { readFileSync } from 'node:fs';
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
    .option('--quote <file>', "verify a TPM quote of its PCRs 0-7 instead: the JSON that 'nubis-tool tpm-quote NONCE' printed in its guest")
    .action(async (name: string, options: { quote?: string }, command: Command) => {
      const path = `/v1/vms/${encodeURIComponent(name)}/attestation${options.quote ? '/quote' : ''}${projectQuery(command)}`;
      const attestation = await client(command).request<Static<typeof VmAttestation>>(
        options.quote ? 'POST' : 'GET',
        path,
        options.quote ? readQuote(options.quote) : undefined,
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
          c.component === 'command-line' ? '(canonical command line)' : c.path.slice(0, 100),
        ]),
      );
    });
}

/** The quote JSON of `file` (what nubis-tool printed), refused clearly when it is not JSON. */
function readQuote(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new NubisError('VALIDATION_FAILED', `Cannot read the quote file ${file}: ${(error as Error).message}`);
  }
  try {
    return JSON.parse(text.slice(text.indexOf('{'), text.lastIndexOf('}') + 1));
  } catch {
    throw new NubisError('VALIDATION_FAILED', `${file} holds no quote JSON; give what 'nubis-tool tpm-quote NONCE' printed`);
  }
}
