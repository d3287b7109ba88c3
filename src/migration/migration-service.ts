/**
 * Live migration, driven by the control plane through both host agents, in the stages of
 * Clark et al. (NSDI 2005): checks, reservation, iterative pre-copy, stop-and-copy (or post-copy),
 * commitment and activation. Anything failing before the switch-over leaves the VM running on the
 * source, untouched, and the destination cleaned up. Every migration is recorded with its figures.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { NubisError, isNubisError, messageOf } from '../core/errors.ts';
import { Revert } from '../core/revert.ts';
import { newId } from '../core/ids.ts';
import type { DiskSpec, VmSpec } from '../compute/vm-spec.ts';
import { BOOT_DISK_NODE } from '../compute/qemu/command-line.ts';
import { canMigrateBetween } from '../compute/qemu/qemu-version.ts';
import type { PauseTimes, QemuMigrationStatus, VmStatus } from '../agent-api/contract.ts';
import type { Db } from '../state/database.ts';
import type { HostsTable, VmsTable } from '../state/schema.ts';
import type { DirPoolCatalogue } from '../control/dir-pools.ts';
import type { HostRegistry } from '../control/hosts.ts';
import type { NetworkService } from '../control/networks.ts';
import type { OperationContext, OperationManager } from '../control/operations.ts';
import { placeVm } from '../control/placement.ts';
import { downtimeTargetForPass, predictPostcopyMs, predictPrecopy, qemuDowntimeLimitFor, RateMeter } from './precopy-model.ts';
import type { SecurityGroupService } from '../control/security-groups.ts';
import type { VmClaim, VmOwner } from '../control/vm-owner.ts';
import type { VmService } from '../control/vms.ts';
import type { Operation } from '../wire/schemas.ts';

export type MigrationStrategy = 'precopy' | 'postcopy' | 'auto';

export interface MigrationRequest {
  to?: string;
  strategy: MigrationStrategy;
  /** The longest stop-and-copy the user accepts. Default 300 ms (QEMU's own limit). `auto` aims
   * lower first ({@link AUTO_TARGET_DOWNTIME_MS}) and widens towards this only if it must. */
  maxDowntimeMs?: number;
  /** Cap on the migration stream; default unlimited. */
  bandwidthMbps?: number;
  /** Deadline for the switch-over; then `onTimeout` applies. */
  completionTimeoutSeconds?: number;
  /** At the deadline: give up (the VM stays on its source) or switch to post-copy. Default:
   * post-copy when it is prepared for this migration, else abort. */
  onTimeout?: 'abort' | 'postcopy';
}

/** One migration as it runs: the request, the hosts and what was decided before anything moved. */
interface MigrationRun {
  vmId: string;
  vmName: string;
  spec: VmSpec;
  source: HostsTable;
  destination: HostsTable;
  request: MigrationRequest;
  plan: MigrationPlan;
  figures: MigrationFigures;
  networkIds: string[];
  capabilities: Record<string, boolean>;
  /** Where the destination listens for the stream. */
  uri: string;
  sourceStatus: VmStatus;
  /** The dir-pool volumes copied to the destination, with their disk there. */
  mirrored: Array<{ diskId: string; pool: string; volume: string; target: DiskSpec; sizeBytes: number }>;
  destinationSpec: VmSpec;
  mirroredDiskIds: string[];
  mirrorTarget: { host: string; port: number };
  /** True once the VM runs on the destination (post-copy or completion): nothing is rolled back then. */
  switchedOver: boolean;
}

/** How a migration is set up before it starts, and why. */
export interface MigrationPlan {
  /** `postcopy-ram` on both ends: the switch to post-copy stays possible, at the price of a
   * return-path handshake that lengthens a plain pre-copy's final phase. */
  postcopyPrepared: boolean;
  /** QEMU throttles the guest's vCPUs when pre-copy passes stop shrinking. */
  autoConverge: boolean;
  /** The stop-and-copy QEMU is first asked to fit in, and the most it may be widened to. */
  targetDowntimeMs: number;
  maxDowntimeMs: number;
  onTimeout: 'abort' | 'postcopy';
  reason: string;
  /** `auto` only: the guest's dirty rate sampled before the stream starts. */
  sampledDirtyRateBytesPerSec?: number;
  /** The link assumed before the stream measures it (the cap, the last measured, or a gigabit). */
  expectedBandwidthBytesPerSec: number;
}

/** The figures of a migration, as recorded and shown by `nubis vm migrations`. */
export interface MigrationFigures {
  memoryMb: number;
  totalTimeMs?: number;
  /** QEMU's downtime: from stopping the VM to the last byte handed to the stream. */
  downtimeMs?: number;
  /** What the guest lost: the source's STOP to the destination's RESUME. It adds what QEMU's
   * downtime leaves out: the destination draining the stream and loading the device state. */
  pausedMs?: number;
  transferredBytes?: number;
  passes?: number;
  postcopyRequests?: number;
  switchedToPostcopy: boolean;
  /** The largest vCPU throttle auto-converge applied, in percent. */
  throttlePercent?: number;
  /** How often a broken post-copy stream was recovered. */
  recoveries?: number;
  plan?: MigrationPlan;
  /** The link as measured from bytes sent over time, beside QEMU's own estimate. */
  bandwidth?: { measuredBytesPerSec: number; qemuBytesPerSec: number; capped: boolean };
  /** Made before the stream starts from the plan's dirty rate and link (`basis: plan`), and
   * refined once early in the first pass from what the stream measures (`basis: first-pass`);
   * a migration over before the refinement keeps the first one, so every migration has one. */
  prediction?: MigrationPrediction;
  /** Actual minus predicted total time, in percent of the actual. */
  predictionErrorPercent?: number;
  error?: string;
}

/** What the model expected of a migration, and from what. */
export interface MigrationPrediction {
  basis: 'plan' | 'first-pass';
  madeAtMs: number;
  dirtyRateBytesPerSec: number;
  bandwidthBytesPerSec: number;
  lambda: number;
  converges: boolean;
  route: 'precopy' | 'postcopy';
  predictedTotalMs?: number;
  predictedDowntimeMs?: number;
}

/** `auto` first asks QEMU for a stop-and-copy this short: an idle guest then loses only a few
 * milliseconds; it is widened step by step, up to the user's maximum, when passes stop shrinking. */
export const AUTO_TARGET_DOWNTIME_MS = 20;
/** QEMU's own default downtime limit, the maximum when the user names none. */
const DEFAULT_MAX_DOWNTIME_MS = 300;
/** `auto` prepares post-copy when the guest dirties memory at least this fraction of the link. */
const POSTCOPY_PREPARE_LAMBDA = 0.5;
/** The link assumed before any migration between two hosts has measured it: one gigabit. */
const ASSUMED_LINK_BYTES_PER_SEC = 125_000_000;
/** Pre-copy passes `auto` allows before it switches to post-copy (when prepared). */
const AUTO_MAX_PASSES = 10;
/** No byte moved for this long: the link or an end is gone. */
const STALL_MS = 10_000;
/** How long a paused post-copy waits for its link to return. */
const POSTCOPY_RECOVERY_MS = 600_000;
const POLL_MS = 200;

/** The first migration port tried on the destination; each migration takes the next free one. */
const MIGRATION_PORT_BASE = 49152;
let nextPort = MIGRATION_PORT_BASE + Math.floor(Math.random() * 1000);

export class MigrationService {
  readonly #db: Db;
  readonly #hosts: HostRegistry;
  readonly #networks: NetworkService;
  readonly #secgroups: SecurityGroupService;
  readonly #operations: OperationManager;
  readonly #dirPools: DirPoolCatalogue;
  readonly #owner: VmOwner;
  /** The one writer of VM records: a migration moves a VM's record through it. */
  readonly #vms: Pick<VmService, 'recordMove'>;

  constructor(deps: {
    db: Db;
    hosts: HostRegistry;
    networks: NetworkService;
    secgroups: SecurityGroupService;
    operations: OperationManager;
    dirPools: DirPoolCatalogue;
    owner: VmOwner;
    vms: Pick<VmService, 'recordMove'>;
  }) {
    this.#db = deps.db;
    this.#owner = deps.owner;
    this.#vms = deps.vms;
    this.#dirPools = deps.dirPools;
    this.#hosts = deps.hosts;
    this.#networks = deps.networks;
    this.#secgroups = deps.secgroups;
    this.#operations = deps.operations;
  }

  /** Past migrations of a VM, newest first. */
  async history(
    vmId: string,
  ): Promise<
    Array<{ id: string; from: string; to: string; strategy: string; status: string; startedAt: string; endedAt?: string; figures: MigrationFigures }>
  > {
    const rows = await this.#db.selectFrom('vm_migrations').selectAll().where('vm_id', '=', vmId).orderBy('started_at', 'desc').execute();
    return rows.map((row) => ({
      id: row.id,
      from: row.from_host,
      to: row.to_host,
      strategy: row.strategy,
      status: row.status,
      startedAt: row.started_at,
      ...(row.ended_at ? { endedAt: row.ended_at } : {}),
      figures: JSON.parse(row.figures) as MigrationFigures,
    }));
  }

  /**
   * Checks everything that can be checked before anything moves (stage 1), then runs the
   * migration as an operation. A failing check refuses the request and changes nothing.
   */
  async migrate(vmId: string, request: MigrationRequest): Promise<Operation> {
    const vm = await this.#db.selectFrom('vms').selectAll().where('id', '=', vmId).executeTakeFirstOrThrow();
    // Claimed before any check, so that what the checks saw holds until the migration ends.
    const claim = this.#owner.claim(vmId, 'migrate', vm.name);
    try {
      return await this.#checkedMigration(claim, vm, request);
    } catch (error) {
      claim.release();
      throw error;
    }
  }

  async #checkedMigration(claim: VmClaim, claimed: VmsTable, request: MigrationRequest): Promise<Operation> {
    const vmId = claimed.id;
    // Read again under the claim: an action that ended just before may have changed it.
    const vm = await this.#db.selectFrom('vms').selectAll().where('id', '=', vmId).executeTakeFirstOrThrow();
    if (vm.actual_state !== 'running')
      throw new NubisError(
        'VM_INVALID_STATE',
        `VM ${vm.name} is ${vm.actual_state}; only a running VM migrates live (a stopped one can simply start elsewhere)`,
      );
    const spec = JSON.parse(vm.spec) as VmSpec;
    const source = await this.#hosts.row(vm.host_id);
    const candidates = (await this.#hosts.list()).filter((host) => host.id !== source.id);
    if (request.to === source.name) throw new NubisError('MIGRATION_SAME_HOST', `VM ${vm.name} already runs on ${source.name}; choose another host`);
    const target = placeVm(candidates, { cpus: vm.cpus, memoryMb: vm.memory_mb, host: request.to });
    const destination = await this.#hosts.row(target.id);
    if (destination.accelerator !== source.accelerator) {
      throw new NubisError(
        'MIGRATION_INCOMPATIBLE',
        `${source.name} runs ${source.accelerator} and ${destination.name} ${destination.accelerator}; a VM migrates only between hosts of the same accelerator class`,
      );
    }
    if (!canMigrateBetween(source.qemu_version, destination.qemu_version)) {
      throw new NubisError(
        'MIGRATION_INCOMPATIBLE',
        `${destination.name} runs an older QEMU (${destination.qemu_version}) than ${source.name} (${source.qemu_version}); QEMU cannot load a newer release's stream: upgrade QEMU on ${destination.name} first`,
      );
    }
    for (const disk of spec.disks) {
      if (disk.kind !== 'file') continue;
      const [pool, volume] = (disk.localVolume ?? '').split('/');
      if (!pool || !volume)
        throw new NubisError('MIGRATION_LOCAL_DISK', `VM ${vm.name} has a local file disk ${disk.path} that is no pool volume; it cannot be mirrored`);
      if (!(await this.#dirPools.diskOnHost(pool, volume, disk.id, destination.id))) {
        throw new NubisError(
          'MIGRATION_LOCAL_DISK',
          `Disk ${disk.localVolume} of VM ${vm.name} lives in dir pool ${pool}, which has no folder on ${destination.name}; choose a host the pool spans`,
        );
      }
    }
    if (spec.nics.some((nic) => nic.mode === 'user')) {
      throw new NubisError(
        'MIGRATION_USER_NETWORK',
        `VM ${vm.name} uses user-mode networking, which cannot keep its address on another host; give it a --network`,
      );
    }
    if (spec.nics.some((nic) => nic.network) && !destination.underlay_ip) {
      throw new NubisError('MIGRATION_INCOMPATIBLE', `${destination.name} has no underlay, so it cannot carry the VM's networks`);
    }
    const postcopyAllowed = vm.allow_postcopy === 1;
    if (!postcopyAllowed && (request.strategy === 'postcopy' || request.onTimeout === 'postcopy')) {
      throw new NubisError(
        'MIGRATION_POSTCOPY_DENIED',
        `VM ${vm.name} does not allow post-copy (a broken link during post-copy pauses it until the link returns); use --strategy auto or precopy, or allow it with: nubis vm set ${vm.name} --postcopy allow`,
      );
    }
    const migrationId = newId('mig');
    const figures: MigrationFigures = { memoryMb: vm.memory_mb, switchedToPostcopy: false };
    await this.#db
      .insertInto('vm_migrations')
      .values({
        id: migrationId,
        vm_id: vmId,
        from_host: source.name,
        to_host: destination.name,
        strategy: request.strategy,
        status: 'running',
        figures: JSON.stringify(figures),
        started_at: new Date().toISOString(),
        ended_at: null,
      })
      .execute();
    const finish = async (status: 'completed' | 'failed' | 'cancelled'): Promise<void> => {
      await this.#db
        .updateTable('vm_migrations')
        .set({ status, figures: JSON.stringify(figures), ended_at: new Date().toISOString() })
        .where('id', '=', migrationId)
        .execute();
    };
    const operation = await this.#operations.start('vm.migrate', { type: 'vm', id: vmId, name: vm.name, projectId: vm.project_id }, (op) =>
      claim.run(async () => {
        await op.report('checks', `Checks passed: ${source.name} -> ${destination.name} (${destination.accelerator}), strategy ${request.strategy}`, 0.02);
        try {
          const plan = await this.#plan(op, { vmId, source, destination, request, postcopyAllowed });
          figures.plan = plan;
          await op.report('plan', plan.reason, 0.04, plan);
          const result = await this.#run(op, { vmId, vmName: vm.name, spec, source, destination, request, plan, figures });
          await finish('completed');
          return result;
        } catch (error) {
          figures.error = messageOf(error);
          await finish(op.signal.aborted ? 'cancelled' : 'failed');
          throw error;
        }
      }),
    );
    claim.setOperation(operation.id);
    return operation;
  }

  /**
   * Decides how the migration is set up. `auto` samples the guest's dirty rate first (QEMU's
   * calc-dirty-rate, 1 s) and sets it against the link (the cap, else what the last migration
   * between these hosts measured): post-copy is prepared only when the guest may outrun the link,
   * because preparing it lengthens a plain pre-copy's final phase; auto-converge is the safety
   * net either way, and the only one for a VM that does not allow post-copy.
   */
  async #plan(
    op: OperationContext,
    m: { vmId: string; source: HostsTable; destination: HostsTable; request: MigrationRequest; postcopyAllowed: boolean },
  ): Promise<MigrationPlan> {
    const { request } = m;
    const maxDowntimeMs = request.maxDowntimeMs ?? DEFAULT_MAX_DOWNTIME_MS;
    const onTimeoutFor = (prepared: boolean): 'abort' | 'postcopy' => request.onTimeout ?? (prepared ? 'postcopy' : 'abort');
    // The link as known before the stream measures it: the cap, else what the last migration
    // between these hosts measured, else a gigabit. Every plan carries it for the prediction.
    const expected = request.bandwidthMbps
      ? request.bandwidthMbps * 1_000_000
      : ((await this.#lastMeasuredLink(m.source.name, m.destination.name)) ?? ASSUMED_LINK_BYTES_PER_SEC);
    if (request.strategy === 'precopy') {
      const prepared = request.onTimeout === 'postcopy';
      return {
        postcopyPrepared: prepared,
        autoConverge: false,
        targetDowntimeMs: maxDowntimeMs,
        maxDowntimeMs,
        onTimeout: onTimeoutFor(prepared),
        reason: `Pre-copy with a ${maxDowntimeMs} ms downtime limit${prepared ? '; post-copy prepared for the timeout' : ''}`,
        expectedBandwidthBytesPerSec: expected,
      };
    }
    if (request.strategy === 'postcopy') {
      return {
        postcopyPrepared: true,
        autoConverge: false,
        targetDowntimeMs: maxDowntimeMs,
        maxDowntimeMs,
        onTimeout: onTimeoutFor(true),
        reason: 'Post-copy from the start: the VM runs on the destination at once and pulls the rest of its memory',
        expectedBandwidthBytesPerSec: expected,
      };
    }
    await op.report('measure', 'Sampling the dirty rate of the guest (1 s)', 0.03);
    const sampled = await this.#hosts.agent(m.source).sampleDirtyRate(m.vmId, 1, { timeoutMs: 30_000, signal: op.signal });
    const lambda = sampled / expected;
    const prepared = m.postcopyAllowed && lambda >= POSTCOPY_PREPARE_LAMBDA;
    const targetDowntimeMs = Math.min(AUTO_TARGET_DOWNTIME_MS, maxDowntimeMs);
    const rates = `dirty rate ${mib(sampled)}/s over a link of about ${mib(expected)}/s (lambda ${lambda.toFixed(2)})`;
    const reason = prepared
      ? `${rates}: pre-copy may not converge, post-copy prepared`
      : `${rates}: pre-copy aiming at ${targetDowntimeMs} ms downtime${targetDowntimeMs < maxDowntimeMs ? ` (up to ${maxDowntimeMs} ms)` : ''}, auto-converge as the safety net${m.postcopyAllowed ? '' : ' (the VM does not allow post-copy)'}`;
    return {
      postcopyPrepared: prepared,
      autoConverge: true,
      targetDowntimeMs,
      maxDowntimeMs,
      onTimeout: onTimeoutFor(prepared),
      reason,
      sampledDirtyRateBytesPerSec: sampled,
      expectedBandwidthBytesPerSec: expected,
    };
  }

  /** The link rate the last completed migration between two hosts (either way) measured. */
  async #lastMeasuredLink(a: string, b: string): Promise<number | undefined> {
    const rows = await this.#db
      .selectFrom('vm_migrations')
      .select('figures')
      .where('status', '=', 'completed')
      .where((eb) => eb.or([eb.and([eb('from_host', '=', a), eb('to_host', '=', b)]), eb.and([eb('from_host', '=', b), eb('to_host', '=', a)])]))
      .orderBy('ended_at', 'desc')
      .limit(5)
      .execute();
    for (const row of rows) {
      const link = (JSON.parse(row.figures) as MigrationFigures).bandwidth;
      if (link && !link.capped && link.measuredBytesPerSec > 0) return link.measuredBytesPerSec;
    }
    return undefined;
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
      const left: Array<{ vm: string; status: string; error?: string }> = vms
        .filter((vm) => vm.actual_state !== 'running')
        .map((vm) => ({ vm: vm.name, status: `left ${vm.actual_state}` }));
      await op.report('evacuating', `Host ${host.name} is in maintenance; moving ${running.length} running VM(s)`, 0.05);
      const results = [...left, ...(await this.#migrateAll(op, 'evacuating', running, undefined, options.parallel ?? 2))];
      const failed = results.filter((r) => r.status === 'failed');
      if (failed.length > 0)
        throw new NubisError(
          'EVACUATION_INCOMPLETE',
          `${failed.length} VM(s) could not leave ${host.name}: ${failed.map((f) => `${f.vm} (${f.error})`).join('; ')}`,
          { details: { results } },
        );
      return { host: host.name, results };
    });
  }

  /**
   * Ends maintenance: the host takes new VMs again. With `moveBack`, the running VMs whose last
   * migration took them off this host come back, as an operation.
   */
  async restore(hostRef: string, options: { moveBack?: boolean; parallel?: number } = {}): Promise<Operation | undefined> {
    const host = await this.#hosts.row(hostRef);
    await this.#db.updateTable('hosts').set({ maintenance: 0 }).where('id', '=', host.id).execute();
    if (!options.moveBack) return undefined;
    const elsewhere = await this.#db
      .selectFrom('vms')
      .select(['id', 'name', 'actual_state'])
      .where('host_id', '!=', host.id)
      .where('actual_state', '=', 'running')
      .orderBy('name')
      .execute();
    const moved: typeof elsewhere = [];
    for (const vm of elsewhere) {
      const last = await this.#db
        .selectFrom('vm_migrations')
        .select('from_host')
        .where('vm_id', '=', vm.id)
        .where('status', '=', 'completed')
        .orderBy('ended_at', 'desc')
        .executeTakeFirst();
      if (last?.from_host === host.name) moved.push(vm);
    }
    return this.#operations.start('host.restore', { type: 'host', id: host.id, name: host.name }, async (op) => {
      await op.report('restoring', `Host ${host.name} takes VMs again; moving ${moved.length} VM(s) back`, 0.05);
      const results = await this.#migrateAll(op, 'restoring', moved, host.name, options.parallel ?? 2);
      const failed = results.filter((r) => r.status === 'failed');
      if (failed.length > 0)
        throw new NubisError(
          'RESTORE_INCOMPLETE',
          `${failed.length} VM(s) could not move back to ${host.name}: ${failed.map((f) => `${f.vm} (${f.error})`).join('; ')}`,
          { details: { results } },
        );
      return { host: host.name, results };
    });
  }

  /** Live-migrates `vms` (`parallel` at a time) to `to` or where the scheduler says, reporting each result. */
  async #migrateAll(
    op: OperationContext,
    stage: string,
    vms: Array<{ id: string; name: string }>,
    to: string | undefined,
    parallel: number,
  ): Promise<Array<{ vm: string; status: string; to?: string; error?: string }>> {
    const results: Array<{ vm: string; status: string; to?: string; error?: string }> = [];
    const queue = [...vms];
    const worker = async (): Promise<void> => {
      for (let vm = queue.shift(); vm; vm = queue.shift()) {
        try {
          const child = await this.migrate(vm.id, { strategy: 'auto', ...(to ? { to } : {}) });
          const final = await this.#operations.wait(child.id);
          const moved = final.result as { to?: string } | undefined;
          results.push({ vm: vm.name, status: final.status, ...(moved?.to ? { to: moved.to } : {}), ...(final.error ? { error: final.error.message } : {}) });
        } catch (error) {
          results.push({ vm: vm.name, status: 'failed', error: messageOf(error) });
        }
        const last = results.at(-1)!;
        await op.report(stage, `${vm.name}: ${last.status}${last.to ? ` to ${last.to}` : ''}`, 0.05 + (0.9 * results.length) / Math.max(1, vms.length));
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, parallel) }, worker));
    return results;
  }

  /**
   * Runs a checked migration: reservation, the stream, activation. Anything failing before the
   * switch-over undoes what was built, newest first, and reports each undo that failed; past it
   * the VM lives on the destination and its record follows it there.
   */
  async #run(
    op: OperationContext,
    m: {
      vmId: string;
      vmName: string;
      spec: VmSpec;
      source: HostsTable;
      destination: HostsTable;
      request: MigrationRequest;
      plan: MigrationPlan;
      figures: MigrationFigures;
    },
  ): Promise<unknown> {
    const run = await this.#prepareRun(m);
    const revert = new Revert();
    try {
      await this.#reserve(op, run, revert);
      await this.#stream(op, run, revert);
    } catch (error) {
      if (run.switchedOver) {
        revert.success();
        // Paused on the destination for good (its link never came back): that is where it is.
        if (isNubisError(error, 'MIGRATION_POSTCOPY_PAUSED')) {
          await this.#vms.recordMove(
            run.vmId,
            run.destination.id,
            { id: run.vmId, name: run.vmName, state: 'paused', lastError: messageOf(error) },
            run.destinationSpec,
          );
        }
        throw error;
      }
      // Before the switch-over: the VM never left the source.
      await op.report('rollback', `Rolling back: ${messageOf(error)}`, 0.95);
      for (const failure of await revert.fail()) await op.report('rollback', `Could not undo: ${failure}`, 0.96, { undoFailed: failure });
      throw error;
    }
    revert.success();
    return this.#activate(op, run);
  }

  /** What one migration works with, decided before anything moves. */
  async #prepareRun(m: {
    vmId: string;
    vmName: string;
    spec: VmSpec;
    source: HostsTable;
    destination: HostsTable;
    request: MigrationRequest;
    plan: MigrationPlan;
    figures: MigrationFigures;
  }): Promise<MigrationRun> {
    const { vmId, destination, plan } = m;
    const networkIds = [...new Set(m.spec.nics.flatMap((nic) => (nic.network ? [nic.network.id] : [])))];
    // With post-copy, `postcopy-preempt` sends the pages the guest waits for on a channel of
    // their own, so they do not queue behind the background stream (on a slow link a missing
    // page otherwise waits for everything already in the socket buffers).
    const capabilities = { events: true, 'postcopy-ram': plan.postcopyPrepared, 'postcopy-preempt': plan.postcopyPrepared, 'auto-converge': plan.autoConverge };
    const uri = this.#listenUri(destination);
    const sourceStatus = JSON.parse((await this.#db.selectFrom('vms').select('status').where('id', '=', vmId).executeTakeFirstOrThrow()).status) as VmStatus;
    // Disks in a dir pool of the source are copied to the pool's folder on the destination.
    const mirrored = await Promise.all(
      m.spec.disks
        .flatMap((disk) => (disk.kind === 'file' && disk.localVolume ? [{ disk, ref: disk.localVolume }] : []))
        .map(async ({ disk, ref }) => {
          const [pool, volume] = ref.split('/');
          const target = await this.#dirPools.diskOnHost(pool, volume, disk.id, destination.id);
          if (target?.kind !== 'file') throw new NubisError('MIGRATION_LOCAL_DISK', `Dir pool ${pool} has no folder on ${destination.name}`);
          return { diskId: disk.id, pool, volume, target, sizeBytes: (await this.#dirPools.diskOf(pool, volume, disk.id)).sizeBytes };
        }),
    );
    const destinationSpec: VmSpec = { ...m.spec, disks: m.spec.disks.map((disk) => mirrored.find((x) => x.diskId === disk.id)?.target ?? disk) };
    // A VM booting from an image has its own overlay over it on the source; the destination
    // makes an empty one over the same image and the overlay's clusters are mirrored into it.
    const mirroredDiskIds = [...(m.spec.boot.kind === 'disk' ? [BOOT_DISK_NODE] : []), ...mirrored.map((x) => x.diskId)];
    const mirrorTarget = { host: destination.underlay_ip ?? '127.0.0.1', port: Number(this.#listenUri(destination).split(':').at(-1)) };
    return { ...m, networkIds, capabilities, uri, sourceStatus, mirrored, destinationSpec, mirroredDiskIds, mirrorTarget, switchedOver: false };
  }

  /**
   * Stage 2: reservation. The destination gets the VM's networks and an incoming QEMU with the
   * identical device model, listening for the stream (and, for local disks, empty copies exported
   * over NBD, which the source mirrors into). Each step registers its undo.
   */
  async #reserve(op: OperationContext, run: MigrationRun, revert: Revert): Promise<void> {
    const { vmId, source, destination, capabilities, uri, sourceStatus, mirrored, destinationSpec, mirroredDiskIds, mirrorTarget, networkIds } = run;
    await op.report('reservation', `Starting the incoming VM on ${destination.name}`, 0.05);
    revert.add(`unplug the VM's networks on ${destination.name}`, async () => {
      for (const networkId of networkIds) {
        await this.#networks.unplugHost(networkId, destination);
        await this.#networks.sync(networkId);
      }
    });
    for (const networkId of networkIds) await this.#networks.sync(networkId, op.signal, [destination.id]);
    const mirror =
      mirroredDiskIds.length > 0
        ? {
            newFiles: mirrored.map((x) => ({ path: x.target.kind === 'file' ? x.target.path : '', sizeBytes: x.sizeBytes })),
            listen: mirrorTarget,
            diskIds: mirroredDiskIds,
          }
        : undefined;
    await this.#hosts.agent(destination).prepareIncoming(
      vmId,
      {
        spec: destinationSpec,
        listenUri: uri,
        capabilities,
        carried: { guestIps: sourceStatus.guestIps, startedAt: sourceStatus.startedAt },
        ...(mirror ? { mirror } : {}),
      },
      { timeoutMs: 60_000, signal: op.signal },
    );
    // The copies made for this migration go after the incoming VM that holds them (undos run
    // newest first); a file that was there before made the reservation fail and is not ours.
    for (const x of mirrored)
      revert.add(`delete the copy of ${x.pool}/${x.volume} on ${destination.name}`, () => this.#hosts.agent(destination).deleteDirVolume(x.pool, x.volume));
    revert.add(`remove the incoming VM on ${destination.name}`, () => this.#hosts.agent(destination).deleteVm(vmId, { timeoutMs: 60_000 }));
    if (mirroredDiskIds.length > 0) {
      revert.add(`abort the disk mirrors on ${source.name}`, () => this.#hosts.agent(source).abortMirrors(vmId));
      await this.#mirrorDisks(op, { vmId, source, destination, target: mirrorTarget, diskIds: mirroredDiskIds });
    }
  }

  /**
   * Stages 3-5: pre-copy passes, then stop-and-copy, or post-copy; resolves when QEMU reports the
   * migration complete, with the figures filled in. `run.switchedOver` turns true once the VM
   * runs on the destination: from then on nothing is rolled back.
   */
  async #stream(op: OperationContext, run: MigrationRun, revert: Revert): Promise<void> {
    const { vmId, source, destination, request, plan, figures, uri, capabilities, mirroredDiskIds } = run;
    // Stages 3-5: pre-copy passes, then stop-and-copy, or post-copy.
    let qemuLimitMs = plan.targetDowntimeMs;
    await this.#hosts.agent(source).migrate(
      vmId,
      {
        uri,
        capabilities,
        downtimeLimitMs: qemuLimitMs,
        mirroredDisks: mirroredDiskIds,
        ...(request.bandwidthMbps ? { maxBandwidthBytesPerSec: request.bandwidthMbps * 1_000_000 } : {}),
      },
      { signal: op.signal },
    );
    revert.add(`cancel the stream on ${source.name}`, () => this.#hosts.agent(source).cancelMigration(vmId));
    const startedAt = Date.now();
    // A first prediction before any byte moves, from the plan's figures, so that a migration
    // over before the first-pass samples settle (an idle guest can finish in 300 ms) has one.
    const memoryBytes = figures.memoryMb * 2 ** 20;
    figures.prediction = this.#predict({
      basis: 'plan',
      elapsedMs: 0,
      pass: 1,
      remaining: memoryBytes,
      scanRate: 0,
      dirtyRate: plan.sampledDirtyRateBytesPerSec ?? 0,
      bandwidth: plan.expectedBandwidthBytesPerSec,
      memoryBytes,
      plan,
      strategy: request.strategy,
      inPostcopy: request.strategy === 'postcopy',
    });
    const deadline = startedAt + (request.completionTimeoutSeconds ?? 300) * 1000;
    const link = new RateMeter();
    const scan = new RateMeter();
    let lastBytes = -1;
    let lastProgressAt = startedAt;
    let status: QemuMigrationStatus = {};
    for (;;) {
      status = await this.#hosts.agent(source).migrationStatus(vmId, { signal: op.signal });
      const now = Date.now();
      const ram = status.ram ?? {};
      const pageSize = ram['page-size'] ?? 4096;
      const passes = ram['dirty-sync-count'] ?? 0;
      const dirtyRate = (ram['dirty-pages-rate'] ?? 0) * pageSize;
      if (ram.transferred !== undefined) {
        link.add(now, ram.transferred);
        if (ram.transferred !== lastBytes) [lastBytes, lastProgressAt] = [ram.transferred, now];
      }
      scan.add(now, ((ram.normal ?? 0) + (ram.duplicate ?? 0)) * pageSize);
      const bandwidth = link.rate();
      const qemuBandwidth = ((ram.mbps ?? 0) * 1_000_000) / 8;
      if (bandwidth > 0)
        figures.bandwidth = {
          measuredBytesPerSec: Math.round(bandwidth),
          qemuBytesPerSec: Math.round(qemuBandwidth),
          capped: request.bandwidthMbps !== undefined,
        };
      figures.throttlePercent = Math.max(figures.throttlePercent ?? 0, status['cpu-throttle-percentage'] ?? 0) || undefined;
      const progress = ram.transferred !== undefined && ram.remaining !== undefined ? ram.transferred / (ram.transferred + ram.remaining) : 0;
      // A pre-copy prediction waits for 300 ms of samples, so that the first pass's pace has
      // settled; a post-copy one needs only the link rate.
      if (
        figures.prediction?.basis !== 'first-pass' &&
        bandwidth > 0 &&
        link.spanMs() >= (status.status === 'active' ? 300 : 0) &&
        ram.remaining !== undefined &&
        status.status !== 'completed'
      ) {
        const dirty = dirtyRate || plan.sampledDirtyRateBytesPerSec || 0;
        figures.prediction = this.#predict({
          basis: 'first-pass',
          elapsedMs: now - startedAt,
          pass: Math.max(1, passes),
          remaining: ram.remaining,
          scanRate: scan.rate(),
          dirtyRate: dirty,
          bandwidth,
          memoryBytes: figures.memoryMb * 2 ** 20,
          plan,
          strategy: request.strategy,
          inPostcopy: status.status !== 'active',
        });
      }
      if (status.status === 'completed') break;
      if (status.status === 'failed' || status.status === 'cancelled')
        throw new NubisError('MIGRATION_FAILED', `QEMU reports the migration ${status.status}: ${status['error-desc'] ?? 'no reason given'}`);
      if (status.status === 'postcopy-paused' || (status.status === 'postcopy-active' && now - lastProgressAt > STALL_MS)) {
        run.switchedOver = true;
        await this.#recoverPostcopy(op, { vmId, source, destination, figures });
        lastProgressAt = Date.now();
      } else if (status.status === 'postcopy-active' || status.status === 'postcopy-recover') {
        run.switchedOver = true;
        // Until the destination has resumed the VM it is still loading the device state: a
        // link lost in that window ends the destination QEMU (QEMU recovers only a running
        // post-copy), which is why post-copy is reported only from the RESUME on.
        // Read from the agent, not QEMU: in-band QMP on a post-copy destination may hang.
        const resumed = (
          await this.#hosts
            .agent(destination)
            .pauseTimes(vmId, { timeoutMs: 5_000 })
            .catch((): PauseTimes => ({}))
        ).resumedAtMs;
        if (resumed)
          await op.report(
            'postcopy',
            `Post-copy: the VM runs on ${destination.name} and pulls its last pages (${ram['postcopy-requests'] ?? 0} requests), ${mib(ram.remaining)} left`,
            0.9,
            { remainingBytes: ram.remaining, postcopyRequests: ram['postcopy-requests'] },
          );
        else await op.report('switching', `Handing the device state over to ${destination.name}`, 0.88);
      } else if (status.status === 'device' || status.status === 'pre-switchover') {
        await op.report('stop-and-copy', 'Stop-and-copy: the last dirty pages and the device state', 0.9);
      } else if (status.status === 'active') {
        // The destination must still be there: a lost destination agent fails the migration
        // now, while the VM can still stay where it is.
        await this.#hosts
          .agent(destination)
          .pauseTimes(vmId, { timeoutMs: 5_000, signal: op.signal })
          .catch((error) => {
            throw new NubisError('MIGRATION_DESTINATION_LOST', `The destination ${destination.name} stopped answering: ${messageOf(error)}`);
          });
        if (now - lastProgressAt > STALL_MS) {
          throw new NubisError('MIGRATION_STALLED', `No byte reached ${destination.name} for ${STALL_MS / 1000} s (is the link between the hosts down?)`);
        }
        const dirty = dirtyRate || plan.sampledDirtyRateBytesPerSec || 0;
        await op.report(
          'precopy',
          `Pass ${Math.max(1, passes)}: ${mib(ram.transferred)} sent, ${mib(ram.remaining)} remaining, dirty rate ${mib(dirty)}/s, link ${mib(bandwidth)}/s`,
          0.1 + progress * 0.75,
          {
            pass: Math.max(1, passes),
            transferredBytes: ram.transferred,
            remainingBytes: ram.remaining,
            dirtyRateBytesPerSec: dirty,
            bandwidthBytesPerSec: bandwidth,
            ...(figures.throttlePercent ? { throttlePercent: figures.throttlePercent } : {}),
          },
        );
        // Widen the downtime target, step by step, while passes go on without converging; and
        // tell QEMU the limit that, with its under-estimate of the link, means that target.
        const targetMs = downtimeTargetForPass(plan.targetDowntimeMs, plan.maxDowntimeMs, passes);
        // (`precopy` keeps QEMU's own semantics: the user's limit goes to QEMU as it is.)
        const limit = request.strategy === 'auto' ? qemuDowntimeLimitFor(targetMs, bandwidth, qemuBandwidth) : targetMs;
        if (Math.abs(limit - qemuLimitMs) > qemuLimitMs * 0.1) {
          await this.#hosts
            .agent(source)
            .setMigrationParameters(vmId, { downtimeLimitMs: limit }, { signal: op.signal })
            .catch(() => undefined);
          qemuLimitMs = limit;
        }
        // The post-copy decision: for `auto` once the first full pass has measured the dirty
        // rate; at the completion timeout when that is its action.
        if (plan.postcopyPrepared && !figures.switchedToPostcopy) {
          const outlook = predictPrecopy({
            remainingBytes: ram.remaining ?? 0,
            scanRateBytesPerSec: bandwidth,
            dirtyRateBytesPerSec: dirtyRate,
            bandwidthBytesPerSec: bandwidth,
            memoryBytes: figures.memoryMb * 2 ** 20,
            downtimeLimitMs: plan.maxDowntimeMs,
          });
          const afterFirstPass = passes >= 2;
          const why =
            now > deadline && plan.onTimeout === 'postcopy'
              ? `the ${request.completionTimeoutSeconds ?? 300} s completion timeout passed`
              : request.strategy === 'postcopy'
                ? 'as asked'
                : request.strategy === 'auto' && afterFirstPass && !outlook.converges
                  ? `pre-copy does not converge (dirty rate / link = ${outlook.lambda.toFixed(2)})`
                  : request.strategy === 'auto' && passes > AUTO_MAX_PASSES
                    ? `still not done after ${AUTO_MAX_PASSES} passes`
                    : undefined;
          if (why) {
            await op.report('switching', `Switching to post-copy: ${why}`, 0.85, { lambda: outlook.lambda });
            await this.#hosts.agent(source).startPostcopy(vmId, { signal: op.signal });
            figures.switchedToPostcopy = true;
          }
        }
        if (now > deadline && !figures.switchedToPostcopy) {
          throw new NubisError(
            'MIGRATION_TIMEOUT',
            `The migration did not reach its switch-over within ${request.completionTimeoutSeconds ?? 300} s; try --strategy auto, a larger --max-downtime, or --on-timeout postcopy`,
          );
        }
      }
      // Closer looks in the first second, so that even a short migration gets its first-pass refinement.
      await delay(now - startedAt < 1000 ? POLL_MS / 2 : POLL_MS, undefined, { signal: op.signal });
    }
    run.switchedOver = true;
    // QEMU marks the migration completed a moment before it fills in the times: ask again.
    for (let i = 0; i < 20 && !status['total-time']; i++) {
      await delay(50);
      status = await this.#hosts.agent(source).migrationStatus(vmId);
    }
    figures.totalTimeMs = status['total-time'];
    figures.downtimeMs = status.downtime;
    figures.transferredBytes = status.ram?.transferred;
    figures.passes = status.ram?.['dirty-sync-count'];
    figures.postcopyRequests = status.ram?.['postcopy-requests'];
    if (figures.prediction?.predictedTotalMs && figures.totalTimeMs) {
      figures.predictionErrorPercent = Math.round(((figures.totalTimeMs - figures.prediction.predictedTotalMs) / figures.totalTimeMs) * 100);
    }
  }

  /**
   * Stage 6: commitment and activation. The destination owns the VM and announces it; the
   * record moves in one step; the source lets go.
   */
  async #activate(op: OperationContext, run: MigrationRun): Promise<unknown> {
    const { vmId, source, destination, figures, destinationSpec, mirrored, networkIds } = run;
    await op.report('activation', `Activating on ${destination.name} and announcing the VM to the network`, 0.96);
    const stoppedAtMs = (
      await this.#hosts
        .agent(source)
        .pauseTimes(vmId)
        .catch((): PauseTimes => ({}))
    ).stoppedAtMs;
    const activated = await this.#hosts.agent(destination).activateIncoming(vmId, { timeoutMs: 90_000 });
    const resumedAtMs = (
      await this.#hosts
        .agent(destination)
        .pauseTimes(vmId)
        .catch((): PauseTimes => ({}))
    ).resumedAtMs;
    if (stoppedAtMs && resumedAtMs && resumedAtMs >= stoppedAtMs) figures.pausedMs = resumedAtMs - stoppedAtMs;
    await this.#vms.recordMove(vmId, destination.id, activated, destinationSpec);
    for (const x of mirrored) await this.#dirPools.moveVolume(x.pool, x.volume, destination.id);
    await this.#hosts
      .agent(source)
      .deleteVm(vmId, { timeoutMs: 60_000 })
      .catch((error: unknown) => op.report('activation', `The source could not clean up: ${messageOf(error)}`, 0.97));
    for (const x of mirrored) {
      await this.#hosts
        .agent(source)
        .deleteDirVolume(x.pool, x.volume)
        .catch((error: unknown) =>
          op.report('activation', `The old copy of ${x.pool}/${x.volume} on ${source.name} could not be removed: ${messageOf(error)}`, 0.97),
        );
    }
    for (const networkId of networkIds) {
      await this.#networks.unplugHost(networkId, source);
      await this.#networks.sync(networkId);
    }
    const project = (await this.#db.selectFrom('vms').select('project_id').where('id', '=', vmId).executeTakeFirstOrThrow()).project_id;
    await this.#secgroups.refreshProject(project);
    await op.report(
      'done',
      `Moved to ${destination.name}: ${figures.totalTimeMs ?? '?'} ms total, ${figures.downtimeMs ?? '?'} ms QEMU downtime, ${figures.pausedMs ?? '?'} ms paused, ${mib(figures.transferredBytes)} sent for ${figures.memoryMb} MiB of memory`,
      1,
      figures,
    );
    return { vm: run.vmName, from: source.name, to: destination.name, figures };
  }

  /**
   * Storage during migration: the source mirrors each local disk into the destination's export
   * while the VM runs, until every mirror is in step (from then on writes reach both copies).
   */
  async #mirrorDisks(
    op: OperationContext,
    m: { vmId: string; source: HostsTable; destination: HostsTable; target: { host: string; port: number }; diskIds: string[] },
  ): Promise<void> {
    await this.#hosts.agent(m.source).startMirrors(m.vmId, { diskIds: m.diskIds, target: m.target }, { signal: op.signal });
    let lastCopied = -1;
    let lastProgressAt = Date.now();
    for (;;) {
      const jobs = await this.#hosts.agent(m.source).mirrors(m.vmId, { signal: op.signal });
      if (jobs.length < m.diskIds.length)
        throw new NubisError('MIGRATION_FAILED', `A disk mirror to ${m.destination.name} ended before it was in step (see the agent log of ${m.source.name})`);
      const copied = jobs.reduce((sum, j) => sum + j.copiedBytes, 0);
      const length = jobs.reduce((sum, j) => sum + j.lengthBytes, 0);
      if (jobs.every((j) => j.ready)) {
        await op.report('mirror', `Local disks in step on ${m.destination.name}: ${mib(length)} copied; guest writes now reach both copies`, 0.1);
        return;
      }
      if (copied !== lastCopied) [lastCopied, lastProgressAt] = [copied, Date.now()];
      else if (Date.now() - lastProgressAt > STALL_MS)
        throw new NubisError(
          'MIGRATION_STALLED',
          `The disk mirror to ${m.destination.name} made no progress for ${STALL_MS / 1000} s (is the link between the hosts down?)`,
        );
      await op.report(
        'mirror',
        `Mirroring ${m.diskIds.length} local disk(s) to ${m.destination.name}: ${mib(copied)} of ${mib(length)}`,
        0.05 + 0.05 * (length > 0 ? copied / length : 0),
        { copiedBytes: copied, lengthBytes: length },
      );
      await delay(POLL_MS, undefined, { signal: op.signal });
    }
  }

  /** A fresh port on the destination's underlay address for a migration stream. */
  #listenUri(destination: HostsTable): string {
    const port = nextPort;
    nextPort = nextPort >= 60999 ? MIGRATION_PORT_BASE : nextPort + 1;
    return `tcp:${destination.underlay_ip ?? '127.0.0.1'}:${port}`;
  }

  /**
   * The prediction recorded with the migration: the rest of the first pass at the rate it goes
   * through memory, then the model's pre-copy passes, or (when post-copy will be used) the
   * dirty set pulled once over the link.
   */
  #predict(p: {
    basis: MigrationPrediction['basis'];
    elapsedMs: number;
    pass: number;
    remaining: number;
    scanRate: number;
    dirtyRate: number;
    bandwidth: number;
    memoryBytes: number;
    plan: MigrationPlan;
    strategy: MigrationStrategy;
    inPostcopy: boolean;
  }): MigrationPrediction {
    // The targets QEMU will really be given, pass by pass (auto's tight start, widened).
    const model = predictPrecopy({
      remainingBytes: p.remaining,
      scanRateBytesPerSec: p.scanRate,
      dirtyRateBytesPerSec: p.dirtyRate,
      bandwidthBytesPerSec: p.bandwidth,
      memoryBytes: p.memoryBytes,
      downtimeLimitMs: p.plan.targetDowntimeMs,
      maxDowntimeLimitMs: p.plan.maxDowntimeMs,
      pass: p.pass,
    });
    const base = {
      basis: p.basis,
      madeAtMs: p.elapsedMs,
      dirtyRateBytesPerSec: Math.round(p.dirtyRate),
      bandwidthBytesPerSec: Math.round(p.bandwidth),
      lambda: Number(model.lambda.toFixed(3)),
      converges: model.converges,
    };
    if (p.inPostcopy || (p.plan.postcopyPrepared && p.strategy === 'postcopy')) {
      // Post-copy from (nearly) the start: the rest of memory crosses once, at the pace of the scan.
      return { ...base, route: 'postcopy', predictedTotalMs: Math.round(p.elapsedMs + (p.remaining / Math.max(p.scanRate, p.bandwidth)) * 1000) };
    }
    if (p.plan.postcopyPrepared && !model.converges) {
      const firstPassMs = (p.remaining / Math.max(p.scanRate, p.bandwidth)) * 1000;
      const dirtyAfterFirstPass = Math.min(p.dirtyRate * (firstPassMs / 1000), p.memoryBytes);
      return { ...base, route: 'postcopy', predictedTotalMs: Math.round(p.elapsedMs + firstPassMs + predictPostcopyMs(dirtyAfterFirstPass, p.bandwidth)) };
    }
    return {
      ...base,
      route: 'precopy',
      ...(model.converges ? { predictedTotalMs: p.elapsedMs + (model.remainingTimeMs ?? 0), predictedDowntimeMs: model.downtimeMs } : {}),
    };
  }

  /**
   * Post-copy lost its stream (a broken or stalled link): the VM already runs on the destination
   * and some of its pages are still on the source, so neither end may go on alone. Both ends are
   * paused (vCPUs touching a missing page wait; nothing crashes), then, until the link returns,
   * the destination listens again (`migrate-recover`) and the source reconnects (`migrate`
   * with `resume`), and post-copy goes on where it stopped.
   */
  async #recoverPostcopy(op: OperationContext, m: { vmId: string; source: HostsTable; destination: HostsTable; figures: MigrationFigures }): Promise<void> {
    const statusOf = (host: HostsTable) =>
      this.#hosts
        .agent(host)
        .migrationStatus(m.vmId, { timeoutMs: 10_000 })
        .then(
          (s) => s.status,
          () => undefined,
        );
    const giveUpAt = Date.now() + POSTCOPY_RECOVERY_MS;
    m.figures.recoveries = (m.figures.recoveries ?? 0) + 1;
    await op.report(
      'postcopy-paused',
      `The post-copy stream to ${m.destination.name} broke: the VM waits there for its missing pages; recovering as soon as the link is back`,
      0.9,
    );
    for (let attempt = 1; ; attempt++) {
      if (Date.now() > giveUpAt) {
        throw new NubisError(
          'MIGRATION_POSTCOPY_PAUSED',
          `Post-copy could not be recovered within ${POSTCOPY_RECOVERY_MS / 1000} s; the VM stays paused on ${m.destination.name} with pages on ${m.source.name} (keep both hosts up)`,
        );
      }
      const sourceState = await statusOf(m.source);
      if (sourceState === 'completed') return;
      // The agent's record, not QEMU: the destination's main loop may be stuck on a missing page.
      const destinationVm = await this.#hosts
        .agent(m.destination)
        .vmStatus(m.vmId, { timeoutMs: 10_000 })
        .catch((error: { code?: string }) => (error.code === 'VM_NOT_FOUND' ? ({ state: 'stopped' } as VmStatus) : undefined));
      if (destinationVm && (destinationVm.state === 'crashed' || destinationVm.state === 'stopped')) {
        throw new NubisError(
          'MIGRATION_FAILED',
          `The destination QEMU on ${m.destination.name} ended during post-copy; the VM's last state is paused on ${m.source.name} (see the destination's qemu.log)`,
        );
      }
      // Both ends must wait in postcopy-paused: a stalled (not broken) stream is closed by hand.
      // Out-of-band, and harmless on an end that already paused.
      for (const host of [m.source, m.destination])
        await this.#hosts
          .agent(host)
          .pauseMigration(m.vmId, { timeoutMs: 15_000 })
          .catch(() => undefined);
      const uri = this.#listenUri(m.destination);
      try {
        await this.#hosts.agent(m.destination).recoverIncoming(m.vmId, uri, { timeoutMs: 15_000 });
        await this.#hosts.agent(m.source).resumeMigration(m.vmId, uri);
        // The source connects (the kernel retries its SYN while the link is down); wait for
        // it to go on or to fall back to paused.
        for (let waited = 0; waited < 60_000; waited += 500) {
          const state = await statusOf(m.source);
          if (state === 'postcopy-active' || state === 'completed') {
            await op.report('postcopy', `Post-copy recovered (attempt ${attempt}); the rest of the pages follow`, 0.92);
            return;
          }
          if (state === 'postcopy-paused') break;
          await delay(500);
        }
      } catch (error) {
        // Under TCG a vCPU delivers interrupts holding QEMU's global lock; one that waits there
        // for a page that cannot come blocks the destination's main loop, which must accept the
        // recovered stream (seen with gdb: do_interrupt_all -> handle_userfault). KVM's vCPUs
        // wait for pages outside that lock.
        const tcgHint =
          m.destination.accelerator === 'tcg' && attempt >= 3
            ? ' (under TCG, a vCPU waiting for a missing page inside interrupt delivery blocks the destination QEMU for good; KVM hosts do not have this limit)'
            : '';
        await op.report('postcopy-paused', `Recovery attempt ${attempt} failed: ${messageOf(error)}; trying again${tcgHint}`, 0.9);
      }
      await delay(2_000);
    }
  }
}

function mib(bytes: number | undefined): string {
  return bytes === undefined ? '?' : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
