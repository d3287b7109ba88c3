/**
 * The control plane's side of the storage node: pools and volumes are managed there (through its
 * API on a unix socket); the control plane adds what spans the cluster: which VM uses which
 * volume, operations with progress for long pool actions, and the NBD address hosts attach.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { NubisError } from '../core/errors.ts';
import { requestJson, type JsonRequest } from '../core/http-json.ts';
import { checkHostName, type DataPaths, hostNbdSocketIn, vmNbdSocketIn } from '../core/paths.ts';
import type { StorageHostState, StorageVmSocketState } from '../storage/host-fencing.ts';
import type { DiskSpec } from '../compute/vm-spec.ts';
import { vmUserOf } from '../compute/vm-user.ts';
import { vmUsingVolume } from './volume-users.ts';
import type { Db } from '../state/database.ts';
import type { DirPoolCatalogue } from './dir-pools.ts';
import type { OperationContext } from './operations.ts';
import { VolumeOwners } from './volume-owners.ts';

export interface StorageEndpoints {
  /** The storage node's management API, e.g. `unix:/var/lib/nubis/storage/manage.sock`. */
  manage: string;
  /** The shared NBD socket (VMs recorded before per-host sockets, tools): it cannot be fenced. */
  nbdSocket: string;
  /** The storage node's folder of per-host and per-VM NBD sockets, e.g. `/var/lib/nubis/storage/hosts`. */
  hostsDir: string;
}

/** How the control plane reaches the storage node of data folder `paths`. */
export function storageEndpointsOf(paths: DataPaths): StorageEndpoints {
  return { manage: `unix:${paths.storageManageSocket}`, nbdSocket: paths.storageNbdSocket, hostsDir: paths.storageHosts };
}

export type { StorageHostState, StorageVmSocketState };

/** What binding a VM's disks needs of its spec: its id and uid (the socket's owner) and its disks. */
type BindableSpec = { id: string; unixUid?: number; disks: DiskSpec[] };

/** How far a storage job got: bytes of a pool action, or keys of a key rotation. */
export type StorageJobProgress =
  | { doneBytes: number; totalBytes: number; rateBytesPerSec: number; etaSeconds: number }
  | { doneKeys: number; totalKeys: number; pool?: string; volume?: string };

/** A long action on the storage node, as its API reports it. */
export interface StorageJob {
  id: string;
  status: 'running' | 'succeeded' | 'failed';
  progress?: StorageJobProgress;
  result?: unknown;
  error?: { code: string; message: string };
}

export class StorageCatalogue {
  readonly #db: Db;
  readonly endpoints: StorageEndpoints;
  /** Host-based pools; volume references name either kind. */
  readonly dirPools: DirPoolCatalogue;
  /** Which project each volume belongs to. */
  readonly owners: VolumeOwners;

  constructor(db: Db, endpoints: StorageEndpoints, dirPools: DirPoolCatalogue) {
    this.#db = db;
    this.owners = new VolumeOwners(db);
    this.endpoints = endpoints;
    this.dirPools = dirPools;
  }

  /**
   * The disk QEMU attaches for `pool/volume`: a storage-node volume over NBD (reachable from every
   * host), or a dir-pool volume as a qcow2 file, which pins the VM to `hostId`.
   */
  async diskFor(pool: string, volume: string, diskId: string): Promise<{ disk: DiskSpec; hostId?: string }> {
    if (await this.dirPools.find(pool)) {
      const { disk, hostId } = await this.dirPools.diskOf(pool, volume, diskId);
      return { disk, hostId };
    }
    return { disk: { id: diskId, kind: 'nbd', socketPath: this.endpoints.nbdSocket, exportName: `${pool}/${volume}` } };
  }

  /**
   * `spec` as host `hostName` runs it: its storage-node disks reach the node through the VM's own
   * socket there (`<hostsDir>/<host>/vm-<uid>.sock`, its QEMU's uid's alone), which the storage
   * node serves with exactly these disks' exports once this resolves (created, or its list
   * replaced: an export no longer named is cut). The socket belongs to the host, so fencing the
   * host cuts exactly its I/O. A spec without storage-node disks is returned as it is (use
   * `releaseVmSocket` when its last one went).
   */
  async bindDisksToHost<T extends BindableSpec>(spec: T, hostName: string): Promise<T> {
    const exports = nbdExportsOf(spec);
    if (exports.length === 0) return spec;
    const { uid } = vmUserOf(spec);
    const socketPath = this.vmSocketFor(hostName, uid);
    await this.call<StorageVmSocketState>({ method: 'PUT', path: `/storage/hosts/${checkHostName(hostName)}/vms/${uid}`, body: { exports } });
    return { ...spec, disks: spec.disks.map((disk) => (disk.kind === 'nbd' ? { ...disk, socketPath } : disk)) };
  }

  /**
   * Lets the storage node close the VM's socket on `hostName` (its connections cut, its file
   * removed): the VM was deleted, left the host, or has no storage-node disk any more. `spec` is
   * the VM's spec while it had its disks: nothing is asked of the node when it names no
   * storage-node disk (the VM never had a socket). Releasing twice is fine.
   */
  async releaseVmSocket(spec: BindableSpec, hostName: string): Promise<void> {
    if (nbdExportsOf(spec).length === 0) return;
    await this.call({ method: 'DELETE', path: `/storage/hosts/${checkHostName(hostName)}/vms/${vmUserOf(spec).uid}` });
  }

  /**
   * After a change of a VM's disks on `hostName` (from `previous` to `spec`): its socket serves
   * exactly `spec`'s storage-node exports, or is released when `spec` names none. `spec` as
   * bound (see `bindDisksToHost`).
   */
  async syncVmSocket<T extends BindableSpec>(spec: T, hostName: string, previous: BindableSpec): Promise<T> {
    if (nbdExportsOf(spec).length > 0) return this.bindDisksToHost(spec, hostName);
    await this.releaseVmSocket(previous, hostName);
    return spec;
  }

  /** The shared NBD socket of host `hostName` (every export, root only; tools and older VM records). */
  nbdSocketFor(hostName: string): string {
    return hostNbdSocketIn(this.endpoints.hostsDir, hostName);
  }

  /** The NBD socket of the VM running as `uid` on host `hostName`. */
  vmSocketFor(hostName: string, uid: number): string {
    return vmNbdSocketIn(this.endpoints.hostsDir, hostName, uid);
  }

  /** The VM sockets the storage node serves on host `hostName`. */
  async vmSockets(hostName: string): Promise<StorageVmSocketState[]> {
    return this.call<StorageVmSocketState[]>({ method: 'GET', path: `/storage/hosts/${checkHostName(hostName)}/vms` });
  }

  /** Registers a host at the storage node, which then serves its own NBD socket; idempotent. */
  async registerHost(name: string): Promise<StorageHostState> {
    return this.call<StorageHostState>({ method: 'PUT', path: `/storage/hosts/${checkHostName(name)}` });
  }

  /**
   * Fences a host: once this resolves, no write from that host reaches any volume any more (its
   * connections are closed, every later request and connection refused, the raised generation on
   * the storage node's disk), so its VMs can be started elsewhere. It fails (the host fenced all
   * the same) with `STORAGE_FENCE_TIMEOUT` when requests already running did not finish in time:
   * call it again until it resolves before starting the VMs elsewhere. Waits up to 2 minutes.
   */
  async fenceHost(name: string): Promise<StorageHostState> {
    return this.call<StorageHostState>({ method: 'POST', path: `/storage/hosts/${checkHostName(name)}/fence`, timeoutMs: 120_000 });
  }

  /** Lets a fenced host connect again (new connections only: the ones from before stay refused). */
  async unfenceHost(name: string): Promise<StorageHostState> {
    return this.call<StorageHostState>({ method: 'POST', path: `/storage/hosts/${checkHostName(name)}/unfence` });
  }

  /** Every host registered at the storage node, with its generation, fence and open connections. */
  async hostStates(): Promise<StorageHostState[]> {
    return this.call<StorageHostState[]>({ method: 'GET', path: '/storage/hosts' });
  }

  /** Calls the storage node; an unreachable node is `STORAGE_UNAVAILABLE`. */
  async call<T>(request: JsonRequest): Promise<T> {
    try {
      return await requestJson<T>(this.endpoints.manage, { timeoutMs: 60_000, ...request });
    } catch (error) {
      if ((error as { code?: string }).code === 'HTTP_UNREACHABLE') {
        throw new NubisError('STORAGE_UNAVAILABLE', 'The storage node does not answer; is it running? (nubis up starts it)', { cause: error });
      }
      throw error;
    }
  }

  /** Runs a storage job, reporting its progress into the operation until it ends. */
  async runJob(path: string, body: unknown, op: OperationContext, stage: string): Promise<unknown> {
    return this.followJob(await this.startJob(path, body), op, stage);
  }

  /**
   * Starts a storage job. The storage node refuses a bad request here with its 4xx, so a route
   * that starts the job before its operation answers that request itself, not a failed operation.
   */
  async startJob(path: string, body: unknown): Promise<StorageJob> {
    return this.call<StorageJob>({ method: 'POST', path, body });
  }

  /** Reports a started job's progress into the operation until it ends; its result or error. */
  async followJob(started: StorageJob, op: OperationContext, stage: string): Promise<unknown> {
    let job = started;
    let reported = '';
    while (job.status === 'running') {
      await delay(500, undefined, { signal: op.signal });
      job = await this.call<StorageJob>({ method: 'GET', path: `/storage/jobs/${job.id}` });
      const p = job.progress;
      if (!p) continue;
      if ('totalKeys' in p) {
        // Key rotations are quick: report each step once, not every sample.
        const message = `${p.doneKeys} of ${p.totalKeys} volume keys rewrapped${p.volume ? ` (last: ${p.pool}/${p.volume})` : ''}`;
        if (message !== reported) await op.report(stage, message, p.totalKeys > 0 ? p.doneKeys / p.totalKeys : 0, p);
        reported = message;
      } else if (p.totalBytes > 0) {
        await op.report(
          stage,
          `${(p.doneBytes / 2 ** 20).toFixed(0)} of ${(p.totalBytes / 2 ** 20).toFixed(0)} MiB at ${(p.rateBytesPerSec / 2 ** 20).toFixed(1)} MiB/s, ETA ${Math.ceil(p.etaSeconds)} s`,
          p.doneBytes / p.totalBytes,
          p,
        );
      }
    }
    if (job.status === 'failed') throw new NubisError(job.error?.code ?? 'STORAGE_JOB_FAILED', job.error?.message ?? 'The storage job failed');
    return job.result;
  }

  /** Checks that `pool/volume` exists and is writable, and that no other VM uses it. */
  async checkDiskFree(pool: string, volume: string): Promise<{ sizeBytes: number }> {
    const info = (await this.dirPools.find(pool))
      ? { sizeBytes: (await this.dirPools.diskOf(pool, volume, 'check')).sizeBytes, readOnly: false }
      : await this.call<{ sizeBytes: number; readOnly: boolean }>({
          method: 'GET',
          path: `/storage/pools/${encodeURIComponent(pool)}/volumes/${encodeURIComponent(volume)}`,
        });
    if (info.readOnly)
      throw new NubisError('VOLUME_READ_ONLY', `Volume ${pool}/${volume} is a read-only snapshot; clone it (nubis volume clone) and attach the clone`);
    const user = await vmUsingVolume(this.#db, pool, volume);
    if (user) throw new NubisError('VOLUME_IN_USE', `Volume ${pool}/${volume} is attached to VM ${user.name}; detach it there first`);
    return info;
  }

  /** Refuses to delete a volume (or pool) a VM uses. */
  async checkUnused(pool: string, volume?: string): Promise<void> {
    let query = this.#db.selectFrom('vm_disks').innerJoin('vms', 'vms.id', 'vm_disks.vm_id').select(['vms.name', 'vm_disks.volume']).where('pool', '=', pool);
    if (volume) query = query.where('volume', '=', volume);
    const users = await query.execute();
    if (users.length > 0) {
      throw new NubisError(
        'VOLUME_IN_USE',
        `${volume ? `Volume ${pool}/${volume}` : `Pool ${pool}`} is used by VM(s) ${[...new Set(users.map((u) => u.name))].join(', ')}; detach or delete them first`,
      );
    }
  }

  /** The VM that has the volume as a disk, if one does (a volume is one VM's at a time). */
  vmOf(pool: string, volume: string): Promise<{ id: string; name: string } | undefined> {
    return vmUsingVolume(this.#db, pool, volume);
  }

  /** Records that a VM uses a volume as its disk `deviceIndex` (`db`: the caller's transaction, if any). */
  async recordDisk(vmId: string, deviceIndex: number, pool: string, volume: string, db: Db = this.#db): Promise<void> {
    await db.insertInto('vm_disks').values({ vm_id: vmId, device_index: deviceIndex, pool, volume }).execute();
  }

  async disksOf(vmId: string): Promise<Array<{ deviceIndex: number; pool: string; volume: string }>> {
    const rows = await this.#db.selectFrom('vm_disks').selectAll().where('vm_id', '=', vmId).orderBy('device_index').execute();
    return rows.map((row) => ({ deviceIndex: row.device_index, pool: row.pool, volume: row.volume }));
  }

  /** Forgets a VM's disks, or one of them (`db`: the caller's transaction, if any). */
  async forgetDisks(vmId: string, deviceIndex?: number, db: Db = this.#db): Promise<void> {
    let query = db.deleteFrom('vm_disks').where('vm_id', '=', vmId);
    if (deviceIndex !== undefined) query = query.where('device_index', '=', deviceIndex);
    await query.execute();
  }
}

/** The storage-node exports a spec's disks name, each once. */
function nbdExportsOf(spec: { disks: DiskSpec[] }): string[] {
  return [...new Set(spec.disks.flatMap((disk) => (disk.kind === 'nbd' ? [disk.exportName] : [])))];
}
