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
 *
 * Where each part lives: pool-geometry.ts (address maths, sizes), pool-members.ts (labels,
 * finding members), metadata-replay.ts (loading and journal replay), metadata-store.ts and
 * allocation-table.ts (tables in memory, commits), volume-io.ts and self-healing-reader.ts (the
 * data path), volume-catalog.ts (volumes by name), pool-maintenance.ts (scrub, replace),
 * pool-status.ts, volume-cipher.ts and volume-keys.ts (encrypted volumes). This class opens a
 * pool, wires them together and keeps the public API.
 */
import { NubisError } from '../../core/errors.ts';
import type { KeyProvider } from '../keys/key-provider.ts';
import { CHECKSUM_BLOCK_BYTES, ZERO_BLOCK_CHECKSUM } from './checksum.ts';
import { KeyedLocks } from './locks.ts';
import { openMemberDevice, type MemberDevice } from './member-device.ts';
import type { PoolLabel, PoolState, VolumeRecord } from './metadata-format.ts';
import { loadMetadata, type LoadedMetadata } from './metadata-replay.ts';
import { MetadataStore } from './metadata-store.ts';
import { geometryFromLabel, memberBytesUsed, planPool, wasteBytes, type PoolGeometry } from './pool-geometry.ts';
import { PoolMaintenance, type LongActionOptions, type ReplaceOptions, type ScrubReport } from './pool-maintenance.ts';
import { findMembers, formatMembers, refuseDeviceWithData, type OpenMemberDevice } from './pool-members.ts';
import { validateName } from './pool-names.ts';
import { poolStatus, type PoolStatus } from './pool-status.ts';
import { RAID_LAYOUTS, RaidArray, type MemberSlot, type RaidLayout } from './raid-array.ts';
import { SelfHealingReader } from './self-healing-reader.ts';
import { VolumeCatalog, type VolumeCreateOptions, type VolumeInfo } from './volume-catalog.ts';
import { VolumeDevice } from './volume-device.ts';
import { VolumeIo } from './volume-io.ts';
import { VolumeKeys } from './volume-keys.ts';

export type { LongActionOptions, PoolProgress, ReplaceOptions, ScrubReport } from './pool-maintenance.ts';
export type { OpenMemberDevice } from './pool-members.ts';
export type { MemberStatus, PoolStatus } from './pool-status.ts';
export type { VolumeCreateOptions, VolumeInfo } from './volume-catalog.ts';
export { VolumeDevice } from './volume-device.ts';

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
  /** Wraps the data keys of encrypted volumes; without it, encrypted volumes cannot be made. */
  keys?: KeyProvider;
}

/** Options of `StoragePool.open`. */
export interface PoolOpenOptions {
  /** Member device paths as last known (any order; labels say which member each is). */
  devices: string[];
  openDevice?: OpenMemberDevice;
  /** Share of usable space allocated above which status warns. Default 0.8. */
  fullWarningRatio?: number;
  /** Unwraps the data keys of encrypted volumes; without it, they cannot be read or written. */
  keys?: KeyProvider;
}

/** A pool opened by this process. Not safe to open the same devices from two processes. */
export class StoragePool {
  readonly name: string;
  readonly uuid: string;
  readonly #geometry: PoolGeometry;
  readonly #raid: RaidArray;
  readonly #wasteBytes: number;
  readonly #fullWarningRatio: number;
  readonly #store: MetadataStore;
  readonly #volumes: VolumeCatalog;
  readonly #io: VolumeIo;
  readonly #maintenance: PoolMaintenance;
  readonly #keys: VolumeKeys;

  private constructor(args: {
    label: PoolLabel;
    raid: RaidArray;
    loaded: LoadedMetadata;
    wasteBytes: number;
    fullWarningRatio: number;
    openDevice: OpenMemberDevice;
    keys: KeyProvider | undefined;
  }) {
    const { label, raid } = args;
    this.name = label.poolName;
    this.uuid = label.poolUuid;
    const geometry = geometryFromLabel(label);
    this.#geometry = geometry;
    this.#raid = raid;
    this.#wasteBytes = args.wasteBytes;
    this.#fullWarningRatio = args.fullWarningRatio;
    const store = new MetadataStore(this.name, geometry, raid, args.loaded);
    this.#store = store;
    const { allocationUnitBytes } = geometry;
    // Per volume: I/O shares it, snapshot, resize and delete take it alone. Per physical AU:
    // writes, repairs, scrub and rebuild of one AU exclude each other.
    const gates = new KeyedLocks();
    const auLocks = new KeyedLocks();
    const reader = new SelfHealingReader({ poolName: this.name, allocationUnitBytes, raid, store, auLocks });
    const keys = new VolumeKeys({ poolName: this.name, poolUuid: this.uuid, provider: args.keys });
    this.#keys = keys;
    this.#volumes = new VolumeCatalog({ poolName: this.name, allocationUnitBytes, store, gates, keys });
    this.#io = new VolumeIo({ allocationUnitBytes, raid, store, reader, gates, auLocks, keys });
    this.#maintenance = new PoolMaintenance({ poolName: this.name, poolUuid: this.uuid, geometry, raid, store, reader, auLocks, openDevice: args.openDevice });
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
    return StoragePool.open({ devices: options.devices, openDevice, fullWarningRatio: options.fullWarningRatio, keys: options.keys });
  }

  /**
   * Opens a pool from its members. Missing or unreadable members leave it degraded (or faulted);
   * metadata that fails its checksums opens it read-only with the reason in `status()`.
   */
  static async open(options: PoolOpenOptions): Promise<StoragePool> {
    const openDevice = options.openDevice ?? openMemberDevice;
    const { label, members } = await findMembers(options.devices, openDevice);
    const raid = new RaidArray(
      { layout: label.layout, memberCount: label.memberCount, chunkBytes: label.chunkBytes, dataStartBytes: label.dataStartBytes, rows: label.rows },
      members,
    );
    const auCount = Math.floor(raid.sizeBytes / label.allocationUnitBytes);
    const checksumCount = auCount * (label.allocationUnitBytes / CHECKSUM_BLOCK_BYTES);
    const usedPerMember = memberBytesUsed(label);
    const waste = wasteBytes(
      members.map((m) => m.device?.sizeBytes ?? usedPerMember),
      usedPerMember,
    );
    const loaded = await loadMetadata(label, members, checksumCount);
    const pool = new StoragePool({ label, raid, loaded, wasteBytes: waste, fullWarningRatio: options.fullWarningRatio ?? 0.8, openDevice, keys: options.keys });
    await closeFaultedMembers(members, loaded.state.faultedMembers);
    if (!pool.#store.readOnlyReason && raid.health().state === 'faulted') {
      pool.#store.setReadOnly(`Pool ${label.poolName} has lost more members than ${label.layout} tolerates`);
    }
    if (!pool.#store.readOnlyReason) {
      await pool.#store.recoverIntents();
      // A crash came between deleting an encrypted volume and purging its stale wrapped key.
      if (pool.#store.state.purgePending) await pool.#store.purgeStaleCopies();
    }
    await pool.#keys.load([...loaded.state.volumes.values()].map((v) => v.record));
    return pool;
  }

  // ---------------------------------------------------------------- status

  get readOnlyReason(): string | undefined {
    return this.#store.readOnlyReason;
  }

  /** Health, capacity and members, like `zpool status` and `zpool list` together. */
  status(): PoolStatus {
    return poolStatus({
      name: this.name,
      uuid: this.uuid,
      geometry: this.#geometry,
      raid: this.#raid,
      store: this.#store,
      wasteBytes: this.#wasteBytes,
      fullWarningRatio: this.#fullWarningRatio,
    });
  }

  /** Current member device paths, in member order ('' for a missing one). */
  memberPaths(): string[] {
    return this.#raid.members.map((m) => m.path);
  }

  // ---------------------------------------------------------------- volume management

  listVolumes(): VolumeInfo[] {
    return this.#volumes.list();
  }

  getVolume(name: string): VolumeInfo {
    return this.#volumes.get(name);
  }

  /** Creates a thin volume, encrypted with `{ encrypted: true }`; it may exceed free space (overcommit shows in status). */
  createVolume(name: string, sizeBytes: number, options: VolumeCreateOptions = {}): Promise<VolumeInfo> {
    return this.#volumes.create(name, sizeBytes, options);
  }

  /** A read-only point-in-time copy of `source`, instant: it shares every AU. */
  async snapshot(source: string, name: string): Promise<VolumeInfo> {
    return this.#volumes.copy(source, name, 'snapshot');
  }

  /** A writable copy of `source` (a volume or a snapshot), instant and space-sharing. */
  async clone(source: string, name: string): Promise<VolumeInfo> {
    return this.#volumes.copy(source, name, 'clone');
  }

  /** Grows or shrinks a volume; shrinking below allocated data is refused. */
  resizeVolume(name: string, sizeBytes: number): Promise<VolumeInfo> {
    return this.#volumes.resize(name, sizeBytes);
  }

  /**
   * Deletes a volume; AUs no other volume shares return to the pool after the commit. An
   * encrypted volume's key is crypto-shredded (volume-catalog.ts); `keyDestroyed` is false while
   * a snapshot or clone still shares it.
   */
  deleteVolume(name: string): Promise<{ keyDestroyed: boolean }> {
    return this.#volumes.delete(name);
  }

  /** Wraps every encrypted volume's data key with the key provider's current KEK (no data re-encrypted). */
  rewrapKeys(onRewrapped?: (volume: string) => Promise<void> | void): Promise<number> {
    return this.#volumes.rewrapKeys(onRewrapped);
  }

  /** The KEKs that wrap this pool's data keys. */
  kekIdsInUse(): Set<string> {
    return this.#volumes.kekIdsInUse();
  }

  // ---------------------------------------------------------------- data path

  /** The NBD-shaped handle of a volume: read, write, flush, trim, zero, block status. */
  volumeDevice(name: string): VolumeDevice {
    return new VolumeDevice(this, this.#volumes.byName(name).record.id);
  }

  /** @internal Volume id and record (for VolumeDevice). */
  volumeRecord(id: number): VolumeRecord {
    return this.#store.volumeById(id).record;
  }

  /** Reads `buffer.length` bytes of volume `id` at `position`. */
  readVolume(id: number, buffer: Buffer, position: number): Promise<void> {
    return this.#io.read(id, buffer, position);
  }

  /** Writes `data` to volume `id` at `position`; with `fua` it is durable on return. */
  writeVolume(id: number, data: Buffer, position: number, fua: boolean): Promise<void> {
    return this.#io.write(id, data, position, fua);
  }

  /** Discards whole AUs of the range (NBD TRIM); partial AUs are left as they are. */
  trimVolume(id: number, position: number, length: number, fua: boolean): Promise<void> {
    return this.#io.trim(id, position, length, fua);
  }

  /** Makes a range read as zeroes: whole AUs are unmapped (unless `noHole`), edges written. */
  writeZeroesVolume(id: number, position: number, length: number, fua: boolean, noHole: boolean): Promise<void> {
    return this.#io.writeZeroes(id, position, length, fua, noHole);
  }

  /** Allocation map of a volume from `position`: unmapped AUs are holes that read as zeroes. */
  blockStatusVolume(id: number, position: number, length: number): Array<{ lengthBytes: number; hole: boolean; zero: boolean }> {
    return this.#io.blockStatus(id, position, length);
  }

  /**
   * Makes every write completed so far durable, with its metadata (group commit: callers that
   * arrive while one runs share the next).
   */
  commit(): Promise<void> {
    return this.#store.commit();
  }

  // ---------------------------------------------------------------- scrub, members

  /**
   * Reads every allocated AU, checks every block against its checksum, repairs bad blocks from
   * redundancy and makes mirrors and parity consistent. Runs online.
   */
  scrub(options: LongActionOptions = {}): Promise<ScrubReport> {
    return this.#maintenance.scrub(options);
  }

  /** Takes a member out of service (zpool offline); the pool runs degraded. */
  offlineMember(index: number): Promise<void> {
    return this.#maintenance.offlineMember(index);
  }

  /**
   * Everything `replaceMember` checks before it writes, without writing: the storage node
   * answers a bad request at once instead of failing its job later.
   */
  checkReplacement(index: number, newPath: string, options: ReplaceOptions = {}): Promise<void> {
    return this.#maintenance.checkReplacement(index, newPath, options);
  }

  /**
   * Replaces member `index` (missing, faulted or healthy) by the device at `newPath` and rebuilds
   * its data from the other members online, with progress and an optional throttle. The new
   * device must read as zeroes where the pool has never written (a new or zeroed device).
   */
  replaceMember(index: number, newPath: string, options: LongActionOptions & ReplaceOptions = {}): Promise<void> {
    return this.#maintenance.replaceMember(index, newPath, options);
  }

  /** Commits, writes a final checkpoint and closes the members. */
  async close(): Promise<void> {
    if (this.#store.closed) return;
    await this.#store.close();
    this.#keys.destroyAll();
    await Promise.all(this.#raid.members.map((m) => m.device?.close().catch(() => undefined)));
  }
}

/** A member the metadata says failed holds stale data, even if its device is back: close it. */
async function closeFaultedMembers(members: MemberSlot[], faulted: ReadonlySet<number>): Promise<void> {
  for (const index of faulted) {
    const member = members[index];
    if (member && member.state !== 'missing') {
      member.state = 'faulted';
      await member.device?.close().catch(() => undefined);
      member.device = undefined;
    }
  }
}
