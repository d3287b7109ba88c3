/**
 * The hosts and what is allocated on them, as placement and the host list read them, kept in
 * memory and read again from the database only when the placement version moved: a counter that
 * database triggers bump at every change to what placement reads (a VM added, removed, moved or
 * resized; a host added, removed or changed but for its heartbeat time; migration 0016). Checking
 * it is one small query, so nothing a writer does, in any module or process, goes unseen.
 *
 * Creates do not make the next placement read everything again: a create reserves its share of a
 * host the moment placement picks it (synchronously, with the decision, so that creates running
 * together each see the others' shares and can never overcommit a host between them), the share
 * is noted with the version its record committed as, and folded into the cached usage when that
 * version follows the cache's. A share counts in placement until the cache holds it.
 */
import { sql } from 'kysely';
import type { Db } from '../state/database.ts';
import type { HostsTable } from '../state/schema.ts';

/** What is allocated on one host. */
export interface HostAllocation {
  cpus: number;
  memoryMb: number;
  vms: number;
}

/** The hosts and their allocations as of one placement version. */
export interface HostUsageSnapshot {
  version: number;
  hosts: HostsTable[];
  usage: Map<string, HostAllocation>;
}

/** A create's share of a host, from its placement until the record of its VM is cached or it gave up. */
export interface PlacementReservation {
  readonly hostId: string;
  /**
   * In the transaction that records the VM, after its row is written: notes the version the
   * record commits as (its own bump of the counter).
   */
  recordIn(trx: Db): Promise<void>;
  /** The transaction committed: the share is the record's now. */
  committed(): void;
  /** The VM was not recorded: the share goes back (nothing once committed). */
  release(): void;
}

interface Share {
  hostId: string;
  cpus: number;
  memoryMb: number;
  /** The placement version its record commits as (set in the recording transaction). */
  version?: number;
  committed: boolean;
}

const readVersion = async (db: Db): Promise<number> =>
  (await db.selectFrom('placement_state').select('version').where('id', '=', 1).executeTakeFirstOrThrow()).version;

export class HostUsage {
  readonly #db: Db;
  #snapshot: HostUsageSnapshot | undefined;
  #hostsReadAt: number | undefined;
  /** The read of the hosts in progress, shared by whoever needs it meanwhile. */
  #reading: Promise<void> | undefined;
  readonly #shares = new Set<Share>();

  constructor(db: Db) {
    this.#db = db;
  }

  /** The current snapshot: one small query, and the hosts and their usage again only when the version moved. */
  async refresh(): Promise<HostUsageSnapshot> {
    const version = await readVersion(this.#db);
    // Creates placed together after a change share one read; one that began before the change
    // stands for an older version, and then another read follows.
    while (!this.#snapshot || this.#snapshot.version < version) {
      this.#reading ??= this.#read().finally(() => {
        this.#reading = undefined;
      });
      await this.#reading;
    }
    return this.#snapshot;
  }

  async #read(): Promise<void> {
    // One transaction: the version and what it stands for are read together.
    const snapshot = await this.#db.transaction().execute(async (trx) => {
      const at = await readVersion(trx);
      // Frozen: every caller shares these rows.
      const hosts = (await trx.selectFrom('hosts').selectAll().orderBy('name').execute()).map((row) => Object.freeze(row));
      const rows = await trx
        .selectFrom('vms')
        .select((eb) => ['host_id', eb.fn.sum<number>('cpus').as('cpus'), eb.fn.sum<number>('memory_mb').as('memory'), eb.fn.countAll<number>().as('count')])
        .groupBy('host_id')
        .execute();
      const usage = new Map(rows.map((row) => [row.host_id, { cpus: Number(row.cpus), memoryMb: Number(row.memory), vms: Number(row.count) }]));
      return { version: at, hosts, usage };
    });
    // A snapshot folded past this read's version meanwhile is newer: it stays.
    if (!this.#snapshot || snapshot.version >= this.#snapshot.version) {
      this.#snapshot = snapshot;
      this.#hostsReadAt = snapshot.version;
    }
    this.#forgetCached();
  }

  /**
   * The version the host rows were last read at (folded creates do not move it): anything keyed
   * to a host row is stale once it moves. Undefined before the first read.
   */
  get hostsReadAt(): number | undefined {
    return this.#hostsReadAt;
  }

  /** The last snapshot read (call `refresh` first). */
  get snapshot(): HostUsageSnapshot {
    if (!this.#snapshot) throw new Error('HostUsage.refresh() was not called');
    return this.#snapshot;
  }

  /**
   * What is allocated on each host now: the snapshot's, plus the shares it does not hold yet:
   * those recorded in a later version, and (`pending`) those of creates still on their way.
   */
  allocations(pending: boolean): (hostId: string) => HostAllocation {
    const { usage, version } = this.snapshot;
    const extra = new Map<string, HostAllocation>();
    for (const share of this.#shares) {
      // Recorded at or before the snapshot's version: the snapshot holds it (or, rolled back, it is no VM).
      if (share.version === undefined ? !pending : share.version <= version) continue;
      const base = extra.get(share.hostId) ?? usage.get(share.hostId) ?? { cpus: 0, memoryMb: 0, vms: 0 };
      extra.set(share.hostId, { cpus: base.cpus + share.cpus, memoryMb: base.memoryMb + share.memoryMb, vms: base.vms + 1 });
    }
    const none: HostAllocation = { cpus: 0, memoryMb: 0, vms: 0 };
    return (hostId) => extra.get(hostId) ?? usage.get(hostId) ?? none;
  }

  /** Reserves a share of `hostId` for a VM being created (synchronously: call it in the turn of the decision). */
  reserve(hostId: string, cpus: number, memoryMb: number): PlacementReservation {
    const share: Share = { hostId, cpus, memoryMb, committed: false };
    this.#shares.add(share);
    return {
      hostId,
      recordIn: async (trx) => {
        share.version = await readVersion(trx);
      },
      committed: () => {
        if (share.version === undefined) throw new Error('A reservation committed without recordIn()');
        share.committed = true;
        this.#fold();
      },
      release: () => {
        if (!share.committed) this.#shares.delete(share);
      },
    };
  }

  /** Shares the snapshot holds already (recorded in its version or before) count no more. */
  #forgetCached(): void {
    const at = this.#snapshot?.version ?? -1;
    for (const share of this.#shares) if (share.committed && share.version! <= at) this.#shares.delete(share);
  }

  /**
   * Moves committed shares into the snapshot while each is the very next version (nothing else
   * changed in between): the snapshot then stands for that version without reading it again.
   */
  #fold(): void {
    const snapshot = this.#snapshot;
    if (!snapshot) return;
    for (let folded = true; folded; ) {
      folded = false;
      for (const share of this.#shares) {
        if (!share.committed || share.version !== snapshot.version + 1) continue;
        const usage = snapshot.usage.get(share.hostId) ?? { cpus: 0, memoryMb: 0, vms: 0 };
        snapshot.usage.set(share.hostId, { cpus: usage.cpus + share.cpus, memoryMb: usage.memoryMb + share.memoryMb, vms: usage.vms + 1 });
        snapshot.version = share.version;
        this.#shares.delete(share);
        folded = true;
      }
    }
    this.#forgetCached();
  }
}

/** For tests: the placement version as the database holds it. */
export async function placementVersion(db: Db): Promise<number> {
  return Number((await sql<{ version: number }>`select version from placement_state where id = 1`.execute(db)).rows[0].version);
}
