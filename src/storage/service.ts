/**
 * The storage service: opens every pool described in a folder and serves each volume as an NBD
 * export named `<pool>/<volume>` on a unix socket and/or TCP. Its methods are the programmatic
 * API that the control plane and CLI call (`nubis pool ...`, `nubis volume ...`).
 *
 * The folder holds one `<pool>.pool.json` per pool: `{ "name", "uuid", "devices": [paths] }`.
 * Devices carry their own labels and metadata, so the file only says where to look.
 */
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isNubisError, messageOf, NubisError } from '../core/errors.ts';
import { faultPoint } from '../core/fault-points.ts';
import type { KeyProvider, KeyProviderStatus } from './keys/key-provider.ts';
import * as C from './nbd/nbd-constants.ts';
import { defaultErrnoOf, type NbdExport, type NbdExportCatalog } from './nbd/nbd-export.ts';
import type { NbdExportAccess } from './nbd/nbd-export-access.ts';
import type { NbdGate } from './nbd/nbd-gate.ts';
import { NbdServer, type NbdPeerAdmission, type NbdServerEvent, type NbdSocketFile, type NbdTlsOptions } from './nbd/nbd-server.ts';
import { openMemberDevice, type MemberDevice } from './pool/member-device.ts';
import { LABEL_BYTES } from './pool/metadata-format.ts';
import type { RaidLayout } from './pool/raid-array.ts';
import { StoragePool, type LongActionOptions, type OpenMemberDevice, type PoolStatus, type ScrubReport, type VolumeInfo } from './pool/storage-pool.ts';
import { parseSize } from './size.ts';
import { checkDeviceRef } from './pool/device-ref.ts';

export type { LongActionOptions, PoolProgress, PoolStatus, ScrubReport, VolumeInfo } from './pool/storage-pool.ts';
export type { RaidLayout } from './pool/raid-array.ts';

/** Options of `StorageService.start`. */
export interface StorageServiceOptions {
  /** Folder of `<pool>.pool.json` files; created if missing. */
  poolsDir: string;
  /** Serve every volume on this unix socket. */
  socketPath?: string;
  /**
   * And/or on TCP (port 0 picks one). Default host 127.0.0.1. `admitPeer`: clients are told apart
   * by their TLS client certificate, each served what its name maps to (needs `nbdTls` with a CA).
   */
  tcp?: { host?: string; port: number; admitPeer?: NbdPeerAdmission };
  /** TLS required on TCP (NBD's FORCEDTLS mode); the local unix socket stays plaintext. */
  nbdTls?: NbdTlsOptions;
  /** How member devices are opened; default regular files and block devices. */
  openDevice?: OpenMemberDevice;
  /** NBD connection events, for a debug log. */
  onNbdEvent?: (event: NbdServerEvent) => void;
  /** Share of a pool's space allocated above which its status warns. Default 0.8. */
  fullWarningRatio?: number;
  /** Wraps the data keys of encrypted volumes (storage/keys/); without it they cannot be made or read. */
  keys?: KeyProvider;
}

/** How far a key rotation got. */
export interface KeyRotationProgress {
  doneKeys: number;
  totalKeys: number;
  /** The volume whose key was rewrapped last. */
  pool?: string;
  volume?: string;
}

/** What a finished key rotation did. */
export interface KeyRotationReport {
  kekId: string;
  rewrappedKeys: number;
  destroyedKekIds: string[];
  durationMs: number;
}

/** The key provider's state and how many volumes of this node's pools are encrypted. */
export interface KeyStatus extends KeyProviderStatus {
  encryptedVolumes: number;
  /** The KEKs that wrap some volume's key now. */
  kekIdsInUse: string[];
}

/** Input of `createPool`. */
export interface CreatePoolRequest {
  name: string;
  layout: RaidLayout;
  devices: string[];
  /** Bytes or a size string like `64K`. Default 64 KiB. */
  chunk?: number | string;
  /** Bytes or a size string. Default 1 MiB (rounded up to whole RAID rows). */
  allocationUnit?: number | string;
  /** Overwrite devices that hold a filesystem, a partition table or another pool's label. */
  force?: boolean;
}

/** Options of `replaceMember` and `checkReplacement`. */
export interface ReplaceMemberOptions extends LongActionOptions {
  /** Overwrite a new device that holds a filesystem, a partition table or another pool's label. */
  force?: boolean;
}

/** Most members a pool takes (the API's limit too). */
const MAX_POOL_DEVICES = 32;
/** A size as a client writes it for a chunk or allocation unit: digits and a binary unit, no fractions. */
const STRICT_SIZE = /^[0-9]{1,12}(?:[KMG](?:i?B)?|B)?$/i;

/** Parses a chunk or allocation unit size strictly; POOL_CHUNK_INVALID naming the value otherwise. */
function parseGeometrySize(value: unknown, what: string): number {
  if (typeof value === 'number') return parseSize(value, what);
  if (typeof value !== 'string' || value.length > 16 || !STRICT_SIZE.test(value)) {
    const shown = typeof value === 'string' && value.length > 40 ? `${JSON.stringify(value.slice(0, 40))}...` : JSON.stringify(value);
    throw new NubisError('POOL_CHUNK_INVALID', `The ${what} ${shown} does not parse; write it like 64K or 1M`, {
      details: { value: typeof value === 'string' ? value.slice(0, 40) : value },
    });
  }
  return parseSize(value, what);
}

interface PoolFile {
  name: string;
  uuid: string;
  devices: string[];
}

/** Maps pool and volume error codes to NBD wire errors (proto.md "Error values"). */
export function storageErrnoOf(error: unknown): number {
  if (isNubisError(error)) {
    switch (error.code) {
      case 'POOL_FULL':
        return C.NBD_ENOSPC;
      case 'VOLUME_READ_ONLY':
      case 'POOL_READ_ONLY':
        return C.NBD_EPERM;
      case 'VOLUME_IO_RANGE':
        return C.NBD_EINVAL;
      case 'POOL_CLOSED':
        return C.NBD_ESHUTDOWN;
      default:
        return C.NBD_EIO;
    }
  }
  return defaultErrnoOf(error);
}

/** Pools of one storage node and the NBD server over their volumes. */
export class StorageService {
  readonly #options: Readonly<StorageServiceOptions>;
  readonly #pools = new Map<string, StoragePool>();
  /** Per-pool queue: management actions on one pool never interleave. */
  readonly #queues = new Map<string, Promise<unknown>>();
  readonly #server: NbdServer;
  #unixPath?: string;
  #tcpAddress?: { host: string; port: number };
  /** Pool files that did not open: their volumes' keys may still need the KEKs a rotation retires. */
  #openFailures: Array<{ file: string; error: string }> = [];
  #rotation?: Promise<KeyRotationReport>;

  private constructor(options: StorageServiceOptions) {
    this.#options = Object.freeze({ ...options });
    const catalog: NbdExportCatalog = {
      get: (name) => this.#export(name),
      names: () => [...this.#pools.values()].flatMap((pool) => pool.listVolumes().map((v) => `${pool.name}/${v.name}`)),
    };
    this.#server = new NbdServer({ catalog, errnoOf: storageErrnoOf, onEvent: options.onNbdEvent, ...(options.nbdTls ? { tls: options.nbdTls } : {}) });
  }

  /** Opens every pool in `poolsDir` (a pool that fails to open is skipped and reported) and listens. */
  static async start(options: StorageServiceOptions): Promise<{ service: StorageService; failures: Array<{ file: string; error: string }> }> {
    const service = new StorageService(options);
    await mkdir(options.poolsDir, { recursive: true });
    await takeFolderLock(options.poolsDir);
    const failures: Array<{ file: string; error: string }> = [];
    for (const file of (await readdir(options.poolsDir)).filter((f) => f.endsWith('.pool.json')).sort()) {
      try {
        const config = JSON.parse(await readFile(join(options.poolsDir, file), 'utf8')) as PoolFile;
        const pool = await StoragePool.open({
          devices: config.devices,
          openDevice: options.openDevice,
          fullWarningRatio: options.fullWarningRatio,
          keys: options.keys,
        });
        service.#pools.set(pool.name, pool);
      } catch (error) {
        failures.push({ file, error: (error as Error).message });
      }
    }
    service.#openFailures = failures;
    if (options.socketPath) service.#unixPath = ((await service.#server.listen({ path: options.socketPath, tls: false })) as { path: string }).path;
    if (options.tcp)
      service.#tcpAddress = (await service.#server.listen({
        host: options.tcp.host ?? '127.0.0.1',
        port: options.tcp.port,
        ...(options.tcp.admitPeer ? { admitPeer: options.tcp.admitPeer } : {}),
      })) as { host: string; port: number };
    return { service, failures };
  }

  /** Where the NBD server listens. */
  get addresses(): { unixSocket?: string; tcp?: { host: string; port: number } } {
    return { unixSocket: this.#unixPath, tcp: this.#tcpAddress };
  }

  /**
   * Also serves volumes on the unix socket `path`, to the connections of `gate` only: a client
   * host's socket, or one VM's on it, which can be fenced (host-fencing.ts). With `access`, only
   * the exports it allows; with `file`, the socket gets that owner and mode before it appears.
   * Plaintext, like the shared socket.
   */
  async listenGated(path: string, options: { gate: NbdGate; access?: NbdExportAccess; file?: NbdSocketFile }): Promise<void> {
    await this.#server.listen({ path, tls: false, ...options });
  }

  /** Stops serving on a socket `listenGated` opened, and removes it (see NbdServer.closeListener). */
  closeListener(path: string): Promise<void> {
    return this.#server.closeListener(path);
  }

  /** The URI QEMU and libnbd tools take for a volume (unix socket preferred). */
  exportUri(pool: string, volume: string): string {
    this.#pool(pool).getVolume(volume);
    const name = `${encodeURIComponent(pool)}/${encodeURIComponent(volume)}`;
    if (this.#unixPath) return `nbd+unix:///${name}?socket=${this.#unixPath}`;
    if (this.#tcpAddress) return `${this.#options.nbdTls ? 'nbds' : 'nbd'}://${this.#tcpAddress.host}:${this.#tcpAddress.port}/${name}`;
    throw new NubisError('NBD_NOT_LISTENING', 'The storage service serves no NBD address');
  }

  #export(name: string): NbdExport | undefined {
    const slash = name.indexOf('/');
    if (slash < 0) return undefined;
    const pool = this.#pools.get(name.slice(0, slash));
    try {
      return pool?.volumeDevice(name.slice(slash + 1));
    } catch {
      return undefined;
    }
  }

  #pool(name: string): StoragePool {
    const pool = this.#pools.get(name);
    if (!pool) throw new NubisError('POOL_NOT_FOUND', `No pool named ${JSON.stringify(name)}`, { details: { pool: name } });
    return pool;
  }

  /** The pools this service has open: their members are never overwritten, even with force. */
  #livePoolUuids(): Set<string> {
    return new Set([...this.#pools.values()].map((pool) => pool.uuid));
  }

  /** Runs `action` after every earlier management action on the same pool. */
  #serial<T>(pool: string, action: () => Promise<T>): Promise<T> {
    const previous = this.#queues.get(pool) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(action);
    this.#queues.set(pool, next);
    return next;
  }

  async #writePoolFile(pool: StoragePool): Promise<void> {
    const file = join(this.#options.poolsDir, `${pool.name}.pool.json`);
    const content: PoolFile = { name: pool.name, uuid: pool.uuid, devices: pool.memberPaths().filter((p) => p !== '') };
    await writeFile(`${file}.tmp`, `${JSON.stringify(content, null, 2)}\n`);
    await rename(`${file}.tmp`, file);
  }

  // ---------------------------------------------------------------- pools

  listPools(): PoolStatus[] {
    return [...this.#pools.values()].map((p) => p.status()).sort((a, b) => a.name.localeCompare(b.name));
  }

  getPool(name: string): PoolStatus {
    return this.#pool(name).status();
  }

  /**
   * Creates a pool; bad layouts, too few or too small devices, devices in use or holding data
   * (unless `force`) fail with nothing changed. Device strings are checked here again, since the
   * storage node's socket can be called without the API's validation in front.
   */
  async createPool(request: CreatePoolRequest): Promise<PoolStatus> {
    if (!Array.isArray(request.devices) || request.devices.length === 0 || request.devices.length > MAX_POOL_DEVICES) {
      throw new NubisError('POOL_DEVICES_INVALID', `A pool takes 1 to ${MAX_POOL_DEVICES} devices as a list of paths or nbd:// URIs`, {
        details: { devices: Array.isArray(request.devices) ? request.devices.length : typeof request.devices },
      });
    }
    const devices = request.devices.map((device) => checkDeviceRef(device));
    const chunkBytes = request.chunk === undefined ? undefined : parseGeometrySize(request.chunk, 'chunk size');
    const allocationUnitBytes = request.allocationUnit === undefined ? undefined : parseGeometrySize(request.allocationUnit, 'allocation unit');
    if (this.#pools.has(request.name)) throw new NubisError('POOL_EXISTS', `A pool named ${request.name} already exists`, { details: { pool: request.name } });
    for (const pool of this.#pools.values()) {
      const clash = devices.find((d) => pool.memberPaths().includes(d));
      if (clash)
        throw new NubisError('POOL_DEVICE_IN_USE', `Device ${clash} already belongs to pool ${pool.name}`, { details: { device: clash, pool: pool.name } });
    }
    const pool = await StoragePool.create({
      name: request.name,
      layout: request.layout,
      devices,
      chunkBytes,
      allocationUnitBytes,
      openDevice: this.#options.openDevice,
      fullWarningRatio: this.#options.fullWarningRatio,
      force: request.force === true,
      livePoolUuids: this.#livePoolUuids(),
      keys: this.#options.keys,
    });
    this.#pools.set(pool.name, pool);
    await this.#writePoolFile(pool);
    return pool.status();
  }

  /** Deletes an empty pool and wipes its member labels (`force` deletes its volumes too). */
  async deletePool(name: string, options: { force?: boolean } = {}): Promise<void> {
    const pool = this.#pool(name);
    await this.#serial(name, async () => {
      const volumes = pool.listVolumes();
      if (volumes.length > 0 && !options.force) {
        throw new NubisError('POOL_NOT_EMPTY', `Pool ${name} still has ${volumes.length} volume(s); delete them first or use force`, {
          details: { pool: name, volumes: volumes.length },
        });
      }
      // Deleted one by one, so that encrypted ones are crypto-shredded (their wrapped keys purged).
      if (!pool.readOnlyReason) for (const volume of volumes) await pool.deleteVolume(volume.name);
      const paths = pool.memberPaths().filter((p) => p !== '');
      await pool.close();
      this.#pools.delete(name);
      const openDevice = this.#options.openDevice ?? openMemberDevice;
      for (const path of paths) {
        let device: MemberDevice | undefined;
        try {
          device = await openDevice(path);
          await device.write(Buffer.alloc(LABEL_BYTES), 0, LABEL_BYTES, 0);
          await device.flush();
        } finally {
          await device?.close();
        }
      }
      await rm(join(this.#options.poolsDir, `${name}.pool.json`), { force: true });
    });
  }

  /** Reads every allocated block, repairs what fails its checksum; progress via `onProgress`. */
  async scrubPool(name: string, options: LongActionOptions = {}): Promise<ScrubReport> {
    const pool = this.#pool(name);
    return this.#serial(name, () => pool.scrub(options));
  }

  /**
   * Replaces member `member` (its index or device path) by `newDevice` and rebuilds online;
   * `maxBytesPerSec` throttles the rebuild, `onProgress` reports rate and ETA, `force` lets a
   * device holding data be overwritten.
   */
  async replaceMember(name: string, member: number | string, newDevice: string, options: ReplaceMemberOptions = {}): Promise<PoolStatus> {
    const { pool, index, device } = this.#replacementRequest(name, member, newDevice);
    return this.#serial(name, async () => {
      await pool.replaceMember(index, device, { ...options, force: options.force === true, livePoolUuids: this.#livePoolUuids() });
      await this.#writePoolFile(pool);
      return pool.status();
    });
  }

  /**
   * Checks a replacement without writing anything (see `StoragePool.checkReplacement`), so a
   * caller that runs the replacement as a background job can refuse a bad request at once.
   */
  async checkReplacement(name: string, member: number | string, newDevice: string, options: { force?: boolean } = {}): Promise<void> {
    const { pool, index, device } = this.#replacementRequest(name, member, newDevice);
    await pool.checkReplacement(index, device, { force: options.force === true, livePoolUuids: this.#livePoolUuids() });
  }

  #replacementRequest(name: string, member: number | string, newDevice: string): { pool: StoragePool; index: number; device: string } {
    const pool = this.#pool(name);
    const device = checkDeviceRef(newDevice);
    const index = typeof member === 'number' ? member : typeof member === 'string' ? pool.memberPaths().indexOf(member) : -1;
    if (!Number.isInteger(index) || index < 0)
      throw new NubisError('POOL_MEMBER_NOT_FOUND', `Pool ${name} has no member ${JSON.stringify(member)}`, { details: { pool: name, member } });
    return { pool, index, device };
  }

  /** Takes a member out of service (for maintenance or tests); the pool runs degraded. */
  async offlineMember(name: string, index: number): Promise<PoolStatus> {
    const pool = this.#pool(name);
    return this.#serial(name, async () => {
      await pool.offlineMember(index);
      return pool.status();
    });
  }

  // ---------------------------------------------------------------- volumes

  listVolumes(pool: string): VolumeInfo[] {
    return this.#pool(pool).listVolumes();
  }

  getVolume(pool: string, name: string): VolumeInfo {
    return this.#pool(pool).getVolume(name);
  }

  /** Creates a thin volume; `size` in bytes or like `20G`; `encrypted` gives it a data key of its own. */
  async createVolume(pool: string, name: string, size: number | string, options: { encrypted?: boolean } = {}): Promise<VolumeInfo> {
    const p = this.#pool(pool);
    const sizeBytes = parseSize(size, 'volume size');
    if (options.encrypted !== undefined && typeof options.encrypted !== 'boolean') {
      throw new NubisError('VALIDATION_FAILED', `encrypted is true or false, not ${JSON.stringify(options.encrypted)}`);
    }
    return this.#serial(pool, () => p.createVolume(name, sizeBytes, { encrypted: options.encrypted === true }));
  }

  async snapshotVolume(pool: string, source: string, name: string): Promise<VolumeInfo> {
    const p = this.#pool(pool);
    return this.#serial(pool, () => p.snapshot(source, name));
  }

  async cloneVolume(pool: string, source: string, name: string): Promise<VolumeInfo> {
    const p = this.#pool(pool);
    return this.#serial(pool, () => p.clone(source, name));
  }

  async resizeVolume(pool: string, name: string, size: number | string): Promise<VolumeInfo> {
    const p = this.#pool(pool);
    const sizeBytes = parseSize(size, 'volume size');
    return this.#serial(pool, () => p.resizeVolume(name, sizeBytes));
  }

  /** Deletes a volume; an encrypted one's key is crypto-shredded (`keyDestroyed`, unless a snapshot or clone shares it). */
  async deleteVolume(pool: string, name: string): Promise<{ keyDestroyed: boolean }> {
    const p = this.#pool(pool);
    return this.#serial(pool, () => p.deleteVolume(name));
  }

  // ---------------------------------------------------------------- keys

  #requireKeys(): KeyProvider {
    if (!this.#options.keys) throw new NubisError('ENCRYPTION_UNAVAILABLE', 'This storage node has no key provider');
    return this.#options.keys;
  }

  /** The key provider's state and which KEKs the volumes use. */
  async keyStatus(): Promise<KeyStatus> {
    const status = await this.#requireKeys().status();
    const inUse = new Set<string>();
    let encryptedVolumes = 0;
    for (const pool of this.#pools.values()) {
      for (const id of pool.kekIdsInUse()) inUse.add(id);
      encryptedVolumes += pool.listVolumes().filter((v) => v.encrypted).length;
    }
    return { ...status, encryptedVolumes, kekIdsInUse: [...inUse].sort() };
  }

  /**
   * Rotates the key-encryption key: a new KEK, every data key rewrapped with it (one durable
   * journal record per volume, no data re-encrypted), then the old KEKs destroyed, only once no
   * key of any pool is wrapped by them. A crash at any point leaves every key unwrappable: the
   * key file keeps the old KEKs until the end. A pool that is read-only or did not open, or a
   * key that could not be unwrapped, keeps the old KEKs (`KEY_ROTATION_INCOMPLETE` says which).
   */
  rotateKeys(onProgress: (progress: KeyRotationProgress) => void = () => undefined): Promise<KeyRotationReport> {
    const keys = this.#requireKeys();
    if (this.#rotation) throw new NubisError('KEY_ROTATION_RUNNING', 'A key rotation is running already; wait for it to finish');
    this.#rotation = this.#rotate(keys, onProgress).finally(() => (this.#rotation = undefined));
    return this.#rotation;
  }

  async #rotate(keys: KeyProvider, onProgress: (progress: KeyRotationProgress) => void): Promise<KeyRotationReport> {
    const started = Date.now();
    const rotation = await keys.rotate();
    await faultPoint('storage.key-rotate.after-new-kek');
    const pools = [...this.#pools.values()];
    const totalKeys = pools.reduce((sum, pool) => sum + pool.listVolumes().filter((v) => v.encrypted).length, 0);
    let doneKeys = 0;
    onProgress({ doneKeys, totalKeys });
    const left: string[] = this.#openFailures.map((failure) => `${failure.file} did not open`);
    for (const pool of pools) {
      if (pool.readOnlyReason) {
        if (pool.kekIdsInUse().size > 0) left.push(`pool ${pool.name} is read-only`);
        continue;
      }
      try {
        await this.#serial(pool.name, () =>
          pool.rewrapKeys(async (volume) => {
            doneKeys++;
            onProgress({ doneKeys, totalKeys, pool: pool.name, volume });
            if (doneKeys === 1) await faultPoint('storage.key-rotate.after-first-rewrap');
          }),
        );
      } catch (error) {
        left.push(`pool ${pool.name}: ${messageOf(error)}`);
      }
    }
    for (const pool of pools)
      if ([...pool.kekIdsInUse()].some((id) => id !== rotation.kekId) && !pool.readOnlyReason) left.push(`pool ${pool.name} has keys left under older KEKs`);
    if (left.length > 0) {
      throw new NubisError(
        'KEY_ROTATION_INCOMPLETE',
        `New keys are wrapped with ${rotation.kekId}, but the older KEKs are kept, since not every key could be rewrapped: ${[...new Set(left)].join('; ')}. Fix that and rotate again`,
        { details: { kekId: rotation.kekId, left } },
      );
    }
    await faultPoint('storage.key-rotate.before-destroy');
    const { destroyedKekIds } = await rotation.retire();
    return { kekId: rotation.kekId, rewrappedKeys: doneKeys, destroyedKekIds, durationMs: Date.now() - started };
  }

  /** Stops serving (running requests finish), commits and closes every pool. */
  async close(): Promise<void> {
    await this.#server.close(2000);
    for (const pool of this.#pools.values()) await pool.close();
    this.#pools.clear();
    await rm(join(this.#options.poolsDir, LOCK_FILE), { force: true });
  }
}

const LOCK_FILE = 'storage.lock';

/**
 * One service per pools folder: two processes writing the same members would corrupt them. The
 * lock names its process; a lock left by a process that no longer exists (kill -9) is taken over.
 */
async function takeFolderLock(poolsDir: string): Promise<void> {
  const path = join(poolsDir, LOCK_FILE);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await writeFile(path, `${process.pid}\n`, { flag: 'wx' });
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const owner = Number((await readFile(path, 'utf8').catch(() => '')).trim());
    let alive = false;
    if (Number.isInteger(owner) && owner > 0) {
      try {
        process.kill(owner, 0);
        alive = true;
      } catch (error) {
        alive = (error as NodeJS.ErrnoException).code === 'EPERM';
      }
    }
    if (alive) {
      throw new NubisError('POOL_IN_USE', `The pools in ${poolsDir} are served by process ${owner} already`, { details: { poolsDir, pid: owner } });
    }
    await rm(path, { force: true });
  }
  throw new NubisError('POOL_IN_USE', `Could not lock ${poolsDir}`, { details: { poolsDir } });
}
