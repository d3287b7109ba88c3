/**
 * Automatic memory reclaim: which guests to balloon down, and which to give memory back, from
 * the host's memory pressure and each guest's own statistics. Pure: the agent's reclaimer
 * (memory-reclaimer.ts) reads the figures on a timer and applies the answer.
 *
 * The signal: the host is short when MemAvailable is under `shortShare` (20%) of MemTotal, or
 * when the kernel's pressure stall figures (/proc/pressure/memory, `some avg10`: the share of
 * the last 10 s in which some task waited for memory) are at or over `stallPercent` (10%). It has
 * room again once MemAvailable is over `roomyShare` (30%) and nothing stalls; in between,
 * nothing moves (hysteresis, so the balloons do not swing).
 *
 * Conservative by design: only guests that asked for it (`vm set --memory-reclaim on`), with
 * fresh statistics, never below the floor or what the guest uses plus headroom, at most one
 * step a round; a guest whose available memory runs low gets memory back at once, whatever the
 * host's state, and a guest whose statistics are missing or stale gets all of it back.
 */
import { memoryFloorMb } from '../compute/memory-spec.ts';

/** The host's memory figures (MiB), from /proc/meminfo and /proc/pressure/memory. */
export interface HostMemory {
  totalMb: number;
  availableMb: number;
  /** `some avg10` of /proc/pressure/memory; absent where the kernel has no PSI. */
  stallPercent?: number;
}

/** One reclaim-eligible guest as the reclaimer sees it this round. */
export interface ReclaimGuest {
  id: string;
  /** Its maximum (the guest's RAM). */
  maxMb: number;
  /** Its current memory as its owner set it: reclaim never goes above it. */
  targetMb: number;
  /** Where reclaim has taken it, when below `targetMb`. */
  reclaimTargetMb?: number;
  /** Whether its owner allows reclaim; a guest that stopped allowing it gets everything back. */
  reclaim: boolean;
  /** Its balloon statistics, when fresh (the reclaimer leaves out stale ones). */
  guest?: { totalMb: number; availableMb: number };
}

/** The knobs; the defaults are in `RECLAIM_DEFAULTS`. */
export interface ReclaimPolicy {
  shortShare: number;
  roomyShare: number;
  stallPercent: number;
  /** Headroom left above what a guest uses: this share of its use, at least `headroomMinMb`. */
  headroomShare: number;
  headroomMinMb: number;
  /** A guest with less available than this share of its total gets memory back. */
  guestLowShare: number;
  /** The most one guest moves in one round. */
  stepMb: number;
  /** Changes smaller than this are not worth a balloon call. */
  minChangeMb: number;
}

export const RECLAIM_DEFAULTS: ReclaimPolicy = Object.freeze({
  shortShare: 0.2,
  roomyShare: 0.3,
  stallPercent: 10,
  headroomShare: 0.25,
  headroomMinMb: 64,
  guestLowShare: 0.1,
  stepMb: 128,
  minChangeMb: 16,
});

/** A balloon change: `targetMb` equal to the guest's own target ends its reclaim. */
export interface ReclaimStep {
  id: string;
  targetMb: number;
  why: string;
}

/** Whether the host is short of memory, has room, or neither (hold). */
export function hostPressure(host: HostMemory, policy: ReclaimPolicy = RECLAIM_DEFAULTS): 'short' | 'roomy' | 'hold' {
  const share = host.totalMb > 0 ? host.availableMb / host.totalMb : 1;
  const stalling = host.stallPercent !== undefined && host.stallPercent >= policy.stallPercent;
  if (share < policy.shortShare || stalling) return 'short';
  if (share > policy.roomyShare) return 'roomy';
  return 'hold';
}

/** The balloon changes of one round. */
export function decideReclaim(host: HostMemory, guests: readonly ReclaimGuest[], policy: ReclaimPolicy = RECLAIM_DEFAULTS): ReclaimStep[] {
  const pressure = hostPressure(host, policy);
  const steps: ReclaimStep[] = [];
  for (const guest of guests) {
    const step = decideGuest(guest, pressure, policy);
    if (step) steps.push(step);
  }
  return steps;
}

function decideGuest(vm: ReclaimGuest, pressure: 'short' | 'roomy' | 'hold', policy: ReclaimPolicy): ReclaimStep | undefined {
  const current = Math.min(vm.reclaimTargetMb ?? vm.targetMb, vm.targetMb);
  const reclaimed = current < vm.targetMb;
  if (!vm.reclaim || !vm.guest)
    return reclaimed ? { id: vm.id, targetMb: vm.targetMb, why: vm.reclaim ? 'its statistics are stale' : 'reclaim is off' } : undefined;
  const { totalMb, availableMb } = vm.guest;
  if (availableMb < totalMb * policy.guestLowShare)
    return reclaimed ? { id: vm.id, targetMb: Math.min(vm.targetMb, current + policy.stepMb), why: `it has only ${availableMb} MiB available` } : undefined;
  if (pressure === 'roomy' && reclaimed) return { id: vm.id, targetMb: Math.min(vm.targetMb, current + policy.stepMb), why: 'the host has room again' };
  if (pressure !== 'short') return undefined;
  // What the guest needs: what it uses (total less available) plus headroom, plus what its
  // kernel keeps out of MemTotal (the balloon's figure counts it, the guest's does not).
  const usedMb = Math.max(0, totalMb - availableMb);
  const kernelMb = Math.max(0, current - totalMb);
  const needMb = Math.ceil(usedMb + Math.max(policy.headroomMinMb, usedMb * policy.headroomShare) + kernelMb);
  const goal = Math.min(vm.targetMb, Math.max(memoryFloorMb(vm.maxMb), needMb));
  if (current - goal < policy.minChangeMb) return undefined;
  return { id: vm.id, targetMb: Math.max(goal, current - policy.stepMb), why: `the host is short; it uses ${usedMb} MiB` };
}
