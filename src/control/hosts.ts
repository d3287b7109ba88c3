/**
 * The hosts of the cluster: agents join with the join token, report what runs, and are called
 * through their endpoint. A host that has not reported for a while is shown offline.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { NubisError } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import { auditedTransaction } from '../audit/audit-context.ts';
import type { AgentClient } from '../agent-api/contract.ts';
import { HttpAgentClient } from '../agent-api/agent-client.ts';
import type { Db } from '../state/database.ts';
import type { HostsTable } from '../state/schema.ts';
import type { HostIsolation } from '../wire/schemas.ts';
import { checkLabels, type Labels, mergeLabels, parseStoredLabels } from './labels.ts';
import { SUSPECT_AFTER_MS } from '../agent-api/heartbeat.ts';
import { DEFAULT_CPU_OVERCOMMIT, DEFAULT_MEMORY_OVERCOMMIT, type SchedulerHost } from './scheduler.ts';
import { type HostAllocation, HostUsage, type PlacementReservation } from './host-usage.ts';
import { publishChange } from '../events/change-feed.ts';

/** What `nubis host set` changes. */
export interface HostChange {
  /** Labels to set; a label given an empty value is removed. */
  labels?: Labels;
  cpuOvercommit?: number;
  memoryOvercommit?: number;
}

/** A host is offline when its last heartbeat is older than this (and it was not fenced). */
export const HOST_OFFLINE_AFTER_MS = 30_000;
/**
 * Heartbeats are kept in memory; each host's time is written to the database at most this often
 * (readers of `last_seen_at`, such as network service placement, see it at most this stale).
 */
const PERSIST_HEARTBEAT_EVERY_MS = 10_000;

export interface HostView {
  id: string;
  name: string;
  /** online; suspect (silent a few seconds); offline; fenced (lost, its HA VMs restarted elsewhere); maintenance. */
  status: 'online' | 'suspect' | 'offline' | 'fenced' | 'maintenance';
  labels: Labels;
  cpuOvercommit: number;
  memoryOvercommit: number;
  endpoint: string;
  accelerator: string;
  acceleratorReason: string;
  cpus: number;
  memoryMb: number;
  allocatedCpus: number;
  allocatedMemoryMb: number;
  vmCount: number;
  lastSeenAt: string;
  joinedAt: string;
  underlayIp?: string;
  qemuVersion?: string;
  isolation?: HostIsolation;
}

export interface JoinRequest {
  name: string;
  joinToken: string;
  endpoint: string;
  agentToken: string;
  accelerator: string;
  acceleratorReason: string;
  cpus: number;
  memoryMb: number;
  underlayIp?: string;
  qemuVersion?: string;
  isolation?: HostIsolation;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

function sameSecret(given: string, expected: string): boolean {
  return timingSafeEqual(Buffer.from(sha256(given), 'hex'), Buffer.from(sha256(expected), 'hex'));
}

/**
 * Credentials, in both directions, with no secret in the database: an agent presents its own
 * token (only its sha256 is stored); the control plane presents to each agent a token derived
 * from a key file of its own (HMAC of the host's name), handed to the agent once at join, which
 * keeps only its hash too.
 */
/** Makes the client of one host's agent. */
export type AgentFactory = (options: { endpoint: string; token: string; hostName: string }) => AgentClient;

export class HostRegistry {
  readonly #db: Db;
  readonly #joinToken: string;
  readonly #controlKey: string;

  readonly #agentFactory: AgentFactory;
  /** Host id -> time of its last heartbeat (ms), in memory: a thousand hosts must not each write. */
  readonly #heartbeats = new Map<string, number>();
  /** Host id -> the heartbeat time last written to the database. */
  readonly #persisted = new Map<string, number>();
  /** Hosts get a whole fence delay after a control-plane start before anything counts as silence. */
  readonly #startedAt = Date.now();
  /** Each host's status at the last `publishStatusChanges`, to publish only the moves. */
  readonly #lastStatus = new Map<string, HostView['status']>();
  /** The hosts and their allocations, read again only when something placement reads changed. */
  readonly #usage: HostUsage;
  /**
   * Host rows of authenticated agents, by host name, with the version the host rows were read at
   * then. Kept until that version moves (any change to a host, in this process or another, seen
   * at the next refresh: every HA round makes one, each second) or, at once, until the host joins
   * again or the HA manager fences it or lets it back (`forgetAgent`): the changes its agent's
   * requests read.
   */
  readonly #agents = new Map<string, { row: HostsTable; readAt: number }>();
  /** Parsed labels of the cached host rows. */
  readonly #labels = new WeakMap<HostsTable, Labels>();

  /** `agentFactory` makes the client of one agent: over HTTP by default, a fake in unit tests. */
  constructor(db: Db, secrets: { joinToken: string; controlKey: string }, agentFactory: AgentFactory = (options) => new HttpAgentClient(options)) {
    this.#db = db;
    this.#agentFactory = agentFactory;
    this.#joinToken = secrets.joinToken;
    this.#controlKey = secrets.controlKey;
    this.#usage = new HostUsage(db);
  }

  /** The token the control plane presents to the agent of `host`. */
  controlTokenFor(host: Pick<HostsTable, 'name'>): string {
    return `nubis_ctl_${createHmac('sha256', this.#controlKey).update(`agent:${host.name}`).digest('base64url')}`;
  }

  /** Adds a host, or updates it when an agent of that name joins again (after a restart). */
  async join(request: JoinRequest): Promise<HostsTable> {
    if (!sameSecret(request.joinToken, this.#joinToken)) {
      throw new NubisError('AUTH_INVALID_TOKEN', 'The join token is wrong; use the one in the control plane data folder (join-token)');
    }
    const now = new Date().toISOString();
    const existing = await this.#db.selectFrom('hosts').selectAll().where('name', '=', request.name).executeTakeFirst();
    const values = {
      endpoint: request.endpoint,
      agent_token_sha256: sha256(request.agentToken),
      accelerator: request.accelerator,
      accelerator_reason: request.acceleratorReason,
      cpus: request.cpus,
      memory_mb: request.memoryMb,
      underlay_ip: request.underlayIp ?? null,
      qemu_version: request.qemuVersion ?? null,
      isolation: request.isolation ? JSON.stringify(request.isolation) : null,
      last_seen_at: now,
    };
    if (existing) {
      await this.#db.updateTable('hosts').set(values).where('id', '=', existing.id).execute();
      this.forgetAgent(existing.id);
      publishChange(this.#db, 'host', 'updated', existing.id);
      this.heartbeat(existing.id);
      return { ...existing, ...values };
    }
    const row: HostsTable = {
      id: newId('host'),
      name: request.name,
      maintenance: 0,
      joined_at: now,
      fenced_at: null,
      lost_at: null,
      storage_fenced: 0,
      labels: '{}',
      cpu_overcommit: DEFAULT_CPU_OVERCOMMIT,
      memory_overcommit: DEFAULT_MEMORY_OVERCOMMIT,
      ...values,
    };
    await this.#db.insertInto('hosts').values(row).execute();
    publishChange(this.#db, 'host', 'created', row.id);
    this.heartbeat(row.id);
    return row;
  }

  /**
   * The host whose agent presents `agentToken`, checked against the host named in the path.
   * A thousand agents each heartbeat every second: their rows are kept (`#agents`) rather than
   * read for every request.
   */
  async authenticateAgent(hostName: string, agentToken: string): Promise<HostsTable> {
    const readAt = this.#usage.hostsReadAt;
    const cached = this.#agents.get(hostName);
    let host = cached && cached.readAt === readAt ? cached.row : undefined;
    if (!host) {
      host = await this.#db.selectFrom('hosts').selectAll().where('name', '=', hostName).executeTakeFirst();
      if (host && readAt !== undefined) this.#agents.set(hostName, { row: host, readAt });
    }
    // One answer for an unknown host and a wrong token, so that host names cannot be probed.
    const given = Buffer.from(sha256(agentToken), 'hex');
    const expected = Buffer.from(host?.agent_token_sha256 || sha256(`no host: ${agentToken}`), 'hex');
    if (!host || given.length !== expected.length || !timingSafeEqual(given, expected)) {
      throw new NubisError('AUTH_INVALID_TOKEN', 'Unknown host or wrong agent token; the agent joins again with the join token');
    }
    return host;
  }

  /**
   * Forgets the kept row of `hostId`'s agent: its host was changed in a way its requests see
   * (fenced, let back in). Joining again forgets it too.
   */
  forgetAgent(hostId: string): void {
    for (const [name, entry] of this.#agents) if (entry.row.id === hostId) this.#agents.delete(name);
  }

  /** A host agent is alive (a heartbeat or a report), now unless `at` says when. */
  heartbeat(hostId: string, at = Date.now()): void {
    // A host heard from again after a silence changes status (suspect or offline -> online).
    if (at - (this.#heartbeats.get(hostId) ?? 0) > SUSPECT_AFTER_MS) publishChange(this.#db, 'host', 'updated', hostId);
    this.#heartbeats.set(hostId, at);
  }

  /** When `host` was last heard from: in memory, else as stored, never before this control plane started. */
  lastHeartbeatMs(host: Pick<HostsTable, 'id' | 'last_seen_at'>): number {
    return this.#heartbeats.get(host.id) ?? Math.max(Date.parse(host.last_seen_at), this.#startedAt);
  }

  /**
   * Publishes a change for every host whose status moved since the last call. A silence has no
   * write of its own (online -> suspect -> offline is the clock passing), so the HA round, which
   * runs every second, calls this: the event stream shows a host going quiet within a second.
   */
  publishStatusChanges(hosts: readonly HostsTable[], now = Date.now()): void {
    for (const host of hosts) {
      const status = this.#status(host, now);
      const before = this.#lastStatus.get(host.id);
      this.#lastStatus.set(host.id, status);
      if (before !== undefined && before !== status) publishChange(this.#db, 'host', 'updated', host.id);
    }
  }

  /** Writes heartbeat times older than PERSIST_HEARTBEAT_EVERY_MS to the database, in one transaction. */
  async persistHeartbeats(): Promise<void> {
    const due = [...this.#heartbeats].filter(([id, at]) => at - (this.#persisted.get(id) ?? 0) >= PERSIST_HEARTBEAT_EVERY_MS);
    if (due.length === 0) return;
    await this.#db.transaction().execute(async (trx) => {
      for (const [id, at] of due)
        await trx
          .updateTable('hosts')
          .set({ last_seen_at: new Date(at).toISOString() })
          .where('id', '=', id)
          .execute();
    });
    for (const [id, at] of due) this.#persisted.set(id, at);
  }

  async row(ref: string): Promise<HostsTable> {
    const host = await this.#db
      .selectFrom('hosts')
      .selectAll()
      .where((eb) => eb.or([eb('name', '=', ref), eb('id', '=', ref)]))
      .executeTakeFirst();
    if (!host) throw new NubisError('HOST_NOT_FOUND', `No host ${ref}; see nubis host list`);
    return host;
  }

  /** Every host with what is recorded on it. */
  async list(): Promise<HostView[]> {
    await this.#usage.refresh();
    return this.#views(this.#usage.allocations(false));
  }

  /** Every host's row, as of now (read again only when a host changed). */
  async rows(): Promise<HostsTable[]> {
    return (await this.#usage.refresh()).hosts;
  }

  /** Brings placement's view of the hosts up to date (before `schedulerHosts`). */
  async refreshPlacement(): Promise<void> {
    await this.#usage.refresh();
  }

  /**
   * The hosts as the scheduler sees them at this instant, synchronously: what is recorded on each
   * and the shares of the creates placed and not yet recorded. After `refreshPlacement`. Built
   * for every create, so no more than the scheduler reads (not whole views).
   */
  schedulerHosts(): SchedulerHost[] {
    const allocationOf = this.#usage.allocations(true);
    const now = Date.now();
    return this.#usage.snapshot.hosts.map((host) => {
      const allocated = allocationOf(host.id);
      return {
        id: host.id,
        name: host.name,
        status: this.#status(host, now),
        labels: this.#labelsOf(host),
        cpus: host.cpus,
        memoryMb: host.memory_mb,
        allocatedCpus: allocated.cpus,
        allocatedMemoryMb: allocated.memoryMb,
        cpuOvercommit: host.cpu_overcommit,
        memoryOvercommit: host.memory_overcommit,
        accelerator: host.accelerator,
        ...(host.underlay_ip ? { underlayIp: host.underlay_ip } : {}),
      };
    });
  }

  /** The view of host `hostId` as of the last refresh, shares of creates on their way counted (the host placement chose). */
  placementView(hostId: string): HostView {
    return this.#views(this.#usage.allocations(true), hostId)[0];
  }

  /** Reserves `cpus` and `memoryMb` of `hostId` for a VM being created: synchronously, in the turn of its placement. */
  reserve(hostId: string, cpus: number, memoryMb: number): PlacementReservation {
    return this.#usage.reserve(hostId, cpus, memoryMb);
  }

  /** Parsed labels of a cached host row; shared by every view of it, so frozen: no caller can change the cached one. */
  #labelsOf(host: HostsTable): Labels {
    let labels = this.#labels.get(host);
    if (!labels) this.#labels.set(host, (labels = Object.freeze(parseStoredLabels(host.labels))));
    return labels;
  }

  #views(allocationOf: (hostId: string) => HostAllocation, onlyHostId?: string): HostView[] {
    const now = Date.now();
    const hosts = this.#usage.snapshot.hosts;
    return (onlyHostId ? hosts.filter((host) => host.id === onlyHostId) : hosts).map((host) => {
      const allocated = allocationOf(host.id);
      const labels = this.#labelsOf(host);
      return {
        id: host.id,
        name: host.name,
        status: this.#status(host, now),
        labels,
        cpuOvercommit: host.cpu_overcommit,
        memoryOvercommit: host.memory_overcommit,
        endpoint: host.endpoint,
        accelerator: host.accelerator,
        acceleratorReason: host.accelerator_reason,
        cpus: host.cpus,
        memoryMb: host.memory_mb,
        allocatedCpus: allocated.cpus,
        allocatedMemoryMb: allocated.memoryMb,
        vmCount: allocated.vms,
        lastSeenAt: new Date(this.#heartbeats.get(host.id) ?? Date.parse(host.last_seen_at)).toISOString(),
        joinedAt: host.joined_at,
        ...(host.underlay_ip ? { underlayIp: host.underlay_ip } : {}),
        ...(host.qemu_version ? { qemuVersion: host.qemu_version } : {}),
        ...(host.isolation ? { isolation: JSON.parse(host.isolation) as HostIsolation } : {}),
      };
    });
  }

  /** Labels and overcommit ratios (`nubis host set`); what runs there stays. */
  async update(ref: string, change: HostChange, admit?: (host: HostsTable, labels: Labels) => Promise<void>): Promise<HostView> {
    const host = await this.row(ref);
    const labels = checkLabels(mergeLabels(parseStoredLabels(host.labels), change.labels ?? {}), `host ${host.name}`);
    await admit?.(host, labels);
    for (const [name, ratio] of [
      ['CPU', change.cpuOvercommit],
      ['memory', change.memoryOvercommit],
    ] as const)
      if (ratio !== undefined && !(ratio >= 0.1 && ratio <= 64))
        throw new NubisError('VALIDATION_FAILED', `The ${name} overcommit ratio must be between 0.1 and 64, not ${ratio}`);
    await auditedTransaction(this.#db, (trx) =>
      trx
        .updateTable('hosts')
        .set({
          labels: JSON.stringify(labels),
          ...(change.cpuOvercommit !== undefined ? { cpu_overcommit: change.cpuOvercommit } : {}),
          ...(change.memoryOvercommit !== undefined ? { memory_overcommit: change.memoryOvercommit } : {}),
        })
        .where('id', '=', host.id)
        .execute(),
    );
    publishChange(this.#db, 'host', 'updated', host.id);
    return this.get(host.id);
  }

  #status(host: HostsTable, now: number): HostView['status'] {
    if (host.fenced_at) return 'fenced';
    if (host.maintenance) return 'maintenance';
    const silent = now - this.lastHeartbeatMs(host);
    return silent > HOST_OFFLINE_AFTER_MS ? 'offline' : silent > SUSPECT_AFTER_MS ? 'suspect' : 'online';
  }

  async get(ref: string): Promise<HostView> {
    // From the kept rows, and the view of that host only: every host's return after a silence
    // describes it for the event stream, and a view of all of them was ~3 ms at 1,000 hosts.
    const { hosts } = await this.#usage.refresh();
    const row = hosts.find((host) => host.name === ref || host.id === ref);
    if (!row) throw new NubisError('HOST_NOT_FOUND', `No host ${ref}; see nubis host list`);
    return this.#views(this.#usage.allocations(false), row.id)[0];
  }

  /** The agent of `host`, through the typed contract (an unreachable agent is `HOST_UNAVAILABLE`). */
  agent(host: Pick<HostsTable, 'name' | 'endpoint'>): AgentClient {
    return this.#agentFactory({ endpoint: host.endpoint, token: this.controlTokenFor(host), hostName: host.name });
  }
}
