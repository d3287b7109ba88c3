/**
 * High availability: hosts that stop answering are fenced, then their HA VMs are restarted on
 * other hosts, highest priority first. Fencing first, always: the host's watchdog has killed
 * its HA VMs by the time the control plane fences (src/agent-api/heartbeat.ts gives the times),
 * and fencing itself takes from the host what Nubis owns: the storage node refuses its I/O, the
 * other hosts' overlays stop forwarding to it. A fenced host that comes back is told which of its
 * VMs now run elsewhere and kills them before it is let back in.
 *
 * Every state that matters is in the database (a host's `fenced_at`, a VM's host and its
 * `restarting` state, the HA events), so a control plane that restarts mid-failover resumes it
 * without doubling a VM; and after a restart every host gets a full fence delay to report again,
 * so a control plane that was down stops nothing.
 */
import { FENCE_AFTER_MS, type HeartbeatAnswer } from '../agent-api/heartbeat.ts';
import { messageOf } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import type { HostRegistry } from '../control/hosts.ts';
import type { NetworkService } from '../control/networks.ts';
import type { StorageCatalogue } from '../control/storage.ts';
import type { Db } from '../state/database.ts';
import type { HostsTable } from '../state/schema.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import { HaRestarts } from './ha-restart.ts';
import { Failback, type FailbackDeps } from './failback.ts';
import type { HaRestartDeps } from './ha-restart.ts';
import { publishChange } from '../events/change-feed.ts';

type PeerRow = Pick<HostsTable, 'id' | 'name' | 'underlay_ip' | 'fenced_at'>;

/** How often the manager looks at the hosts. */
const TICK_MS = 1_000;

export class HaManager {
  readonly #db: Db;
  readonly #hosts: HostRegistry;
  readonly #storage: StorageCatalogue;
  readonly #networks: NetworkService;
  readonly #logger: Logger | undefined;
  readonly restarts: HaRestarts;
  readonly #failback: Failback;
  #timer: NodeJS.Timeout | undefined;
  #tick: Promise<void> = Promise.resolve();
  #ticking = false;
  /** When the last timed round ran, and until when no host is fenced (see `start`). */
  #lastRoundAt = Date.now();
  #graceUntil = 0;
  /**
   * The hosts as heartbeats answer them (who the watchdogs probe), read at most once a second
   * for every host's heartbeat together, and again at once after a fence or a return.
   */
  #hostsForPeers: { readAt: number; rows: PeerRow[] } | undefined;

  constructor(deps: HaRestartDeps & FailbackDeps & { logger?: Logger }) {
    this.#db = deps.db;
    this.#hosts = deps.hosts;
    this.#storage = deps.storage;
    this.#networks = deps.networks;
    this.#logger = deps.logger;
    this.restarts = new HaRestarts(deps);
    this.#failback = new Failback(deps);
  }

  start(): void {
    this.#lastRoundAt = Date.now();
    this.#timer = setInterval(() => {
      if (this.#ticking) return;
      this.#ticking = true;
      // A control plane that stood still (a stalled event loop, a suspended process) has not read
      // the heartbeats that came meanwhile: the silence is its own, so hosts get a whole fence
      // delay again rather than all being fenced at once.
      const now = Date.now();
      if (now - this.#lastRoundAt > 3 * TICK_MS) this.#graceUntil = now + FENCE_AFTER_MS;
      this.#lastRoundAt = now;
      this.#tick = this.tick(now)
        .catch((error: unknown) => this.#logger?.error(`HA round failed: ${messageOf(error)}`))
        .finally(() => {
          this.#ticking = false;
        });
    }, TICK_MS);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#tick;
  }

  /** One round: fence hosts silent too long that run HA VMs, then restart what fenced hosts held. */
  async tick(now = Date.now()): Promise<void> {
    // The registry's rows: read again only when a host changed, not every second.
    const rows = await this.#hosts.rows();
    this.#hosts.publishStatusChanges(rows, now);
    const hosts = now < this.#graceUntil ? [] : rows;
    for (const host of hosts) {
      if (host.fenced_at || now - this.#hosts.lastHeartbeatMs(host) <= FENCE_AFTER_MS) continue;
      const ha = await this.#db
        .selectFrom('vms')
        .select('spec')
        .where('host_id', '=', host.id)
        .where('ha', '=', 1)
        .where('desired_state', '=', 'running')
        .execute();
      const onStorageNode = ha.some((vm) => (JSON.parse(vm.spec) as VmSpec).disks.some((disk) => disk.kind === 'nbd'));
      if (ha.length > 0) await this.#fence(host, onStorageNode);
    }
    await this.#hosts.persistHeartbeats();
    await this.restarts.drive();
    await this.#failback.round();
  }

  /**
   * Fences `host`: its storage I/O (with `storageIo`) is refused first (a QEMU still running there can write
   * nothing more), then it is marked fenced, then the overlays of the other hosts drop it. If
   * the storage node cannot be reached nothing is marked and the next round tries again: no VM is
   * restarted on a hope.
   */
  async #fence(host: HostsTable, storageIo: boolean): Promise<void> {
    this.#logger?.warn({ host: host.name }, 'host lost: fencing it before its HA VMs restart elsewhere');
    try {
      // Always where its HA VMs have storage-node volumes; where none has, there is no shared disk to protect.
      if (storageIo) await this.#storage.fenceHost(host.name);
    } catch (error) {
      this.#logger?.error({ host: host.name }, `cannot fence the host's storage I/O (${messageOf(error)}); its HA VMs wait`);
      return;
    }
    const fencedAt = new Date().toISOString();
    const lostAt = new Date(this.#hosts.lastHeartbeatMs(host)).toISOString();
    await this.#db
      .updateTable('hosts')
      .set({ fenced_at: fencedAt, lost_at: lostAt, storage_fenced: storageIo ? 1 : 0 })
      .where('id', '=', host.id)
      .execute();
    // Its agent's next heartbeat must see the fence at once (its stale VMs are killed first).
    this.#hosts.forgetAgent(host.id);
    publishChange(this.#db, 'host', 'updated', host.id);
    this.#hostsForPeers = undefined;
    await this.#resyncNetworksOf(host, 'fence');
  }

  async #peerRows(): Promise<PeerRow[]> {
    const now = Date.now();
    if (!this.#hostsForPeers || now - this.#hostsForPeers.readAt >= 1_000) this.#hostsForPeers = { readAt: now, rows: await this.#hosts.rows() };
    return this.#hostsForPeers.rows;
  }

  /** Brings the networks of `host`'s VMs in step on every host (peers drop or take it back). */
  async #resyncNetworksOf(host: HostsTable, why: string): Promise<void> {
    const networks = await this.#db
      .selectFrom('nics')
      .innerJoin('vms', 'vms.id', 'nics.vm_id')
      .select('nics.network_id')
      .distinct()
      .where('vms.host_id', '=', host.id)
      .execute();
    for (const { network_id } of networks)
      await this.#networks.sync(network_id).catch((error: unknown) => this.#logger?.warn(`network sync after ${why} of ${host.name}: ${messageOf(error)}`));
  }

  /**
   * A host's heartbeat: what it must kill (a fenced host's VMs that now run elsewhere) and whom
   * its watchdog probes. A fenced host with nothing stale left is let back in: its storage I/O
   * and overlay return.
   */
  async onHeartbeat(host: HostsTable, vmIds: string[]): Promise<HeartbeatAnswer> {
    this.#hosts.heartbeat(host.id);
    const peers = (await this.#peerRows())
      .filter((other) => other.id !== host.id && other.underlay_ip && !other.fenced_at)
      .map((other) => ({ name: other.name, address: other.underlay_ip! }));
    // Its HA VMs only (an index read): the host's other VMs matter only when it was fenced.
    const haVms = await this.#db.selectFrom('vms').select('id').where('host_id', '=', host.id).where('ha', '=', 1).execute();
    const ha = haVms.map((vm) => vm.id);
    if (!host.fenced_at) return { fenced: false, stale: [], ha, peers };
    const mine = new Set((await this.#db.selectFrom('vms').select('id').where('host_id', '=', host.id).execute()).map((vm) => vm.id));
    const stale = vmIds.filter((id) => !mine.has(id));
    if (stale.length > 0) return { fenced: true, stale, ha, peers };
    try {
      if (host.storage_fenced) await this.#storage.unfenceHost(host.name);
    } catch (error) {
      // Not let back in until its storage is: new VMs there would find their disks refused.
      this.#logger?.warn({ host: host.name }, `cannot unfence the host's storage I/O yet: ${messageOf(error)}`);
      return { fenced: true, stale: [], ha, peers };
    }
    await this.#db.updateTable('hosts').set({ fenced_at: null, storage_fenced: 0 }).where('id', '=', host.id).execute();
    this.#hosts.forgetAgent(host.id);
    publishChange(this.#db, 'host', 'updated', host.id);
    this.#hostsForPeers = undefined;
    await this.#resyncNetworksOf(host, 'return');
    this.#logger?.info({ host: host.name }, 'fenced host is back with nothing stale: it takes VMs again');
    return { fenced: false, stale: [], ha, peers };
  }
}
