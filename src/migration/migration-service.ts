/**
 * Live migration, driven by the control plane through both host agents, in the stages of
 * Clark et al. (NSDI 2005): checks, reservation, iterative pre-copy, stop-and-copy (or post-copy),
 * commitment and activation. Anything failing before the switch-over leaves the VM running on the
 * source, untouched, and the destination cleaned up. Every migration is recorded with its figures.
 */
import { checkMigrationTls, type IssueCertificate, issueMigrationTls, migrationTlsPolicy } from './migration-tls.ts';
import { setTimeout as delay } from 'node:timers/promises';
import { NubisError, isNubisError, messageOf } from '../core/errors.ts';
import { Revert } from '../core/revert.ts';
import type { MigrationFigures, MigrationInput, MigrationPlacement, MigrationPlan, MigrationRequest, MigrationRun } from './migration-types.ts';
import { ASSUMED_LINK_BYTES_PER_SEC, lastMeasuredLink } from './migration-cost.ts';
import { nextListenUri } from './stream-ports.ts';
import { MigrationStream, POLL_MS, STALL_MS, mib } from './migration-stream.ts';
import { newId } from '../core/ids.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import { BOOT_DISK_NODE } from '../compute/qemu/command-line.ts';
import { canMigrateBetween } from '../compute/qemu/qemu-version.ts';
import type { PauseTimes, VmStatus } from '../agent-api/contract.ts';
import type { Db } from '../state/database.ts';
import type { HostsTable, VmsTable } from '../state/schema.ts';
import type { DirPoolCatalogue } from '../control/dir-pools.ts';
import type { HostRegistry } from '../control/hosts.ts';
import type { NetworkService } from '../control/networks.ts';
import type { OperationContext, OperationManager } from '../control/operations.ts';
import type { PlacementService } from '../control/placement.ts';
import type { StorageCatalogue } from '../control/storage.ts';
import { currentUser } from '../audit/audit-context.ts';
import type { SecurityGroupService } from '../control/security-groups.ts';
import type { VmClaim, VmOwner } from '../control/vm-owner.ts';
import type { VmService } from '../control/vms.ts';
import type { Operation } from '../wire/schemas.ts';
import { observeMigration } from '../metrics/metrics.ts';
import { publishChange } from '../events/change-feed.ts';

import { refuseMigrationOf } from '../control/vm-template-rules.ts';
/** `auto` first asks QEMU for a stop-and-copy this short: an idle guest then loses only a few
 * milliseconds; it is widened step by step, up to the user's maximum, when passes stop shrinking. */
export const AUTO_TARGET_DOWNTIME_MS = 20;
/** QEMU's own default downtime limit, the maximum when the user names none. */
export const DEFAULT_MAX_DOWNTIME_MS = 300;
/** `auto` prepares post-copy when the guest dirties memory at least this fraction of the link. */
const POSTCOPY_PREPARE_LAMBDA = 0.5;

export class MigrationService {
  readonly #db: Db;
  readonly #hosts: HostRegistry;
  readonly #networks: NetworkService;
  readonly #secgroups: SecurityGroupService;
  readonly #operations: OperationManager;
  readonly #dirPools: DirPoolCatalogue;
  readonly #owner: VmOwner;
  /** The one writer of VM records: a migration moves a VM's record through it. */
  readonly #vms: Pick<VmService, 'reports'>;
  readonly #placement: PlacementService;
  readonly #storage: Pick<StorageCatalogue, 'bindDisksToHost' | 'releaseVmSocket'>;
  readonly #issueCertificate?: IssueCertificate;

  constructor(deps: {
    db: Db;
    hosts: HostRegistry;
    networks: NetworkService;
    secgroups: SecurityGroupService;
    operations: OperationManager;
    dirPools: DirPoolCatalogue;
    owner: VmOwner;
    vms: Pick<VmService, 'reports'>;
    placement: PlacementService;
    storage: Pick<StorageCatalogue, 'bindDisksToHost' | 'releaseVmSocket'>;
    /** Issues the certificates of migrations over TLS; without it `tls` is refused. */
    issueCertificate?: IssueCertificate;
  }) {
    this.#issueCertificate = deps.issueCertificate;
    this.#placement = deps.placement;
    this.#storage = deps.storage;
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

  /** A VM's disks must be shared or mirrorable there, and its NICs must be able to keep their addresses. */
  async #checkDisksAndNetworks(vm: VmsTable, spec: VmSpec, destination: HostsTable): Promise<void> {
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
    await refuseMigrationOf(this.#db, vm);
    const spec = JSON.parse(vm.spec) as VmSpec;
    const source = await this.#hosts.row(vm.host_id);
    if (request.to === source.name) throw new NubisError('MIGRATION_SAME_HOST', `VM ${vm.name} already runs on ${source.name}; choose another host`);
    const to = request.to ? { ref: request.to, why: `the migration asks for ${request.to}` } : undefined;
    const placed = await this.#placement.place(this.#placement.movingNeeds(vm, source, to), `VM ${vm.name}`);
    const destination = await this.#hosts.row(placed.host.id);
    const actor = currentUser();
    const placement: MigrationPlacement = { action: request.reason ?? 'migrate', ...(actor ? { actor } : {}), decision: placed.decision };
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
    await this.#checkDisksAndNetworks(vm, spec, destination);
    const mirrored = spec.boot.kind === 'disk' || spec.disks.some((disk) => disk.kind === 'file' && disk.localVolume);
    const policy = await migrationTlsPolicy(this.#db);
    // Moves the services start (balance, maintenance, failback) follow the cluster's rule themselves.
    const internal = request.reason !== undefined && request.reason !== 'migrate';
    const tls = checkMigrationTls(vm.name, request.tls ?? (internal && policy === 'required' ? true : undefined), policy, mirrored);
    request.tls = tls;
    if (tls && !this.#issueCertificate) throw new NubisError('MIGRATION_TLS_UNSUPPORTED', 'This control plane has no CA to issue migration certificates');
    const postcopyAllowed = vm.allow_postcopy === 1;
    if (!postcopyAllowed && (request.strategy === 'postcopy' || request.onTimeout === 'postcopy')) {
      throw new NubisError(
        'MIGRATION_POSTCOPY_DENIED',
        `VM ${vm.name} does not allow post-copy (a broken link during post-copy pauses it until the link returns); use --strategy auto or precopy, or allow it with: nubis vm set ${vm.name} --postcopy allow`,
      );
    }
    return this.#start(claim, { vm, spec, source, destination, request, postcopyAllowed, placement });
  }

  /** Records the migration and runs it as an operation under the VM's claim. */
  async #start(
    claim: VmClaim,
    m: {
      vm: VmsTable;
      spec: VmSpec;
      source: HostsTable;
      destination: HostsTable;
      request: MigrationRequest;
      postcopyAllowed: boolean;
      placement: MigrationPlacement;
    },
  ): Promise<Operation> {
    const { vm, spec, source, destination, request, postcopyAllowed, placement } = m;
    const vmId = vm.id;
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
    publishChange(this.#db, 'migration', 'created', migrationId);
    const finish = async (status: 'completed' | 'failed' | 'cancelled'): Promise<void> => {
      await this.#db
        .updateTable('vm_migrations')
        .set({ status, figures: JSON.stringify(figures), ended_at: new Date().toISOString() })
        .where('id', '=', migrationId)
        .execute();
      publishChange(this.#db, 'migration', 'updated', migrationId);
      observeMigration({ strategy: request.strategy, outcome: status, figures });
    };
    const operation = await this.#operations.start('vm.migrate', { type: 'vm', id: vmId, name: vm.name, projectId: vm.project_id }, (op) =>
      claim.run(async () => {
        await op.report('checks', `Checks passed: ${source.name} -> ${destination.name} (${destination.accelerator}), strategy ${request.strategy}`, 0.02);
        try {
          const plan = await this.#plan(op, { vmId, source, destination, request, postcopyAllowed });
          figures.plan = plan;
          await op.report('plan', plan.reason, 0.04, plan);
          const result = await this.#run(op, { vmId, vmName: vm.name, projectId: vm.project_id, placement, spec, source, destination, request, plan, figures });
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
      : ((await lastMeasuredLink(this.#db, m.source.name, m.destination.name)) ?? ASSUMED_LINK_BYTES_PER_SEC);
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

  /**
   * Runs a checked migration: reservation, the stream, activation. Anything failing before the
   * switch-over undoes what was built, newest first, and reports each undo that failed; past it
   * the VM lives on the destination and its record follows it there.
   */
  async #run(op: OperationContext, m: MigrationInput): Promise<unknown> {
    const run = await this.#prepareRun(m);
    const revert = new Revert();
    try {
      await this.#reserve(op, run, revert);
      await new MigrationStream(this.#hosts, op, run).run(revert);
    } catch (error) {
      if (run.switchedOver) {
        revert.success();
        // Paused on the destination for good (its link never came back): that is where it is.
        if (isNubisError(error, 'MIGRATION_POSTCOPY_PAUSED')) {
          await this.#vms.reports.recordMove(
            { id: run.vmId, name: run.vmName, projectId: run.projectId },
            run.destination,
            { id: run.vmId, name: run.vmName, state: 'paused', lastError: messageOf(error) },
            run.destinationSpec,
            run.placement,
          );
          run.releaseNetworks();
        }
        // Otherwise the VM may run on the destination with its record elsewhere: the hold keeps
        // its networks there until the host's report settles it (or this control plane ends).
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
  async #prepareRun(m: MigrationInput): Promise<MigrationRun> {
    const { vmId, destination, plan } = m;
    const networkIds = [...new Set(m.spec.nics.flatMap((nic) => (nic.network ? [nic.network.id] : [])))];
    // With post-copy, `postcopy-preempt` sends the pages the guest waits for on a channel of
    // their own, so they do not queue behind the background stream (on a slow link a missing
    // page otherwise waits for everything already in the socket buffers).
    const capabilities = { events: true, 'postcopy-ram': plan.postcopyPrepared, 'postcopy-preempt': plan.postcopyPrepared, 'auto-converge': plan.autoConverge };
    const uri = nextListenUri(destination);
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
    // Storage-node disks reach the node through the VM's own socket on the destination (served
    // from here on; released by the rollback, or on the source once the VM has left it).
    const destinationSpec: VmSpec = await this.#storage.bindDisksToHost(
      { ...m.spec, disks: m.spec.disks.map((disk) => mirrored.find((x) => x.diskId === disk.id)?.target ?? disk) },
      destination.name,
    );
    // A VM booting from an image has its own overlay over it on the source; the destination
    // makes an empty one over the same image and the overlay's clusters are mirrored into it.
    const mirroredDiskIds = [...(m.spec.boot.kind === 'disk' ? [BOOT_DISK_NODE] : []), ...mirrored.map((x) => x.diskId)];
    const mirrorTarget = { host: destination.underlay_ip ?? '127.0.0.1', port: Number(nextListenUri(destination).split(':').at(-1)) };
    // Certificates of this migration alone (migration-tls.ts); checked to be wanted and possible in stage 1.
    const tls =
      m.request.tls && this.#issueCertificate
        ? await issueMigrationTls(this.#issueCertificate, newId('mig'), destination.underlay_ip ?? '127.0.0.1')
        : undefined;
    return {
      ...(tls ? { tls } : {}),
      ...m,
      networkIds,
      releaseNetworks: () => {},
      capabilities,
      uri,
      sourceStatus,
      mirrored,
      destinationSpec,
      mirroredDiskIds,
      mirrorTarget,
      switchedOver: false,
    };
  }

  /**
   * Stage 2: reservation. The destination gets the VM's networks and an incoming QEMU with the
   * identical device model, listening for the stream (and, for local disks, empty copies exported
   * over NBD, which the source mirrors into). Each step registers its undo.
   */
  async #reserve(op: OperationContext, run: MigrationRun, revert: Revert): Promise<void> {
    const { vmId, source, destination, capabilities, uri, sourceStatus, mirrored, destinationSpec, mirroredDiskIds, mirrorTarget, networkIds } = run;
    await op.report('reservation', `Starting the incoming VM on ${destination.name}`, 0.05);
    // Undone last: the storage node stops serving the VM on the destination once nothing runs there.
    revert.add(`release the VM's storage socket on ${destination.name}`, () => this.#storage.releaseVmSocket(destinationSpec, destination.name));
    // The destination carries the VM's networks from now until the record moves there (or this
    // is undone): a sync that another change starts meanwhile keeps them there too.
    run.releaseNetworks = this.#holdNetworks(networkIds, destination);
    revert.add(`unplug the VM's networks on ${destination.name}`, async () => {
      run.releaseNetworks();
      for (const networkId of networkIds) await this.#networks.sync(networkId);
    });
    for (const networkId of networkIds) await this.#networks.sync(networkId, op.signal);
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
        ...(run.tls ? { tls: run.tls.destination } : {}),
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

  /** Holds each network on `host`; the returned function lets go of them all (idempotent). */
  #holdNetworks(networkIds: string[], host: HostsTable): () => void {
    const releases = networkIds.map((networkId) => this.#networks.hold(networkId, host.id, 'migration'));
    return () => {
      for (const release of releases) release();
    };
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
    await this.#vms.reports.recordMove({ id: vmId, name: run.vmName, projectId: run.projectId }, destination, activated, destinationSpec, run.placement);
    // The VM's record holds the networks on the destination now.
    run.releaseNetworks();
    for (const x of mirrored) await this.#dirPools.moveVolume(x.pool, x.volume, destination.id);
    await this.#hosts
      .agent(source)
      .deleteVm(vmId, { timeoutMs: 60_000 })
      .catch((error: unknown) => op.report('activation', `The source could not clean up: ${messageOf(error)}`, 0.97));
    // The VM's storage socket on the source closes with its QEMU there.
    await this.#storage
      .releaseVmSocket(run.spec, source.name)
      .catch((error: unknown) => op.report('activation', `The storage node still serves the VM's socket on ${source.name}: ${messageOf(error)}`, 0.97));
    for (const x of mirrored) {
      await this.#hosts
        .agent(source)
        .deleteDirVolume(x.pool, x.volume)
        .catch((error: unknown) =>
          op.report('activation', `The old copy of ${x.pool}/${x.volume} on ${source.name} could not be removed: ${messageOf(error)}`, 0.97),
        );
    }
    // The source keeps a network only where it still needs it (another VM, its DHCP server or
    // gateway, a probe): the sync decides, and tells every carrier of the change.
    for (const networkId of networkIds) await this.#networks.sync(networkId);
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
}
