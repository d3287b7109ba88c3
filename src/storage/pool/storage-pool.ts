/**
 * A storage pool: member devices of any size and kind joined by a RAID layout into one logical
 * address space, carved into thin volumes with copy-on-write snapshots and writable clones.
 *
 * Space is handed out in allocation units (AUs, whole RAID rows, 1 MiB by default). A volume maps
 * its AUs to physical AUs; snapshots and clones share physical AUs by reference count, so taking
 * one copies only the map. Every 4 KiB block has a checksum, checked on each read: a bad block is
 * rebuilt from redundancy and rewritten (self-healing), or fails with VOLUME_IO_ERROR.
 *
 * Crash consistency (see metadata-format.ts for the layout):
 * - A commit fsyncs the data on every member first, then appends a journal record (or writes a
 *   checkpoint) with the maps and checksums of every write completed before it, written durable
 *   for its own bytes (O_DSYNC, or FUA on an NBD member). FLUSH and FUA are commits, so what they
 *   acknowledge survives kill -9 and power loss.
 * - A new write never lands where the committed metadata points to live data of another owner:
 *   first writes go to fresh AUs, shared AUs are copied (CoW), freed AUs are reused only after the
 *   commit that frees them, and AUs shared at the last commit stay copy-on-write until the next.
 * - Writes in place (an AU the volume alone owns) are preceded by a durable write intent for that
 *   AU; after a crash, intent AUs get their redundancy resynced and their checksums recomputed, as
 *   their content is only guaranteed up to the last commit anyway (md's write-intent bitmap). An
 *   intent vouches for no data, so its record goes out alone, without flushing any data first.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import { NubisError } from '../../core/errors.ts';
import { formatSize } from '../size.ts';
import { blockChecksum, CHECKSUM_BLOCK_BYTES, ZERO_BLOCK_CHECKSUM } from './checksum.ts';
import { KeyedLocks } from './locks.ts';
import { openMemberDevice, type MemberDevice } from './member-device.ts';
import {
  decodeLabel,
  encodeCheckpoint,
  JOURNAL_HEADER_BYTES,
  JournalWriter,
  LABEL_BYTES,
  OP_HIGH_WATER,
  OP_INTENT_CLEAR,
  OP_INTENT_SET,
  type JsonOp,
  type PoolLabel,
  type PoolState,
  type VolumeRecord,
} from './metadata-format.ts';
import { applyJsonOp, loadMetadata } from './metadata-replay.ts';
import {
  checkpointSlotOffset,
  geometryFromLabel,
  journalStartOffset,
  memberBytesUsed,
  planPool,
  splitAtAllocationUnits,
  wasteBytes,
  type PoolGeometry,
} from './pool-geometry.ts';
import { encodeMemberLabel, findMembers, formatMembers, refuseDeviceWithData, type OpenMemberDevice } from './pool-members.ts';
import { validateName } from './pool-names.ts';
import { RAID_LAYOUTS, RaidArray, type MemberSlot, type RaidLayout } from './raid-array.ts';
import { VolumeDevice } from './volume-device.ts';

export type { OpenMemberDevice } from './pool-members.ts';
export { VolumeDevice } from './volume-device.ts';

const HIGH_WATER_STEP_AUS = 256;
const PERIODIC_COMMIT_MS = 5000;
/** A write intent is cleared once its AU has not been written for this long. */
const INTENT_IDLE_MS = 10_000;
const SECTOR_BYTES = 512;

/** Options of `StoragePool.create`. */
export interface PoolCreateOptions {
  name: string;
  layout: RaidLayout;
  /** Member device paths, in member order. */
  devices: string[];
  /** Stripe chunk; a power of two from 4 KiB to 16 MiB. Default 64 KiB. */
  chunkBytes?: number;
  /** Allocation unit, rounded up to whole RAID rows. Default 1 MiB. */
  allocationUnitBytes?: number;
  openDevice?: OpenMemberDevice;
  /** Share of usable space allocated above which status warns. Default 0.8. */
  fullWarningRatio?: number;
  /** Overwrite devices that hold a filesystem, a partition table or another pool. Default false. */
  force?: boolean;
  /** UUIDs of the pools open on this node: their members are refused even with `force`. */
  livePoolUuids?: ReadonlySet<string>;
}

/** Options of `StoragePool.replaceMember` and `checkReplacement`. */
export interface ReplaceOptions {
  /** Overwrite a new device that holds a filesystem, a partition table or another pool. Default false. */
  force?: boolean;
  /** UUIDs of the pools open on this node (this one included): never overwritten. */
  livePoolUuids?: ReadonlySet<string>;
}

/** Options of `StoragePool.open`. */
export interface PoolOpenOptions {
  /** Member device paths as last known (any order; labels say which member each is). */
  devices: string[];
  openDevice?: OpenMemberDevice;
  /** Share of usable space allocated above which status warns. Default 0.8. */
  fullWarningRatio?: number;
}

/** A volume as callers see it. */
export interface VolumeInfo {
  name: string;
  sizeBytes: number;
  kind: 'volume' | 'snapshot' | 'clone';
  originName?: string;
  readOnly: boolean;
  /** Space this volume maps (shared AUs counted in every volume that maps them). */
  allocatedBytes: number;
  createdAt: string;
}

/** One member in `PoolStatus`, like a line of `zpool status`. */
export interface MemberStatus {
  index: number;
  path: string;
  state: MemberSlot['state'];
  sizeBytes: number;
  readErrors: number;
  writeErrors: number;
  checksumErrors: number;
}

/** What `nubis pool show` prints. */
export interface PoolStatus {
  name: string;
  uuid: string;
  layout: RaidLayout;
  chunkBytes: number;
  allocationUnitBytes: number;
  state: 'online' | 'degraded' | 'faulted';
  readOnly: boolean;
  readOnlyReason?: string;
  sizeBytes: number;
  allocatedBytes: number;
  freeBytes: number;
  provisionedBytes: number;
  overcommitRatio: number;
  /** Member bytes no stripe can use (members larger than the smallest, and the metadata area). */
  wasteBytes: number;
  warnings: string[];
  members: MemberStatus[];
  volumes: number;
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

interface VolumeEntry {
  record: VolumeRecord;
  map: Int32Array;
}

/** A pool opened by this process. Not safe to open the same devices from two processes. */
export class StoragePool {
  readonly name: string;
  readonly uuid: string;
  readonly #geometry: PoolGeometry;
  readonly #raid: RaidArray;
  readonly #auCount: number;
  readonly #blocksPerAu: number;
  readonly #wasteBytes: number;
  readonly #fullWarningRatio: number;
  readonly #openDevice: OpenMemberDevice;
  #state: PoolState;
  #refcounts: Uint16Array;
  #free: number[] = [];
  #pendingFree: number[] = [];
  #nextFreshAu: number;
  /** durableHighWaterAu as last committed. */
  #highWaterDurable: number;
  /** AU -> commit epoch in which its reference count dropped; copy-on-write until committed. */
  readonly #dropped = new Map<number, number>();
  #epoch = 0;
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
  #commitRunning?: Promise<void>;
  #commitQueued?: Promise<void>;
  /** The queued commit must be a full one (someone asked for more than intents). */
  #queuedFull = false;
  #readOnlyReason?: string;
  #closed = false;
  #timer?: NodeJS.Timeout;
  readonly #rangeLocks = new KeyedLocks();
  readonly #auLocks = new KeyedLocks();
  readonly #gates = new KeyedLocks();

  private constructor(args: {
    label: PoolLabel;
    raid: RaidArray;
    state: PoolState;
    generation: number;
    sequence: number;
    activeSlot: 0 | 1;
    journalOffset: number;
    wasteBytes: number;
    fullWarningRatio: number;
    openDevice: OpenMemberDevice;
    readOnlyReason?: string;
  }) {
    const { label } = args;
    this.name = label.poolName;
    this.uuid = label.poolUuid;
    this.#geometry = geometryFromLabel(label);
    this.#raid = args.raid;
    this.#auCount = Math.floor(args.raid.sizeBytes / label.allocationUnitBytes);
    this.#blocksPerAu = label.allocationUnitBytes / CHECKSUM_BLOCK_BYTES;
    this.#state = args.state;
    this.#generation = args.generation;
    this.#sequence = args.sequence;
    this.#activeSlot = args.activeSlot;
    this.#journalOffset = args.journalOffset;
    this.#wasteBytes = args.wasteBytes;
    this.#fullWarningRatio = args.fullWarningRatio;
    this.#openDevice = args.openDevice;
    this.#readOnlyReason = args.readOnlyReason;
    this.#refcounts = new Uint16Array(this.#auCount);
    this.#nextFreshAu = Math.min(args.state.durableHighWaterAu, this.#auCount);
    this.#highWaterDurable = args.state.durableHighWaterAu;
    this.#rebuildAllocation();
    if (!this.#readOnlyReason) {
      this.#timer = setInterval(() => {
        if (this.#pending.bytes > 0 || this.#dirtyAus.size > 0 || this.#state.intentAus.size > 0) this.commit().catch(() => undefined);
      }, PERIODIC_COMMIT_MS);
      this.#timer.unref();
    }
  }

  // ---------------------------------------------------------------- create and open

  /** Creates a pool on `devices`, which must not belong to a pool already. */
  static async create(options: PoolCreateOptions): Promise<StoragePool> {
    validateName(options.name, 'Pool');
    const unique = new Set(options.devices);
    if (unique.size !== options.devices.length) {
      const duplicate = options.devices.find((d, i) => options.devices.indexOf(d) !== i);
      throw new NubisError('POOL_DEVICE_DUPLICATE', `Device ${duplicate} is listed twice`, { details: { device: duplicate } });
    }
    if (!RAID_LAYOUTS.includes(options.layout)) planPool({ layout: options.layout, deviceSizes: [], devices: [] });
    const openDevice = options.openDevice ?? openMemberDevice;
    const devices: MemberDevice[] = [];
    try {
      for (const path of options.devices) devices.push(await openDevice(path));
      for (const device of devices) await refuseDeviceWithData(device, options);
      const plan = planPool({
        layout: options.layout,
        deviceSizes: devices.map((d) => d.sizeBytes),
        devices: options.devices,
        chunkBytes: options.chunkBytes,
        allocationUnitBytes: options.allocationUnitBytes,
      });
      const state: PoolState = {
        volumes: new Map(),
        nextVolumeId: 1,
        durableHighWaterAu: 0,
        intentAus: new Set(),
        faultedMembers: new Set(),
        checksums: new Uint32Array(plan.auCount * (plan.allocationUnitBytes / CHECKSUM_BLOCK_BYTES)).fill(ZERO_BLOCK_CHECKSUM),
      };
      await formatMembers(devices, plan, state, options.name);
    } finally {
      await Promise.all(devices.map((d) => d.close().catch(() => undefined)));
    }
    return StoragePool.open({ devices: options.devices, openDevice, fullWarningRatio: options.fullWarningRatio });
  }

  /**
   * Opens a pool from its members. Missing or unreadable members leave it degraded (or faulted);
   * metadata that fails its checksums opens it read-only with the reason in `status()`.
   */
  static async open(options: PoolOpenOptions): Promise<StoragePool> {
    const openDevice = options.openDevice ?? openMemberDevice;
    const { label: reference, members } = await findMembers(options.devices, openDevice);
    const raid = new RaidArray(
      {
        layout: reference.layout,
        memberCount: reference.memberCount,
        chunkBytes: reference.chunkBytes,
        dataStartBytes: reference.dataStartBytes,
        rows: reference.rows,
      },
      members,
    );
    const auCount = Math.floor(raid.sizeBytes / reference.allocationUnitBytes);
    const checksumCount = auCount * (reference.allocationUnitBytes / CHECKSUM_BLOCK_BYTES);
    const usedPerMember = memberBytesUsed(reference);
    const waste = wasteBytes(
      members.map((m) => m.device?.sizeBytes ?? usedPerMember),
      usedPerMember,
    );

    const loaded = await loadMetadata(reference, members, checksumCount);
    const pool = new StoragePool({
      label: reference,
      raid,
      state: loaded.state,
      generation: loaded.generation,
      sequence: loaded.sequence,
      activeSlot: loaded.activeSlot,
      journalOffset: loaded.journalOffset,
      wasteBytes: waste,
      fullWarningRatio: options.fullWarningRatio ?? 0.8,
      openDevice,
      readOnlyReason: loaded.readOnlyReason,
    });
    // A member the metadata says failed holds stale data, even if its device is back.
    for (const index of loaded.state.faultedMembers) {
      const member = members[index];
      if (member && member.state !== 'missing') {
        member.state = 'faulted';
        await member.device?.close().catch(() => undefined);
        member.device = undefined;
      }
    }
    if (!pool.#readOnlyReason && raid.health().state === 'faulted') {
      pool.#readOnlyReason = `Pool ${reference.poolName} has lost more members than ${reference.layout} tolerates`;
    }
    if (!pool.#readOnlyReason) await pool.#recover();
    return pool;
  }

  /** After an unclean stop: resync redundancy and recompute checksums of AUs with a write intent. */
  async #recover(): Promise<void> {
    const rowsPerAu = this.#geometry.allocationUnitBytes / this.#raid.rowDataBytes;
    const au = this.#geometry.allocationUnitBytes;
    const buffer = Buffer.allocUnsafe(au);
    for (const p of this.#state.intentAus) {
      if (this.#refcounts[p]! > 0) {
        if (this.#raid.health().state === 'online') await this.#raid.resyncRows(p * rowsPerAu, (p + 1) * rowsPerAu);
        await this.#raid.read(buffer, 0, au, p * au);
        for (let b = 0; b < this.#blocksPerAu; b++) this.#state.checksums[p * this.#blocksPerAu + b] = blockChecksum(buffer, b * CHECKSUM_BLOCK_BYTES);
      }
    }
    this.#state.intentAus.clear();
    // One fresh checkpoint on every member: members converge, the journal starts empty.
    this.#forceCheckpoint = true;
    await this.commit();
  }

  /** Derives reference counts and free lists from the volume maps. */
  #rebuildAllocation(): void {
    this.#refcounts.fill(0);
    for (const { map } of this.#state.volumes.values()) {
      for (let i = 0; i < map.length; i++) if (map[i] !== 0) this.#refcounts[map[i]! - 1]!++;
    }
    this.#free = [];
    for (let p = this.#nextFreshAu - 1; p >= 0; p--) if (this.#refcounts[p] === 0) this.#free.push(p);
  }

  // ---------------------------------------------------------------- status

  get readOnlyReason(): string | undefined {
    return this.#readOnlyReason;
  }

  get allocationUnitBytes(): number {
    return this.#geometry.allocationUnitBytes;
  }

  /** Health, capacity and members, like `zpool status` and `zpool list` together. */
  status(): PoolStatus {
    const au = this.#geometry.allocationUnitBytes;
    let allocated = 0;
    for (let p = 0; p < this.#auCount; p++) if (this.#refcounts[p]! > 0) allocated++;
    const sizeBytes = this.#auCount * au;
    const provisioned = [...this.#state.volumes.values()].filter((v) => v.record.kind !== 'snapshot').reduce((sum, v) => sum + v.record.sizeBytes, 0);
    const health = this.#raid.health();
    const warnings: string[] = [];
    if (allocated * au > sizeBytes * this.#fullWarningRatio) warnings.push(`Pool is ${Math.round((100 * allocated * au) / sizeBytes)}% full`);
    if (provisioned > sizeBytes) warnings.push(`Volumes are overcommitted: ${formatSize(provisioned)} provisioned on ${formatSize(sizeBytes)} usable`);
    if (health.state !== 'online') warnings.push(`Pool is ${health.state}: ${health.lost} member(s) not online`);
    if (this.#readOnlyReason) warnings.push(this.#readOnlyReason);
    return {
      name: this.name,
      uuid: this.uuid,
      layout: this.#geometry.layout,
      chunkBytes: this.#geometry.chunkBytes,
      allocationUnitBytes: au,
      state: health.state,
      readOnly: this.#readOnlyReason !== undefined,
      readOnlyReason: this.#readOnlyReason,
      sizeBytes,
      allocatedBytes: allocated * au,
      freeBytes: (this.#auCount - allocated) * au,
      provisionedBytes: provisioned,
      overcommitRatio: sizeBytes > 0 ? provisioned / sizeBytes : 0,
      wasteBytes: this.#wasteBytes,
      warnings,
      members: this.#raid.members.map((m) => ({
        index: m.index,
        path: m.path,
        state: m.state,
        sizeBytes: m.device?.sizeBytes ?? 0,
        readErrors: m.readErrors,
        writeErrors: m.writeErrors,
        checksumErrors: m.checksumErrors,
      })),
      volumes: this.#state.volumes.size,
    };
  }

  /** Current member device paths, in member order ('' for a missing one). */
  memberPaths(): string[] {
    return this.#raid.members.map((m) => m.path);
  }

  listVolumes(): VolumeInfo[] {
    return [...this.#state.volumes.values()].map((v) => this.#info(v)).sort((a, b) => a.name.localeCompare(b.name));
  }

  getVolume(name: string): VolumeInfo {
    return this.#info(this.#byName(name));
  }

  #info(entry: VolumeEntry): VolumeInfo {
    let mapped = 0;
    for (let i = 0; i < entry.map.length; i++) if (entry.map[i] !== 0) mapped++;
    const { record } = entry;
    return {
      name: record.name,
      sizeBytes: record.sizeBytes,
      kind: record.kind,
      originName: record.originName,
      readOnly: record.readOnly,
      allocatedBytes: mapped * this.#geometry.allocationUnitBytes,
      createdAt: record.createdAt,
    };
  }

  #byName(name: string): VolumeEntry {
    for (const entry of this.#state.volumes.values()) if (entry.record.name === name) return entry;
    throw new NubisError('VOLUME_NOT_FOUND', `Pool ${this.name} has no volume named ${JSON.stringify(name)}`, { details: { pool: this.name, volume: name } });
  }

  #requireWritable(): void {
    if (this.#closed) throw new NubisError('POOL_CLOSED', `Pool ${this.name} is closed`);
    if (this.#readOnlyReason)
      throw new NubisError('POOL_READ_ONLY', `Pool ${this.name} is read-only: ${this.#readOnlyReason}`, { details: { pool: this.name } });
  }

  // ---------------------------------------------------------------- volume management

  #checkVolumeSize(sizeBytes: number): void {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % SECTOR_BYTES !== 0) {
      throw new NubisError('VOLUME_SIZE_INVALID', `Volume size ${sizeBytes} must be a positive multiple of 512 bytes`, { details: { sizeBytes } });
    }
    const mapEntries = Math.ceil(sizeBytes / this.#geometry.allocationUnitBytes);
    if (mapEntries > 0x7fffffff) throw new NubisError('VOLUME_SIZE_INVALID', `Volume size ${formatSize(sizeBytes)} is too large`, { details: { sizeBytes } });
  }

  #checkNameFree(name: string): void {
    validateName(name, 'Volume');
    for (const entry of this.#state.volumes.values()) {
      if (entry.record.name === name)
        throw new NubisError('VOLUME_EXISTS', `Pool ${this.name} already has a volume named ${name}`, { details: { pool: this.name, volume: name } });
    }
  }

  /** Creates a thin volume; it may exceed free space (overcommit shows in status). */
  async createVolume(name: string, sizeBytes: number): Promise<VolumeInfo> {
    this.#requireWritable();
    this.#checkNameFree(name);
    this.#checkVolumeSize(sizeBytes);
    const record: VolumeRecord = { id: this.#state.nextVolumeId, name, sizeBytes, kind: 'volume', readOnly: false, createdAt: new Date().toISOString() };
    this.#apply({ op: 'create', record });
    await this.commit();
    return this.getVolume(name);
  }

  /** A read-only point-in-time copy of `source`, instant: it shares every AU. */
  async snapshot(source: string, name: string): Promise<VolumeInfo> {
    return this.#copyVolume(source, name, 'snapshot');
  }

  /** A writable copy of `source` (a volume or a snapshot), instant and space-sharing. */
  async clone(source: string, name: string): Promise<VolumeInfo> {
    return this.#copyVolume(source, name, 'clone');
  }

  async #copyVolume(source: string, name: string, kind: 'snapshot' | 'clone'): Promise<VolumeInfo> {
    this.#requireWritable();
    const origin = this.#byName(source);
    this.#checkNameFree(name);
    // Drain writes to the source so none lands in an AU after it becomes shared.
    await this.#gates.with(origin.record.id, true, async () => {
      const record: VolumeRecord = {
        id: this.#state.nextVolumeId,
        name,
        sizeBytes: origin.record.sizeBytes,
        kind,
        originName: origin.record.name,
        readOnly: kind === 'snapshot',
        createdAt: new Date().toISOString(),
      };
      this.#apply({ op: 'copy', record, sourceId: origin.record.id });
      await this.commit();
    });
    return this.getVolume(name);
  }

  /** Grows or shrinks a volume; shrinking below allocated data is refused. */
  async resizeVolume(name: string, sizeBytes: number): Promise<VolumeInfo> {
    this.#requireWritable();
    const entry = this.#byName(name);
    this.#checkVolumeSize(sizeBytes);
    if (entry.record.kind === 'snapshot')
      throw new NubisError('VOLUME_READ_ONLY', `Volume ${name} is a snapshot and cannot be resized`, { details: { volume: name } });
    await this.#gates.with(entry.record.id, true, async () => {
      const keep = Math.ceil(sizeBytes / this.#geometry.allocationUnitBytes);
      for (let i = keep; i < entry.map.length; i++) {
        if (entry.map[i] !== 0) {
          throw new NubisError(
            'VOLUME_SHRINK_BELOW_DATA',
            `Volume ${name} holds data at ${formatSize(i * this.#geometry.allocationUnitBytes)}, beyond the new size ${formatSize(sizeBytes)}; trim that range first or pick a larger size`,
            { details: { volume: name, sizeBytes, dataAtBytes: i * this.#geometry.allocationUnitBytes } },
          );
        }
      }
      this.#apply({ op: 'resize', id: entry.record.id, sizeBytes });
      await this.commit();
    });
    return this.getVolume(name);
  }

  /** Deletes a volume; AUs no other volume shares return to the pool after the commit. */
  async deleteVolume(name: string): Promise<void> {
    this.#requireWritable();
    const entry = this.#byName(name);
    await this.#gates.with(entry.record.id, true, async () => {
      this.#apply({ op: 'delete', id: entry.record.id });
      await this.commit();
    });
  }

  /** Applies a volume-level change to memory and queues it for the journal. */
  #apply(op: JsonOp): void {
    applyJsonOp(this.#state, op, this.#geometry.allocationUnitBytes, {
      ref: (p) => this.#refcounts[p]!++,
      unref: (p) => this.#unref(p),
    });
    this.#pending.json(op);
  }

  #unref(p: number): void {
    this.#refcounts[p]!--;
    this.#dropped.set(p, this.#epoch);
    if (this.#refcounts[p] === 0) this.#pendingFree.push(p);
  }

  // ---------------------------------------------------------------- data path

  #volume(id: number): VolumeEntry {
    const entry = this.#state.volumes.get(id);
    if (!entry) throw new NubisError('VOLUME_NOT_FOUND', `Volume ${id} was deleted`, { details: { volumeId: id } });
    return entry;
  }

  #rangeKey(volumeId: number, vAu: number): number {
    return volumeId * 0x1_0000_0000 + vAu;
  }

  /** The NBD-shaped handle of a volume: read, write, flush, trim, zero, block status. */
  volumeDevice(name: string): VolumeDevice {
    return new VolumeDevice(this, this.#byName(name).record.id);
  }

  /** @internal Volume id and record (for VolumeDevice). */
  volumeRecord(id: number): VolumeRecord {
    return this.#volume(id).record;
  }

  /** Reads `buffer.length` bytes of volume `id` at `position`. */
  async readVolume(id: number, buffer: Buffer, position: number): Promise<void> {
    if (this.#closed) throw new NubisError('POOL_CLOSED', `Pool ${this.name} is closed`);
    const gate = this.#gates.acquire(id, false);
    if (gate) await gate;
    try {
      const entry = this.#volume(id);
      this.#checkBounds(entry, position, buffer.length);
      const jobs = splitAtAllocationUnits(position, buffer.length, this.#geometry.allocationUnitBytes).map(({ vAu, inAu, offset, length }) =>
        this.#readSegment(entry, vAu, inAu, buffer, offset, length),
      );
      await Promise.all(jobs);
    } finally {
      this.#gates.release(id, false);
    }
  }

  #checkBounds(entry: VolumeEntry, position: number, length: number): void {
    if (position < 0 || position + length > entry.record.sizeBytes) {
      throw new NubisError('VOLUME_IO_RANGE', `Range ${position}+${length} lies outside volume ${entry.record.name} (${entry.record.sizeBytes} bytes)`);
    }
  }

  async #readSegment(entry: VolumeEntry, vAu: number, inAu: number, target: Buffer, offset: number, length: number): Promise<void> {
    const key = this.#rangeKey(entry.record.id, vAu);
    const wait = this.#rangeLocks.acquire(key, false);
    if (wait) await wait;
    try {
      const p = entry.map[vAu]! - 1;
      if (p < 0) target.fill(0, offset, offset + length);
      else await this.#readVerified(p, inAu, length, target, offset);
    } finally {
      this.#rangeLocks.release(key, false);
    }
  }

  /** Reads bytes of physical AU `p` and checks every 4 KiB block; bad blocks are repaired. */
  async #readVerified(p: number, inAu: number, length: number, target: Buffer, offset: number, holdsAuLock = false): Promise<void> {
    const B = CHECKSUM_BLOCK_BYTES;
    const firstBlock = Math.floor(inAu / B);
    const endBlock = Math.ceil((inAu + length) / B);
    const aligned = inAu % B === 0 && length % B === 0;
    const buffer = aligned ? target : Buffer.allocUnsafe((endBlock - firstBlock) * B);
    const bufferOffset = aligned ? offset : 0;
    const base = p * this.#geometry.allocationUnitBytes;
    await this.#raid.read(buffer, bufferOffset, (endBlock - firstBlock) * B, base + firstBlock * B);
    const checksums = this.#state.checksums;
    const firstIndex = p * this.#blocksPerAu;
    for (let b = firstBlock; b < endBlock; b++) {
      const at = bufferOffset + (b - firstBlock) * B;
      if (blockChecksum(buffer, at) !== checksums[firstIndex + b]) {
        const good = holdsAuLock ? await this.#repairBlock(p, b) : await this.#auLocks.with(p, true, () => this.#repairBlock(p, b));
        good.copy(buffer, at);
      }
    }
    if (!aligned) buffer.copy(target, offset, inAu - firstBlock * B, inAu - firstBlock * B + length);
  }

  /** Finds a good copy of block `b` of AU `p` (caller holds the AU lock) and rewrites it. */
  async #repairBlock(p: number, b: number): Promise<Buffer> {
    const B = CHECKSUM_BLOCK_BYTES;
    const position = p * this.#geometry.allocationUnitBytes + b * B;
    const expected = this.#state.checksums[p * this.#blocksPerAu + b];
    const again = Buffer.allocUnsafe(B);
    await this.#raid.read(again, 0, B, position);
    // A concurrent repair (or a read that raced a rebuild) may already have fixed it.
    if (blockChecksum(again) === expected) return again;
    for await (const candidate of this.#raid.alternatives(position, B)) {
      if (blockChecksum(candidate.data) === expected) {
        if (candidate.suspect >= 0) this.#raid.members[candidate.suspect]!.checksumErrors++;
        if (!this.#readOnlyReason) await this.#raid.repairBlock(position, candidate.data);
        this.#repairedBlocks++;
        return candidate.data;
      }
      if (candidate.source >= 0) this.#raid.members[candidate.source]!.checksumErrors++;
    }
    this.#unrepairedBlocks++;
    throw new NubisError('VOLUME_IO_ERROR', `Block at byte ${position} of pool ${this.name} fails its checksum and no redundant copy matches`, {
      details: { pool: this.name, position },
    });
  }

  #repairedBlocks = 0;
  #unrepairedBlocks = 0;

  /** Writes `data` to volume `id` at `position`; with `fua` it is durable on return. */
  async writeVolume(id: number, data: Buffer, position: number, fua: boolean): Promise<void> {
    this.#requireWritable();
    const gate = this.#gates.acquire(id, false);
    if (gate) await gate;
    try {
      const entry = this.#volume(id);
      if (entry.record.readOnly)
        throw new NubisError('VOLUME_READ_ONLY', `Volume ${entry.record.name} is a read-only snapshot`, { details: { volume: entry.record.name } });
      this.#checkBounds(entry, position, data.length);
      const jobs = splitAtAllocationUnits(position, data.length, this.#geometry.allocationUnitBytes).map(({ vAu, inAu, offset, length }) =>
        this.#writeSegment(entry, vAu, inAu, data.subarray(offset, offset + length)),
      );
      const results = await Promise.allSettled(jobs);
      const failed = results.find((r) => r.status === 'rejected');
      if (failed) throw (failed as PromiseRejectedResult).reason;
    } finally {
      this.#gates.release(id, false);
    }
    // NBD proto.md: a FUA write must be on stable storage before its reply.
    if (fua) await this.commit();
  }

  async #writeSegment(entry: VolumeEntry, vAu: number, inAu: number, chunk: Buffer): Promise<void> {
    const key = this.#rangeKey(entry.record.id, vAu);
    const wait = this.#rangeLocks.acquire(key, true);
    if (wait) await wait;
    try {
      const p = entry.map[vAu]! - 1;
      if (p < 0) await this.#writeFresh(entry, vAu, inAu, chunk, undefined);
      else if (this.#refcounts[p]! > 1 || this.#dropped.has(p)) await this.#writeFresh(entry, vAu, inAu, chunk, p);
      else await this.#auLocks.with(p, true, () => this.#writeInPlace(p, inAu, chunk));
    } finally {
      this.#rangeLocks.release(key, true);
    }
  }

  /** First write to an AU, or copy-on-write of shared AU `source`: the data goes to a new AU. */
  async #writeFresh(entry: VolumeEntry, vAu: number, inAu: number, chunk: Buffer, source: number | undefined): Promise<void> {
    const au = this.#geometry.allocationUnitBytes;
    const B = CHECKSUM_BLOCK_BYTES;
    const { p, zeroed } = await this.#allocate();
    try {
      await this.#auLocks.with(p, true, async () => {
        let image: Buffer;
        let imageStart: number;
        if (source !== undefined) {
          image = Buffer.allocUnsafe(au);
          await this.#readVerified(source, 0, au, image, 0);
          chunk.copy(image, inAu);
          imageStart = 0;
        } else if (inAu === 0 && chunk.length === au) {
          image = chunk;
          imageStart = 0;
        } else if (zeroed) {
          // A never-written AU reads as zeroes: only the touched blocks need writing.
          const first = Math.floor(inAu / B);
          const end = Math.ceil((inAu + chunk.length) / B);
          image = Buffer.alloc((end - first) * B);
          chunk.copy(image, inAu - first * B);
          imageStart = first * B;
        } else {
          image = Buffer.alloc(au);
          chunk.copy(image, inAu);
          imageStart = 0;
        }
        await this.#raid.write(image, 0, image.length, p * au + imageStart);
        const checksums = this.#state.checksums;
        const base = p * this.#blocksPerAu;
        const firstWritten = imageStart / B;
        const endWritten = firstWritten + image.length / B;
        for (let b = 0; b < this.#blocksPerAu; b++) {
          checksums[base + b] = b >= firstWritten && b < endWritten ? blockChecksum(image, (b - firstWritten) * B) : ZERO_BLOCK_CHECKSUM;
        }
      });
    } catch (error) {
      this.#pendingFree.push(p);
      throw error;
    }
    // Map only once the data is written: a commit never points a volume at unwritten data.
    entry.map[vAu] = p + 1;
    this.#refcounts[p] = 1;
    this.#pending.map(entry.record.id, vAu, p + 1);
    this.#dirtyAus.add(p);
    if (source !== undefined) this.#unref(source);
  }

  async #writeInPlace(p: number, inAu: number, chunk: Buffer): Promise<void> {
    const B = CHECKSUM_BLOCK_BYTES;
    this.#lastInPlaceWriteMs.set(p, Date.now());
    this.#inPlaceInflight.set(p, (this.#inPlaceInflight.get(p) ?? 0) + 1);
    try {
      if (!this.#state.intentAus.has(p)) {
        // Durable intent before touching data that the committed metadata vouches for.
        this.#state.intentAus.add(p);
        this.#pendingIntents.push(p);
        await this.#commitIntents();
      }
      const first = Math.floor(inAu / B);
      const end = Math.ceil((inAu + chunk.length) / B);
      let image = chunk;
      if (inAu % B !== 0 || chunk.length % B !== 0) {
        image = Buffer.allocUnsafe((end - first) * B);
        await this.#readVerified(p, first * B, B, image, 0, true);
        if (end - first > 1) await this.#readVerified(p, (end - 1) * B, B, image, (end - first - 1) * B, true);
        chunk.copy(image, inAu - first * B);
      }
      await this.#raid.write(image, 0, image.length, p * this.#geometry.allocationUnitBytes + first * B);
      const base = p * this.#blocksPerAu;
      for (let b = first; b < end; b++) this.#state.checksums[base + b] = blockChecksum(image, (b - first) * B);
      this.#dirtyAus.add(p);
    } finally {
      const left = this.#inPlaceInflight.get(p)! - 1;
      if (left === 0) this.#inPlaceInflight.delete(p);
      else this.#inPlaceInflight.set(p, left);
    }
  }

  /** A free AU; `zeroed` when it has never been written since the pool was created. */
  async #allocate(): Promise<{ p: number; zeroed: boolean }> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const reused = this.#free.pop();
      if (reused !== undefined) return { p: reused, zeroed: false };
      if (this.#nextFreshAu < this.#auCount) {
        const p = this.#nextFreshAu++;
        if (p >= this.#state.durableHighWaterAu) {
          // Persist a bound on written AUs before using one above it, so that after a crash no
          // AU that may hold data is taken for a zeroed one.
          this.#state.durableHighWaterAu = Math.min(this.#auCount, p + HIGH_WATER_STEP_AUS);
          this.#pending.number(OP_HIGH_WATER, this.#state.durableHighWaterAu);
        }
        while (p >= this.#highWaterDurable) await this.commit();
        return { p, zeroed: true };
      }
      if (this.#pendingFree.length === 0 && !this.#commitRunning) break;
      // Space freed but not yet committed: commit, then it can be reused.
      await this.commit();
    }
    throw new NubisError('POOL_FULL', `Pool ${this.name} has no free space left`, { details: { pool: this.name } });
  }

  /** Discards whole AUs of the range (NBD TRIM); partial AUs are left as they are. */
  async trimVolume(id: number, position: number, length: number, fua: boolean): Promise<void> {
    this.#requireWritable();
    await this.#unmapRange(id, position, length);
    if (fua) await this.commit();
  }

  async #unmapRange(id: number, position: number, length: number): Promise<{ head: [number, number]; tail: [number, number] }> {
    const au = this.#geometry.allocationUnitBytes;
    const firstFull = Math.ceil(position / au);
    const endFull = Math.floor((position + length) / au);
    const gate = this.#gates.acquire(id, false);
    if (gate) await gate;
    try {
      const entry = this.#volume(id);
      if (entry.record.readOnly)
        throw new NubisError('VOLUME_READ_ONLY', `Volume ${entry.record.name} is a read-only snapshot`, { details: { volume: entry.record.name } });
      this.#checkBounds(entry, position, length);
      for (let vAu = firstFull; vAu < endFull; vAu++) {
        if (entry.map[vAu] === 0) continue;
        await this.#rangeLocks.with(this.#rangeKey(id, vAu), true, async () => {
          const p = entry.map[vAu]! - 1;
          if (p < 0) return;
          entry.map[vAu] = 0;
          this.#pending.map(id, vAu, 0);
          this.#unref(p);
        });
      }
    } finally {
      this.#gates.release(id, false);
    }
    if (endFull <= firstFull) return { head: [position, length], tail: [0, 0] };
    return { head: [position, firstFull * au - position], tail: [endFull * au, position + length - endFull * au] };
  }

  /** Makes a range read as zeroes: whole AUs are unmapped (unless `noHole`), edges written. */
  async writeZeroesVolume(id: number, position: number, length: number, fua: boolean, noHole: boolean): Promise<void> {
    this.#requireWritable();
    const ranges: Array<[number, number]> = [];
    if (noHole) ranges.push([position, length]);
    else {
      const { head, tail } = await this.#unmapRange(id, position, length);
      ranges.push(head, tail);
    }
    const step = this.#geometry.allocationUnitBytes;
    for (const [start, count] of ranges) {
      for (let done = 0; done < count; done += step) {
        const n = Math.min(step, count - done);
        await this.writeVolume(id, Buffer.alloc(n), start + done, false);
      }
    }
    if (fua) await this.commit();
  }

  /** Allocation map of a volume from `position`: unmapped AUs are holes that read as zeroes. */
  blockStatusVolume(id: number, position: number, length: number): Array<{ lengthBytes: number; hole: boolean; zero: boolean }> {
    const entry = this.#volume(id);
    const au = this.#geometry.allocationUnitBytes;
    const end = Math.min(entry.record.sizeBytes, position + length);
    const extents: Array<{ lengthBytes: number; hole: boolean; zero: boolean }> = [];
    for (let pos = position; pos < end && extents.length < 1024; ) {
      const vAu = Math.floor(pos / au);
      const n = Math.min((vAu + 1) * au, end) - pos;
      const hole = entry.map[vAu] === 0;
      const last = extents[extents.length - 1];
      if (last && last.hole === hole) last.lengthBytes += n;
      else extents.push({ lengthBytes: n, hole, zero: hole });
      pos += n;
    }
    return extents;
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
      this.#readOnlyReason = `Metadata of pool ${this.name} could not be written: ${(error as Error).message}`;
      throw error;
    }
    this.#sequence++;
    this.#journalOffset += record.length;
  }

  async #doCommit(): Promise<void> {
    // Capture, synchronously, everything completed up to now.
    for (const member of this.#raid.members) {
      if (member.state === 'faulted' && !this.#state.faultedMembers.has(member.index)) this.#apply({ op: 'member-faulted', index: member.index });
    }
    const writer = this.#pending;
    this.#pending = new JournalWriter();
    for (const p of this.#pendingIntents) writer.number(OP_INTENT_SET, p);
    this.#pendingIntents = [];
    const checksums = this.#state.checksums;
    for (const p of this.#dirtyAus) writer.checksums(p * this.#blocksPerAu, checksums.subarray(p * this.#blocksPerAu, (p + 1) * this.#blocksPerAu));
    this.#dirtyAus = new Set();
    // An intent ends once its AU has been idle for a while: its checksums are then current. The
    // delay keeps hot AUs marked, so that random writes do not each pay for a new intent.
    const idleBefore = Date.now() - INTENT_IDLE_MS;
    for (const p of this.#state.intentAus) {
      if (!this.#inPlaceInflight.has(p) && (this.#lastInPlaceWriteMs.get(p) ?? 0) < idleBefore) {
        this.#state.intentAus.delete(p);
        this.#lastInPlaceWriteMs.delete(p);
        writer.number(OP_INTENT_CLEAR, p);
      }
    }
    const freed = this.#pendingFree;
    this.#pendingFree = [];
    const epoch = this.#epoch++;
    const highWater = this.#state.durableHighWaterAu;
    const recordBytes = JOURNAL_HEADER_BYTES + writer.bytes;
    let checkpoint: Buffer | undefined;
    if (this.#forceCheckpoint || this.#journalOffset + recordBytes + JOURNAL_HEADER_BYTES > this.#geometry.journalBytes) {
      this.#forceCheckpoint = false;
      checkpoint = encodeCheckpoint(this.#state, this.#generation + 1, this.#sequence + 1);
      if (checkpoint.length > this.#geometry.slotBytes) {
        // The captured changes cannot be made durable: stop accepting writes rather than lose them.
        this.#readOnlyReason = `Metadata of pool ${this.name} outgrew its ${formatSize(this.#geometry.slotBytes)} area; delete snapshots or volumes`;
        throw new NubisError('POOL_METADATA_FULL', this.#readOnlyReason, { details: { pool: this.name } });
      }
    }
    try {
      await this.#raid.flush();
      const journalStart = journalStartOffset(this.#geometry);
      if (checkpoint) {
        const slot = this.#activeSlot === 0 ? 1 : 0;
        await this.#writeMetadata(checkpoint, checkpointSlotOffset(this.#geometry, slot));
        this.#generation++;
        this.#sequence++;
        this.#activeSlot = slot;
        // The first record of the new generation marks the checkpoint durable: after a crash,
        // a newer checkpoint that fails its checksum but has this marker is corruption, not a tear.
        this.#sequence++;
        const marker = new JournalWriter().encode(this.#generation, this.#sequence);
        await this.#writeMetadata(marker, journalStart);
        this.#journalOffset = marker.length;
      } else if (writer.bytes > 0) {
        this.#sequence++;
        const record = writer.encode(this.#generation, this.#sequence);
        await this.#writeMetadata(record, journalStart + this.#journalOffset);
        this.#journalOffset += record.length;
      }
    } catch (error) {
      // The captured records are neither on disk nor pending any more: the on-disk metadata can
      // no longer follow memory, so the pool stops taking writes (it reopens from the last commit).
      this.#readOnlyReason = `Metadata of pool ${this.name} could not be written: ${(error as Error).message}`;
      throw error;
    }
    this.#highWaterDurable = Math.max(this.#highWaterDurable, highWater);
    for (const p of freed) if (this.#refcounts[p] === 0) this.#free.push(p);
    for (const [p, at] of this.#dropped) if (at <= epoch) this.#dropped.delete(p);
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
      throw new NubisError('POOL_FAULTED', `Pool ${this.name} could not write its metadata to any member`);
    }
  }

  // ---------------------------------------------------------------- scrub, members

  /**
   * Reads every allocated AU, checks every block against its checksum, repairs bad blocks from
   * redundancy and makes mirrors and parity consistent. Runs online.
   */
  async scrub(options: LongActionOptions = {}): Promise<ScrubReport> {
    this.#requireWritable();
    const started = Date.now();
    const au = this.#geometry.allocationUnitBytes;
    const B = CHECKSUM_BLOCK_BYTES;
    const rowsPerAu = au / this.#raid.rowDataBytes;
    const errorsBefore = this.#raid.members.reduce((s, m) => s + m.checksumErrors, 0);
    const repairedBefore = this.#repairedBlocks;
    const unrepairedBefore = this.#unrepairedBlocks;
    let fixes = 0;
    let scanned = 0;
    const allocated: number[] = [];
    for (let p = 0; p < this.#auCount; p++) if (this.#refcounts[p]! > 0) allocated.push(p);
    const total = allocated.length * au;
    const buffer = Buffer.allocUnsafe(au);
    for (const p of allocated) {
      options.signal?.throwIfAborted();
      await this.#auLocks.with(p, true, async () => {
        if (this.#refcounts[p] === 0) return;
        await this.#raid.read(buffer, 0, au, p * au);
        for (let b = 0; b < this.#blocksPerAu; b++) {
          if (blockChecksum(buffer, b * B) !== this.#state.checksums[p * this.#blocksPerAu + b]) {
            try {
              await this.#repairBlock(p, b);
            } catch {
              // Counted in unrepairedBlocks; scrub goes on.
            }
          }
        }
        if (this.#raid.health().state === 'online') {
          const { fixedMembers } = await this.#raid.resyncRows(p * rowsPerAu, (p + 1) * rowsPerAu);
          for (const index of fixedMembers) this.#raid.members[index]!.checksumErrors++;
          fixes += fixedMembers.length;
        }
      });
      scanned += au;
      await reportAndThrottle(options, started, scanned, total);
    }
    await this.commit();
    return {
      scannedBytes: scanned,
      checksumErrors: this.#raid.members.reduce((s, m) => s + m.checksumErrors, 0) - errorsBefore,
      repairedBlocks: this.#repairedBlocks - repairedBefore,
      unrepairedBlocks: this.#unrepairedBlocks - unrepairedBefore,
      redundancyFixes: fixes,
      durationMs: Date.now() - started,
    };
  }

  /** Takes a member out of service (zpool offline); the pool runs degraded. */
  async offlineMember(index: number): Promise<void> {
    const member = this.#raid.members[index];
    if (!member) throw new NubisError('POOL_MEMBER_NOT_FOUND', `Pool ${this.name} has no member ${index}`, { details: { index } });
    member.state = 'faulted';
    await member.device?.close().catch(() => undefined);
    member.device = undefined;
    await this.commit();
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
    this.#requireWritable();
    const member = this.#raid.members[index];
    if (!member) throw new NubisError('POOL_MEMBER_NOT_FOUND', `Pool ${this.name} has no member ${index}`, { details: { index } });
    if (this.#geometry.layout === 'raid0') {
      throw new NubisError('POOL_NO_REDUNDANCY', `Pool ${this.name} is raid0: a member's data exists nowhere else, so it cannot be rebuilt`, {
        details: { pool: this.name },
      });
    }
    if (this.#raid.members.some((m) => m.path === newPath && m.device && m.index !== index)) {
      throw new NubisError('POOL_DEVICE_IN_USE', `Device ${newPath} is already a member of pool ${this.name}`, { details: { device: newPath } });
    }
    const device = await this.#openDevice(newPath);
    try {
      const block = Buffer.alloc(LABEL_BYTES);
      await device.read(block, 0, LABEL_BYTES, 0);
      let existing: PoolLabel | undefined;
      try {
        existing = decodeLabel(block);
      } catch {
        existing = undefined;
      }
      // A device that already carries this member's label is an interrupted rebuild: resume it.
      const resuming = existing?.poolUuid === this.uuid && existing.memberIndex === index;
      if (!resuming) await refuseDeviceWithData(device, { force: options.force, livePoolUuids: new Set([...(options.livePoolUuids ?? []), this.uuid]) });
      const needed = memberBytesUsed(this.#geometry);
      if (device.sizeBytes < needed) {
        throw new NubisError(
          'POOL_DEVICE_TOO_SMALL',
          `Device ${newPath} has ${formatSize(device.sizeBytes)}; members of pool ${this.name} need ${formatSize(needed)}`,
          {
            details: { device: newPath, sizeBytes: device.sizeBytes, minimumBytes: needed },
          },
        );
      }
      return { member, device };
    } catch (error) {
      await device.close();
      throw error;
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
    this.#forceCheckpoint = true;
    await this.commit();

    const au = this.#geometry.allocationUnitBytes;
    const rowsPerAu = au / this.#raid.rowDataBytes;
    const allocatedCount = this.#refcounts.reduce((n, r) => n + (r > 0 ? 1 : 0), 0);
    const total = allocatedCount * au;
    const started = Date.now();
    let done = 0;
    for (let p = 0; p < this.#auCount; p++) {
      options.signal?.throwIfAborted();
      if (this.#refcounts[p] === 0) {
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
    await device.flush();
    member.state = 'online';
    this.#apply({ op: 'member-replaced', index });
    const finalLabel = this.#labelFor(index, false);
    await device.write(finalLabel, 0, finalLabel.length, 0);
    await device.flush();
    this.#forceCheckpoint = true;
    await this.commit();
  }

  #labelFor(index: number, rebuilding: boolean): Buffer {
    return encodeMemberLabel(this.#geometry, { poolUuid: this.uuid, poolName: this.name, memberIndex: index, createdAt: new Date().toISOString(), rebuilding });
  }

  /** Commits, writes a final checkpoint and closes the members. */
  async close(): Promise<void> {
    if (this.#closed) return;
    clearInterval(this.#timer);
    if (!this.#readOnlyReason) {
      this.#forceCheckpoint = true;
      await this.commit().catch(() => undefined);
    }
    this.#closed = true;
    await Promise.all(this.#raid.members.map((m) => m.device?.close().catch(() => undefined)));
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
