/**
 * The metrics one control plane serves at GET /metrics, in Prometheus' text format: its own
 * registry holding the process's default metrics, the API's request counter and latency
 * histogram, the metrics that services feed as things happen (metrics.ts), and gauges of the
 * cluster's state read at scrape time (cluster-snapshot.ts) through `collect()` callbacks.
 *
 * Gauges, not counters, for everything read from the state: they are what is there now (hosts,
 * VMs, pools) and may go down. Counters only where a count only grows: requests served, scrape
 * failures, migrations ended, and the storage node's per-member error counters (which restart
 * from zero with the node, a reset Prometheus' rate() handles).
 */
import { sql } from 'kysely';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from '../core/logger.ts';
import { messageOf } from '../core/errors.ts';
import {
  type ClusterSnapshot,
  type SnapshotPart,
  type SnapshotSources,
  StorageSampler,
  type StorageSamplerOptions,
  readDatabaseParts,
} from './cluster-snapshot.ts';
import { clusterMetrics } from './metrics.ts';

/** Bucket bounds (seconds) of API request latency. */
const REQUEST_BUCKETS_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const MIB = 2 ** 20;
const SNAPSHOT_PARTS: readonly SnapshotPart[] = ['hosts', 'vms', 'dir_pools', 'storage_node'];

/** Options of the control plane's metrics, with defaults. */
export interface ControlPlaneMetricsOptions {
  /** How the storage node is asked (StorageSampler): default at most every 10 s, waited on 2 s at most. */
  storage?: StorageSamplerOptions;
  /** Told of each part of a scrape that could not be read. */
  logger?: Logger;
}

type SetSample<L extends string> = (labels: Record<L, string | number>, value: number) => void;

/** One control plane's registry and the collectors that fill it at each scrape. */
export class ControlPlaneMetrics {
  readonly #registry = new Registry();
  readonly #sources: SnapshotSources;
  readonly #storage?: StorageSampler;
  readonly #logger?: Logger;
  readonly #scrapeErrors: Counter<'source'>;
  readonly #requests: Counter<'route' | 'method' | 'status_code'>;
  readonly #requestSeconds: Histogram<'route' | 'method' | 'status_code'>;
  /** The read in progress, shared by the collectors of one scrape. */
  #reading?: Promise<ClusterSnapshot>;

  constructor(sources: SnapshotSources, options: ControlPlaneMetricsOptions = {}) {
    this.#sources = sources;
    this.#storage = sources.storage ? new StorageSampler(sources.storage, options.storage) : undefined;
    this.#logger = options.logger;
    const registers = [this.#registry];
    collectDefaultMetrics({ register: this.#registry, prefix: 'nubis_' });
    for (const metric of Object.values(clusterMetrics)) this.#registry.registerMetric(metric);
    const read = () => this.#read();
    this.#scrapeErrors = new Counter({
      name: 'nubis_scrape_errors_total',
      help: 'Parts of a scrape that could not be read and were left out, by source (hosts, vms, dir_pools, storage_node)',
      labelNames: ['source'] as const,
      registers,
      // After the read, so that a scrape counts its own failures.
      async collect() {
        await read();
      },
    });
    for (const source of SNAPSHOT_PARTS) this.#scrapeErrors.inc({ source }, 0);
    const requestLabels = ['route', 'method', 'status_code'] as const;
    this.#requests = new Counter({
      name: 'nubis_api_requests_total',
      help: 'API requests answered, by route pattern, method and status',
      labelNames: requestLabels,
      registers,
    });
    this.#requestSeconds = new Histogram({
      name: 'nubis_api_request_duration_seconds',
      help: 'Seconds from receiving an API request to the end of its answer, by route pattern, method and status',
      labelNames: requestLabels,
      buckets: REQUEST_BUCKETS_SECONDS,
      registers,
    });
    this.#databaseCounter();
    this.#hostGauges();
    this.#vmGauges();
    this.#storageGauges();
    this.#desktopGauges(sources.db);
  }

  /**
   * Counts one answered API request. `route` is the route's pattern (`/v1/vms/:vm`), never the
   * URL as sent, so that the series stay as many as the routes.
   */
  observeRequest(request: { route: string; method: string; statusCode: number; seconds: number }): void {
    const labels = { route: request.route, method: request.method, status_code: request.statusCode };
    this.#requests.inc(labels);
    this.#requestSeconds.observe(labels, request.seconds);
  }

  /** Every metric in Prometheus' text exposition format 0.0.4, with its content type. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.#registry.contentType, body: await this.#registry.metrics() };
  }

  /**
   * The cluster as read for this scrape. Every collector of a scrape starts in the same turn of
   * the event loop (the registry asks them all at once), so they share one read; a scrape that
   * comes while a read is out shares it too, and the next one reads again: nothing is cached.
   */
  #read(): Promise<ClusterSnapshot> {
    if (this.#reading) return this.#reading;
    const failed = (part: SnapshotPart, error: unknown): void => {
      this.#scrapeErrors.inc({ source: part });
      this.#logger?.warn({ part, error: messageOf(error) }, 'metrics: a part of the scrape could not be read');
    };
    const reading = Promise.all([readDatabaseParts(this.#sources, failed), this.#storage?.pools(failed)])
      .then(([snapshot, storagePools]) => ({ ...snapshot, storagePools }))
      .finally(() => {
        this.#reading = undefined;
      });
    this.#reading = reading;
    return reading;
  }

  /** A gauge whose series are replaced at each scrape by `fill` over the snapshot. */
  #gauge<L extends string>(name: string, help: string, labelNames: readonly L[], fill: (snapshot: ClusterSnapshot, set: SetSample<L>) => void): void {
    const read = () => this.#read();
    new Gauge<L>({
      name,
      help,
      labelNames,
      registers: [this.#registry],
      async collect() {
        const snapshot = await read();
        // Replaced whole: a host or VM that is gone leaves no stale series behind.
        this.reset();
        fill(snapshot, (labels, value) => this.set(labels, value));
      },
    });
  }

  /**
   * Rows this control plane inserted, updated or deleted since it started: SQLite's
   * total_changes() of its one connection (sqlite.org/c3ref/total_changes.html), which counts
   * every write whoever made it. bench/scale reads it to show that heartbeats do not each write.
   * And its commits (database.ts counts them): each waits for the disk, so writes per commit is
   * what group commit (state/write-queue.ts) buys.
   */
  #databaseCounter(): void {
    const db = this.#sources.db;
    const counter = (name: string, help: string, read: () => Promise<number | undefined>) => {
      let counted = 0;
      new Counter({
        name,
        help,
        registers: [this.#registry],
        async collect() {
          const total = (await read()) ?? counted;
          this.inc(Math.max(0, total - counted));
          counted = Math.max(counted, total);
        },
      });
    };
    const scalar = async (query: ReturnType<typeof sql<{ value: number }>>) => {
      const value = (await query.execute(db)).rows[0]?.value;
      return value === undefined ? undefined : Number(value);
    };
    counter('nubis_db_rows_changed_total', 'Rows inserted, updated or deleted in the database by this control plane since it started', () =>
      scalar(sql<{ value: number }>`select total_changes() as value`),
    );
    counter('nubis_db_commits_total', 'Database commits by this control plane since it started (each waits for the disk)', () =>
      scalar(sql<{ value: number }>`select nubis_commits() as value`),
    );
  }

  #hostGauges(): void {
    const perHost = (name: string, help: string, value: (host: NonNullable<ClusterSnapshot['hosts']>[number], atMs: number) => number) =>
      this.#gauge(name, help, ['host'], (s, set) => {
        for (const host of s.hosts ?? []) set({ host: host.name }, value(host, s.atMs));
      });
    perHost('nubis_host_cpus', 'vCPUs the host offers to VMs (its capacity)', (h) => h.cpus);
    perHost('nubis_host_memory_bytes', 'Memory the host offers to VMs (its capacity)', (h) => h.memoryMb * MIB);
    perHost('nubis_host_allocated_cpus', 'vCPUs of the VMs placed on the host', (h) => h.allocatedCpus);
    perHost('nubis_host_allocated_memory_bytes', 'Memory of the VMs placed on the host', (h) => h.allocatedMemoryMb * MIB);
    perHost('nubis_host_vms', 'VMs placed on the host, whatever their state', (h) => h.vmCount);
    perHost('nubis_host_heartbeat_age_seconds', "Seconds since the host's agent last reported", (h, atMs) =>
      Math.max(0, (atMs - Date.parse(h.lastSeenAt)) / 1000),
    );
    this.#gauge('nubis_host_state', "1 for the host's current state (online, offline, maintenance, ...), one series per host", ['host', 'state'], (s, set) => {
      for (const host of s.hosts ?? []) set({ host: host.name, state: host.status }, 1);
    });
    this.#gauge('nubis_host_info', "Always 1: the host's accelerator (kvm or tcg) as a label", ['host', 'accelerator'], (s, set) => {
      for (const host of s.hosts ?? []) set({ host: host.name, accelerator: host.accelerator }, 1);
    });
  }

  #vmGauges(): void {
    this.#gauge('nubis_vms', 'VMs by project and state (as their hosts last reported it)', ['project', 'state'], (s, set) => {
      for (const row of s.vmCounts ?? []) set({ project: row.project, state: row.state }, row.count);
    });
    this.#gauge('nubis_vm_cpus', "A VM's maximum vCPUs (what placement and quotas count)", ['project', 'vm'], (s, set) => {
      for (const vm of s.vms ?? []) set({ project: vm.project, vm: vm.name }, vm.cpus);
    });
    this.#gauge('nubis_vm_memory_bytes', "A VM's configured memory", ['project', 'vm'], (s, set) => {
      for (const vm of s.vms ?? []) set({ project: vm.project, vm: vm.name }, vm.memoryMb * MIB);
    });
  }

  /** Desktops per pool by state, and how many are held: one query at scrape time. */
  #desktopGauges(db: SnapshotSources['db']): void {
    const read = async () =>
      db
        .selectFrom('desktops')
        .innerJoin('desktop_pools', 'desktop_pools.id', 'desktops.pool_id')
        .innerJoin('projects', 'projects.id', 'desktop_pools.project_id')
        .leftJoin('vms', 'vms.id', 'desktops.vm_id')
        .select(['projects.name as project', 'desktop_pools.name as pool', 'desktops.state', 'vms.actual_state', 'desktops.assigned_user_id'])
        .execute();
    const scrapeErrors = this.#scrapeErrors;
    const count = (rows: Awaited<ReturnType<typeof read>>, key: (row: (typeof rows)[number]) => string | undefined) => {
      const counts = new Map<string, { labels: Record<string, string>; value: number }>();
      for (const row of rows) {
        const extra = key(row);
        if (extra === undefined) continue;
        const id = `${row.project}/${row.pool}/${extra}`;
        const entry = counts.get(id) ?? { labels: { project: row.project, pool: row.pool, ...(extra ? { state: extra } : {}) }, value: 0 };
        entry.value += 1;
        counts.set(id, entry);
      }
      return [...counts.values()];
    };
    new Gauge({
      name: 'nubis_desktops',
      help: "Desktops of each desktop pool by state (provisioning, resetting, broken, or their VM's state)",
      labelNames: ['project', 'pool', 'state'] as const,
      registers: [this.#registry],
      async collect() {
        this.reset();
        const rows = await read().catch(() => {
          scrapeErrors.inc({ source: 'vms' });
          return [];
        });
        for (const { labels, value } of count(rows, (row) => (row.state === 'available' ? (row.actual_state ?? 'unknown') : row.state)))
          this.set(labels as Record<'project' | 'pool' | 'state', string>, value);
      },
    });
    new Gauge({
      name: 'nubis_desktops_assigned',
      help: 'Desktops of each desktop pool held by a user',
      labelNames: ['project', 'pool'] as const,
      registers: [this.#registry],
      async collect() {
        this.reset();
        const rows = await read().catch(() => []);
        for (const { labels, value } of count(rows, (row) => (row.assigned_user_id ? '' : undefined)))
          this.set(labels as Record<'project' | 'pool', string>, value);
      },
    });
  }

  #storageGauges(): void {
    const hasStorage = this.#storage !== undefined;
    this.#gauge('nubis_storage_node_up', '1 when the storage node answered its last pool list, else 0', [], (s, set) => {
      if (hasStorage) set({}, s.storagePools ? 1 : 0);
    });
    this.#gauge('nubis_storage_pool_state', "1 for a storage-node pool's health (online, degraded, faulted)", ['pool', 'state'], (s, set) => {
      for (const pool of s.storagePools ?? []) set({ pool: pool.name, state: pool.state }, 1);
    });
    this.#gauge('nubis_storage_pool_read_only', '1 when a storage-node pool refuses writes', ['pool'], (s, set) => {
      for (const pool of s.storagePools ?? []) set({ pool: pool.name }, pool.readOnly ? 1 : 0);
    });
    const sanBytes = [
      ['nubis_storage_pool_size_bytes', 'Usable bytes of a storage-node pool', 'sizeBytes'],
      ['nubis_storage_pool_allocated_bytes', 'Bytes of a storage-node pool that hold data', 'allocatedBytes'],
      ['nubis_storage_pool_free_bytes', 'Bytes of a storage-node pool not allocated', 'freeBytes'],
    ] as const;
    for (const [name, help, field] of sanBytes)
      this.#gauge(name, help, ['pool'], (s, set) => {
        for (const pool of s.storagePools ?? []) set({ pool: pool.name }, pool[field]);
      });
    this.#gauge('nubis_storage_pool_provisioned_bytes', 'Sum of the sizes of the volumes of a pool, by kind (san, dir)', ['pool', 'kind'], (s, set) => {
      for (const pool of s.storagePools ?? []) set({ pool: pool.name, kind: 'san' }, pool.provisionedBytes);
      for (const pool of s.dirPools ?? []) set({ pool: pool.name, kind: 'dir' }, pool.provisionedBytes);
    });
    this.#gauge('nubis_storage_pool_volumes', 'Volumes in a pool, by kind (san, dir)', ['pool', 'kind'], (s, set) => {
      for (const pool of s.storagePools ?? []) set({ pool: pool.name, kind: 'san' }, pool.volumes);
      for (const pool of s.dirPools ?? []) set({ pool: pool.name, kind: 'dir' }, pool.volumes);
    });
    this.#gauge('nubis_storage_pool_member_state', "1 for the state of a storage-node pool's member device", ['pool', 'member', 'state'], (s, set) => {
      for (const pool of s.storagePools ?? []) for (const m of pool.members) set({ pool: pool.name, member: m.index, state: m.state }, 1);
    });
    this.#memberErrors();
  }

  /** The storage node's error counters per member device: counters that restart with the node. */
  #memberErrors(): void {
    const read = () => this.#read();
    new Counter({
      name: 'nubis_storage_pool_member_errors_total',
      help: "I/O errors of a storage-node pool's member device since the storage node started, by error (read, write, checksum)",
      labelNames: ['pool', 'member', 'error'] as const,
      registers: [this.#registry],
      async collect() {
        const snapshot = await read();
        this.reset();
        for (const pool of snapshot.storagePools ?? [])
          for (const m of pool.members)
            for (const [error, count] of [
              ['read', m.readErrors],
              ['write', m.writeErrors],
              ['checksum', m.checksumErrors],
            ] as const)
              this.inc({ pool: pool.name, member: m.index, error }, count ?? 0);
      },
    });
  }
}
