/**
 * A VM's memory as current + maximum: the wire types between control plane and agent, and the
 * bounds a balloon target must keep. The maximum is the guest's RAM (VmSpec.memoryMb, QEMU's -m);
 * the current memory is what the balloon leaves it (VmSpec.memoryTargetMb).
 */
import { type Static, Type } from '@sinclair/typebox';
import { NubisError } from '../core/errors.ts';
import type { VmSpec } from './vm-spec.ts';

/** No guest is ballooned below this: the tiny guest boots in 64 MiB, a Debian one barely. */
export const MEMORY_FLOOR_MB = 64;

/**
 * The least memory a VM with `maxMb` may be ballooned to: 64 MiB, or an eighth of its maximum
 * when more. The kernel's own page tables and memmap grow with the maximum (about 1.6% of it),
 * and a guest squeezed far below its size thrashes rather than saves anything.
 */
export function memoryFloorMb(maxMb: number): number {
  return Math.min(maxMb, Math.max(MEMORY_FLOOR_MB, Math.ceil(maxMb / 8)));
}

/**
 * `targetMb` when a VM of `maxMb` may have it; otherwise a VM_MEMORY_OUT_OF_RANGE error that
 * names the range (checked where the API receives it and again on the host).
 */
export function checkedMemoryTarget(vmName: string, targetMb: number, maxMb: number): number {
  const floorMb = memoryFloorMb(maxMb);
  if (!Number.isInteger(targetMb) || targetMb > maxMb || targetMb < floorMb)
    throw new NubisError(
      'VM_MEMORY_OUT_OF_RANGE',
      `VM ${vmName} can have from ${floorMb} to ${maxMb} MiB of memory (its maximum), not ${targetMb}; ask within that, or recreate it with a larger --max-memory`,
    );
  return targetMb;
}

/** The memory a spec asks its guest to have now, in MiB. */
export function memoryTargetOf(spec: Pick<VmSpec, 'memoryMb' | 'memoryTargetMb'>): number {
  return spec.memoryTargetMb ?? spec.memoryMb;
}

/** What the control plane sets on an agent (all of it: `targetMb` left out means all of the maximum). */
export const MemorySettings = Type.Object(
  {
    targetMb: Type.Optional(Type.Integer({ format: 'int32', minimum: MEMORY_FLOOR_MB, maximum: 1048576 })),
    reclaim: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type MemorySettings = Static<typeof MemorySettings>;

const Mb = (description: string) => Type.Optional(Type.Integer({ format: 'int32', minimum: 0, maximum: 1048576, description }));

/** A running VM's memory as its guest and its host see it, read when one VM is shown. */
export const VmMemoryReport = Type.Object(
  {
    balloonMb: Mb('What the guest has now: its maximum less what the balloon holds (QMP query-balloon)'),
    reclaimTargetMb: Mb('Where automatic reclaim is taking it, below its current memory, while the host is short'),
    guest: Type.Object(
      {
        totalMb: Mb('MemTotal in the guest'),
        usedMb: Mb('Used: total less free and caches'),
        freeMb: Mb('MemFree in the guest'),
        availableMb: Mb('MemAvailable in the guest: free plus what it could reclaim'),
        cachedMb: Mb('Page cache the guest could drop'),
        updatedAt: Type.Optional(Type.String({ maxLength: 40, description: 'When the guest last reported (every 5 s)' })),
      },
      { additionalProperties: false, description: "The balloon driver's statistics; empty until the guest's driver reports" },
    ),
    host: Type.Object(
      { residentMb: Mb("QEMU's resident memory on its host (VmRSS): guest pages it touched plus QEMU's own") },
      { additionalProperties: false },
    ),
  },
  { additionalProperties: false },
);
export type VmMemoryReport = Static<typeof VmMemoryReport>;
