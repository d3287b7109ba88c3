/**
 * The vCPU options of `vm create` (--max-cpus and the layout: --sockets, --cores, --threads) and
 * `vm set` (--cpus, hot-added while the VM runs), and how `vm show` prints a VM's vCPUs.
 */
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import type { Vm } from '../../wire/schemas.ts';
import { parseInteger } from '../common.ts';

/** What the options parse to (`cpus` is create's own --cpus on create, set's --cpus on set). */
export interface VcpuOptions {
  cpus?: number;
  maxCpus?: number;
  sockets?: number;
  cores?: number;
  threads?: number;
}

/** Adds the layout options (create) or --cpus (set). */
export function addVcpuOptions(command: Command, onSet: boolean): Command {
  if (onSet)
    return command.option(
      '--cpus <n>',
      'vCPUs present, up to its maximum: hot-added while it runs (fewer only while it is stopped, from its next start)',
      parseInteger('--cpus'),
    );
  return command
    .option(
      '--max-cpus <n>',
      'the most vCPUs it can have (default: --cpus, or sockets x cores x threads); vm set --cpus can hot-add up to it',
      parseInteger('--max-cpus'),
    )
    .option('--sockets <n>', 'CPU sockets the maximum is laid out in (default 1)', parseInteger('--sockets'))
    .option('--cores <n>', 'cores per socket (default: the maximum over sockets x threads)', parseInteger('--cores'))
    .option('--threads <n>', 'threads per core (default 1)', parseInteger('--threads'));
}

/**
 * The create request's `maxCpus` and `cpuTopology` from the options. A layout without
 * --max-cpus makes the maximum its product (as Proxmox's sockets x cores); --max-cpus without
 * --cores gets the cores that fill it.
 */
export function vcpuLayoutOf(options: VcpuOptions & { cpus: number }): Record<string, unknown> {
  const given = options.sockets !== undefined || options.cores !== undefined || options.threads !== undefined;
  if (!given) return options.maxCpus !== undefined ? { maxCpus: options.maxCpus } : {};
  const sockets = options.sockets ?? 1;
  const threads = options.threads ?? 1;
  let cores = options.cores;
  if (cores === undefined) {
    const maxCpus = options.maxCpus ?? options.cpus;
    if (maxCpus % (sockets * threads) !== 0)
      throw new NubisError(
        'VALIDATION_FAILED',
        `${maxCpus} vCPUs do not fill ${sockets} sockets x ${threads} threads evenly; give --cores (sockets x cores x threads must be --max-cpus)`,
      );
    cores = maxCpus / (sockets * threads);
  }
  return { maxCpus: options.maxCpus ?? sockets * cores * threads, cpuTopology: { sockets, cores, threads } };
}

/** `vm show`'s vCPU line: present, maximum and layout. */
export function describeVcpus(vm: Pick<Vm, 'cpus' | 'maxCpus' | 'cpuTopology'>): string {
  const t = vm.cpuTopology;
  const plural = (count: number, word: string) => `${count} ${word}${count === 1 ? '' : 's'}`;
  return `${vm.cpus} of ${vm.maxCpus} maximum (${plural(t.sockets, 'socket')} x ${plural(t.cores, 'core')} x ${plural(t.threads, 'thread')})`;
}
