/** The memory options of `vm create` (--max-memory) and `vm set` (--memory), `--memory-reclaim` on both, and how `vm show` prints a VM's memory. */
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import type { Vm } from '../../wire/schemas.ts';

/** What the options parse to (`memory` is create's own --memory on create). */
export interface MemoryOptions {
  memory?: number;
  maxMemory?: number;
  memoryReclaim?: boolean;
}

/** Adds --max-memory (create) or --memory (set), and --memory-reclaim. */
export function addMemoryOptions(command: Command, onSet: boolean): Command {
  if (onSet) command.option('--memory <mib>', 'its current memory in MiB, up to its maximum (live through its balloon while it runs)', mib('--memory'));
  else
    command.option(
      '--max-memory <mib>',
      'its maximum memory in MiB (default --memory): vm set --memory can go up to it; quotas and placement count it',
      mib('--max-memory'),
    );
  return command.option('--memory-reclaim <on|off>', 'its host may balloon it down while the host is short of memory, and gives it back', onOrOff);
}

/** The request fields of the options given. */
export function memoryOf(options: MemoryOptions): Record<string, unknown> {
  return {
    ...(options.memory !== undefined ? { memoryMb: options.memory } : {}),
    ...(options.maxMemory !== undefined ? { maxMemoryMb: options.maxMemory } : {}),
    ...(options.memoryReclaim !== undefined ? { memoryReclaim: options.memoryReclaim } : {}),
  };
}

/** `vm show`'s memory lines: current and maximum, then (shown alone, while it runs) the guest's and the host's view. */
export function describeMemory(vm: Pick<Vm, 'memoryMb' | 'maxMemoryMb' | 'memoryReclaim' | 'memoryUsage'>): Array<[string, string | undefined]> {
  const usage = vm.memoryUsage;
  const guest = usage?.guest;
  const figures = guest
    ? [
        ['used', guest.usedMb],
        ['free', guest.freeMb],
        ['cached', guest.cachedMb],
        ['available', guest.availableMb],
        ['total', guest.totalMb],
      ].filter(([, value]) => value !== undefined)
    : [];
  const balloon = usage?.balloonMb !== undefined && usage.balloonMb !== vm.memoryMb ? `, balloon at ${usage.balloonMb} MiB` : '';
  const reclaim = usage?.reclaimTargetMb !== undefined ? `, reclaimed to ${usage.reclaimTargetMb} MiB` : '';
  return [
    ['Memory', `${vm.memoryMb} MiB of ${vm.maxMemoryMb} MiB maximum${vm.memoryReclaim ? ', reclaim on' : ''}${balloon}${reclaim}`],
    ['Guest memory', figures.length > 0 ? `${figures.map(([key, value]) => `${key} ${value}`).join(', ')} MiB` : undefined],
    ['Host memory', usage ? `QEMU resident ${usage.host.residentMb} MiB` : undefined],
  ];
}

function mib(option: string): (value: string) => number {
  return (value) => {
    if (!/^\d{1,7}$/.test(value) || Number(value) < 64)
      throw new NubisError('VALIDATION_FAILED', `${option} takes MiB as a whole number of at least 64, not ${value}`);
    return Number(value);
  };
}

function onOrOff(value: string): boolean {
  if (value !== 'on' && value !== 'off') throw new NubisError('VALIDATION_FAILED', `--memory-reclaim takes on or off, not ${value}`);
  return value === 'on';
}
