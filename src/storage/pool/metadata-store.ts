/**
 * The pool's metadata in memory and its way to disk: the volume table, checksums, write intents
 * and allocation, and the commits that make them durable (journal records, checkpoints; see
 * metadata-format.ts for the layout and storage-pool.ts for the crash-consistency rules).
 *
 * Changes queue up in a journal writer as they happen; a commit captures them synchronously,
 * flushes the data on every member and then writes the record (or a checkpoint) durable. Once a
 * commit fails the on-disk metadata can no longer follow memory, so the pool turns read-only.
 */
import { NubisError } from '../../core/errors.ts';
import { formatSize } from '../size.ts';
import { AllocationTable } from './allocation-table.ts';
import { blockChecksum, CHECKSUM_BLOCK_BYTES } from './checksum.ts';
import {
  encodeCheckpoint,
  JOURNAL_HEADER_BYTES,
  JournalWriter,
  OP_HIGH_WATER,
  OP_INTENT_CLEAR,
  OP_INTENT_SET,
  type JsonOp,
  type PoolState,
  type VolumeRecord,
} from './metadata-format.ts';
import { applyJsonOp, type LoadedMetadata } from './metadata-replay.ts';
import { checkpointSlotOffset, journalStartOffset, type PoolGeometry } from './pool-geometry.ts';
import type { RaidArray } from './raid-array.ts';

const HIGH_WATER_STEP_AUS = 256;
const PERIODIC_COMMIT_MS = 5000;
/** A write intent is cleared once its AU has not been written for this long. */
const INTENT_IDLE_MS = 10_000;

/** A volume in memory: its record and its map (virtual AU -> physical AU + 1, 0 for a hole). */
export interface VolumeEntry {
  record: VolumeRecord;
  map: Int32Array;
}

/** The metadata of one open pool and its commits. */
export class MetadataStore {
  readonly state: PoolState;
  readonly allocation: AllocationTable;
  readonly #poolName: string;
  readonly #geometry: PoolGeometry;
  readonly #raid: RaidArray;
  readonly #blocksPerAu: number;
  #pending = new JournalWriter();
  /** AUs whose write intent is set in memory but not yet durable. */
  #pendingIntents: number[] = [];
  #dirtyAus = new Set<number>();
  /** AU -> when an in-place write last started (ms). */
  readonly #lastInPlaceWriteMs = new Map<number, number>();
  readonly #inPlaceInflight = new Map<number, number>();
  #generation: number;
  #sequence: number;
  #activeSlot: 0 | 1;
  #journalOffset: number;
  #forceCheckpoint = false;
  /** The next checkpoint also overwrites the rest of its slot and the journal after its marker. */
  #wipeStale = false;
  #commitRunning?: Promise<void>;
  #commitQueued?: Promise<void>;
  /** The queued commit must be a full one (someone asked for more than intents). */
  #queuedFull = false;
  #readOnlyReason?: string;
  #closed = false;
  #timer?: NodeJS.Timeout;

  constructor(poolName: string, geometry: PoolGeometry, raid: RaidArray, loaded: LoadedMetadata) {
    this.#poolName = poolName;
    this.#geometry = geometry;
    this.#raid = raid;
    this.#blocksPerAu = geometry.allocationUnitBytes / CHECKSUM_BLOCK_BYTES;
    this.state = loaded.state;
    this.#generation = loaded.generation;
    this.#sequence = loaded.sequence;
    this.#activeSlot = loaded.activeSlot;
    this.#journalOffset = loaded.journalOffset;
    this.#readOnlyReason = loaded.readOnlyReason;
    this.allocation = new AllocationTable(Math.floor(raid.sizeBytes / geometry.allocationUnitBytes), loaded.state);
    if (!this.#readOnlyReason) {
      this.#timer = setInterval(() => {
        if (this.#pending.bytes > 0 || this.#dirtyAus.size > 0 || this.state.intentAus.size > 0) this.commit().catch(() => undefined);
      }, PERIODIC_COMMIT_MS);
      this.#timer.unref();
    }
  }

  // ---------------------------------------------------------------- pool state

  /** Why the pool takes no writes, if it does not. */
  get readOnlyReason(): string | undefined {
    return this.#readOnlyReason;
  }

  /** Stops the pool taking writes (it reopens from the last commit). */
  setReadOnly(reason: string): void {
    this.#readOnlyReason = reason;
  }

  /** Whether `close` has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Throws POOL_CLOSED once the pool is closed. */
  requireOpen(): void {
    if (this.#closed) throw new NubisError('POOL_CLOSED', `Pool ${this.#poolName} is closed`);
  }

  /** Throws POOL_CLOSED or POOL_READ_ONLY unless the pool takes writes. */
  requireWritable(): void {
    this.requireOpen();
    if (this.#readOnlyReason)
      throw new NubisError('POOL_READ_ONLY', `Pool ${this.#poolName} is read-only: ${this.#readOnlyReason}`, { details: { pool: this.#poolName } });
  }

  /** Commits with a final checkpoint (unless read-only); no commit runs after. */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    if (!this.#readOnlyReason) {
      this.#forceCheckpoint = true;
      await this.commit().catch(() => undefined);
    }
    this.#closed = true;
  }

  /** Makes the next commit write a full checkpoint on every member instead of a journal record. */
  requestCheckpoint(): void {
    this.#forceCheckpoint = true;
  }

  /**
   * Overwrites every copy of the metadata older than the current state on the writable members:
   * both checkpoint slots get the current state (zero-padded to the slot's end) and the journal
   * is zeroed after the new generation's marker. Run after deleting an encrypted volume, whose
   * wrapped key would otherwise survive in the older slot or in journal records that replay no
   * longer reads. `purgePending` stays set in the first checkpoint, so a crash before the second
   * has the next open purge again.
   */
  async purgeStaleCopies(): Promise<void> {
    this.#wipeStale = true;
    this.#forceCheckpoint = true;
    await this.commit();
    this.state.purgePending = false;
    this.#wipeStale = true;
    this.#forceCheckpoint = true;
    await this.commit();
  }

  // ---------------------------------------------------------------- changes

  /** The volume with id `id`; throws VOLUME_NOT_FOUND once it is deleted. */
  volumeById(id: number): VolumeEntry {
    const entry = this.state.volumes.get(id);
    if (!entry) throw new NubisError('VOLUME_NOT_FOUND', `Volume ${id} was deleted`, { details: { volumeId: id } });
    return entry;
  }

  /** Applies a volume-level change to memory and queues it for the journal. */
  apply(op: JsonOp): void {
    applyJsonOp(this.state, op, this.#geometry.allocationUnitBytes, {
      ref: (p) => this.allocation.ref(p),
      unref: (p) => this.allocation.unref(p),
    });
    this.#pending.json(op);
  }

  /** Queues a map entry of a volume for the journal (the caller has changed the map itself). */
  recordMap(volumeId: number, vAu: number, mapValue: number): void {
    this.#pending.map(volumeId, vAu, mapValue);
  }

  /** Queues the checksums of AU `p` for the next commit (the caller has updated them). */
  markDirty(p: number): void {
    this.#dirtyAus.add(p);
  }

  /** A free AU; `zeroed` when it has never been written since the pool was created. */
  async allocate(): Promise<{ p: number; zeroed: boolean }> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const reused = this.allocation.takeFree();
      if (reused !== undefined) return { p: reused, zeroed: false };
      const p = this.allocation.takeFresh();
      if (p !== undefined) {
        if (p >= this.state.durableHighWaterAu) {
          // Persist a bound on written AUs before using one above it, so that after a crash no
          // AU that may hold data is taken for a zeroed one.
          this.state.durableHighWaterAu = Math.min(this.allocation.auCount, p + HIGH_WATER_STEP_AUS);
          this.#pending.number(OP_HIGH_WATER, this.state.durableHighWaterAu);
        }
        while (!this.allocation.isBelowDurableHighWater(p)) await this.commit();
        return { p, zeroed: true };
      }
      if (!this.allocation.hasPendingFree && !this.#commitRunning) break;
      // Space freed but not yet committed: commit, then it can be reused.
      await this.commit();
    }
    throw new NubisError('POOL_FULL', `Pool ${this.#poolName} has no free space left`, { details: { pool: this.#poolName } });
  }

  // ---------------------------------------------------------------- write intents

  /** An in-place write to AU `p` begins; pair with `inPlaceWriteEnded`. */
  inPlaceWriteStarted(p: number): void {
    this.#lastInPlaceWriteMs.set(p, Date.now());
    this.#inPlaceInflight.set(p, (this.#inPlaceInflight.get(p) ?? 0) + 1);
  }

  /** An in-place write to AU `p` is over (done or failed). */
  inPlaceWriteEnded(p: number): void {
    const left = this.#inPlaceInflight.get(p)! - 1;
    if (left === 0) this.#inPlaceInflight.delete(p);
    else this.#inPlaceInflight.set(p, left);
  }

  /** Makes a write intent for AU `p` durable, unless it has one already. */
  async ensureIntent(p: number): Promise<void> {
    if (this.state.intentAus.has(p)) return;
    // Durable intent before touching data that the committed metadata vouches for.
    this.state.intentAus.add(p);
    this.#pendingIntents.push(p);
    await this.#commitIntents();
  }

  /** After an unclean stop: resync redundancy and recompute checksums of AUs with a write intent. */
  async recoverIntents(): Promise<void> {
    const rowsPerAu = this.#geometry.allocationUnitBytes / this.#raid.rowDataBytes;
    const au = this.#geometry.allocationUnitBytes;
    const buffer = Buffer.allocUnsafe(au);
    for (const p of this.state.intentAus) {
      if (this.allocation.isAllocated(p)) {
        if (this.#raid.health().state === 'online') await this.#raid.resyncRows(p * rowsPerAu, (p + 1) * rowsPerAu);
        await this.#raid.read(buffer, 0, au, p * au);
        for (let b = 0; b < this.#blocksPerAu; b++) this.state.checksums[p * this.#blocksPerAu + b] = blockChecksum(buffer, b * CHECKSUM_BLOCK_BYTES);
      }
    }
    this.state.intentAus.clear();
    // One fresh checkpoint on every member: members converge, the journal starts empty.
    this.#forceCheckpoint = true;
    await this.commit();
  }

  // ---------------------------------------------------------------- commit

  /**
   * Makes every write completed so far durable, with its metadata (group commit: callers that
   * arrive while one runs share the next).
   */
  commit(): Promise<void> {
    return this.#requestCommit(true);
  }

  /**
   * Makes the write intents set so far durable. Lighter than a commit: an intent vouches for no
   * data, so no member is flushed; only the record is written, durable for its own bytes.
   */
  #commitIntents(): Promise<void> {
    return this.#requestCommit(false);
  }

  /** Commits run one at a time; requests that arrive meanwhile share the next one. */
  #requestCommit(full: boolean): Promise<void> {
    if (this.#readOnlyReason || this.#closed) return Promise.resolve();
    if (!this.#commitRunning) {
      this.#commitRunning = (full ? this.#doCommit() : this.#doIntentCommit()).finally(() => (this.#commitRunning = undefined));
      return this.#commitRunning;
    }
    if (full) this.#queuedFull = true;
    this.#commitQueued ??= this.#commitRunning
      .catch(() => undefined)
      .then(() => {
        this.#commitQueued = undefined;
        const nextFull = this.#queuedFull;
        this.#queuedFull = false;
        return this.#requestCommit(nextFull);
      });
    return this.#commitQueued;
  }

  async #doIntentCommit(): Promise<void> {
    if (this.#pendingIntents.length === 0) return;
    const writer = new JournalWriter();
    for (const p of this.#pendingIntents) writer.number(OP_INTENT_SET, p);
    // No room before the next checkpoint: a full commit takes the intents along.
    if (this.#forceCheckpoint || this.#journalOffset + JOURNAL_HEADER_BYTES + writer.bytes + JOURNAL_HEADER_BYTES > this.#geometry.journalBytes) {
      return this.#doCommit();
    }
    this.#pendingIntents = [];
    const record = writer.encode(this.#generation, this.#sequence + 1);
    try {
      await this.#writeMetadata(record, journalStartOffset(this.#geometry) + this.#journalOffset);
    } catch (error) {
      this.#readOnlyReason = `Metadata of pool ${this.#poolName} could not be written: ${(error as Error).message}`;
      throw error;
    }
    this.#sequence++;
    this.#journalOffset += record.length;
  }

  async #doCommit(): Promise<void> {
    // Capture, synchronously, everything completed up to now.
    const writer = this.#captureChanges();
    const capture = this.allocation.commitStarted();
    const highWater = this.state.durableHighWaterAu;
    const checkpoint = this.#checkpointIfDue(JOURNAL_HEADER_BYTES + writer.bytes);
    const wipe = checkpoint !== undefined && this.#wipeStale;
    if (wipe) this.#wipeStale = false;
    try {
      await this.#raid.flush();
      if (checkpoint) await this.#writeCheckpoint(checkpoint, wipe);
      else if (writer.bytes > 0) await this.#appendRecord(writer);
    } catch (error) {
      // The captured records are neither on disk nor pending any more: the on-disk metadata can
      // no longer follow memory, so the pool stops taking writes (it reopens from the last commit).
      this.#readOnlyReason = `Metadata of pool ${this.#poolName} could not be written: ${(error as Error).message}`;
      throw error;
    }
    this.allocation.commitDone(capture, highWater);
  }

  /** Takes every queued change (maps, intents, checksums of dirty AUs, cleared intents) into one writer. */
  #captureChanges(): JournalWriter {
    for (const member of this.#raid.members) {
      if (member.state === 'faulted' && !this.state.faultedMembers.has(member.index)) this.apply({ op: 'member-faulted', index: member.index });
    }
    const writer = this.#pending;
    this.#pending = new JournalWriter();
    for (const p of this.#pendingIntents) writer.number(OP_INTENT_SET, p);
    this.#pendingIntents = [];
    const checksums = this.state.checksums;
    for (const p of this.#dirtyAus) writer.checksums(p * this.#blocksPerAu, checksums.subarray(p * this.#blocksPerAu, (p + 1) * this.#blocksPerAu));
    this.#dirtyAus = new Set();
    // An intent ends once its AU has been idle for a while: its checksums are then current. The
    // delay keeps hot AUs marked, so that random writes do not each pay for a new intent.
    const idleBefore = Date.now() - INTENT_IDLE_MS;
    for (const p of this.state.intentAus) {
      if (!this.#inPlaceInflight.has(p) && (this.#lastInPlaceWriteMs.get(p) ?? 0) < idleBefore) {
        this.state.intentAus.delete(p);
        this.#lastInPlaceWriteMs.delete(p);
        writer.number(OP_INTENT_CLEAR, p);
      }
    }
    return writer;
  }

  /** The encoded checkpoint when one is asked for or the journal has no room for `recordBytes`. */
  #checkpointIfDue(recordBytes: number): Buffer | undefined {
    if (!this.#forceCheckpoint && this.#journalOffset + recordBytes + JOURNAL_HEADER_BYTES <= this.#geometry.journalBytes) return undefined;
    this.#forceCheckpoint = false;
    const checkpoint = encodeCheckpoint(this.state, this.#generation + 1, this.#sequence + 1);
    if (checkpoint.length > this.#geometry.slotBytes) {
      // The captured changes cannot be made durable: stop accepting writes rather than lose them.
      this.#readOnlyReason = `Metadata of pool ${this.#poolName} outgrew its ${formatSize(this.#geometry.slotBytes)} area; delete snapshots or volumes`;
      throw new NubisError('POOL_METADATA_FULL', this.#readOnlyReason, { details: { pool: this.#poolName } });
    }
    return checkpoint;
  }

  /**
   * Writes `checkpoint` to the inactive slot and starts the new generation's journal; with `wipe`
   * the slot's rest and the journal after the marker are zeroed too (`purgeStaleCopies`).
   */
  async #writeCheckpoint(checkpoint: Buffer, wipe = false): Promise<void> {
    const slot = this.#activeSlot === 0 ? 1 : 0;
    const slotImage = wipe ? Buffer.concat([checkpoint, Buffer.alloc(this.#geometry.slotBytes - checkpoint.length)]) : checkpoint;
    await this.#writeMetadata(slotImage, checkpointSlotOffset(this.#geometry, slot));
    this.#generation++;
    this.#sequence++;
    this.#activeSlot = slot;
    // The first record of the new generation marks the checkpoint durable: after a crash,
    // a newer checkpoint that fails its checksum but has this marker is corruption, not a tear.
    this.#sequence++;
    const marker = new JournalWriter().encode(this.#generation, this.#sequence);
    await this.#writeMetadata(
      wipe ? Buffer.concat([marker, Buffer.alloc(this.#geometry.journalBytes - marker.length)]) : marker,
      journalStartOffset(this.#geometry),
    );
    this.#journalOffset = marker.length;
  }

  /** Appends the changes in `writer` to the journal as one record. */
  async #appendRecord(writer: JournalWriter): Promise<void> {
    this.#sequence++;
    const record = writer.encode(this.#generation, this.#sequence);
    await this.#writeMetadata(record, journalStartOffset(this.#geometry) + this.#journalOffset);
    this.#journalOffset += record.length;
  }

  /**
   * Writes metadata bytes at `position` on every writable member, durable on return. Only these
   * bytes are synced: data written since the commit's flush need not wait for them, nor they for it.
   */
  async #writeMetadata(bytes: Buffer, position: number): Promise<void> {
    const targets = this.#raid.members.filter((m) => m.device && (m.state === 'online' || m.state === 'rebuilding'));
    const results = await Promise.allSettled(targets.map((m) => m.device!.writeDurable(bytes, 0, bytes.length, position)));
    results.forEach((r, i) => {
      if (r.status === 'rejected') {
        targets[i]!.writeErrors++;
        targets[i]!.state = 'faulted';
      }
    });
    if (!results.some((r) => r.status === 'fulfilled')) {
      throw new NubisError('POOL_FAULTED', `Pool ${this.#poolName} could not write its metadata to any member`);
    }
  }
}
