/**
 * From metadata on the members to the pool's state in memory: pick the newest checkpoint that
 * passes its checksum, replay the longest valid journal chain after it, and tell a torn write
 * (the crash the layout is built for) from corruption (which opens the pool read-only).
 */
import { NubisError } from '../../core/errors.ts';
import {
  CHECKPOINT_HEADER_BYTES,
  decodeCheckpoint,
  decodeCheckpointHeader,
  JOURNAL_HEADER_BYTES,
  OP_CHECKSUMS,
  OP_HIGH_WATER,
  OP_INTENT_CLEAR,
  OP_INTENT_SET,
  OP_JSON,
  OP_MAP,
  readJournal,
  type JournalOp,
  type JsonOp,
  type PoolLabel,
  type PoolState,
} from './metadata-format.ts';
import { checkpointSlotOffset, journalStartOffset } from './pool-geometry.ts';
import type { MemberSlot } from './raid-array.ts';

/** The state `loadMetadata` found and where the next commit continues. */
export interface LoadedMetadata {
  state: PoolState;
  generation: number;
  sequence: number;
  activeSlot: 0 | 1;
  journalOffset: number;
  /** Set when the metadata cannot be trusted: the pool then opens read-only. */
  readOnlyReason?: string;
}

interface ChosenCheckpoint {
  state: PoolState;
  generation: number;
  sequence: number;
  slot: 0 | 1;
}

/** Applies a volume-level operation to a state (at runtime and in journal replay). */
export function applyJsonOp(state: PoolState, op: JsonOp, allocationUnitBytes: number, refs: { ref: (p: number) => void; unref: (p: number) => void }): void {
  switch (op.op) {
    case 'create':
      state.volumes.set(op.record.id, { record: op.record, map: new Int32Array(Math.ceil(op.record.sizeBytes / allocationUnitBytes)) });
      state.nextVolumeId = Math.max(state.nextVolumeId, op.record.id + 1);
      return;
    case 'copy': {
      const source = state.volumes.get(op.sourceId);
      if (!source) throw new NubisError('POOL_METADATA_CORRUPT', `Journal copies volume ${op.sourceId}, which does not exist`);
      const map = Int32Array.from(source.map);
      for (let i = 0; i < map.length; i++) if (map[i] !== 0) refs.ref(map[i]! - 1);
      state.volumes.set(op.record.id, { record: op.record, map });
      state.nextVolumeId = Math.max(state.nextVolumeId, op.record.id + 1);
      return;
    }
    case 'delete': {
      const entry = state.volumes.get(op.id);
      if (!entry) return;
      for (let i = 0; i < entry.map.length; i++) if (entry.map[i] !== 0) refs.unref(entry.map[i]! - 1);
      state.volumes.delete(op.id);
      // Older metadata still holds its wrapped key: purge it (also when a crash comes first).
      if (entry.record.encryption) state.purgePending = true;
      return;
    }
    case 'rewrap': {
      const entry = state.volumes.get(op.id);
      if (!entry?.record.encryption) return;
      entry.record = { ...entry.record, encryption: { ...entry.record.encryption, kekId: op.kekId, wrappedKey: op.wrappedKey } };
      return;
    }
    case 'member-faulted':
      state.faultedMembers.add(op.index);
      return;
    case 'member-replaced':
      state.faultedMembers.delete(op.index);
      return;
    case 'resize': {
      const entry = state.volumes.get(op.id);
      if (!entry) return;
      const map = new Int32Array(Math.ceil(op.sizeBytes / allocationUnitBytes));
      map.set(entry.map.subarray(0, Math.min(map.length, entry.map.length)));
      entry.map = map;
      entry.record = { ...entry.record, sizeBytes: op.sizeBytes };
      return;
    }
  }
}

/** Reads the newest valid metadata from the members and replays its journal. */
export async function loadMetadata(label: PoolLabel, members: MemberSlot[], checksumCount: number): Promise<LoadedMetadata> {
  const present = members.filter((m) => m.device && m.state !== 'rebuilding');
  const emptyState = (): PoolState => ({
    volumes: new Map(),
    nextVolumeId: 1,
    durableHighWaterAu: 0,
    intentAus: new Set(),
    faultedMembers: new Set(),
    checksums: new Uint32Array(checksumCount),
  });
  const { chosen, newestClaimed } = await newestValidCheckpoint(label, present, checksumCount);
  if (!chosen) {
    return {
      state: emptyState(),
      generation: 0,
      sequence: 0,
      activeSlot: 0,
      journalOffset: 0,
      readOnlyReason: `Metadata of pool ${label.poolName} is corrupt: no member holds a checkpoint that passes its checksum`,
    };
  }
  const journal = await longestJournalChain(label, present, chosen);
  const corrupt = (reason: string): LoadedMetadata => ({
    state: emptyState(),
    generation: chosen.generation,
    sequence: chosen.sequence,
    activeSlot: chosen.slot,
    journalOffset: 0,
    readOnlyReason: `Metadata of pool ${label.poolName} is corrupt: ${reason}`,
  });
  if (journal.newerGeneration !== undefined) {
    return corrupt(`the newest checkpoint (generation ${Math.max(newestClaimed, journal.newerGeneration)}) fails its checksum on every member`);
  }
  const state = chosen.state;
  try {
    replayJournal(state, journal.records, label.allocationUnitBytes);
  } catch (error) {
    return corrupt((error as Error).message);
  }
  return { state, generation: chosen.generation, sequence: journal.lastSequence, activeSlot: chosen.slot, journalOffset: journal.endOffset };
}

/**
 * The checkpoint of the highest generation that passes its checksum on some member, and the
 * highest generation any readable header claims (for the message when the newest is corrupt).
 */
async function newestValidCheckpoint(
  label: PoolLabel,
  present: MemberSlot[],
  checksumCount: number,
): Promise<{ chosen?: ChosenCheckpoint; newestClaimed: number }> {
  const candidates: Array<{ member: MemberSlot; slot: 0 | 1; generation: number; sequence: number; payloadBytes: number }> = [];
  let newestClaimed = 0;
  for (const member of present) {
    for (const slot of [0, 1] as const) {
      const header = Buffer.alloc(CHECKPOINT_HEADER_BYTES);
      try {
        await member.device!.read(header, 0, CHECKPOINT_HEADER_BYTES, checkpointSlotOffset(label, slot));
      } catch {
        continue;
      }
      const decoded = decodeCheckpointHeader(header);
      if (!decoded || decoded.payloadBytes + CHECKPOINT_HEADER_BYTES > label.slotBytes) continue;
      newestClaimed = Math.max(newestClaimed, decoded.generation);
      candidates.push({ member, slot, ...decoded });
    }
  }
  candidates.sort((a, b) => b.generation - a.generation);
  for (const candidate of candidates) {
    const buffer = Buffer.alloc(CHECKPOINT_HEADER_BYTES + candidate.payloadBytes);
    await candidate.member.device!.read(buffer, 0, buffer.length, checkpointSlotOffset(label, candidate.slot));
    const state = decodeCheckpoint(buffer, checksumCount, label.allocationUnitBytes);
    if (state) return { chosen: { state, generation: candidate.generation, sequence: candidate.sequence, slot: candidate.slot }, newestClaimed };
  }
  return { newestClaimed };
}

/**
 * Reads every member's journal and keeps the longest valid chain after `chosen`. Also reports
 * `newerGeneration` when some journal starts with the marker of a generation newer than `chosen`:
 * that checkpoint was durable, so its failing checksum is corruption, not a torn write.
 */
async function longestJournalChain(
  label: PoolLabel,
  present: MemberSlot[],
  chosen: ChosenCheckpoint,
): Promise<{ records: JournalOp[][]; endOffset: number; lastSequence: number; newerGeneration?: number }> {
  let best: { records: JournalOp[][]; endOffset: number; lastSequence: number } = { records: [], endOffset: 0, lastSequence: chosen.sequence };
  let newerGeneration: number | undefined;
  for (const member of present) {
    const region = Buffer.alloc(label.journalBytes);
    try {
      await member.device!.read(region, 0, region.length, journalStartOffset(label));
    } catch {
      continue;
    }
    const chain = readJournal(region, chosen.generation, chosen.sequence);
    if (chain.lastSequence > best.lastSequence) best = chain;
    // A durable newer checkpoint always has its marker record at the journal start.
    const probe = region.subarray(0, JOURNAL_HEADER_BYTES);
    if (probe.toString('latin1', 0, 8) === 'NUBISJR1' && probe.readUInt32LE(8) > chosen.generation) {
      const generation = probe.readUInt32LE(8);
      const sequence = probe.readUInt32LE(12) + probe.readUInt32LE(16) * 0x1_0000_0000;
      if (readJournal(region, generation, sequence - 1).records.length > 0) newerGeneration = Math.max(newerGeneration ?? 0, generation);
    }
  }
  return { ...best, newerGeneration };
}

/** Applies journal records to `state` in order; throws POOL_METADATA_CORRUPT on an impossible one. */
function replayJournal(state: PoolState, records: JournalOp[][], allocationUnitBytes: number): void {
  // Reference counts are derived from the maps once replay is done, not counted along.
  const noop = { ref: () => undefined, unref: () => undefined };
  for (const record of records) {
    for (const op of record) {
      switch (op.type) {
        case OP_MAP: {
          const entry = state.volumes.get(op.volumeId);
          if (entry && op.vAu < entry.map.length) entry.map[op.vAu] = op.mapValue;
          break;
        }
        case OP_CHECKSUMS:
          state.checksums.set(op.values, op.firstBlock);
          break;
        case OP_INTENT_SET:
          state.intentAus.add(op.value);
          break;
        case OP_INTENT_CLEAR:
          state.intentAus.delete(op.value);
          break;
        case OP_HIGH_WATER:
          state.durableHighWaterAu = Math.max(state.durableHighWaterAu, op.value);
          break;
        case OP_JSON:
          applyJsonOp(state, op.op, allocationUnitBytes, noop);
          break;
      }
    }
  }
}
