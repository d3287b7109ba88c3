/**
 * Host-based storage in the control plane: `dir` pools are folders of qcow2 files on their
 * hosts. The catalogue (pools, volumes, which host holds each volume) lives here; the file work
 * is done by the agent of the host concerned. A VM using a dir volume runs on that volume's host;
 * live migration mirrors the volume to the destination (see the migration service).
 */
import { NubisError } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import { Revert } from '../core/revert.ts';
import type { DiskSpec } from '../compute/vm-spec.ts';
import type { DirVolumeInfo } from '../agent-api/contract.ts';
import type { Db } from '../state/database.ts';
import type { DirPoolsTable, DirVolumesTable, HostsTable } from '../state/schema.ts';
import type { HostRegistry } from './hosts.ts';
import { vmUsingVolume } from './volume-users.ts';

/** The default allocation unit of qcow2 (its cluster size). */
const QCOW2_CLUSTER_BYTES = 65_536;

interface PoolHost {
  hostId: string;
  path: string;
}

export class DirPoolCatalogue {
  readonly #db: Db;
  readonly #hosts: HostRegistry;

  constructor(db: Db, hosts: HostRegistry) {
    this.#db = db;
    this.#hosts = hosts;
  }

  async find(name: string): Promise<DirPoolsTable | undefined> {
    return this.#db.selectFrom('dir_pools').selectAll().where('name', '=', name).executeTakeFirst();
  }

  async #pool(name: string): Promise<DirPoolsTable> {
    const pool = await this.find(name);
    if (!pool) throw new NubisError('POOL_NOT_FOUND', `No dir pool ${name}; see nubis pool list`);
    return pool;
  }

  async #volume(pool: DirPoolsTable, name: string): Promise<DirVolumesTable> {
    const volume = await this.#db.selectFrom('dir_volumes').selectAll().where('pool_id', '=', pool.id).where('name', '=', name).executeTakeFirst();
    if (!volume) throw new NubisError('VOLUME_NOT_FOUND', `No volume ${name} in pool ${pool.name}; see nubis volume list --pool ${pool.name}`);
    return volume;
  }

  /**
   * A dir pool on the named hosts (default: every host), a folder on each. `nameTaken` tells
   * whether the storage node already has a pool of that name: names are one namespace.
   */
  async create(name: string, hostRefs: string[], nameTaken: boolean): Promise<Record<string, unknown>> {
    if (nameTaken || (await this.find(name))) throw new NubisError('POOL_EXISTS', `A pool named ${name} exists; choose another name`);
    const hosts =
      hostRefs.length > 0
        ? await Promise.all(hostRefs.map((ref) => this.#hosts.row(ref)))
        : await this.#db.selectFrom('hosts').selectAll().orderBy('name').execute();
    if (hosts.length === 0) throw new NubisError('NO_HOSTS', 'No host has joined yet; start one (nubis up) before creating a dir pool');
    // Nothing half-built: the folders made so far go again when a later host refuses, and an
    // undo that fails travels with the error (Revert), never dropped.
    const placed = await Revert.run(async (revert) => {
      const made: PoolHost[] = [];
      for (const host of hosts) {
        made.push({ hostId: host.id, path: (await this.#hosts.agent(host).ensureDirPool(name)).path });
        revert.add(`remove the folder of ${name} on ${host.name}`, () => this.#hosts.agent(host).removeDirPool(name));
      }
      return made;
    });
    await this.#db
      .insertInto('dir_pools')
      .values({ id: newId('dpool'), name, hosts: JSON.stringify(placed), created_at: new Date().toISOString() })
      .execute();
    return this.show(name);
  }

  async list(): Promise<Array<Record<string, unknown>>> {
    const pools = await this.#db.selectFrom('dir_pools').select('name').orderBy('name').execute();
    return Promise.all(pools.map((pool) => this.show(pool.name)));
  }

  /** The pool in the shape of `nubis pool show`: capacity summed over its hosts, a member per host. */
  async show(name: string): Promise<Record<string, unknown>> {
    const pool = await this.#pool(name);
    const volumes = await this.#db.selectFrom('dir_volumes').selectAll().where('pool_id', '=', pool.id).execute();
    const members = await Promise.all(
      (JSON.parse(pool.hosts) as PoolHost[]).map(async (entry, index) => {
        const host = await this.#hosts.row(entry.hostId);
        const info = await this.#hosts
          .agent(host)
          .dirPool(name, { timeoutMs: 10_000 })
          .catch(() => undefined);
        return {
          index,
          host: host.name,
          path: entry.path,
          state: info ? 'online' : 'unreachable',
          sizeBytes: info?.sizeBytes ?? 0,
          freeBytes: info?.freeBytes ?? 0,
        };
      }),
    );
    const sizeBytes = members.reduce((sum, m) => sum + m.sizeBytes, 0);
    const freeBytes = members.reduce((sum, m) => sum + m.freeBytes, 0);
    const provisionedBytes = volumes.reduce((sum, v) => sum + v.size_bytes, 0);
    const unreachable = members.filter((m) => m.state !== 'online').map((m) => m.host);
    return {
      name,
      kind: 'dir',
      layout: 'qcow2 files',
      state: unreachable.length === 0 ? 'online' : 'degraded',
      readOnly: false,
      sizeBytes,
      allocatedBytes: sizeBytes - freeBytes,
      freeBytes,
      provisionedBytes,
      overcommitRatio: sizeBytes > 0 ? Number((provisionedBytes / sizeBytes).toFixed(3)) : 0,
      wasteBytes: 0,
      chunkBytes: QCOW2_CLUSTER_BYTES,
      warnings: unreachable.length > 0 ? [`No answer from ${unreachable.join(', ')}: its volumes are out of reach`] : [],
      members,
      volumes: volumes.length,
      hosts: members.map((m) => m.host),
    };
  }

  async delete(name: string): Promise<void> {
    const pool = await this.#pool(name);
    const volumes = await this.#db.selectFrom('dir_volumes').select('name').where('pool_id', '=', pool.id).execute();
    if (volumes.length > 0)
      throw new NubisError('POOL_NOT_EMPTY', `Dir pool ${name} holds volumes ${volumes.map((v) => v.name).join(', ')}; delete them first`);
    for (const entry of JSON.parse(pool.hosts) as PoolHost[]) {
      await this.#hosts.agent(await this.#hosts.row(entry.hostId)).removeDirPool(name);
    }
    await this.#db.deleteFrom('dir_pools').where('id', '=', pool.id).execute();
  }

  /** The host of a new volume: the one named, else the pool's only host. */
  async #hostFor(pool: DirPoolsTable, hostRef: string | undefined): Promise<HostsTable> {
    const entries = JSON.parse(pool.hosts) as PoolHost[];
    if (!hostRef) {
      if (entries.length !== 1) {
        const names = await Promise.all(entries.map(async (e) => (await this.#hosts.row(e.hostId)).name));
        throw new NubisError('VALIDATION_FAILED', `Dir pool ${pool.name} is on ${names.join(', ')}; choose the volume's host with --host`);
      }
      return this.#hosts.row(entries[0].hostId);
    }
    const host = await this.#hosts.row(hostRef);
    if (!entries.some((e) => e.hostId === host.id)) throw new NubisError('VALIDATION_FAILED', `Dir pool ${pool.name} has no folder on ${host.name}`);
    return host;
  }

  /** The host a new volume of the pool goes to: `hostRef`, or the pool's only host. */
  async hostOf(poolName: string, hostRef: string | undefined): Promise<HostsTable> {
    return this.#hostFor(await this.#pool(poolName), hostRef);
  }

  async createVolume(poolName: string, name: string, sizeBytes: number, hostRef?: string): Promise<Record<string, unknown>> {
    const pool = await this.#pool(poolName);
    if (await this.#db.selectFrom('dir_volumes').select('id').where('pool_id', '=', pool.id).where('name', '=', name).executeTakeFirst()) {
      throw new NubisError('VOLUME_EXISTS', `Pool ${poolName} already has a volume ${name}; choose another name`);
    }
    const host = await this.#hostFor(pool, hostRef);
    const info = await this.#hosts.agent(host).createDirVolume(poolName, name, sizeBytes);
    const created = new Date().toISOString();
    await this.#db
      .insertInto('dir_volumes')
      .values({ id: newId('dvol'), pool_id: pool.id, name, host_id: host.id, size_bytes: info.sizeBytes, created_at: created })
      .execute();
    return this.#volumeView(pool, await this.#volume(pool, name), info);
  }

  /** Volume `name` made of `source` on its host (a template's): a full copy, or `linked` copy-on-write over it. */
  async copyVolume(poolName: string, source: string, name: string, linked: boolean): Promise<void> {
    const pool = await this.#pool(poolName);
    const from = await this.#volume(pool, source);
    if (await this.#db.selectFrom('dir_volumes').select('id').where('pool_id', '=', pool.id).where('name', '=', name).executeTakeFirst())
      throw new NubisError('VOLUME_EXISTS', `Pool ${poolName} already has a volume ${name}; choose another name`);
    const info = await this.#hosts.agent(await this.#hosts.row(from.host_id)).copyDirVolume(poolName, name, source, linked);
    await this.#db
      .insertInto('dir_volumes')
      .values({ id: newId('dvol'), pool_id: pool.id, name, host_id: from.host_id, size_bytes: info.sizeBytes, created_at: new Date().toISOString() })
      .execute();
  }

  /** New volume `name` on `hostRef` (or the pool's only host), made of disk `request.disk` of a backup (host/vm-backup.ts). */
  async restoreVolume(
    poolName: string,
    name: string,
    hostRef: string | undefined,
    request: { backup: string; disk: string; key: string },
    options?: { signal?: AbortSignal },
  ): Promise<void> {
    const pool = await this.#pool(poolName);
    if (await this.#db.selectFrom('dir_volumes').select('id').where('pool_id', '=', pool.id).where('name', '=', name).executeTakeFirst())
      throw new NubisError('VOLUME_EXISTS', `Pool ${poolName} already has a volume ${name}; choose another name`);
    const host = await this.#hostFor(pool, hostRef);
    const info = await this.#hosts.agent(host).restoreDirVolume(poolName, name, request, { timeoutMs: 3_600_000, ...options });
    await this.#db
      .insertInto('dir_volumes')
      .values({ id: newId('dvol'), pool_id: pool.id, name, host_id: host.id, size_bytes: info.sizeBytes, created_at: new Date().toISOString() })
      .execute();
  }

  async listVolumes(poolName: string): Promise<Array<Record<string, unknown>>> {
    const pool = await this.#pool(poolName);
    const volumes = await this.#db.selectFrom('dir_volumes').selectAll().where('pool_id', '=', pool.id).orderBy('name').execute();
    return Promise.all(volumes.map((volume) => this.#volumeView(pool, volume)));
  }

  async showVolume(poolName: string, name: string): Promise<Record<string, unknown>> {
    const pool = await this.#pool(poolName);
    return this.#volumeView(pool, await this.#volume(pool, name));
  }

  async deleteVolume(poolName: string, name: string): Promise<void> {
    const pool = await this.#pool(poolName);
    const volume = await this.#volume(pool, name);
    await this.#hosts.agent(await this.#hosts.row(volume.host_id)).deleteDirVolume(poolName, name);
    await this.#db.deleteFrom('dir_volumes').where('id', '=', volume.id).execute();
  }

  async resizeVolume(poolName: string, name: string, sizeBytes: number): Promise<Record<string, unknown>> {
    const pool = await this.#pool(poolName);
    const volume = await this.#volume(pool, name);
    const info = await this.#hosts.agent(await this.#hosts.row(volume.host_id)).resizeDirVolume(poolName, name, sizeBytes);
    await this.#db.updateTable('dir_volumes').set({ size_bytes: info.sizeBytes }).where('id', '=', volume.id).execute();
    return this.#volumeView(pool, { ...volume, size_bytes: info.sizeBytes }, info);
  }

  /** Where a VM using the volume must run, and the disk QEMU opens there. */
  async diskOf(poolName: string, name: string, diskId: string): Promise<{ hostId: string; disk: DiskSpec; sizeBytes: number }> {
    const pool = await this.#pool(poolName);
    const volume = await this.#volume(pool, name);
    return { hostId: volume.host_id, disk: this.#diskOn(pool, volume, volume.host_id, diskId), sizeBytes: volume.size_bytes };
  }

  /** The disk as it would be on `hostId` (the destination of a migration), or undefined when the pool has no folder there. */
  async diskOnHost(poolName: string, name: string, diskId: string, hostId: string): Promise<DiskSpec | undefined> {
    const pool = await this.#pool(poolName);
    const volume = await this.#volume(pool, name);
    return (JSON.parse(pool.hosts) as PoolHost[]).some((e) => e.hostId === hostId) ? this.#diskOn(pool, volume, hostId, diskId) : undefined;
  }

  /** After a migration copied the volume: it now lives on `hostId`. */
  async moveVolume(poolName: string, name: string, hostId: string): Promise<void> {
    const pool = await this.#pool(poolName);
    await this.#db.updateTable('dir_volumes').set({ host_id: hostId }).where('pool_id', '=', pool.id).where('name', '=', name).execute();
  }

  #diskOn(pool: DirPoolsTable, volume: DirVolumesTable, hostId: string, diskId: string): DiskSpec {
    const entry = (JSON.parse(pool.hosts) as PoolHost[]).find((e) => e.hostId === hostId);
    if (!entry) throw new NubisError('VALIDATION_FAILED', `Dir pool ${pool.name} has no folder on that host`);
    return { id: diskId, kind: 'file', path: `${entry.path}/${volume.name}.qcow2`, format: 'qcow2', localVolume: `${pool.name}/${volume.name}` };
  }

  async #volumeView(pool: DirPoolsTable, volume: DirVolumesTable, known?: DirVolumeInfo): Promise<Record<string, unknown>> {
    const host = await this.#hosts.row(volume.host_id);
    const info =
      known ??
      (await this.#hosts
        .agent(host)
        .dirVolume(pool.name, volume.name, { timeoutMs: 10_000 })
        .catch(() => undefined));
    const user = await vmUsingVolume(this.#db, pool.name, volume.name);
    return {
      name: volume.name,
      pool: pool.name,
      sizeBytes: volume.size_bytes,
      kind: 'volume',
      readOnly: false,
      allocatedBytes: info?.allocatedBytes ?? 0,
      host: host.name,
      ...(user ? { usedBy: user.name } : {}),
      createdAt: volume.created_at,
    };
  }
}
