/**
 * The volumes of a pool by name: listing, and creating, snapshotting, cloning, resizing,
 * deleting them and rewrapping their keys. Each change is one journal operation (see
 * metadata-replay.ts for what it does to the tables) made durable before the call returns.
 */
import { NubisError } from '../../core/errors.ts';
import { faultPoint } from '../../core/fault-points.ts';
import { formatSize } from '../size.ts';
import type { KeyedLocks } from './locks.ts';
import type { VolumeRecord } from './metadata-format.ts';
import type { MetadataStore, VolumeEntry } from './metadata-store.ts';
import { validateName } from './pool-names.ts';
import type { VolumeKeys } from './volume-keys.ts';

const SECTOR_BYTES = 512;

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
  /** Its blocks are encrypted with a data key of its own (shared with its snapshots and clones). */
  encrypted: boolean;
}

/** Options of `VolumeCatalog.create`. */
export interface VolumeCreateOptions {
  /** Encrypt its blocks with a new data key (XTS-AES-256). Default false. */
  encrypted?: boolean;
}

/** Volume management of one pool. */
export class VolumeCatalog {
  readonly #poolName: string;
  readonly #allocationUnitBytes: number;
  readonly #store: MetadataStore;
  readonly #gates: KeyedLocks;
  readonly #keys: VolumeKeys;

  constructor(args: { poolName: string; allocationUnitBytes: number; store: MetadataStore; gates: KeyedLocks; keys: VolumeKeys }) {
    this.#poolName = args.poolName;
    this.#allocationUnitBytes = args.allocationUnitBytes;
    this.#store = args.store;
    this.#gates = args.gates;
    this.#keys = args.keys;
  }

  list(): VolumeInfo[] {
    return [...this.#store.state.volumes.values()].map((v) => this.#info(v)).sort((a, b) => a.name.localeCompare(b.name));
  }

  get(name: string): VolumeInfo {
    return this.#info(this.byName(name));
  }

  /** The volume named `name`; throws VOLUME_NOT_FOUND. */
  byName(name: string): VolumeEntry {
    for (const entry of this.#store.state.volumes.values()) if (entry.record.name === name) return entry;
    throw new NubisError('VOLUME_NOT_FOUND', `Pool ${this.#poolName} has no volume named ${JSON.stringify(name)}`, {
      details: { pool: this.#poolName, volume: name },
    });
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
      allocatedBytes: mapped * this.#allocationUnitBytes,
      createdAt: record.createdAt,
      encrypted: record.encryption !== undefined,
    };
  }

  #checkVolumeSize(sizeBytes: number): void {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % SECTOR_BYTES !== 0) {
      throw new NubisError('VOLUME_SIZE_INVALID', `Volume size ${sizeBytes} must be a positive multiple of 512 bytes`, { details: { sizeBytes } });
    }
    const mapEntries = Math.ceil(sizeBytes / this.#allocationUnitBytes);
    if (mapEntries > 0x7fffffff) throw new NubisError('VOLUME_SIZE_INVALID', `Volume size ${formatSize(sizeBytes)} is too large`, { details: { sizeBytes } });
  }

  #checkNameFree(name: string): void {
    validateName(name, 'Volume');
    for (const entry of this.#store.state.volumes.values()) {
      if (entry.record.name === name)
        throw new NubisError('VOLUME_EXISTS', `Pool ${this.#poolName} already has a volume named ${name}`, { details: { pool: this.#poolName, volume: name } });
    }
  }

  /**
   * A fresh volume id. Taken before a key is wrapped for it (the wrapped key names its volume),
   * so that a create or copy running meanwhile cannot take the same one; an id left unused when
   * a create fails is harmless.
   */
  #takeVolumeId(): number {
    return this.#store.state.nextVolumeId++;
  }

  /**
   * Records a new volume (a create or a copy) and commits it. Its name is checked again: another
   * create may have taken it while its key was wrapped, and then the wrapped key is forgotten.
   */
  async #record(change: { op: 'create'; record: VolumeRecord } | { op: 'copy'; record: VolumeRecord; sourceId: number }): Promise<void> {
    try {
      this.#checkNameFree(change.record.name);
    } catch (error) {
      this.#keys.forget(change.record.id, change.record.encryption);
      throw error;
    }
    this.#store.apply(change);
    await this.#store.commit();
  }

  /** Creates a thin volume; it may exceed free space (overcommit shows in status). */
  async create(name: string, sizeBytes: number, options: VolumeCreateOptions = {}): Promise<VolumeInfo> {
    this.#store.requireWritable();
    this.#checkNameFree(name);
    this.#checkVolumeSize(sizeBytes);
    const id = this.#takeVolumeId();
    const encryption = options.encrypted ? await this.#keys.create(id) : undefined;
    const record: VolumeRecord = {
      id,
      name,
      sizeBytes,
      kind: 'volume',
      readOnly: false,
      createdAt: new Date().toISOString(),
      ...(encryption ? { encryption } : {}),
    };
    await this.#record({ op: 'create', record });
    return this.get(name);
  }

  /** A snapshot (read-only) or clone (writable) of `source`, instant: it shares every AU. */
  async copy(source: string, name: string, kind: 'snapshot' | 'clone'): Promise<VolumeInfo> {
    this.#store.requireWritable();
    const origin = this.byName(source);
    this.#checkNameFree(name);
    // Drain writes to the source so none lands in an AU after it becomes shared.
    await this.#gates.with(origin.record.id, true, async () => {
      const id = this.#takeVolumeId();
      // It shares the origin's blocks, so it shares its data key (volume-keys.ts says why).
      const encryption = await this.#keys.share(origin.record, id);
      const record: VolumeRecord = {
        id,
        name,
        sizeBytes: origin.record.sizeBytes,
        kind,
        originName: origin.record.name,
        readOnly: kind === 'snapshot',
        createdAt: new Date().toISOString(),
        ...(encryption ? { encryption } : {}),
      };
      await this.#record({ op: 'copy', record, sourceId: origin.record.id });
    });
    return this.get(name);
  }

  /** Grows or shrinks a volume; shrinking below allocated data is refused. */
  async resize(name: string, sizeBytes: number): Promise<VolumeInfo> {
    this.#store.requireWritable();
    const entry = this.byName(name);
    this.#checkVolumeSize(sizeBytes);
    if (entry.record.kind === 'snapshot')
      throw new NubisError('VOLUME_READ_ONLY', `Volume ${name} is a snapshot and cannot be resized`, { details: { volume: name } });
    await this.#gates.with(entry.record.id, true, async () => {
      const au = this.#allocationUnitBytes;
      const keep = Math.ceil(sizeBytes / au);
      for (let i = keep; i < entry.map.length; i++) {
        if (entry.map[i] !== 0) {
          throw new NubisError(
            'VOLUME_SHRINK_BELOW_DATA',
            `Volume ${name} holds data at ${formatSize(i * au)}, beyond the new size ${formatSize(sizeBytes)}; trim that range first or pick a larger size`,
            { details: { volume: name, sizeBytes, dataAtBytes: i * au } },
          );
        }
      }
      this.#store.apply({ op: 'resize', id: entry.record.id, sizeBytes });
      await this.#store.commit();
    });
    return this.get(name);
  }

  /**
   * Deletes a volume; AUs no other volume shares return to the pool after the commit. An
   * encrypted volume's wrapped key leaves the metadata in the same journal record as the volume,
   * so before any of its blocks can be reused; its data key is then destroyed in memory (unless
   * a snapshot or clone still holds it), and the stale copies of the wrapped key in the older
   * checkpoint and the journal are overwritten before this returns (crypto shredding).
   */
  async delete(name: string): Promise<{ keyDestroyed: boolean }> {
    this.#store.requireWritable();
    const entry = this.byName(name);
    let keyDestroyed = false;
    await this.#gates.with(entry.record.id, true, async () => {
      this.#store.apply({ op: 'delete', id: entry.record.id });
      await this.#store.commit();
      keyDestroyed = this.#keys.forget(entry.record.id, entry.record.encryption);
    });
    if (entry.record.encryption) {
      await faultPoint('storage.volume-delete.before-purge');
      await this.#store.purgeStaleCopies();
    }
    return { keyDestroyed: entry.record.encryption !== undefined && keyDestroyed };
  }

  /**
   * Wraps the data key of every encrypted volume again with the key provider's current KEK, one
   * durable journal record per volume; `onRewrapped` after each. No data is re-encrypted.
   */
  async rewrapKeys(onRewrapped: (volume: string) => Promise<void> | void = () => undefined): Promise<number> {
    this.#store.requireWritable();
    let count = 0;
    for (const entry of [...this.#store.state.volumes.values()]) {
      if (!entry.record.encryption || !this.#store.state.volumes.has(entry.record.id)) continue;
      const { kekId, wrappedKey } = await this.#keys.rewrap(entry.record);
      this.#store.apply({ op: 'rewrap', id: entry.record.id, kekId, wrappedKey });
      await this.#store.commit();
      count++;
      await onRewrapped(entry.record.name);
    }
    return count;
  }

  /** The KEKs that wrap the keys of this pool's volumes. */
  kekIdsInUse(): Set<string> {
    const ids = new Set<string>();
    for (const { record } of this.#store.state.volumes.values()) if (record.encryption) ids.add(record.encryption.kekId);
    return ids;
  }
}
