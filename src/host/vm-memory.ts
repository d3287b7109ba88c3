/**
 * The agent's side of a VM's memory: the balloon set at launch, a new current memory checked
 * again here (the control plane checked it first), and the report `vm show` reads: the
 * guest's own statistics, what the balloon left it and QEMU's resident memory.
 */
import { readFile } from 'node:fs/promises';
import { balloonActualMb, guestMemoryStats, setBalloonTarget, startBalloonStats } from '../compute/qemu/balloon.ts';
import { checkedMemoryTarget, type MemorySettings, memoryTargetOf, type VmMemoryReport } from '../compute/memory-spec.ts';
import type { QmpClient } from '../compute/qmp/qmp-client.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import { parseKilobytesField } from './usage-sampler.ts';

type Qmp = Pick<QmpClient, 'execute'>;
const MIB = 2 ** 20;

/**
 * Starts the guest's statistics and, on a fresh start below the maximum, the balloon's target
 * (its driver inflates once it loads). A migration's destination takes the target over with
 * the device's state, so only the statistics are started there.
 */
export async function startBalloon(qmp: Qmp, spec: VmSpec, options: { incoming: boolean }): Promise<void> {
  await startBalloonStats(qmp);
  const targetMb = memoryTargetOf(spec);
  if (!options.incoming && targetMb < spec.memoryMb) await setBalloonTarget(qmp, targetMb);
}

/** The spec's memory fields after `settings`, refused (changing nothing) outside the floor and the maximum. */
export function memoryAfter(spec: VmSpec, settings: MemorySettings): Pick<VmSpec, 'memoryTargetMb' | 'memoryReclaim'> {
  const targetMb = checkedMemoryTarget(spec.name, settings.targetMb ?? spec.memoryMb, spec.memoryMb);
  return { memoryTargetMb: targetMb < spec.memoryMb ? targetMb : undefined, memoryReclaim: settings.reclaim || undefined };
}

/** Balloons a running guest to the current memory of `spec`. */
export function applyBalloon(qmp: Qmp, spec: Pick<VmSpec, 'memoryMb' | 'memoryTargetMb'>): Promise<void> {
  return setBalloonTarget(qmp, memoryTargetOf(spec));
}

/** A running VM's memory now: the guest's statistics, the balloon's size and QEMU's resident memory. */
export async function readMemoryReport(source: { pid: number; qmp: Qmp }, reclaimTargetMb?: number, procRoot = '/proc'): Promise<VmMemoryReport> {
  const [guest, balloonMb, status] = await Promise.all([
    guestMemoryStats(source.qmp),
    balloonActualMb(source.qmp),
    readFile(`${procRoot}/${source.pid}/status`, 'utf8'),
  ]);
  return {
    balloonMb,
    ...(reclaimTargetMb !== undefined ? { reclaimTargetMb } : {}),
    guest,
    host: { residentMb: Math.round(parseKilobytesField(status, 'VmRSS') / MIB) },
  };
}
