/**
 * Long actions on a pool's members, run online while volumes serve I/O: scrub (check every
 * block, repair from redundancy), taking a member offline, and replacing a member with a rebuild
 * onto the new device. Long actions report progress and can be throttled and aborted.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import { NubisError } from '../../core/errors.ts';
import { formatSize } from '../size.ts';
import { blockChecksum, CHECKSUM_BLOCK_BYTES } from './checksum.ts';
import type { KeyedLocks } from './locks.ts';
import type { MemberDevice } from './member-device.ts';
import { decodeLabel, LABEL_BYTES, type PoolLabel } from './metadata-format.ts';
import type { MetadataStore } from './metadata-store.ts';
import { memberBytesUsed, type PoolGeometry } from './pool-geometry.ts';
import { encodeMemberLabel, refuseDeviceWithData, type OpenMemberDevice } from './pool-members.ts';
import type { MemberSlot, RaidArray } from './raid-array.ts';
import type { SelfHealingReader } from './self-healing-reader.ts';

/** Options of `StoragePool.replaceMember` and `checkReplacement`. */
export interface ReplaceOptions {
  /** Overwrite a new device that holds a filesystem, a partition table or another pool. Default false. */
  force?: boolean;
  /** UUIDs of the pools open on this node (this one included): never overwritten. */
  livePoolUuids?: ReadonlySet<string>;
}

/** Progress of a long pool action (scrub, rebuild). */
export interface PoolProgress {
  doneBytes: number;
  totalBytes: number;
  rateBytesPerSec: number;
  etaSeconds: number;
}

/** Options of long pool actions. */
export interface LongActionOptions {
  onProgress?: (progress: PoolProgress) => void;
  /** Throttle so that running VMs keep their bandwidth; default unlimited. */
  maxBytesPerSec?: number;
  signal?: AbortSignal;
}

/** Result of a scrub. */
export interface ScrubReport {
  scannedBytes: number;
  checksumErrors: number;
  repairedBlocks: number;
  unrepairedBlocks: number;
  redundancyFixes: number;
  durationMs: number;
}

/** Scrub, offline and replace for one pool. */
export class PoolMaintenance {
  readonly #poolName: string;
  readonly #poolUuid: string;
  readonly #geometry: PoolGeometry;
  readonly #raid: RaidArray;
  readonly #store: MetadataStore;
  readonly #reader: SelfHealingReader;
  readonly #auLocks: KeyedLocks;
  readonly #openDevice: OpenMemberDevice;

  constructor(args: {
    poolName: string;
    poolUuid: string;
    geometry: PoolGeometry;
    raid: RaidArray;
    store: MetadataStore;
    reader: SelfHealingReader;
    auLocks: KeyedLocks;
    openDevice: OpenMemberDevice;
  }) {
    this.#poolName = args.poolName;
    this.#poolUuid = args.poolUuid;
    this.#geometry = args.geometry;
    this.#raid = args.raid;
    this.#store = args.store;
    this.#reader = args.reader;
    this.#auLocks = args.auLocks;
    this.#openDevice = args.openDevice;
  }

  // ---------------------------------------------------------------- scrub

  /**
   * Reads every allocated AU, checks every block against its checksum, repairs bad blocks from
   * redundancy and makes mirrors and parity consistent. Runs online.
   */
  async scrub(options: LongActionOptions = {}): Promise<ScrubReport> {
    this.#store.requireWritable();
    const started = Date.now();
    const au = this.#geometry.allocationUnitBytes;
    const errorsBefore = this.#raid.members.reduce((s, m) => s + m.checksumErrors, 0);
    const repairedBefore = this.#reader.repairedBlocks;
    const unrepairedBefore = this.#reader.unrepairedBlocks;
    let fixes = 0;
    let scanned = 0;
    const allocated: number[] = [];
    for (let p = 0; p < this.#store.allocation.auCount; p++) if (this.#store.allocation.isAllocated(p)) allocated.push(p);
    const total = allocated.length * au;
    const buffer = Buffer.allocUnsafe(au);
    for (const p of allocated) {
      options.signal?.throwIfAborted();
      fixes += await this.#auLocks.with(p, true, () => this.#scrubAu(p, buffer));
      scanned += au;
      await reportAndThrottle(options, started, scanned, total);
    }
    await this.#store.commit();
    return {
      scannedBytes: scanned,
      checksumErrors: this.#raid.members.reduce((s, m) => s + m.checksumErrors, 0) - errorsBefore,
      repairedBlocks: this.#reader.repairedBlocks - repairedBefore,
      unrepairedBlocks: this.#reader.unrepairedBlocks - unrepairedBefore,
      redundancyFixes: fixes,
      durationMs: Date.now() - started,
    };
  }

  /** Checks and repairs AU `p` (the caller holds its lock); returns the members whose redundancy was fixed. */
  async #scrubAu(p: number, buffer: Buffer): Promise<number> {
    if (!this.#store.allocation.isAllocated(p)) return 0;
    const au = this.#geometry.allocationUnitBytes;
    const B = CHECKSUM_BLOCK_BYTES;
    const blocksPerAu = au / B;
    const rowsPerAu = au / this.#raid.rowDataBytes;
    await this.#raid.read(buffer, 0, au, p * au);
    for (let b = 0; b < blocksPerAu; b++) {
      if (blockChecksum(buffer, b * B) !== this.#store.state.checksums[p * blocksPerAu + b]) {
        try {
          await this.#reader.repairBlock(p, b);
        } catch {
          // Counted in unrepairedBlocks; scrub goes on.
        }
      }
    }
    if (this.#raid.health().state !== 'online') return 0;
    const { fixedMembers } = await this.#raid.resyncRows(p * rowsPerAu, (p + 1) * rowsPerAu);
    for (const index of fixedMembers) this.#raid.members[index]!.checksumErrors++;
    return fixedMembers.length;
  }

  // ---------------------------------------------------------------- members

  #member(index: number): MemberSlot {
    const member = this.#raid.members[index];
    if (!member) throw new NubisError('POOL_MEMBER_NOT_FOUND', `Pool ${this.#poolName} has no member ${index}`, { details: { index } });
    return member;
  }

  /** Takes a member out of service (zpool offline); the pool runs degraded. */
  async offlineMember(index: number): Promise<void> {
    const member = this.#member(index);
    member.state = 'faulted';
    await member.device?.close().catch(() => undefined);
    member.device = undefined;
    await this.#store.commit();
  }

  /**
   * Everything `replaceMember` checks before it writes (the member exists, the layout has
   * redundancy, the new device opens, holds no data unless forced, is large enough), without
   * writing: the storage node answers a bad request at once instead of failing its job later.
   */
  async checkReplacement(index: number, newPath: string, options: ReplaceOptions = {}): Promise<void> {
    const { device } = await this.#openReplacement(index, newPath, options);
    await device.close();
  }

  /** Opens and vets the device replacing member `index`; see `checkReplacement`. */
  async #openReplacement(index: number, newPath: string, options: ReplaceOptions): Promise<{ member: MemberSlot; device: MemberDevice }> {
    this.#store.requireWritable();
    const member = this.#member(index);
    if (this.#geometry.layout === 'raid0') {
      throw new NubisError('POOL_NO_REDUNDANCY', `Pool ${this.#poolName} is raid0: a member's data exists nowhere else, so it cannot be rebuilt`, {
        details: { pool: this.#poolName },
      });
    }
    if (this.#raid.members.some((m) => m.path === newPath && m.device && m.index !== index)) {
      throw new NubisError('POOL_DEVICE_IN_USE', `Device ${newPath} is already a member of pool ${this.#poolName}`, { details: { device: newPath } });
    }
    const device = await this.#openDevice(newPath);
    try {
      await this.#vetReplacement(device, newPath, index, options);
      return { member, device };
    } catch (error) {
      await device.close();
      throw error;
    }
  }

  /** Throws unless `device` (opened from `newPath`) may replace member `index`: it holds nothing to keep and is large enough. */
  async #vetReplacement(device: MemberDevice, newPath: string, index: number, options: ReplaceOptions): Promise<void> {
    const block = Buffer.alloc(LABEL_BYTES);
    await device.read(block, 0, LABEL_BYTES, 0);
    let existing: PoolLabel | undefined;
    try {
      existing = decodeLabel(block);
    } catch {
      existing = undefined;
    }
    // A device that already carries this member's label is an interrupted rebuild: resume it.
    const resuming = existing?.poolUuid === this.#poolUuid && existing.memberIndex === index;
    if (!resuming) await refuseDeviceWithData(device, { force: options.force, livePoolUuids: new Set([...(options.livePoolUuids ?? []), this.#poolUuid]) });
    const needed = memberBytesUsed(this.#geometry);
    if (device.sizeBytes < needed) {
      throw new NubisError(
        'POOL_DEVICE_TOO_SMALL',
        `Device ${newPath} has ${formatSize(device.sizeBytes)}; members of pool ${this.#poolName} need ${formatSize(needed)}`,
        {
          details: { device: newPath, sizeBytes: device.sizeBytes, minimumBytes: needed },
        },
      );
    }
  }

  /**
   * Replaces member `index` (missing, faulted or healthy) by the device at `newPath` and rebuilds
   * its data from the other members online, with progress and an optional throttle. The new
   * device must read as zeroes where the pool has never written (a new or zeroed device).
   */
  async replaceMember(index: number, newPath: string, options: LongActionOptions & ReplaceOptions = {}): Promise<void> {
    const { member, device } = await this.#openReplacement(index, newPath, options);
    const label = this.#labelFor(index, true);
    await device.write(label, 0, label.length, 0);
    await device.flush();
    await member.device?.close().catch(() => undefined);
    member.device = device;
    member.path = newPath;
    member.state = 'rebuilding';
    member.rebuiltRows = 0;
    member.readErrors = member.writeErrors = member.checksumErrors = 0;
    // The new member gets the metadata at once, so a crash mid-rebuild still finds the pool.
    this.#store.requestCheckpoint();
    await this.#store.commit();

    await this.#rebuild(index, member, options);
    await device.flush();
    member.state = 'online';
    this.#store.apply({ op: 'member-replaced', index });
    const finalLabel = this.#labelFor(index, false);
    await device.write(finalLabel, 0, finalLabel.length, 0);
    await device.flush();
    this.#store.requestCheckpoint();
    await this.#store.commit();
  }

  /** Rebuilds every allocated AU onto member `index`, in order; `rebuiltRows` tells reads how far it got. */
  async #rebuild(index: number, member: MemberSlot, options: LongActionOptions): Promise<void> {
    const au = this.#geometry.allocationUnitBytes;
    const rowsPerAu = au / this.#raid.rowDataBytes;
    const allocation = this.#store.allocation;
    const total = allocation.allocatedCount() * au;
    const started = Date.now();
    let done = 0;
    for (let p = 0; p < allocation.auCount; p++) {
      options.signal?.throwIfAborted();
      if (!allocation.isAllocated(p)) {
        member.rebuiltRows = (p + 1) * rowsPerAu;
        continue;
      }
      await this.#auLocks.with(p, true, async () => {
        await this.#raid.rebuildRows(index, p * rowsPerAu, (p + 1) * rowsPerAu);
        member.rebuiltRows = (p + 1) * rowsPerAu;
      });
      done += au;
      await reportAndThrottle(options, started, done, total);
    }
    member.rebuiltRows = this.#geometry.rows;
  }

  #labelFor(index: number, rebuilding: boolean): Buffer {
    return encodeMemberLabel(this.#geometry, {
      poolUuid: this.#poolUuid,
      poolName: this.#poolName,
      memberIndex: index,
      createdAt: new Date().toISOString(),
      rebuilding,
    });
  }
}

async function reportAndThrottle(options: LongActionOptions, started: number, done: number, total: number): Promise<void> {
  const elapsed = Math.max(1, Date.now() - started) / 1000;
  const rate = done / elapsed;
  options.onProgress?.({ doneBytes: done, totalBytes: total, rateBytesPerSec: Math.round(rate), etaSeconds: rate > 0 ? Math.round((total - done) / rate) : 0 });
  const aheadMs = options.maxBytesPerSec && options.maxBytesPerSec > 0 ? (done / options.maxBytesPerSec - elapsed) * 1000 : 0;
  if (aheadMs > 0) await new Promise((resolve) => setTimeout(resolve, aheadMs));
  // Member I/O of cached data completes inline (member-device.ts), without a turn of the event
  // loop: give one between allocation units, so that clients are served during long actions.
  else await nextTurn();
}
