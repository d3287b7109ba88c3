/**
 * The NIC bandwidth options of `vm set`: `--nic-in net0=100` (Mbit/s towards the guest),
 * `--nic-out net0=50` (from it), `net0=none` lifting that one. The API takes a NIC's limits
 * whole, so the options are merged into what the VM has now.
 */
import type { Command } from 'commander';
import type { NicBandwidthSpec } from '../../compute/vm-spec.ts';
import { NubisError } from '../../core/errors.ts';
import type { Vm } from '../../wire/schemas.ts';

const OPTIONS = [
  { flag: '--nic-in', name: 'nicIn', key: 'inMbit', help: 'Mbit/s towards the guest' },
  { flag: '--nic-out', name: 'nicOut', key: 'outMbit', help: 'Mbit/s from the guest' },
] as const;

const collect = (value: string, previous: string[] = []) => [...previous, value];

/** Adds --nic-in and --nic-out (each repeatable, one NIC per use). */
export function addNicBandwidthOptions(command: Command): Command {
  for (const option of OPTIONS)
    command.option(
      `${option.flag} <nic=mbit>`,
      `limit a NIC on a virtual network to this many ${option.help}, as net0=100 ('net0=none' lifts it; repeatable)`,
      collect,
    );
  return command;
}

/** The request's `nicBandwidth` when the options name any NIC (each with its limits now changed); nothing otherwise. */
export async function nicBandwidthOf(
  options: object,
  current: () => Promise<Pick<Vm, 'nicBandwidth'>>,
): Promise<{ nicBandwidth?: Record<string, NicBandwidthSpec | null> }> {
  const given = OPTIONS.flatMap((option) => values(options, option.name).map((value) => ({ option, value })));
  if (given.length === 0) return {};
  const vm = await current();
  const next = new Map<string, NicBandwidthSpec>();
  for (const { option, value } of given) {
    const match = /^(net[0-9]{1,2})=(none|[0-9]{1,6})$/.exec(value);
    if (!match) throw new NubisError('VALIDATION_FAILED', `${option.flag} takes a NIC and Mbit/s such as net0=100 (or net0=none), not ${value}`);
    const limits = next.get(match[1]) ?? { ...vm.nicBandwidth?.[match[1]] };
    if (match[2] === 'none') delete limits[option.key];
    else limits[option.key] = Number(match[2]);
    next.set(match[1], limits);
  }
  return { nicBandwidth: Object.fromEntries([...next].map(([nic, limits]) => [nic, Object.keys(limits).length > 0 ? limits : null])) };
}

/** `vm show`'s line: each limited NIC with its limits, or undefined when none is limited. */
export function describeNicBandwidth(vm: Pick<Vm, 'nicBandwidth'>): string | undefined {
  const nics = Object.entries(vm.nicBandwidth ?? {}).map(
    ([nic, limits]) =>
      `${nic}: ${[limits.inMbit !== undefined ? `in ${limits.inMbit} Mbit/s` : undefined, limits.outMbit !== undefined ? `out ${limits.outMbit} Mbit/s` : undefined].filter(Boolean).join(', ')}`,
  );
  return nics.length > 0 ? nics.join('; ') : undefined;
}

function values(options: object, name: string): string[] {
  const given = (options as Record<string, unknown>)[name];
  return Array.isArray(given) ? given.map(String) : [];
}
