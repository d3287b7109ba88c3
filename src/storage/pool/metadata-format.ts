/**
 * On-disk format of pool metadata, mirrored on every member:
 *
 *   [0, 4 KiB)                     label: which pool, which member, the geometry (JSON + SHA-256)
 *   [4 KiB, +slot)                 checkpoint slot A
 *   [.., +slot)                    checkpoint slot B
 *   [.., +journal)                 journal of committed changes since the newest checkpoint
 *   [dataStart, ..)                RAID data rows
 *
 * Crash consistency: a checkpoint is a full image with a generation and a SHA-256; it is written
 * to the slot not holding the newest one, so a torn checkpoint leaves the previous one intact.
 * Journal records carry the generation of the checkpoint they extend and a sequence number; replay
 * stops at the first record that is torn, of another generation or out of sequence.
 */
import { createHash } from 'node:crypto';
import { NubisError } from '../../core/errors.ts';
import type { RaidLayout } from './raid-array.ts';

export const LABEL_BYTES = 4096;
const LABEL_MAGIC = 'NUBISPL1';
const CHECKPOINT_MAGIC = 'NUBISCK1';
const JOURNAL_MAGIC = 'NUBISJR1';
export const CHECKPOINT_HEADER_BYTES = 64;
export const JOURNAL_HEADER_BYTES = 48;

/** What every member's label says; identical on all members except `memberIndex`. */
export interface PoolLabel {
  poolUuid: string;
  poolName: string;
  memberIndex: number;
  memberCount: number;
  layout: RaidLayout;
  chunkBytes: number;
  allocationUnitBytes: number;
  slotBytes: number;
  journalBytes: number;
  dataStartBytes: number;
  rows: number;
  createdAt: string;
}

function sha256(...parts: Buffer[]): Buffer {
  const hash = createHash('sha256');
  for (const part of parts) hash.update(part);
  return hash.digest();
}

export function encodeLabel(label: PoolLabel): Buffer {
  const json = Buffer.from(JSON.stringify(label), 'utf8');
  const out = Buffer.alloc(LABEL_BYTES);
  out.write(LABEL_MAGIC, 0, 'latin1');
  out.writeUInt32LE(json.length, 8);
  sha256(json).copy(out, 12);
  json.copy(out, 44);
  return out;
}

/** The label in `block`, undefined when the block holds no Nubis label, or throws when damaged. */
export function decodeLabel(block: Buffer): PoolLabel | undefined {
  if (block.toString('latin1', 0, 8) !== LABEL_MAGIC) return undefined;
  const length = block.readUInt32LE(8);
  if (length > LABEL_BYTES - 44) throw new NubisError('POOL_METADATA_CORRUPT', 'Member label has an impossible length');
  const json = block.subarray(44, 44 + length);
  if (!sha256(json).equals(block.subarray(12, 44))) throw new NubisError('POOL_METADATA_CORRUPT', 'Member label checksum mismatch');
  return JSON.parse(json.toString('utf8')) as PoolLabel;
}

/**
 * How a volume is encrypted (volume-cipher.ts, volume-keys.ts): its data key, wrapped by a
 * key-encryption key of the storage node's key provider. Absent for a plain volume.
 */
export interface VolumeEncryption {
  cipher: 'aes-256-xts';
  /** Bytes of one XTS data unit; the tweak is the sector's number in the volume. */
  sectorBytes: number;
  /** The data key's id: a volume, its snapshots and its clones share one key and so one id. */
  keyId: string;
  /** The key-encryption key that wraps it. */
  kekId: string;
  /** The data key wrapped for this volume (base64; the provider's format). */
  wrappedKey: string;
}

/** A volume as stored in metadata. */
export interface VolumeRecord {
  id: number;
  name: string;
  sizeBytes: number;
  kind: 'volume' | 'snapshot' | 'clone';
  /** The volume a snapshot or clone was taken from (it may since have been deleted). */
  originName?: string;
  readOnly: boolean;
  createdAt: string;
  encryption?: VolumeEncryption;
}

/** The whole metadata state of a pool. */
export interface PoolState {
  volumes: Map<number, { record: VolumeRecord; map: Int32Array }>;
  nextVolumeId: number;
  /** Allocation units at or above this index have never been written since creation. */
  durableHighWaterAu: number;
  /** Allocation units that may hold writes not yet reflected in checksums (write intent). */
  intentAus: Set<number>;
  /** Members taken out of service (failed or offlined): stale until replaced, never trusted again. */
  faultedMembers: Set<number>;
  /** Per 4 KiB block of the pool's logical space. */
  checksums: Uint32Array;
  /**
   * An encrypted volume was deleted and stale copies of its wrapped key may still lie in the
   * older checkpoint slot or the journal's tail: purge them (MetadataStore.purgeStaleCopies).
   */
  purgePending?: boolean;
}

export function encodeCheckpoint(state: PoolState, generation: number, sequence: number): Buffer {
  const volumes = [...state.volumes.values()];
  const json = Buffer.from(
    JSON.stringify({
      volumes: volumes.map((v) => v.record),
      nextVolumeId: state.nextVolumeId,
      durableHighWaterAu: state.durableHighWaterAu,
      intentAus: [...state.intentAus],
      faultedMembers: [...state.faultedMembers],
      ...(state.purgePending ? { purgePending: true } : {}),
    }),
    'utf8',
  );
  const maps = volumes.map((v) => {
    let count = 0;
    for (let i = 0; i < v.map.length; i++) if (v.map[i] !== 0) count++;
    const out = Buffer.allocUnsafe(4 + count * 8);
    out.writeUInt32LE(count, 0);
    let at = 4;
    for (let i = 0; i < v.map.length; i++) {
      if (v.map[i] === 0) continue;
      out.writeUInt32LE(i, at);
      out.writeUInt32LE(v.map[i]!, at + 4);
      at += 8;
    }
    return out;
  });
  const jsonLength = Buffer.allocUnsafe(4);
  jsonLength.writeUInt32LE(json.length);
  const checksums = Buffer.from(state.checksums.buffer, state.checksums.byteOffset, state.checksums.byteLength);
  const payload = Buffer.concat([jsonLength, json, ...maps, checksums]);
  const header = Buffer.alloc(CHECKPOINT_HEADER_BYTES);
  header.write(CHECKPOINT_MAGIC, 0, 'latin1');
  header.writeUInt32LE(generation, 8);
  header.writeUInt32LE(sequence % 0x1_0000_0000, 12);
  header.writeUInt32LE(Math.floor(sequence / 0x1_0000_0000), 16);
  header.writeUInt32LE(payload.length, 20);
  sha256(header.subarray(0, 24), payload).copy(header, 24);
  return Buffer.concat([header, payload]);
}

/** Header of a checkpoint slot, or undefined when it does not hold a valid-looking one. */
export function decodeCheckpointHeader(header: Buffer): { generation: number; sequence: number; payloadBytes: number } | undefined {
  if (header.toString('latin1', 0, 8) !== CHECKPOINT_MAGIC) return undefined;
  return {
    generation: header.readUInt32LE(8),
    sequence: header.readUInt32LE(12) + header.readUInt32LE(16) * 0x1_0000_0000,
    payloadBytes: header.readUInt32LE(20),
  };
}

/** Verifies and decodes a checkpoint (header + payload); undefined when its checksum fails. */
export function decodeCheckpoint(buffer: Buffer, checksumCount: number, allocationUnitBytes: number): PoolState | undefined {
  const header = decodeCheckpointHeader(buffer);
  if (!header || CHECKPOINT_HEADER_BYTES + header.payloadBytes > buffer.length) return undefined;
  const payload = buffer.subarray(CHECKPOINT_HEADER_BYTES, CHECKPOINT_HEADER_BYTES + header.payloadBytes);
  if (!sha256(buffer.subarray(0, 24), payload).equals(buffer.subarray(24, 56))) return undefined;
  const jsonLength = payload.readUInt32LE(0);
  const meta = JSON.parse(payload.toString('utf8', 4, 4 + jsonLength)) as {
    volumes: VolumeRecord[];
    nextVolumeId: number;
    durableHighWaterAu: number;
    intentAus: number[];
    faultedMembers?: number[];
    purgePending?: boolean;
  };
  let at = 4 + jsonLength;
  const volumes = new Map<number, { record: VolumeRecord; map: Int32Array }>();
  for (const record of meta.volumes) {
    const map = new Int32Array(Math.ceil(record.sizeBytes / allocationUnitBytes));
    const count = payload.readUInt32LE(at);
    at += 4;
    for (let i = 0; i < count; i++) {
      map[payload.readUInt32LE(at)] = payload.readUInt32LE(at + 4);
      at += 8;
    }
    volumes.set(record.id, { record, map });
  }
  const checksums = new Uint32Array(checksumCount);
  Buffer.from(checksums.buffer).set(payload.subarray(at, at + checksumCount * 4));
  return {
    volumes,
    nextVolumeId: meta.nextVolumeId,
    durableHighWaterAu: meta.durableHighWaterAu,
    intentAus: new Set(meta.intentAus),
    faultedMembers: new Set(meta.faultedMembers ?? []),
    checksums,
    ...(meta.purgePending ? { purgePending: true } : {}),
  };
}

// Journal operations.
export const OP_MAP = 1;
export const OP_CHECKSUMS = 2;
export const OP_INTENT_SET = 3;
export const OP_INTENT_CLEAR = 4;
export const OP_HIGH_WATER = 5;
export const OP_JSON = 6;

/** A volume-level change recorded as JSON in the journal. */
export type JsonOp =
  | { op: 'create'; record: VolumeRecord }
  | { op: 'copy'; record: VolumeRecord; sourceId: number }
  | { op: 'delete'; id: number }
  | { op: 'resize'; id: number; sizeBytes: number }
  | { op: 'rewrap'; id: number; kekId: string; wrappedKey: string }
  | { op: 'member-faulted'; index: number }
  | { op: 'member-replaced'; index: number };

/** Builds the payload of one journal record. */
export class JournalWriter {
  readonly #parts: Buffer[] = [];
  #bytes = 0;

  get bytes(): number {
    return this.#bytes;
  }

  #push(part: Buffer): void {
    this.#parts.push(part);
    this.#bytes += part.length;
  }

  map(volumeId: number, vAu: number, mapValue: number): void {
    const b = Buffer.allocUnsafe(13);
    b.writeUInt8(OP_MAP, 0);
    b.writeUInt32LE(volumeId, 1);
    b.writeUInt32LE(vAu, 5);
    b.writeUInt32LE(mapValue, 9);
    this.#push(b);
  }

  checksums(firstBlock: number, values: Uint32Array): void {
    const b = Buffer.allocUnsafe(9 + values.length * 4);
    b.writeUInt8(OP_CHECKSUMS, 0);
    b.writeUInt32LE(firstBlock, 1);
    b.writeUInt32LE(values.length, 5);
    Buffer.from(values.buffer, values.byteOffset, values.byteLength).copy(b, 9);
    this.#push(b);
  }

  number(op: typeof OP_INTENT_SET | typeof OP_INTENT_CLEAR | typeof OP_HIGH_WATER, value: number): void {
    const b = Buffer.allocUnsafe(5);
    b.writeUInt8(op, 0);
    b.writeUInt32LE(value, 1);
    this.#push(b);
  }

  json(op: JsonOp): void {
    const json = Buffer.from(JSON.stringify(op), 'utf8');
    const b = Buffer.allocUnsafe(5 + json.length);
    b.writeUInt8(OP_JSON, 0);
    b.writeUInt32LE(json.length, 1);
    json.copy(b, 5);
    this.#push(b);
  }

  /** The record: header (magic, generation, sequence, length, SHA-256 prefix) and payload. */
  encode(generation: number, sequence: number): Buffer {
    const payload = Buffer.concat(this.#parts);
    const header = Buffer.alloc(JOURNAL_HEADER_BYTES);
    header.write(JOURNAL_MAGIC, 0, 'latin1');
    header.writeUInt32LE(generation, 8);
    header.writeUInt32LE(sequence % 0x1_0000_0000, 12);
    header.writeUInt32LE(Math.floor(sequence / 0x1_0000_0000), 16);
    header.writeUInt32LE(payload.length, 20);
    sha256(header.subarray(0, 24), payload).copy(header, 24, 0, 24);
    return Buffer.concat([header, payload]);
  }
}

/** One decoded journal operation. */
export type JournalOp =
  | { type: typeof OP_MAP; volumeId: number; vAu: number; mapValue: number }
  | { type: typeof OP_CHECKSUMS; firstBlock: number; values: Uint32Array }
  | { type: typeof OP_INTENT_SET | typeof OP_INTENT_CLEAR | typeof OP_HIGH_WATER; value: number }
  | { type: typeof OP_JSON; op: JsonOp };

/**
 * The valid chain of records in a journal region for checkpoint `generation`, starting after
 * `afterSequence`. Returns the records and the offset just past the last one.
 */
export function readJournal(region: Buffer, generation: number, afterSequence: number): { records: JournalOp[][]; endOffset: number; lastSequence: number } {
  const records: JournalOp[][] = [];
  let offset = 0;
  let expected = afterSequence + 1;
  while (offset + JOURNAL_HEADER_BYTES <= region.length) {
    const header = region.subarray(offset, offset + JOURNAL_HEADER_BYTES);
    if (header.toString('latin1', 0, 8) !== JOURNAL_MAGIC) break;
    if (header.readUInt32LE(8) !== generation) break;
    const sequence = header.readUInt32LE(12) + header.readUInt32LE(16) * 0x1_0000_0000;
    if (sequence !== expected) break;
    const length = header.readUInt32LE(20);
    if (offset + JOURNAL_HEADER_BYTES + length > region.length) break;
    const payload = region.subarray(offset + JOURNAL_HEADER_BYTES, offset + JOURNAL_HEADER_BYTES + length);
    if (!sha256(header.subarray(0, 24), payload).subarray(0, 24).equals(header.subarray(24, 48))) break;
    records.push(decodeOps(payload));
    offset += JOURNAL_HEADER_BYTES + length;
    expected++;
  }
  return { records, endOffset: offset, lastSequence: expected - 1 };
}

function decodeOps(payload: Buffer): JournalOp[] {
  const ops: JournalOp[] = [];
  let at = 0;
  while (at < payload.length) {
    const type = payload.readUInt8(at);
    switch (type) {
      case OP_MAP:
        ops.push({ type, volumeId: payload.readUInt32LE(at + 1), vAu: payload.readUInt32LE(at + 5), mapValue: payload.readInt32LE(at + 9) });
        at += 13;
        break;
      case OP_CHECKSUMS: {
        const count = payload.readUInt32LE(at + 5);
        const values = new Uint32Array(count);
        Buffer.from(values.buffer).set(payload.subarray(at + 9, at + 9 + count * 4));
        ops.push({ type, firstBlock: payload.readUInt32LE(at + 1), values });
        at += 9 + count * 4;
        break;
      }
      case OP_INTENT_SET:
      case OP_INTENT_CLEAR:
      case OP_HIGH_WATER:
        ops.push({ type, value: payload.readUInt32LE(at + 1) });
        at += 5;
        break;
      case OP_JSON: {
        const length = payload.readUInt32LE(at + 1);
        ops.push({ type, op: JSON.parse(payload.toString('utf8', at + 5, at + 5 + length)) as JsonOp });
        at += 5 + length;
        break;
      }
      default:
        throw new NubisError('POOL_METADATA_CORRUPT', `Unknown journal operation ${type}`);
    }
  }
  return ops;
}
