/**
 * The agent's reclaim loop: every round it reads the host's memory (/proc/meminfo, and
 * /proc/pressure/memory where the kernel has it) and the balloon statistics of the guests that
 * allow reclaim, asks `decideReclaim` what to change, and sets those balloons. Where it took a
 * guest is kept in `targets` (shared with the supervisor, which forgets a guest's entry when its
 * owner sets a new current memory); nothing of it is saved: after an agent restart a guest's
 * balloon holds where it was until the next round moves it.
 */
import { readFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { guestMemoryStats, setBalloonTarget } from '../compute/qemu/balloon.ts';
import { memoryTargetOf } from '../compute/memory-spec.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import { messageOf } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { decideReclaim, type HostMemory, RECLAIM_DEFAULTS, type ReclaimGuest, type ReclaimPolicy } from './memory-reclaim.ts';
import { parseKilobytesField, type UsageSource } from './usage-sampler.ts';

const MIB = 2 ** 20;

export interface MemoryReclaimerOptions {
  /** The running VMs (their QMP), as the usage sampler sees them. */
  sources: () => UsageSource[];
  spec: (id: string) => VmSpec;
  /** Where reclaim has taken each guest (MiB); shared with the supervisor. */
  targets: Map<string, number>;
  logger?: Logger;
  /** Default 10 s. */
  intervalMs?: number;
  policy?: ReclaimPolicy;
  /** Default /proc (a test points it at a folder of its own). */
  procRoot?: string;
}

/** `some avg10` of /proc/pressure/memory (the share of the last 10 s some task stalled on memory). */
export function parseMemoryStall(pressure: string): number | undefined {
  const match = /^some avg10=(\d+(?:\.\d+)?)/m.exec(pressure);
  return match ? Number(match[1]) : undefined;
}

export class MemoryReclaimer {
  readonly #options: MemoryReclaimerOptions;

  constructor(options: MemoryReclaimerOptions) {
    this.#options = Object.freeze({ ...options });
  }

  /** The host's memory now. */
  async hostMemory(): Promise<HostMemory> {
    const proc = this.#options.procRoot ?? '/proc';
    const meminfo = await readFile(`${proc}/meminfo`, 'utf8');
    const pressure = await readFile(`${proc}/pressure/memory`, 'utf8').catch(() => '');
    const stallPercent = parseMemoryStall(pressure);
    return {
      totalMb: parseKilobytesField(meminfo, 'MemTotal') / MIB,
      availableMb: parseKilobytesField(meminfo, 'MemAvailable') / MIB,
      ...(stallPercent !== undefined ? { stallPercent } : {}),
    };
  }

  /** One round: reads, decides and applies; returns the changes made. */
  async round(): Promise<Array<{ id: string; targetMb: number; why: string }>> {
    const targets = this.#options.targets;
    const staleMs = 3 * (this.#options.intervalMs ?? 10_000);
    const guests: Array<ReclaimGuest & { source: UsageSource }> = [];
    for (const source of this.#options.sources()) {
      const spec = this.#options.spec(source.vm);
      if (!source.qmp || (!spec.memoryReclaim && !targets.has(source.vm))) continue;
      const stats = await guestMemoryStats(source.qmp).catch(() => ({}) as Awaited<ReturnType<typeof guestMemoryStats>>);
      const fresh = stats.updatedAt !== undefined && Date.now() - Date.parse(stats.updatedAt) < staleMs;
      const guest =
        fresh && stats.totalMb !== undefined && stats.availableMb !== undefined ? { totalMb: stats.totalMb, availableMb: stats.availableMb } : undefined;
      const reclaimTargetMb = targets.get(source.vm);
      guests.push({
        id: source.vm,
        maxMb: spec.memoryMb,
        targetMb: memoryTargetOf(spec),
        reclaim: spec.memoryReclaim === true,
        source,
        ...(reclaimTargetMb !== undefined ? { reclaimTargetMb } : {}),
        ...(guest ? { guest } : {}),
      });
    }
    if (guests.length === 0) return [];
    const steps = decideReclaim(await this.hostMemory(), guests, this.#options.policy ?? RECLAIM_DEFAULTS);
    for (const step of steps) {
      const guest = guests.find((g) => g.id === step.id)!;
      try {
        await setBalloonTarget(guest.source.qmp!, step.targetMb);
      } catch (error) {
        this.#options.logger?.warn(`memory reclaim: VM ${step.id} kept its balloon: ${messageOf(error)}`);
        continue;
      }
      if (step.targetMb >= guest.targetMb) targets.delete(step.id);
      else targets.set(step.id, step.targetMb);
      this.#options.logger?.info({ vm: step.id, targetMb: step.targetMb }, `memory reclaim: VM ${step.id} to ${step.targetMb} MiB (${step.why})`);
    }
    return steps;
  }

  /** Runs a round every interval until `signal` aborts; a failed round is logged and the next one tried. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await delay(this.#options.intervalMs ?? 10_000, undefined, { signal }).catch(() => undefined);
      if (signal.aborted) break;
      await this.round().catch((error) => this.#options.logger?.warn(`memory reclaim round failed: ${messageOf(error)}`));
    }
  }
}
