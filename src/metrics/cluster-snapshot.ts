/**
 * What a scrape reads of the cluster, in a bounded number of steps whatever its size: the host
 * list (two queries: the hosts, and what is allocated on them grouped by host), every VM's state
 * and configured size (one query, counted by project and state as it is read), dir pools grouped
 * (one query), and the storage node's pool list (one call, cached, with a short timeout). No query
 * per host, VM or pool. Each part that cannot be read is left out and named, so the scrape
 * answers with the rest.
 */
import type { Db } from '../state/database.ts';

/** A host as the host registry lists it (HostView's fields that the metrics read). */
export interface HostSample {
  name: string;
  /** online, offline, maintenance (and whatever states later releases add): taken as given. */
  status: string;
  accelerator: string;
  cpus: number;
  memoryMb: number;
  allocatedCpus: number;
  allocatedMemoryMb: number;
  vmCount: number;
  lastSeenAt: string;
}

/** A storage-node pool as its API lists it (PoolStatus's fields that the metrics read). */
export interface StoragePoolSample {
  name: string;
  state: string;
  readOnly: boolean;
  sizeBytes: number;
  allocatedBytes: number;
  freeBytes: number;
  provisionedBytes: number;
  volumes: number;
  members: Array<{ index: number; state: string; readErrors?: number; writeErrors?: number; checksumErrors?: number }>;
}

/** Where a snapshot's parts come from; the host registry and the storage catalogue fit as they are. */
export interface SnapshotSources {
  db: Db;
  hosts: { list(): Promise<HostSample[]> };
  /** The storage node: `call` as StorageCatalogue has it. Absent: no storage-node pools. */
  storage?: { call<T>(request: { method: 'GET'; path: string; timeoutMs?: number; signal?: AbortSignal }): Promise<T> };
}

/** One scrape's view of the cluster; a part that could not be read is undefined. */
export interface ClusterSnapshot {
  /** When it was read (ms since the epoch): heartbeat ages are taken against it. */
  atMs: number;
  hosts?: HostSample[];
  vmCounts?: Array<{ project: string; state: string; count: number }>;
  vms?: Array<{ name: string; project: string; cpus: number; memoryMb: number }>;
  dirPools?: Array<{ name: string; volumes: number; provisionedBytes: number }>;
  storagePools?: StoragePoolSample[];
}

/** The parts of a snapshot, as the `source` label of nubis_scrape_errors_total names them. */
export type SnapshotPart = 'hosts' | 'vms' | 'dir_pools' | 'storage_node';

/** Reads the parts of a snapshot that come from the database. */
export async function readDatabaseParts(sources: SnapshotSources, failed: (part: SnapshotPart, error: unknown) => void): Promise<ClusterSnapshot> {
  const { db } = sources;
  const part = <T>(name: SnapshotPart, read: () => Promise<T>): Promise<T | undefined> =>
    read().catch((error: unknown) => {
      failed(name, error);
      return undefined;
    });
  const [hosts, vmParts, dirPools] = await Promise.all([
    part('hosts', () => sources.hosts.list()),
    part('vms', async () => {
      // One scan of the VMs serves both the per-VM series and the counts: the rows are wide
      // (spec and status JSON), so a second GROUP BY scan would cost as much again.
      const vms = await db
        .selectFrom('vms')
        .innerJoin('projects', 'projects.id', 'vms.project_id')
        .select(['vms.name', 'projects.name as project', 'vms.actual_state as state', 'vms.cpus', 'vms.memory_mb as memoryMb'])
        .execute();
      const counts = new Map<string, { project: string; state: string; count: number }>();
      for (const vm of vms) {
        const key = JSON.stringify([vm.project, vm.state]);
        const entry = counts.get(key) ?? counts.set(key, { project: vm.project, state: vm.state, count: 0 }).get(key)!;
        entry.count++;
      }
      return { counts: [...counts.values()], vms };
    }),
    part('dir_pools', async () => {
      const rows = await db
        .selectFrom('dir_pools')
        .leftJoin('dir_volumes', 'dir_volumes.pool_id', 'dir_pools.id')
        .select((eb) => ['dir_pools.name', eb.fn.count<number>('dir_volumes.id').as('volumes'), eb.fn.sum<number>('dir_volumes.size_bytes').as('bytes')])
        .groupBy('dir_pools.name')
        .execute();
      return rows.map((row) => ({ name: row.name, volumes: Number(row.volumes), provisionedBytes: Number(row.bytes ?? 0) }));
    }),
  ]);
  return { atMs: Date.now(), hosts, vmCounts: vmParts?.counts, vms: vmParts?.vms, dirPools };
}

/** How the storage node is asked, with defaults. */
export interface StorageSamplerOptions {
  /** A pool list younger than this is reused rather than asked again. Default 10 000 ms. */
  refreshMs?: number;
  /** The longest a scrape waits for the storage node. Default 2 000 ms. */
  timeoutMs?: number;
}

/**
 * The storage node's pool list for scrapes: asked at most once per `refreshMs` however many
 * scrapers there are, never waited on longer than `timeoutMs`, and never asked twice at once (a
 * scrape that comes while a call is out waits for that one). A failed call is no list: the pools'
 * series are then absent rather than stale.
 */
export class StorageSampler {
  readonly #storage: NonNullable<SnapshotSources['storage']>;
  readonly #refreshMs: number;
  readonly #timeoutMs: number;
  #last?: { atMs: number; pools?: StoragePoolSample[] };
  #pending?: Promise<StoragePoolSample[] | undefined>;

  constructor(storage: NonNullable<SnapshotSources['storage']>, options: StorageSamplerOptions = {}) {
    this.#storage = storage;
    this.#refreshMs = options.refreshMs ?? 10_000;
    this.#timeoutMs = options.timeoutMs ?? 2_000;
  }

  /** The pools, from a fresh enough list or a new call; undefined (and `failed` told) when the node did not answer. */
  async pools(failed: (part: SnapshotPart, error: unknown) => void): Promise<StoragePoolSample[] | undefined> {
    if (this.#last && Date.now() - this.#last.atMs < this.#refreshMs) return this.#last.pools;
    this.#pending ??= this.#ask(failed).finally(() => {
      this.#pending = undefined;
    });
    return this.#pending;
  }

  async #ask(failed: (part: SnapshotPart, error: unknown) => void): Promise<StoragePoolSample[] | undefined> {
    // The abort bounds the whole call: the socket's own timeout only bounds silence between bytes.
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new Error(`The storage node did not answer within ${this.#timeoutMs} ms`)), this.#timeoutMs);
    let pools: StoragePoolSample[] | undefined;
    try {
      pools = await this.#storage.call<StoragePoolSample[]>({ method: 'GET', path: '/storage/pools', timeoutMs: this.#timeoutMs, signal: controller.signal });
    } catch (error) {
      failed('storage_node', error);
    } finally {
      clearTimeout(timer);
    }
    this.#last = { atMs: Date.now(), pools };
    return pools;
  }
}
