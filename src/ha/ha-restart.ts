/**
 * Restarting the HA VMs of a fenced host on other hosts, highest priority first, each placed by
 * the scheduler under every rule (residency, groups, capacity) and recorded with its decision.
 * Each restart is an HA event with the times a user asks about: when the host was last heard,
 * when it was fenced, when the VM answered again elsewhere.
 *
 * A VM moves to its new host in the database (state `restarting`) before that host boots it, so a
 * control plane that dies in between finds it there and boots it again (a host that already has
 * it answers VM_EXISTS: then it runs). A restart that fails puts the VM back on the fenced host
 * for the next round to try another host, three times at most per fencing.
 */
import { notRestartable, type VmSpec } from '../compute/vm-spec.ts';
import { isNubisError, messageOf } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import type { HostRegistry } from '../control/hosts.ts';
import type { NetworkService } from '../control/networks.ts';
import type { PlacementService } from '../control/placement.ts';
import type { StorageCatalogue } from '../control/storage.ts';
import type { VmOwner } from '../control/vm-owner.ts';
import type { VmService } from '../control/vms.ts';
import type { Db } from '../state/database.ts';
import { clusterMetrics } from '../metrics/metrics.ts';
import type { HostsTable, VmsTable } from '../state/schema.ts';
import { publishChange } from '../events/change-feed.ts';

/** How long a restarted guest may take to print its readiness line. */
const READY_TIMEOUT_MS = 120_000;
/** HA restarts of one fenced host that run at once. */
const RESTARTS_AT_ONCE = 3;
/** Restarts tried per VM per fencing before it is left for a person. */
const MAX_ATTEMPTS = 3;

export interface HaRestartDeps {
  db: Db;
  hosts: HostRegistry;
  placement: PlacementService;
  owner: VmOwner;
  vms: Pick<VmService, 'reports'>;
  networks: NetworkService;
  storage: StorageCatalogue;
  logger?: Logger;
}

export class HaRestarts {
  readonly #deps: HaRestartDeps;
  #driving = false;

  constructor(deps: HaRestartDeps) {
    this.#deps = deps;
  }

  /** Restarts what fenced hosts hold and re-drives restarts a control-plane restart interrupted. */
  async drive(): Promise<void> {
    if (this.#driving) return;
    this.#driving = true;
    try {
      const { db } = this.#deps;
      const interrupted = await db.selectFrom('vms').selectAll().where('actual_state', '=', 'restarting').execute();
      for (const vm of interrupted) if (!this.#deps.owner.busy(vm.id)) await this.#claimAndRun(vm, (claimed) => this.#boot(claimed));
      const fenced = await db.selectFrom('hosts').selectAll().where('fenced_at', 'is not', null).execute();
      for (const host of fenced) {
        const vms = await db
          .selectFrom('vms')
          .selectAll()
          .where('host_id', '=', host.id)
          .where('ha', '=', 1)
          .where('desired_state', '=', 'running')
          .orderBy('ha_priority', 'desc')
          .orderBy('name')
          .execute();
        // Started in priority order, three at a time: a guest's boot need not hold up the next.
        const queue = [...vms];
        const worker = async (): Promise<void> => {
          for (let vm = queue.shift(); vm; vm = queue.shift()) await this.#restartFrom(vm, host);
        };
        await Promise.all(Array.from({ length: Math.min(RESTARTS_AT_ONCE, queue.length) }, worker));
      }
    } finally {
      this.#driving = false;
    }
  }

  async #claimAndRun(vm: VmsTable, work: (vm: VmsTable) => Promise<void>): Promise<void> {
    let claim: ReturnType<VmOwner['claim']>;
    try {
      claim = this.#deps.owner.claim(vm.id, 'restart', vm.name);
    } catch {
      return; // Something else holds the VM; the next round looks again.
    }
    await claim.run(async () => {
      // Read again under the claim.
      const current = await this.#deps.db.selectFrom('vms').selectAll().where('id', '=', vm.id).executeTakeFirst();
      if (current) await work(current);
    });
  }

  async #restartFrom(vm: VmsTable, host: HostsTable): Promise<void> {
    const { db } = this.#deps;
    const events = await db.selectFrom('ha_events').selectAll().where('vm_id', '=', vm.id).where('fenced_at', '=', host.fenced_at!).execute();
    if (events.some((event) => event.status === 'not-restartable')) return;
    if (events.filter((event) => event.status === 'failed').length >= MAX_ATTEMPTS) return;
    const why = notRestartable(JSON.parse(vm.spec) as VmSpec);
    if (why) {
      await this.#event(vm, host, { status: 'not-restartable', message: `VM ${vm.name} cannot restart elsewhere: ${why}`, ended: true });
      clusterMetrics.haRestarts.inc({ outcome: 'skipped' });
      return;
    }
    await this.#claimAndRun(vm, async (claimed) => {
      if (claimed.host_id !== host.id) return;
      const event = await this.#event(claimed, host, { status: 'restarting', message: `Restarting ${claimed.name} (its host ${host.name} was fenced)` });
      let target: HostsTable | undefined;
      try {
        target = await this.#place(claimed, host);
        const moved = await db.selectFrom('vms').selectAll().where('id', '=', claimed.id).executeTakeFirstOrThrow();
        await this.#boot(moved, event);
        // The fenced host's socket for this VM closes: if that host comes back, nothing of it may
        // reach the VM's volumes again.
        await this.#deps.storage
          .releaseVmSocket(JSON.parse(claimed.spec) as VmSpec, host.name)
          .catch((error: unknown) => this.#deps.logger?.warn({ vm: claimed.name, host: host.name }, `releasing the VM's storage socket: ${messageOf(error)}`));
      } catch (error) {
        this.#deps.logger?.warn({ vm: claimed.name }, `HA restart failed: ${messageOf(error)}`);
        clusterMetrics.haRestarts.inc({ outcome: 'failed' });
        await this.#undo(claimed, host, target);
        await db
          .updateTable('ha_events')
          .set({ status: 'failed', message: messageOf(error).slice(0, 2000), ended_at: new Date().toISOString() })
          .where('seq', '=', event)
          .execute();
      }
    });
  }

  /**
   * After a failed restart on `target`: the VM must not run there (a QEMU that started but whose
   * guest never got ready is removed) before its record goes back to the fenced host for the next
   * round to try another host. If the target cannot confirm it, the record stays on the target:
   * trying elsewhere could start a second copy.
   */
  async #undo(vm: VmsTable, fenced: HostsTable, target: HostsTable | undefined): Promise<void> {
    if (target) {
      try {
        await this.#deps.hosts.agent(target).deleteVm(vm.id, { timeoutMs: 30_000 });
      } catch (error) {
        if (!isNubisError(error, 'VM_NOT_FOUND')) {
          await this.#deps.db.updateTable('vms').set({ actual_state: 'unknown' }).where('id', '=', vm.id).execute();
          publishChange(this.#deps.db, 'vm', 'updated', vm.id);
          return;
        }
      }
      await this.#deps.storage
        .releaseVmSocket(JSON.parse(vm.spec) as VmSpec, target.name)
        .catch((error: unknown) => this.#deps.logger?.warn({ vm: vm.name, host: target.name }, `releasing the VM's storage socket: ${messageOf(error)}`));
    }
    await this.#deps.db.updateTable('vms').set({ host_id: fenced.id, actual_state: 'unknown' }).where('id', '=', vm.id).execute();
    publishChange(this.#deps.db, 'vm', 'updated', vm.id);
  }

  /** Chooses the VM's new host and moves its record there (state `restarting`), with the placement recorded. */
  async #place(vm: VmsTable, from: HostsTable): Promise<HostsTable> {
    const { placement, db } = this.#deps;
    // A cold boot elsewhere: unlike a live migration it needs no host of the same accelerator.
    const { accelerator: _, ...needs } = placement.movingNeeds(vm, from);
    const { host, decision } = await placement.place(needs, `VM ${vm.name}`);
    const spec = await this.#deps.storage.bindDisksToHost(JSON.parse(vm.spec) as VmSpec, host.name);
    await db.transaction().execute(async (trx) => {
      await trx
        .updateTable('vms')
        .set({ host_id: host.id, actual_state: 'restarting', status: '{}', spec: JSON.stringify(spec), updated_at: new Date().toISOString() })
        .where('id', '=', vm.id)
        .execute();
      await placement.record(trx, { vm: { id: vm.id, name: vm.name, projectId: vm.project_id }, host, action: 'ha-restart', decision });
    });
    publishChange(db, 'vm', 'updated', vm.id);
    return this.#deps.hosts.row(host.id);
  }

  /** Boots a VM recorded as `restarting` on its host, waits for its guest, and closes its event. */
  async #boot(vm: VmsTable, eventSeq?: number): Promise<void> {
    const { db, hosts, networks } = this.#deps;
    const host = await hosts.row(vm.host_id);
    const spec = JSON.parse(vm.spec) as VmSpec;
    for (const networkId of new Set(spec.nics.flatMap((nic) => (nic.network ? [nic.network.id] : []))))
      await networks.sync(networkId).catch((error: unknown) => this.#deps.logger?.warn(`network sync for ${vm.name}: ${messageOf(error)}`));
    const agent = hosts.agent(host);
    let status = await agent.createVm(spec).catch(async (error: unknown) => {
      if (isNubisError(error, 'VM_EXISTS')) return agent.vmStatus(vm.id);
      throw error;
    });
    await this.#deps.vms.reports.applyStatus(host.id, status);
    const image = await db.selectFrom('images').select('builtin').where('id', '=', vm.image_id).executeTakeFirst();
    if (image?.builtin === 1) {
      status = await agent.waitReady(vm.id, READY_TIMEOUT_MS);
      await this.#deps.vms.reports.applyStatus(host.id, status);
    }
    const now = new Date().toISOString();
    const seq =
      eventSeq ?? (await db.selectFrom('ha_events').select('seq').where('vm_id', '=', vm.id).where('status', '=', 'restarting').executeTakeFirst())?.seq;
    if (seq !== undefined)
      await db
        .updateTable('ha_events')
        .set({ status: 'restarted', to_host: host.name, message: `Running on ${host.name}`, ended_at: now })
        .where('seq', '=', seq)
        .execute();
    this.#deps.logger?.info({ vm: vm.name, host: host.name }, 'HA VM restarted');
  }

  /** Opens an HA event for `vm` leaving the fenced `host`; returns its sequence number. */
  async #event(vm: VmsTable, host: HostsTable, what: { status: string; message: string; ended?: boolean }): Promise<number> {
    const now = new Date().toISOString();
    const row = await this.#deps.db
      .insertInto('ha_events')
      .values({
        vm_id: vm.id,
        vm_name: vm.name,
        from_host: host.name,
        to_host: null,
        status: what.status,
        message: what.message,
        host_lost_at: host.lost_at ?? host.fenced_at!,
        fenced_at: host.fenced_at!,
        ended_at: what.ended ? now : null,
      })
      .returning('seq')
      .executeTakeFirstOrThrow();
    return row.seq;
  }
}

/** One HA restart as `nubis ha status` shows it. */
export interface HaEventView {
  vm: string;
  from: string;
  to?: string;
  status: string;
  message: string;
  hostLostAt: string;
  fencedAt: string;
  endedAt?: string;
  /** From the host's last heartbeat to the VM running (its guest ready) on the new host. */
  failoverSeconds?: number;
}

/** The last `limit` HA events, newest first. */
export async function haEvents(db: Db, limit = 100): Promise<HaEventView[]> {
  const rows = await db.selectFrom('ha_events').selectAll().orderBy('seq', 'desc').limit(limit).execute();
  return rows.map((row) => ({
    vm: row.vm_name,
    from: row.from_host,
    ...(row.to_host ? { to: row.to_host } : {}),
    status: row.status,
    message: row.message,
    hostLostAt: row.host_lost_at,
    fencedAt: row.fenced_at,
    ...(row.ended_at ? { endedAt: row.ended_at } : {}),
    ...(row.status === 'restarted' && row.ended_at
      ? { failoverSeconds: Math.round((Date.parse(row.ended_at) - Date.parse(row.host_lost_at)) / 100) / 10 }
      : {}),
  }));
}
