/** The CPU-control options of `vm create` and `vm set` (`none` takes one away on set), and how `vm show` prints them. */
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import type { Vm } from '../../wire/schemas.ts';

/** What the options parse to: a value, or (set only) `none`, which the request says as null. */
export interface CpuControlOptions {
  cpuLimit?: number | 'none';
  cpuWeight?: number | 'none';
  cpuPin?: string;
}

/** Adds --cpu-limit, --cpu-weight and --cpu-pin; with `clearable`, each also takes `none`. */
export function addCpuControlOptions(command: Command, clearable: boolean): Command {
  const none = clearable ? " ('none' takes it away)" : '';
  // Commander turns a parsed null into '', so `none` stays a word until the request is built.
  const orNone =
    <T>(parse: (value: string) => T) =>
    (value: string): T | 'none' =>
      clearable && value === 'none' ? 'none' : parse(value);
  return command
    .option('--cpu-limit <percent>', `cap its CPU time, in percent of one host CPU (50%: half a CPU; 200%: two)${none}`, orNone(percent))
    .option('--cpu-weight <n>', `its share against the host's other VMs when CPUs are short, 1-10000 (default 100)${none}`, orNone(weight))
    .option('--cpu-pin <cpus>', `run only on these host CPUs, as 0-3,6${none}`, orNone(cpuList));
}

/** The request fields of the options given. */
export function cpuControlsOf(options: CpuControlOptions): Record<string, unknown> {
  return {
    ...(options.cpuLimit !== undefined ? { cpuLimit: options.cpuLimit === 'none' ? null : options.cpuLimit } : {}),
    ...(options.cpuWeight !== undefined ? { cpuWeight: options.cpuWeight === 'none' ? null : options.cpuWeight } : {}),
    ...(options.cpuPin !== undefined ? { cpuPin: options.cpuPin === 'none' ? null : options.cpuPin } : {}),
  };
}

/** `vm show`'s line: what binds the VM's CPUs, or undefined when nothing does. */
export function describeCpuControls(vm: Pick<Vm, 'cpuLimit' | 'cpuWeight' | 'cpuPin'>): string | undefined {
  const parts = [
    vm.cpuLimit !== undefined ? `limit ${vm.cpuLimit}%` : undefined,
    vm.cpuWeight !== undefined ? `weight ${vm.cpuWeight}` : undefined,
    vm.cpuPin !== undefined ? `pinned to ${vm.cpuPin}` : undefined,
  ].filter(Boolean);
  return parts.length > 0 ? parts.join(', ') : undefined;
}

function percent(value: string): number {
  const match = /^(\d{1,4})%?$/.exec(value);
  if (!match || Number(match[1]) < 1) throw new NubisError('VALIDATION_FAILED', `--cpu-limit takes a percentage such as 50% (of one host CPU), not ${value}`);
  return Number(match[1]);
}

function weight(value: string): number {
  if (!/^\d{1,5}$/.test(value) || Number(value) < 1 || Number(value) > 10_000)
    throw new NubisError('VALIDATION_FAILED', `--cpu-weight takes a whole number from 1 to 10000, not ${value}`);
  return Number(value);
}

function cpuList(value: string): string {
  if (!/^\d{1,4}(-\d{1,4})?(,\d{1,4}(-\d{1,4})?)*$/.test(value))
    throw new NubisError('VALIDATION_FAILED', `--cpu-pin takes host CPUs such as 0-3,6, not ${value}`);
  return value;
}
