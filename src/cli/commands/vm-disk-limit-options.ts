/**
 * The disk IO limit options of `vm set`: each names a disk by its guest device and a value,
 * `--disk-iops vdb=500`, `--disk-bps vdb=50M` (bytes a second, binary multiples), `vdb=none` lifting
 * that one limit; `--disk-limits-none vdb` lifts them all. The API takes a disk's limits whole,
 * so the options are merged into what the VM has now.
 */
import type { Command } from 'commander';
import type { DiskLimits } from '../../compute/vm-spec.ts';
import { NubisError } from '../../core/errors.ts';
import { formatSize, parseSize } from '../../storage/size.ts';
import type { Vm } from '../../wire/schemas.ts';

/** Each option, the limit it sets, and whether its value is a byte rate. */
const LIMIT_OPTIONS = [
  { flag: '--disk-iops', key: 'iops', bytes: false, help: 'operations a second, reads and writes together' },
  { flag: '--disk-iops-read', key: 'iopsRead', bytes: false, help: 'read operations a second' },
  { flag: '--disk-iops-write', key: 'iopsWrite', bytes: false, help: 'write operations a second' },
  { flag: '--disk-iops-burst', key: 'iopsBurst', bytes: false, help: 'operations a second allowed in a burst' },
  { flag: '--disk-bps', key: 'bytesPerSec', bytes: true, help: 'bytes a second read and written together (50M)' },
  { flag: '--disk-bps-read', key: 'bytesReadPerSec', bytes: true, help: 'bytes read a second' },
  { flag: '--disk-bps-write', key: 'bytesWritePerSec', bytes: true, help: 'bytes written a second' },
  { flag: '--disk-bps-burst', key: 'bytesPerSecBurst', bytes: true, help: 'bytes a second allowed in a burst' },
  { flag: '--disk-burst-seconds', key: 'burstSeconds', bytes: false, help: 'how long a burst may last (default 1)' },
] as const satisfies ReadonlyArray<{ flag: string; key: keyof DiskLimits; bytes: boolean; help: string }>;

type LimitKey = (typeof LIMIT_OPTIONS)[number]['key'];
/** The parsed options (each --disk-* one a list of `vdb=500`). */
export type DiskLimitOptions = object;

const camel = (flag: string) => flag.slice(2).replace(/-([a-z])/g, (_, letter: string) => letter.toUpperCase());
const collect = (value: string, previous: string[] = []) => [...previous, value];

/** Adds the --disk-* limit options (each repeatable, one disk per use) and --disk-limits-none. */
export function addDiskLimitOptions(command: Command): Command {
  for (const option of LIMIT_OPTIONS)
    command.option(`${option.flag} <device=value>`, `${option.help} for a disk, as vdb=N ('vdb=none' lifts it; repeatable)`, collect);
  return command.option('--disk-limits-none <device>', 'lift every IO limit of a disk (vdb; repeatable)', collect);
}

/** Whether any disk limit option was given. */
export function givesDiskLimits(options: DiskLimitOptions): boolean {
  return [...LIMIT_OPTIONS.map((option) => camel(option.flag)), 'diskLimitsNone'].some((name) => values(options, name).length > 0);
}

/** The request's `diskLimits`: every disk named, with its limits now changed by the options. */
export function diskLimitsOf(options: DiskLimitOptions, current: Pick<Vm, 'diskLimits'>): Record<string, DiskLimits | null> {
  const next = new Map<string, DiskLimits>();
  const of = (device: string) => next.get(device) ?? next.set(device, { ...current.diskLimits?.[device] }).get(device)!;
  for (const device of values(options, 'diskLimitsNone')) next.set(checkDevice(device, '--disk-limits-none'), {});
  for (const option of LIMIT_OPTIONS) {
    for (const given of values(options, camel(option.flag))) {
      const match = /^(vd[a-p])=(.+)$/.exec(given);
      if (!match)
        throw new NubisError('VALIDATION_FAILED', `${option.flag} takes a disk and a value such as vdb=${option.bytes ? '50M' : '500'}, not ${given}`);
      const limits = of(match[1]);
      if (match[2] === 'none') delete limits[option.key as LimitKey];
      else limits[option.key as LimitKey] = option.bytes ? parseSize(match[2], `${option.flag} value`) : wholeNumber(match[2], option.flag);
    }
  }
  return Object.fromEntries([...next].map(([device, limits]) => [device, Object.keys(limits).length > 0 ? limits : null]));
}

/** `vm show`'s line: each limited disk with its limits, or undefined when none is limited. */
export function describeDiskLimits(vm: Pick<Vm, 'diskLimits'>): string | undefined {
  const disks = Object.entries(vm.diskLimits ?? {}).map(([device, limits]) => {
    const parts = LIMIT_OPTIONS.flatMap((option) => {
      const value = limits[option.key];
      if (value === undefined) return [];
      return [`${option.flag.slice('--disk-'.length)} ${option.bytes ? `${formatSize(value)}/s` : value}`];
    });
    return `${device}: ${parts.join(', ')}`;
  });
  return disks.length > 0 ? disks.join('; ') : undefined;
}

/** The values one repeatable option collected (commander keeps them under its camel-cased name). */
function values(options: DiskLimitOptions, name: string): string[] {
  const given = (options as Record<string, unknown>)[name];
  return Array.isArray(given) ? given.map(String) : [];
}

function checkDevice(device: string, flag: string): string {
  if (!/^vd[a-p]$/.test(device)) throw new NubisError('VALIDATION_FAILED', `${flag} takes a disk as vm show lists it (vdb), not ${device}`);
  return device;
}

function wholeNumber(value: string, flag: string): number {
  if (!/^\d{1,12}$/.test(value) || Number(value) < 1) throw new NubisError('VALIDATION_FAILED', `${flag} takes a whole number of at least 1, not ${value}`);
  return Number(value);
}
