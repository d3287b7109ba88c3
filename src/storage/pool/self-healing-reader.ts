/**
 * Reads of physical allocation units that check every 4 KiB block against its checksum and
 * repair a bad one from redundancy (mirror copy, parity), rewriting it in place: the pool's
 * self-healing. What cannot be repaired fails with VOLUME_IO_ERROR.
 */
import { NubisError } from '../../core/errors.ts';
import { blockChecksum, CHECKSUM_BLOCK_BYTES } from './checksum.ts';
import type { KeyedLocks } from './locks.ts';
import type { MetadataStore } from './metadata-store.ts';
import type { RaidArray } from './raid-array.ts';

/** Checked reads of a pool's AUs, with counters of the blocks it repaired and could not. */
export class SelfHealingReader {
  readonly #poolName: string;
  readonly #allocationUnitBytes: number;
  readonly #blocksPerAu: number;
  readonly #raid: RaidArray;
  readonly #store: MetadataStore;
  readonly #auLocks: KeyedLocks;
  #repairedBlocks = 0;
  #unrepairedBlocks = 0;

  constructor(args: { poolName: string; allocationUnitBytes: number; raid: RaidArray; store: MetadataStore; auLocks: KeyedLocks }) {
    this.#poolName = args.poolName;
    this.#allocationUnitBytes = args.allocationUnitBytes;
    this.#blocksPerAu = args.allocationUnitBytes / CHECKSUM_BLOCK_BYTES;
    this.#raid = args.raid;
    this.#store = args.store;
    this.#auLocks = args.auLocks;
  }

  /** Blocks repaired since the pool opened. */
  get repairedBlocks(): number {
    return this.#repairedBlocks;
  }

  /** Blocks found bad with no good copy since the pool opened. */
  get unrepairedBlocks(): number {
    return this.#unrepairedBlocks;
  }

  /** Reads bytes of physical AU `p` and checks every 4 KiB block; bad blocks are repaired. */
  async readVerified(p: number, inAu: number, length: number, target: Buffer, offset: number, holdsAuLock = false): Promise<void> {
    const B = CHECKSUM_BLOCK_BYTES;
    const firstBlock = Math.floor(inAu / B);
    const endBlock = Math.ceil((inAu + length) / B);
    const aligned = inAu % B === 0 && length % B === 0;
    const buffer = aligned ? target : Buffer.allocUnsafe((endBlock - firstBlock) * B);
    const bufferOffset = aligned ? offset : 0;
    const base = p * this.#allocationUnitBytes;
    await this.#raid.read(buffer, bufferOffset, (endBlock - firstBlock) * B, base + firstBlock * B);
    const checksums = this.#store.state.checksums;
    const firstIndex = p * this.#blocksPerAu;
    for (let b = firstBlock; b < endBlock; b++) {
      const at = bufferOffset + (b - firstBlock) * B;
      if (blockChecksum(buffer, at) !== checksums[firstIndex + b]) {
        const good = holdsAuLock ? await this.repairBlock(p, b) : await this.#auLocks.with(p, true, () => this.repairBlock(p, b));
        good.copy(buffer, at);
      }
    }
    if (!aligned) buffer.copy(target, offset, inAu - firstBlock * B, inAu - firstBlock * B + length);
  }

  /** Finds a good copy of block `b` of AU `p` (caller holds the AU lock) and rewrites it. */
  async repairBlock(p: number, b: number): Promise<Buffer> {
    const B = CHECKSUM_BLOCK_BYTES;
    const position = p * this.#allocationUnitBytes + b * B;
    const expected = this.#store.state.checksums[p * this.#blocksPerAu + b];
    const again = Buffer.allocUnsafe(B);
    await this.#raid.read(again, 0, B, position);
    // A concurrent repair (or a read that raced a rebuild) may already have fixed it.
    if (blockChecksum(again) === expected) return again;
    for await (const candidate of this.#raid.alternatives(position, B)) {
      if (blockChecksum(candidate.data) === expected) {
        if (candidate.suspect >= 0) this.#raid.members[candidate.suspect]!.checksumErrors++;
        if (!this.#store.readOnlyReason) await this.#raid.repairBlock(position, candidate.data);
        this.#repairedBlocks++;
        return candidate.data;
      }
      if (candidate.source >= 0) this.#raid.members[candidate.source]!.checksumErrors++;
    }
    this.#unrepairedBlocks++;
    throw new NubisError('VOLUME_IO_ERROR', `Block at byte ${position} of pool ${this.#poolName} fails its checksum and no redundant copy matches`, {
      details: { pool: this.#poolName, position },
    });
  }
}
