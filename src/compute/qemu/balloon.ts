/**
 * A VM's virtio-balloon over QMP: its target (QMP `balloon`), what the guest really gave up
 * (`query-balloon`), and the guest's memory statistics (the device's `guest-stats` QOM property,
 * refreshed every `guest-stats-polling-interval` seconds; QEMU docs/interop/virtio-balloon-stats.rst).
 * Imports only the QMP client's shape: no application code.
 */
import type { QmpClient } from '../qmp/qmp-client.ts';
import { BALLOON_DEVICE_ID } from './command-line.ts';

const MIB = 2 ** 20;
/** QOM path of the balloon that command-line.ts adds to every VM. */
const BALLOON_PATH = `/machine/peripheral/${BALLOON_DEVICE_ID}`;
/** How often the guest refreshes its statistics, in seconds; a read is at most this old. */
export const BALLOON_STATS_INTERVAL_SECONDS = 5;

type Qmp = Pick<QmpClient, 'execute'>;

/** The guest's memory as it sees it, from the balloon's statistics (MiB); a figure the guest does not report is absent. */
export interface GuestMemoryStats {
  /** MemTotal: its memory less what the balloon holds. */
  totalMb?: number;
  /** MemFree: memory it does not use at all. */
  freeMb?: number;
  /** MemAvailable: what it could use without swapping (free plus reclaimable caches). */
  availableMb?: number;
  /** Page cache it could drop. */
  cachedMb?: number;
  /** Used: total less free and caches. */
  usedMb?: number;
  /** When the guest last refreshed them. */
  updatedAt?: string;
}

/**
 * Starts the guest's statistics refresh. The interval is not part of the migrated state, so a
 * migration's destination sets it again.
 */
export async function startBalloonStats(qmp: Qmp, intervalSeconds = BALLOON_STATS_INTERVAL_SECONDS): Promise<void> {
  await qmp.execute('qom-set', { path: BALLOON_PATH, property: 'guest-stats-polling-interval', value: intervalSeconds });
}

/** Asks the guest to balloon to `targetMb` of memory; it gets there as fast as its driver gives pages up. */
export async function setBalloonTarget(qmp: Qmp, targetMb: number): Promise<void> {
  if (!Number.isInteger(targetMb) || targetMb < 1) throw new RangeError(`A balloon target must be a whole number of MiB, not ${targetMb}`);
  await qmp.execute('balloon', { value: targetMb * MIB });
}

/** The memory the guest has now (its RAM less what the balloon holds), in MiB. */
export async function balloonActualMb(qmp: Qmp): Promise<number> {
  const answer = await qmp.execute<{ actual: number }>('query-balloon');
  return Math.round(answer.actual / MIB);
}

/** The guest's last statistics; empty before its driver reported any. */
export async function guestMemoryStats(qmp: Qmp): Promise<GuestMemoryStats> {
  const answer = await qmp.execute<{ stats: Record<string, number>; 'last-update': number }>('qom-get', { path: BALLOON_PATH, property: 'guest-stats' });
  return parseGuestStats(answer);
}

/** QEMU's `guest-stats` answer as MiB; QEMU reports a figure the guest never sent as -1 (or 2^64-1). */
export function parseGuestStats(answer: { stats: Record<string, number>; 'last-update': number }): GuestMemoryStats {
  const mib = (key: string): number | undefined => {
    const value = answer.stats[key];
    return typeof value === 'number' && value >= 0 && value < 2 ** 63 ? Math.round(value / MIB) : undefined;
  };
  if (!answer['last-update']) return {};
  const totalMb = mib('stat-total-memory');
  const freeMb = mib('stat-free-memory');
  const cachedMb = mib('stat-disk-caches');
  return {
    ...(totalMb !== undefined ? { totalMb } : {}),
    ...(freeMb !== undefined ? { freeMb } : {}),
    ...(mib('stat-available-memory') !== undefined ? { availableMb: mib('stat-available-memory') } : {}),
    ...(cachedMb !== undefined ? { cachedMb } : {}),
    ...(totalMb !== undefined && freeMb !== undefined ? { usedMb: Math.max(0, totalMb - freeMb - (cachedMb ?? 0)) } : {}),
    updatedAt: new Date(answer['last-update'] * 1000).toISOString(),
  };
}
