/**
 * What a live migration would cost before it is asked for: its time and the bytes it puts on the
 * link, from the pre-copy model (precopy-model.ts) fed the way the migration service feeds it at
 * the start of a migration: the link as known before the stream measures it (the last completed
 * migration between the two hosts, else a gigabit) and the guest's dirty rate as last sampled
 * (else an assumed rate). The balancer calls it to weigh a move against what the move is worth;
 * the migration service reads the link from here too, so both see the same link.
 */
import type { Db } from '../state/database.ts';
import type { MigrationFigures } from './migration-types.ts';
import { predictPrecopy } from './precopy-model.ts';

/** The link assumed before any migration between two hosts has measured it: one gigabit. */
export const ASSUMED_LINK_BYTES_PER_SEC = 125_000_000;
/**
 * The dirty rate assumed for a guest never sampled (it has not migrated with `auto` yet): 8 MiB/s,
 * a guest doing steady work (an idle one dirties well under 1 MiB/s). Erring high keeps the
 * balancer from counting on a migration being cheaper than it turns out.
 */
export const ASSUMED_DIRTY_RATE_BYTES_PER_SEC = 8 * 2 ** 20;

export interface MigrationCostInput {
  memoryMb: number;
  dirtyRateBytesPerSec: number;
  linkBytesPerSec: number;
  /** Local (dir-pool) disks mirrored before the memory moves; 0 on shared storage. */
  diskBytes: number;
  /** The stop-and-copy first aimed at, and the most it may be widened to (auto's targets). */
  downtimeLimitMs: number;
  maxDowntimeLimitMs: number;
}

/** A migration's predicted cost; `timeMs` and `bytes` only when pre-copy is predicted to converge. */
export interface MigrationCost {
  converges: boolean;
  /** Dirty rate over link (Liu et al.): pre-copy converges comfortably well below 1. */
  lambda: number;
  timeMs?: number;
  bytes?: number;
  /** What the prediction was made from, and where each figure came from. */
  dirtyRateBytesPerSec: number;
  dirtyRateSource: 'sampled' | 'assumed';
  linkBytesPerSec: number;
  linkSource: 'measured' | 'assumed';
  diskBytes: number;
}

/**
 * The model's prediction for a whole migration: the local disks cross the link once (mirrored
 * while the VM runs), then iterative pre-copy from the first pass over all of memory. Every pass
 * sends at the link's rate, so the bytes are the link rate times the predicted time. A guest the
 * model does not see converging has no time or bytes: such a migration would lean on
 * auto-converge throttling the guest, or on post-copy.
 */
export function predictMigrationCost(input: MigrationCostInput): Omit<MigrationCost, 'dirtyRateSource' | 'linkSource'> {
  const memoryBytes = input.memoryMb * 2 ** 20;
  const model = predictPrecopy({
    remainingBytes: memoryBytes,
    // As the migration service's first prediction: a first pass at the link's pace (zero pages
    // would go faster; counting them as sent errs on the side of cost).
    scanRateBytesPerSec: input.linkBytesPerSec,
    dirtyRateBytesPerSec: input.dirtyRateBytesPerSec,
    bandwidthBytesPerSec: input.linkBytesPerSec,
    memoryBytes,
    downtimeLimitMs: input.downtimeLimitMs,
    maxDowntimeLimitMs: input.maxDowntimeLimitMs,
    pass: 1,
  });
  const base = {
    converges: model.converges,
    lambda: Number(model.lambda.toFixed(3)),
    dirtyRateBytesPerSec: Math.round(input.dirtyRateBytesPerSec),
    linkBytesPerSec: Math.round(input.linkBytesPerSec),
    diskBytes: input.diskBytes,
  };
  if (!model.converges || model.remainingTimeMs === undefined) return base;
  const diskMs = (input.diskBytes / input.linkBytesPerSec) * 1000;
  const memoryTransferBytes = (model.remainingTimeMs / 1000) * input.linkBytesPerSec;
  return { ...base, timeMs: Math.round(diskMs + model.remainingTimeMs), bytes: Math.round(input.diskBytes + memoryTransferBytes) };
}

/** The link rate a migration measured, unless a cap held it down (then it says nothing of the link). */
function measuredRate(figures: string): number | undefined {
  const link = (JSON.parse(figures) as MigrationFigures).bandwidth;
  return link && !link.capped && link.measuredBytesPerSec > 0 ? link.measuredBytesPerSec : undefined;
}

/** The link rate the last completed migration between two hosts (either way, by name) measured. */
export async function lastMeasuredLink(db: Db, a: string, b: string): Promise<number | undefined> {
  const rows = await db
    .selectFrom('vm_migrations')
    .select('figures')
    .where('status', '=', 'completed')
    .where((eb) => eb.or([eb.and([eb('from_host', '=', a), eb('to_host', '=', b)]), eb.and([eb('from_host', '=', b), eb('to_host', '=', a)])]))
    .orderBy('ended_at', 'desc')
    .limit(5)
    .execute();
  for (const row of rows) {
    const rate = measuredRate(row.figures);
    if (rate !== undefined) return rate;
  }
  return undefined;
}

/**
 * `lastMeasuredLink` for every pair of hosts at once, from the `recent` last completed migrations:
 * what a plan weighing many moves reads once instead of asking per pair.
 */
export async function measuredLinks(db: Db, recent = 1000): Promise<(a: string, b: string) => number | undefined> {
  const rows = await db
    .selectFrom('vm_migrations')
    .select(['from_host', 'to_host', 'figures'])
    .where('status', '=', 'completed')
    .orderBy('ended_at', 'desc')
    .limit(recent)
    .execute();
  const pair = (a: string, b: string): string => (a < b ? `${a}\n${b}` : `${b}\n${a}`);
  const links = new Map<string, number>();
  for (const row of rows) {
    const key = pair(row.from_host, row.to_host);
    const rate = links.has(key) ? undefined : measuredRate(row.figures);
    if (rate !== undefined) links.set(key, rate);
  }
  return (a, b) => links.get(pair(a, b));
}

/**
 * The guest's dirty rate as last measured: the sample an `auto` migration took before it started
 * (QEMU's calc-dirty-rate), else the rate a first-pass prediction read from the stream.
 */
export async function lastSampledDirtyRate(db: Db, vmId: string): Promise<number | undefined> {
  const rows = await db.selectFrom('vm_migrations').select('figures').where('vm_id', '=', vmId).orderBy('started_at', 'desc').limit(5).execute();
  for (const row of rows) {
    const figures = JSON.parse(row.figures) as MigrationFigures;
    const sampled = figures.plan?.sampledDirtyRateBytesPerSec;
    if (sampled !== undefined) return sampled;
    if (figures.prediction?.basis === 'first-pass') return figures.prediction.dirtyRateBytesPerSec;
  }
  return undefined;
}
