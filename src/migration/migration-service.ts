/**
 * Live migration, driven by the control plane through both host agents, in the stages of
 * Clark et al. (NSDI 2005): checks, reservation, iterative pre-copy, stop-and-copy (or post-copy),
 * commitment and activation. Anything failing before the switch-over leaves the VM running on the
 * source, untouched, and the destination cleaned up. Every migration is recorded with its figures.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { NubisError, messageOf } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import type { VmStatus } from '../host/vm-status.ts';
import type { Db } from '../state/database.ts';
import type { HostsTable } from '../state/schema.ts';
import type { HostRegistry } from '../control/hosts.ts';
import type { NetworkService } from '../control/networks.ts';
import type { OperationContext, OperationManager } from '../control/operations.ts';
import { placeVm } from '../control/placement.ts';
import type { SecurityGroupService } from '../control/security-groups.ts';
import type { Operation } from '../api/schemas.ts';

export type MigrationStrategy = 'precopy' | 'postcopy' | 'auto';

export interface MigrationRequest {
  to?: string;
  strategy: MigrationStrategy;
  /** QEMU's downtime limit for the stop-and-copy phase. Default 300 ms (QEMU's own). */
  maxDowntimeMs?: number;
  /** Cap on the migration stream; default unlimited. */
  bandwidthMbps?: number;
  /** Deadline after which a pre-copy that has not converged switches to post-copy (or is cancelled). */
  completionTimeoutSeconds?: number;
}

/** What `query-migrate` tells about RAM, the fields Nubis reads. */
interface QemuRamStats {
  transferred?: number;
  remaining?: number;
  total?: number;
  'dirty-pages-rate'?: number;
  'dirty-sync-count'?: number;
  'page-size'?: number;
  mbps?: number;
  'postcopy-requests'?: number;
}

interface QemuMigrationStatus {
  status?: string;
  ram?: QemuRamStats;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  'error-desc'?: string;
}

/** The figures of a migration, as recorded and shown by `nubis vm migrations`. */
export interface MigrationFigures {
  memoryMb: number;
  totalTimeMs?: number;
  downtimeMs?: number;
  transferredBytes?: number;
  passes?: number;
  postcopyRequests?: number;
  switchedToPostcopy: boolean;
  /** At the decision point: dirty rate, bandwidth and the predicted outcome of plain pre-copy. */
  prediction?: { dirtyRateBytesPerSec: number; bandwidthBytesPerSec: number; lambda: number; converges: boolean; predictedTotalMs?: number };
  error?: string;
}

/** The first migration port tried on the destination; each migration takes the next free one. */
const MIGRATION_PORT_BASE = 49152;
let nextPort = MIGRATION_PORT_BASE + Math.floor(Math.random() * 1000);

export class MigrationService {
  readonly #db: Db;
  readonly #hosts: HostRegistry;
  readonly #networks: NetworkService;
  readonly #secgroups: SecurityGroupService;
  readonly #operations: OperationManager;
  readonly #running = new Set<string>();

  constructor(deps: { db: Db; hosts: HostRegistry; networks: NetworkService; secgroups: SecurityGroupService; operations: OperationManager }) {
    this.#db = deps.db;
    this.#hosts = deps.hosts;
    this.#networks = deps.networks;
    this.#secgroups = deps.secgroups;
    this.#operations = deps.operations;
  }

  /** Past migrations of a VM, newest first. */
  async history(vmId: string): Promise<Array<{ id: string; from: string; to: string; strategy: string; status: string; startedAt: string; endedAt?: string; figures: MigrationFigures }>> {
    const rows = await this.#db.selectFrom('vm_migrations').selectAll().where('vm_id', '=', vmId).orderBy('started_at', 'desc').execute();
    return rows.map((row) => ({ id: row.id, from: row.from_host, to: row.to_host, strategy: row.strategy, status: row.status, startedAt: row.started_at, ...(row.ended_at ? { endedAt: row.ended_at } : {}), figures: JSON.parse(row.figures) as MigrationFigures }));
  }

  /**
   * Checks everything that can be checked before anything moves (stage 1), then runs the
   * migration as an operation. A failing check refuses the request and changes nothing.
   */
  async migrate(vmId: string, request: MigrationRequest): Promise<Operation> {
    const vm = await this.#db.selectFrom('vms').selectAll().where('id', '=', vmId).executeTakeFirstOrThrow();
    if (this.#running.has(vmId)) throw new NubisError('VM_BUSY', `VM ${vm.name} is already migrating; wait for it or cancel that operation`);
    if (vm.actual_state !== 'running') throw new NubisError('VM_INVALID_STATE', `VM ${vm.name} is ${vm.actual_state}; only a running VM migrates live (a stopped one can simply start elsewhere)`);
    const spec = JSON.parse(vm.spec) as VmSpec;
    const source = await this.#hosts.row(vm.host_id);
    const candidates = (await this.#hosts.list()).filter((host) => host.id !== source.id);
    if (request.to === source.name) throw new NubisError('MIGRATION_SAME_HOST', `VM ${vm.name} already runs on ${source.name}; choose another host`);
    const target = placeVm(candidates, { cpus: vm.cpus, memoryMb: vm.memory_mb, host: request.to });
    const destination = await this.#hosts.row(target.id);
    if (destination.accelerator !== source.accelerator) {
      throw new NubisError('MIGRATION_INCOMPATIBLE', `${source.name} runs ${source.accelerator} and ${destination.name} ${destination.accelerator}; a VM migrates only between hosts of the same accelerator class`);
    }
    if (spec.boot.kind === 'disk' || spec.disks.some((disk) => disk.kind === 'file')) {
      throw new NubisError('MIGRATION_LOCAL_DISK', `VM ${vm.name} has a disk local to ${source.name}; mirroring local disks is not available yet: use volumes of the storage node (shared by every host)`);
    }
    if (spec.nics.some((nic) => nic.mode === 'user')) {
      throw new NubisError('MIGRATION_USER_NETWORK', `VM ${vm.name} uses user-mode networking, which cannot keep its address on another host; give it a --network`);
    }
    if (spec.nics.some((nic) => nic.network) && !destination.underlay_ip) {
      throw new NubisError('MIGRATION_INCOMPATIBLE', `${destination.name} has no underlay, so it cannot carry the VM's networks`);
    }
    this.#running.add(vmId);
    const migrationId = newId('mig');
    const figures: MigrationFigures = { memoryMb: vm.memory_mb, switchedToPostcopy: false };
    await this.#db
      .insertInto('vm_migrations')
      .values({ id: migrationId, vm_id: vmId, from_host: source.name, to_host: destination.name, strategy: request.strategy, status: 'running', figures: JSON.stringify(figures), started_at: new Date().toISOString(), ended_at: null })
      .execute();
    const finish = async (status: 'completed' | 'failed' | 'cancelled'): Promise<void> => {
      this.#running.delete(vmId);
      await this.#db.updateTable('vm_migrations').set({ status, figures: JSON.stringify(figures), ended_at: new Date().toISOString() }).where('id', '=', migrationId).execute();
    };
    return this.#operations.start('vm.migrate', { type: 'vm', id: vmId, name: vm.name, projectId: vm.project_id }, async (op) => {
      await op.report('checks', `Checks passed: ${source.name} -> ${destination.name} (${destination.accelerator}), strategy ${request.strategy}`, 0.02);
      try {
        const result = await this.#run(op, { vmId, vmName: vm.name, spec, source, destination, request, figures });
        await finish('completed');
        return result;
      } catch (error) {
        figures.error = messageOf(error);
        await finish(op.signal.aborted ? 'cancelled' : 'failed');
        throw error;
      }
    });
  }

  /**
   * Host maintenance: marks the host so nothing is placed there, then live-migrates every running
   * VM off it (destinations from the scheduler, `parallel` at a time) and reports each result.
   * VMs that are not running are left where they are (they hold no resources there while stopped).
   */
  async evacuate(hostRef: string, options: { parallel?: number } = {}): Promise<Operation> {
    const host = await this.#hosts.row(hostRef);
    await this.#db.updateTable('hosts').set({ maintenance: 1 }).where('id', '=', host.id).execute();
    const vms = await this.#db.selectFrom('vms').select(['id', 'name', 'actual_state']).where('host_id', '=', host.id).orderBy('name').execute();
    return this.#operations.start('host.evacuate', { type: 'host', id: host.id, name: host.name }, async (op) => {
      const running = vms.filter((vm) => vm.actual_state === 'running');
      const results: Array<{ vm: string; status: string; to?: string; error?: string }> = vms.filter((vm) => vm.actual_state !== 'running').map((vm) => ({ vm: vm.name, status: `left ${vm.actual_state}` }));
      await op.report('evacuating', `Host ${host.name} is in maintenance; moving ${running.length} running VM(s)`, 0.05);
      const queue = [...running];
      const worker = async (): Promise<void> => {
        for (let vm = queue.shift(); vm; vm = queue.shift()) {
          try {
            const child = await this.migrate(vm.id, { strategy: 'auto' });
            const final = await this.#operations.wait(child.id);
            const moved = final.result as { to?: string } | undefined;
            results.push({ vm: vm.name, status: final.status, ...(moved?.to ? { to: moved.to } : {}), ...(final.error ? { error: final.error.message } : {}) });
          } catch (error) {
            results.push({ vm: vm.name, status: 'failed', error: messageOf(error) });
          }
          await op.report('evacuating', `${vm.name}: ${results.at(-1)!.status}${results.at(-1)!.to ? ` to ${results.at(-1)!.to}` : ''}`, 0.05 + (0.9 * results.length) / Math.max(1, vms.length));
        }
      };
      await Promise.all(Array.from({ length: Math.max(1, options.parallel ?? 2) }, worker));
      const failed = results.filter((r) => r.status === 'failed');
      if (failed.length > 0) throw new NubisError('EVACUATION_INCOMPLETE', `${failed.length} VM(s) could not leave ${host.name}: ${failed.map((f) => `${f.vm} (${f.error})`).join('; ')}`, { details: { results } });
      return { host: host.name, results };
    });
  }

  /** Ends maintenance: the host takes new VMs again. */
  async restore(hostRef: string): Promise<void> {
    const host = await this.#hosts.row(hostRef);
    await this.#db.updateTable('hosts').set({ maintenance: 0 }).where('id', '=', host.id).execute();
  }

  async #run(
    op: OperationContext,
    m: { vmId: string; vmName: string; spec: VmSpec; source: HostsTable; destination: HostsTable; request: MigrationRequest; figures: MigrationFigures },
  ): Promise<unknown> {
    const { vmId, source, destination, request, figures } = m;
    const networkIds = [...new Set(m.spec.nics.flatMap((nic) => (nic.network ? [nic.network.id] : [])))];
    const postcopyAllowed = request.strategy !== 'precopy';
    const capabilities = { events: true, 'postcopy-ram': postcopyAllowed };
    const port = nextPort;
    nextPort = nextPort >= 60999 ? MIGRATION_PORT_BASE : nextPort + 1;
    const uri = `tcp:${destination.underlay_ip ?? '127.0.0.1'}:${port}`;
    const sourceStatus = JSON.parse((await this.#db.selectFrom('vms').select('status').where('id', '=', vmId).executeTakeFirstOrThrow()).status) as VmStatus;
    let switchedOver = false;

    // Stage 2: reservation. The destination gets the VM's networks and an incoming QEMU with the
    // identical device model, listening for the stream.
    await op.report('reservation', `Starting the incoming VM on ${destination.name}`, 0.05);
    try {
      for (const networkId of networkIds) await this.#networks.sync(networkId, op.signal, [destination.id]);
      await this.#hosts.call(destination, { method: 'PUT', path: `/agent/vms/${vmId}/incoming`, body: { spec: m.spec, listenUri: uri, capabilities, carried: { guestIps: sourceStatus.guestIps, startedAt: sourceStatus.startedAt } }, timeoutMs: 60_000, signal: op.signal });

      // Stages 3-5: pre-copy passes, then stop-and-copy, or post-copy.
      await this.#hosts.call(source, {
        method: 'POST',
        path: `/agent/vms/${vmId}/migrate`,
        body: { uri, capabilities, downtimeLimitMs: request.maxDowntimeMs ?? 300, ...(request.bandwidthMbps ? { maxBandwidthBytesPerSec: request.bandwidthMbps * 1_000_000 } : {}) },
        signal: op.signal,
      });
      const deadline = Date.now() + (request.completionTimeoutSeconds ?? 300) * 1000;
      let status: QemuMigrationStatus = {};
      for (;;) {
        status = await this.#hosts.call<QemuMigrationStatus>(source, { method: 'GET', path: `/agent/vms/${vmId}/migration`, signal: op.signal });
        const ram = status.ram ?? {};
        const passes = ram['dirty-sync-count'] ?? 0;
        const dirtyRate = (ram['dirty-pages-rate'] ?? 0) * (ram['page-size'] ?? 4096);
        const bandwidth = ((ram.mbps ?? 0) * 1_000_000) / 8;
        const progress = ram.transferred !== undefined && ram.remaining !== undefined ? ram.transferred / (ram.transferred + ram.remaining) : 0;
        if (status.status === 'completed') break;
        if (status.status === 'failed' || status.status === 'cancelled') throw new NubisError('MIGRATION_FAILED', `QEMU reports the migration ${status.status}: ${status['error-desc'] ?? 'no reason given'}`);
        if (status.status === 'postcopy-active' || status.status === 'postcopy-paused') {
          switchedOver = true;
          await op.report('postcopy', `Post-copy: the VM runs on ${destination.name} and pulls its last pages (${ram['postcopy-requests'] ?? 0} requests), ${mib(ram.remaining)} left`, 0.9, { remainingBytes: ram.remaining, postcopyRequests: ram['postcopy-requests'] });
        } else if (status.status === 'device' || status.status === 'pre-switchover') {
          await op.report('stop-and-copy', 'Stop-and-copy: the last dirty pages and the device state', 0.9);
        } else if (status.status === 'active') {
          await op.report('precopy', `Pass ${passes + 1}: ${mib(ram.transferred)} sent, ${mib(ram.remaining)} remaining, dirty rate ${mib(dirtyRate)}/s, link ${mib(bandwidth)}/s`, 0.1 + progress * 0.75, {
            pass: passes + 1, transferredBytes: ram.transferred, remainingBytes: ram.remaining, dirtyRateBytesPerSec: dirtyRate, bandwidthBytesPerSec: bandwidth,
          });
          // The decision point: once the first full pass has measured the dirty rate and the link.
          if (postcopyAllowed && !figures.switchedToPostcopy && passes >= 2) {
            const lambda = bandwidth > 0 ? dirtyRate / bandwidth : 1;
            // Liu et al. (HPDC 2011): pre-copy converges when the dirty rate stays below the link.
            const converges = lambda < 0.8;
            figures.prediction = { dirtyRateBytesPerSec: dirtyRate, bandwidthBytesPerSec: bandwidth, lambda, converges, ...(converges && bandwidth > 0 ? { predictedTotalMs: Math.round(((ram.remaining ?? 0) / (bandwidth * (1 - lambda))) * 1000) } : {}) };
            if (request.strategy === 'postcopy' || !converges || Date.now() > deadline) {
              await op.report('postcopy', `Switching to post-copy (dirty rate / link = ${lambda.toFixed(2)})`, 0.85, figures.prediction);
              await this.#hosts.call(source, { method: 'POST', path: `/agent/vms/${vmId}/migration/postcopy`, signal: op.signal });
              figures.switchedToPostcopy = true;
            }
          }
          if (Date.now() > deadline && !postcopyAllowed) {
            throw new NubisError('MIGRATION_TIMEOUT', `Pre-copy did not converge within ${request.completionTimeoutSeconds ?? 300} s; try --strategy auto or --max-downtime`);
          }
        }
        await delay(200, undefined, { signal: op.signal });
      }
      switchedOver = true;
      figures.totalTimeMs = status['total-time'];
      figures.downtimeMs = status.downtime;
      figures.transferredBytes = status.ram?.transferred;
      figures.passes = status.ram?.['dirty-sync-count'];
      figures.postcopyRequests = status.ram?.['postcopy-requests'];
    } catch (error) {
      if (switchedOver) throw error; // past the switch-over the VM lives on the destination: nothing to roll back
      // Before the switch-over: the VM never left the source. Stop the stream, drop the
      // destination, and unplug what was plumbed for it.
      await op.report('rollback', `Rolling back: ${messageOf(error)}`, 0.95);
      await this.#hosts.call(source, { method: 'POST', path: `/agent/vms/${vmId}/migration/cancel` }).catch(() => undefined);
      await this.#hosts.call(destination, { method: 'DELETE', path: `/agent/vms/${vmId}`, timeoutMs: 60_000 }).catch(() => undefined);
      for (const networkId of networkIds) {
        await this.#networks.unplugHost(networkId, destination).catch(() => undefined);
        await this.#networks.sync(networkId).catch(() => undefined);
      }
      throw error;
    }

    // Stage 6: commitment and activation. The destination owns the VM and announces it; the
    // record moves in one step; the source lets go.
    await op.report('activation', `Activating on ${destination.name} and announcing the VM to the network`, 0.96);
    const activated = await this.#hosts.call<VmStatus>(destination, { method: 'POST', path: `/agent/vms/${vmId}/incoming/activate`, timeoutMs: 90_000 });
    await this.#db.updateTable('vms').set({ host_id: destination.id, actual_state: activated.state, status: JSON.stringify(activated), updated_at: new Date().toISOString() }).where('id', '=', vmId).execute();
    await this.#hosts.call(source, { method: 'DELETE', path: `/agent/vms/${vmId}`, timeoutMs: 60_000 }).catch((error) => op.report('activation', `The source could not clean up: ${messageOf(error)}`, 0.97));
    for (const networkId of networkIds) {
      await this.#networks.unplugHost(networkId, source);
      await this.#networks.sync(networkId);
    }
    const project = (await this.#db.selectFrom('vms').select('project_id').where('id', '=', vmId).executeTakeFirstOrThrow()).project_id;
    await this.#secgroups.refreshProject(project);
    await op.report('done', `Moved to ${destination.name}: ${figures.totalTimeMs ?? '?'} ms total, ${figures.downtimeMs ?? '?'} ms downtime, ${mib(figures.transferredBytes)} sent for ${figures.memoryMb} MiB of memory`, 1, figures);
    return { vm: m.vmName, from: source.name, to: destination.name, figures };
  }
}

function mib(bytes: number | undefined): string {
  return bytes === undefined ? '?' : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
