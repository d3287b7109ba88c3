/**
 * One VM on this host, and everything the agent knows about it in one object: its record (spec,
 * desired and actual state, on disk beside its control files), its QEMU process, the watch for
 * its guest's readiness line, the times of its last STOP and RESUME, and its queues. Every call
 * that changes the VM passes through it, in one of two lanes (lifecycle and migration), each
 * strictly in the order asked. `vm-lanes.ts` says which lane each call takes and why, and
 * enforces it; the migration lane's calls are in `vm-migration-control.ts`.
 */
import { rm } from 'node:fs/promises';
import { runtimePathsOf, type QemuProcessEvents, type QemuRunState } from '../compute/qemu/qemu-process.ts';
import type { QmpEvent } from '../compute/qmp/qmp-client.ts';
import { serialLogOffset, serialLogTail } from '../compute/serial-log.ts';
import type { Accelerator, DiskSpec, VmSpec } from '../compute/vm-spec.ts';
import { HOTPLUG_PORTS } from '../compute/qemu/command-line.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import { GuestReadiness } from './guest-readiness.ts';
import { VmLanes } from './vm-lanes.ts';
import { type IncomingExtras, type IncomingMirror, MIGRATION_ENDED, VmMigrationControl, migrationStateOf } from './vm-migration-control.ts';
import { launchInCgroup, launchMeasurementOf, type QemuDriver, type VmQemu } from './vm-qemu.ts';
import type { VmCgroups } from './cgroups.ts';
import type { UsageSource } from './usage-sampler.ts';
import { type VmRecord, VmRecordFile } from './vm-record-file.ts';
import { createBootOverlay, createMirrorCopy, giveHotplugDisk, ownSocket, takeDisksBack } from './vm-files.ts';
import type { SnapshotHost } from './vm-snapshot-control.ts';
import type { VmStatus } from '../agent-api/contract.ts';
import { join } from 'node:path';
import { clearViews, MIGRATED_BITMAPS, VIEWS_FOLDER } from './backup-views.ts';

/** What every managed VM of a host shares: its QEMU driver, its hooks and its settings. */
export interface ManagedVmContext {
  accelerator: Accelerator;
  qemu: QemuDriver;
  /** The VMs' cgroups (CPU controls); undefined runs QEMU in the agent's own groups. */
  cgroups?: VmCgroups;
  /** How long a guest may take to print its readiness line before it is reported not ready. */
  readyTimeoutMs: number;
  /** Plugs a new VM's NICs (taps) in and returns the spec QEMU starts from; unplugs a removed VM's. */
  plugNics?: (spec: VmSpec) => Promise<VmSpec>;
  unplugNics?: (spec: VmSpec) => Promise<void>;
  /** Called after every change of a VM's actual state. */
  onChange?: (status: VmStatus) => void;
  /** Called once a VM is gone from this host (deleted, or discarded), so the registry drops it. */
  onRemoved: (vm: ManagedVm) => void;
  log?: (level: 'debug' | 'info' | 'warn' | 'error', message: string) => void;
}

/** Lines of console log kept with a crash report. */
const CRASH_LOG_LINES = 20;

/** One VM of this host; see the file header for which calls wait for which. */
export class ManagedVm {
  readonly id: string;
  readonly #context: ManagedVmContext;
  readonly #record: VmRecord;
  readonly #file: VmRecordFile;
  readonly #lanes: VmLanes;
  /** The migration lane's calls and the reads polled during a migration. */
  readonly migration: VmMigrationControl;
  readonly #readiness: GuestReadiness;
  #qemu: VmQemu | undefined;

  constructor(context: ManagedVmContext, dir: string, record: VmRecord) {
    this.#context = context;
    this.#record = record;
    this.id = record.spec.id;
    this.#file = new VmRecordFile(dir);
    this.#lanes = new VmLanes({ id: this.id, name: () => this.name, streamRuns: () => this.migration.streamRuns() });
    this.migration = new VmMigrationControl({
      lanes: this.#lanes,
      qemu: () => this.#qemu,
      name: () => this.name,
      status: () => this.status(),
      log: context.log,
    });
    this.#readiness = new GuestReadiness({
      serialLog: this.#paths().serialLog,
      timeoutMs: context.readyTimeoutMs,
      onReady: (guestIps) => this.#update({ readyAt: new Date().toISOString(), guestIps }),
      onGiveUp: (message) => this.#context.log?.('warn', `VM ${this.name}: ${message}`),
    });
  }

  /** A VM about to be created here from `spec` (see `create`). */
  static defined(context: ManagedVmContext, dir: string, spec: VmSpec): ManagedVm {
    return new ManagedVm(context, dir, { spec, desired: 'running', status: { id: spec.id, name: spec.name, state: 'stopped' } });
  }

  /** The destination of a migration, about to be reserved here (see `prepareIncoming`). */
  static incoming(context: ManagedVmContext, dir: string, spec: VmSpec, carried: Partial<VmStatus>): ManagedVm {
    const status: VmStatus = { id: spec.id, name: spec.name, state: 'incoming', guestIps: carried.guestIps };
    return new ManagedVm(context, dir, { spec, desired: 'running', status, mirrorCopies: [] });
  }

  /** A VM of this host read back from its folder after an agent restart (see `adopt`). */
  static async read(context: ManagedVmContext, dir: string): Promise<ManagedVm> {
    return new ManagedVm(context, dir, await VmRecordFile.read(dir));
  }

  get name(): string {
    return this.#record.spec.name;
  }

  /** True while this VM has a QEMU process on this host. */
  get hasQemu(): boolean {
    return this.#qemu !== undefined;
  }

  status(): VmStatus {
    return { ...this.#record.status };
  }

  spec(): VmSpec {
    return this.#record.spec;
  }

  /**
   * What the usage sampler reads of this VM while its QEMU runs or is paused: the process, its
   * vCPUs, its taps and the bytes its disks moved; undefined without such a QEMU.
   */
  usageSource(): UsageSource | undefined {
    const qemu = this.#qemu;
    if (!qemu?.pid || (qemu.state !== 'running' && qemu.state !== 'paused')) return undefined;
    const spec = this.#record.spec;
    const taps = spec.nics.flatMap((nic) => (nic.mode === 'tap' && nic.tapName ? [nic.tapName] : []));
    return { vm: this.id, pid: qemu.pid, cpus: spec.cpus, taps, diskBytes: () => qemu.blockStats(), qmp: qemu.qmp };
  }

  /** Resolves once every lifecycle action asked so far has ended. */
  async settled(): Promise<void> {
    await this.#lanes.settled();
  }

  /** Starts a VM just defined here; one that fails to start is removed again, taps and all. */
  create(): Promise<VmStatus> {
    return this.#lanes.lifecycle('create', async () => {
      try {
        await this.#save();
        await this.#prepareBootDisk();
        if (this.#context.plugNics) this.#record.spec = await this.#context.plugNics(this.#record.spec);
        await this.#launch();
      } catch (error) {
        await this.#forget();
        throw error;
      }
      return this.status();
    });
  }

  /**
   * Re-attaches to this VM's QEMU after an agent restart. A VM that should run but whose QEMU is
   * gone is reported `crashed`; nothing is started here. What a migration left behind while the
   * agent was down is reaped: an incoming VM whose QEMU ended, or whose QEMU still waits but
   * reports its migration never started, failed or was cancelled (the control plane rolled it back
   * and could not reach this agent to delete it). An incoming VM still listening (`setup`) is
   * kept: only the control plane knows whether its migration goes on, and it deletes it if not.
   */
  adopt(): Promise<void> {
    return this.#lanes.lifecycleUnchecked(async () => {
      const wasIncoming = this.#record.status.state === 'incoming';
      let qemu: VmQemu | undefined;
      try {
        qemu = await this.#context.qemu.attach(this.#file.dir, this.#events());
      } catch (error) {
        // Its QEMU runs but does not answer: a post-copy destination whose main loop waits for a
        // page does that. Nothing is known, so nothing is touched (its disks may be the only copy).
        this.#context.log?.('warn', `Cannot re-attach to VM ${this.name}; its QEMU is left as it is: ${messageOf(error)}`);
        return;
      }
      if (!qemu) return this.#adoptWithoutQemu(wasIncoming);
      // In-band is safe here: a destination whose guest never ran has no page to wait for.
      const migration = wasIncoming ? await migrationStateOf(qemu) : undefined;
      if (wasIncoming && qemu.state !== 'running' && migration !== undefined && MIGRATION_ENDED.has(migration) && migration !== 'completed') {
        this.#context.log?.('info', `Discarding the incoming migration of VM ${this.name}: its QEMU reports it ${migration}`);
        await qemu.stop({ force: true }).catch(() => undefined);
        await this.#discardIncoming();
        return;
      }
      this.#lanes.incoming = wasIncoming;
      this.#track(qemu);
      this.#update({ state: qemu.state, pid: qemu.pid });
      if (!this.#record.status.readyAt && qemu.state === 'running') void this.#readiness.watch(0);
    });
  }

  async #adoptWithoutQemu(wasIncoming: boolean): Promise<void> {
    await this.#context.cgroups?.remove(this.id); // what its QEMU left, ended while no agent watched
    if (wasIncoming) {
      // The destination of a migration that ended while this agent was down, before the guest
      // ran here (a guest that runs here is saved as running): the VM stayed on its source.
      this.#context.log?.('info', `Discarding the incoming migration of VM ${this.name}: its QEMU ended while the agent was not running`);
      await this.#discardIncoming();
    } else if (this.#record.desired === 'running' && this.#record.status.state !== 'stopped') {
      await this.#markCrashed('QEMU is gone (it ended while the agent was not running)');
    } else {
      this.#update({ state: 'stopped', pid: undefined });
    }
  }

  start(): Promise<VmStatus> {
    return this.#lanes.lifecycle('start', async () => {
      if (this.#qemu) throw new NubisError('VM_INVALID_STATE', `VM ${this.name} is already ${this.#record.status.state}; stop it first`);
      this.#record.desired = 'running';
      await this.#launch();
      return this.status();
    });
  }

  stop(options: { force?: boolean; gracefulTimeoutMs?: number } = {}): Promise<VmStatus> {
    return this.#lanes.lifecycle('stop', async () => {
      this.#record.desired = 'stopped';
      await this.#save();
      const qemu = this.#qemu;
      if (!qemu) return this.status();
      this.#update({ state: 'stopping' });
      const how = await qemu.stop(options);
      await this.#context.cgroups?.remove(this.id); // reported stopped once its group is gone too
      this.#update({
        state: 'stopped',
        pid: undefined,
        readyAt: undefined,
        lastError: how === 'graceful' ? undefined : `Stopped ${how} after the guest did not shut down in time`,
      });
      return this.status();
    });
  }

  /** Reboot: a clean stop and a fresh QEMU, or with `force` a hard reset of the running one. */
  reboot(options: { force?: boolean; gracefulTimeoutMs?: number } = {}): Promise<VmStatus> {
    return this.#lanes.lifecycle('reboot', async () => {
      const qemu = this.#qemu;
      if (!qemu) throw new NubisError('VM_INVALID_STATE', `VM ${this.name} is ${this.#record.status.state}; start it instead of rebooting it`);
      if (options.force) {
        const offset = await serialLogOffset(this.#paths().serialLog);
        await qemu.reset();
        this.#update({ readyAt: undefined, startedAt: new Date().toISOString() });
        void this.#readiness.watch(offset);
      } else {
        this.#update({ state: 'stopping' });
        await qemu.stop(options);
        await this.#launch();
      }
      return this.status();
    });
  }

  pause(): Promise<VmStatus> {
    return this.#lanes.lifecycle('pause', async () => {
      await this.#running().pause();
      return this.status();
    });
  }

  resume(): Promise<VmStatus> {
    return this.#lanes.lifecycle('resume', async () => {
      const qemu = this.#qemu;
      if (qemu?.state !== 'paused') throw new NubisError('VM_INVALID_STATE', `VM ${this.name} is ${this.#record.status.state}, not paused`);
      await qemu.resume();
      return this.status();
    });
  }

  /** Adds a disk: hot-plugged into a running VM, or simply part of the next boot of a stopped one. */
  attachDisk(disk: DiskSpec): Promise<VmStatus> {
    return this.#lanes.lifecycle('attaching a disk', async () => {
      const record = this.#record;
      if (record.spec.disks.some((d) => d.id === disk.id)) throw new NubisError('VM_DISK_EXISTS', `VM ${this.name} already has a disk ${disk.id}`);
      if (this.#qemu) {
        const used = new Set(Object.values(record.hotplugged ?? {}));
        const port = HOTPLUG_PORTS.find((candidate) => !used.has(candidate));
        if (!port)
          throw new NubisError('VM_NO_HOTPLUG_SLOT', `VM ${this.name} has no free hot-plug slot (${HOTPLUG_PORTS.length}); stop it to attach more disks`);
        await giveHotplugDisk(record.spec, disk);
        await this.#qemu.attachDisk(disk, port);
        record.hotplugged = { ...record.hotplugged, [disk.id]: port };
      }
      record.spec = { ...record.spec, disks: [...record.spec.disks, disk] };
      await this.#save();
      return this.status();
    });
  }

  /** Removes a disk: hot-unplugged from a running VM (the guest must release it), or dropped from a stopped one. */
  detachDisk(diskId: string): Promise<VmStatus> {
    return this.#lanes.lifecycle('detaching a disk', async () => {
      const record = this.#record;
      const leaving = record.spec.disks.find((d) => d.id === diskId);
      if (!leaving) throw new NubisError('VM_DISK_NOT_FOUND', `VM ${this.name} has no disk ${diskId}`);
      await this.#qemu?.detachDisk(diskId);
      await takeDisksBack([leaving]);
      const { [diskId]: _freed, ...stillPlugged } = record.hotplugged ?? {};
      record.hotplugged = stillPlugged;
      record.spec = { ...record.spec, disks: record.spec.disks.filter((d) => d.id !== diskId) };
      await this.#save();
      return this.status();
    });
  }

  /** Changes part of the VM's spec (CPU controls, memory): at once through `live` when its QEMU runs, and for every later start. */
  tune(what: string, change: Partial<VmSpec>, live: (qemu: VmQemu) => Promise<unknown>): Promise<VmStatus> {
    return this.#lanes.lifecycle(what, async () => {
      if (this.#qemu) await live(this.#qemu);
      this.#record.spec = { ...this.#record.spec, ...change };
      await this.#save();
      return this.status();
    });
  }

  /** Stops the VM if it runs (forcefully after the deadline) and removes all its files. */
  delete(options: { gracefulTimeoutMs?: number } = {}): Promise<void> {
    return this.#lanes.lifecycle(
      'deleting it',
      async () => {
        this.#record.desired = 'stopped';
        await this.#qemu?.stop({ gracefulTimeoutMs: options.gracefulTimeoutMs ?? 10_000 });
        this.#readiness.abort();
        await this.#context.unplugNics?.(this.#record.spec);
        await takeDisksBack(this.#record.spec.disks);
        await this.#remove();
      },
      // The delete of a destination is how the control plane rolls its migration back.
      { duringIncoming: true },
    );
  }

  /** Source: the guest's dirty rate in bytes per second, sampled over `seconds` while it runs. */
  sampleDirtyRate(seconds: number): Promise<number> {
    return this.#lanes.lifecycle('sampling its dirty rate', () => this.#running().sampleDirtyRate(seconds));
  }

  /** Runs snapshot work (vm-snapshot-control.ts) in the lifecycle lane, with its QEMU and ways to stop and relaunch it. */
  snapshotWork<T>(what: string, work: (host: SnapshotHost) => Promise<T>): Promise<T> {
    return this.#lanes.lifecycle(what, () =>
      work({
        name: this.name,
        dir: this.#file.dir,
        spec: () => this.#record.spec,
        hotplugged: () => Object.keys(this.#record.hotplugged ?? {}),
        qemu: () => this.#qemu,
        stopQemu: async () => {
          this.#update({ state: 'stopping' });
          await this.#qemu?.stop({ force: true });
          this.#update({ state: 'stopped', pid: undefined, readyAt: undefined });
        },
        launch: (incoming) => this.#launch(incoming),
        restored: () => {
          this.#record.desired = 'running';
          this.#update({ state: 'running', readyAt: new Date().toISOString() });
        },
      }),
    );
  }

  /** A VM booting from an image gets a copy-on-write overlay of its own: images stay read-only and shared. */
  async #prepareBootDisk(): Promise<void> {
    const boot = this.#record.spec.boot;
    if (boot.kind !== 'disk') return;
    this.#record.spec = { ...this.#record.spec, boot: await createBootOverlay(this.#file.dir, boot, this.name) };
    await this.#save();
  }

  /**
   * Destination of a live migration: plugs the VM's NICs, starts QEMU with the identical device
   * model waiting for the migration stream (`-incoming defer`), agrees on the capabilities and
   * listens on `listenUri`. Nothing half-built is left when a step fails.
   */
  prepareIncoming(listenUri: string, capabilities: Record<string, boolean>, startedAt: string | undefined, extras: IncomingExtras = {}): Promise<VmStatus> {
    const { mirror, tls } = extras;
    return this.#lanes.lifecycle('preparing an incoming migration', async () => {
      this.#lanes.incoming = true;
      let qemu: VmQemu | undefined;
      try {
        await this.#save();
        await this.#makeMirrorCopies(mirror?.newFiles ?? []);
        // A VM booting from an image gets its own empty overlay here, which the source's mirror
        // fills with what its overlay holds.
        await this.#prepareBootDisk();
        if (this.#context.plugNics) this.#record.spec = await this.#context.plugNics(this.#record.spec);
        qemu = await launchInCgroup(this.#context.qemu, this.#context.cgroups, this.#record.spec, this.#file.dir, {
          accelerator: this.#context.accelerator,
          incoming: 'defer',
          events: this.#events(),
        });
        await qemu.setMigrationCapabilities({ ...capabilities, [MIGRATED_BITMAPS]: true });
        if (tls) await qemu.loadMigrationTls(tls);
        if (mirror && mirror.diskIds.length > 0) await qemu.exportDisksForMirror(mirror.diskIds, mirror.listen);
        await qemu.acceptIncomingMigration(listenUri);
      } catch (error) {
        await qemu?.stop({ force: true }).catch(() => undefined);
        await this.#discardIncoming();
        throw error;
      }
      this.#track(qemu);
      this.#update({ state: 'incoming', pid: qemu.pid, startedAt, launch: launchMeasurementOf(qemu) });
      return this.status();
    });
  }

  /** Empty copies of the disks the source mirrors here, the same size; never over a file. */
  async #makeMirrorCopies(files: IncomingMirror['newFiles']): Promise<void> {
    for (const file of files) {
      await createMirrorCopy(file.path, file.sizeBytes);
      // Saved before anything else can fail, so a restarted agent knows what to delete.
      this.#record.mirrorCopies = [...(this.#record.mirrorCopies ?? []), file.path];
      await this.#save();
    }
  }

  /** Removes what an earlier migration left here when its QEMU is gone (the agent could not be told to clean up). */
  discardIfLeftover(): Promise<void> {
    return this.#lanes.lifecycleUnchecked(async () => {
      if (!this.#lanes.removed && !this.#qemu && this.#record.status.state !== 'running') await this.#discardIncoming();
    });
  }

  /**
   * Destination, after the source reported the migration complete: waits for the VM to run here,
   * has it announce itself so switches (and VXLAN learning) move its MAC, and reports it ready.
   */
  activateIncoming(timeoutMs = 60_000): Promise<VmStatus> {
    return this.#lanes.lifecycle(
      'activating it',
      async () => {
        const qemu = this.#qemuOrThrow();
        const deadline = Date.now() + timeoutMs;
        while (qemu.state !== 'running') {
          const status = await qemu.migrationStatus();
          if (status.status === 'failed') throw new NubisError('MIGRATION_FAILED', `The incoming migration of ${this.name} failed here`);
          if ((await qemu.queryRunState()) === 'running') break;
          if (Date.now() > deadline) throw new NubisError('MIGRATION_TIMEOUT', `VM ${this.name} did not start running here within ${timeoutMs / 1000} s`);
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        // The source's mirrors ended before the switch-over; their exports can go.
        await qemu.stopDiskExports().catch(() => undefined);
        await qemu.announceSelf();
        delete this.#record.mirrorCopies; // the VM's own disks from now on
        this.#lanes.incoming = false;
        await this.#save();
        this.#update({ state: 'running', readyAt: new Date().toISOString() });
        return this.status();
      },
      { duringIncoming: true },
    );
  }

  /** Drops the destination side of a migration whose guest never ran here: NICs, disk copies, folder. */
  async #discardIncoming(): Promise<void> {
    for (const path of this.#record.mirrorCopies ?? []) await rm(path, { force: true });
    await this.#forget();
  }

  /**
   * Resolves with the status once the guest has printed its readiness line in its current boot;
   * rejects with `VM_READY_TIMEOUT` after `timeoutMs`, or `VM_INVALID_STATE` when it is not running.
   */
  async waitReady(timeoutMs: number): Promise<VmStatus> {
    const record = this.#record;
    if (record.status.readyAt) return this.status();
    if (!this.#qemu) throw new NubisError('VM_INVALID_STATE', `VM ${this.name} is ${record.status.state}; it cannot become ready`);
    return this.#readiness.wait<VmStatus>(
      timeoutMs,
      () => {
        if (record.status.readyAt) return this.status();
        if (!this.#qemu)
          return new NubisError(
            'VM_NOT_READY',
            `VM ${this.name} ended (${record.status.state}) before its guest was ready: ${record.status.lastError ?? ''}`.trim(),
          );
        return undefined;
      },
      () =>
        new NubisError(
          'VM_READY_TIMEOUT',
          `The guest of VM ${this.name} did not print its readiness line within ${timeoutMs} ms; see nubis vm log ${this.name}`,
        ),
    );
  }

  /** The last `lines` lines of the VM's serial console. */
  consoleLog(lines: number): Promise<string[]> {
    return serialLogTail(this.#paths().serialLog, lines);
  }

  /** The unix socket of the VM's serial console, for an interactive attach. */
  consoleSocket(): string {
    this.#running();
    return ownSocket(this.#paths().consoleSocket);
  }

  /** The unix socket of the VM's VNC display (running or paused), for the agent's relay. */
  vncSocket(): string {
    this.#qemuOrThrow();
    return ownSocket(this.#paths().vncSocket);
  }

  /** The display takes `password` for `validSeconds`; not queued (the VM's state is untouched). */
  setVncPassword(password: string, validSeconds: number): Promise<void> {
    return this.#qemuOrThrow().setVncPassword(password, validSeconds);
  }

  /** The display's password stops working now (a VM without QEMU has no display to close). */
  async expireVncPassword(): Promise<void> {
    await this.#qemu?.expireVncPassword();
  }

  /** Lets go of the QEMU without stopping it (agent shutdown): the VM keeps running. */
  detach(): void {
    this.#readiness.abort();
    const qemu = this.#qemu;
    this.#qemu = undefined;
    qemu?.detach();
  }

  #paths(): ReturnType<typeof runtimePathsOf> {
    return runtimePathsOf(this.#file.dir);
  }

  #qemuOrThrow(): VmQemu {
    if (!this.#qemu) throw new NubisError('VM_INVALID_STATE', `VM ${this.name} has no QEMU on this host`);
    return this.#qemu;
  }

  #running(): VmQemu {
    const qemu = this.#qemu;
    if (qemu?.state !== 'running') throw new NubisError('VM_INVALID_STATE', `VM ${this.name} is ${this.#record.status.state}, not running`);
    return qemu;
  }

  /** Starts QEMU: a boot, or with `incoming` one that waits for a saved state (a snapshot's memory). */
  async #launch(incoming?: string): Promise<VmQemu> {
    const offset = await serialLogOffset(this.#paths().serialLog);
    this.#update({ state: 'starting', readyAt: undefined, lastError: undefined, crashLogTail: undefined, ...(incoming ? {} : { guestIps: undefined }) });
    this.#record.hotplugged = {}; // a fresh QEMU puts every disk on the root bus
    let qemu: VmQemu;
    try {
      const options = { accelerator: this.#context.accelerator, events: this.#events(), ...(incoming ? { incoming } : {}) };
      qemu = await launchInCgroup(this.#context.qemu, this.#context.cgroups, this.#record.spec, this.#file.dir, options);
    } catch (error) {
      this.#update({ state: 'stopped', lastError: messageOf(error) });
      throw error;
    }
    await this.#save();
    this.#track(qemu);
    this.#update({ state: qemu.state, pid: qemu.pid, startedAt: new Date().toISOString(), launch: launchMeasurementOf(qemu) });
    if (!incoming) void this.#readiness.watch(offset);
    return qemu;
  }

  #events(): QemuProcessEvents {
    return {
      onState: (state: QemuRunState) => {
        if (state !== 'stopped' && state !== 'crashed') this.#update({ state });
      },
      onQmpEvent: (event) => this.#onQmpEvent(event),
      onQmpTraffic: (direction, line) => this.#context.log?.('debug', `qmp ${this.name} ${direction} ${line}`),
    };
  }

  #onQmpEvent(event: QmpEvent): void {
    this.migration.onQmpEvent(event);
    // A guest-initiated reboot starts a new boot: readiness must be seen again.
    if (event.event === 'RESET' && this.#record.status.readyAt) {
      void serialLogOffset(this.#paths().serialLog).then((offset) => {
        this.#update({ readyAt: undefined });
        void this.#readiness.watch(offset);
      });
    }
  }

  #track(qemu: VmQemu): void {
    this.#qemu = qemu;
    void qemu.exited.then(async (ended) => {
      if (ended === 'stopped' || ended === 'crashed') void this.#context.cgroups?.remove(this.id); // unawaited: a start right after finds #qemu cleared
      if (this.#qemu !== qemu) return;
      this.#qemu = undefined;
      this.#lanes.incoming = false; // no migration goes on without its QEMU
      this.#readiness.abort();
      if (this.#lanes.removed) return;
      if (ended === 'crashed') await this.#markCrashed('QEMU exited without a shutdown (killed or failed)');
      else if (!qemu.stopRequested) {
        // The guest powered itself off: that is a stop the user asked for from inside.
        this.#record.desired = 'stopped';
        this.#update({ state: 'stopped', pid: undefined, readyAt: undefined, lastError: 'The guest shut itself down' });
      }
      this.#readiness.changed();
    });
  }

  async #markCrashed(reason: string): Promise<void> {
    const tail = await serialLogTail(this.#paths().serialLog, CRASH_LOG_LINES).catch(() => []);
    this.#update({ state: 'crashed', pid: undefined, readyAt: undefined, lastError: reason, crashLogTail: tail });
    this.#context.log?.('warn', `VM ${this.name} crashed: ${reason}`);
  }

  #save(): Promise<void> {
    return this.#file.save(this.#record);
  }

  #update(change: Partial<VmStatus>): void {
    Object.assign(this.#record.status, change);
    void this.#save().catch((error) => this.#context.log?.('error', `Cannot save state of VM ${this.name}: ${messageOf(error)}`));
    this.#context.onChange?.(this.status());
  }

  /** Removes a VM whose QEMU is gone from this host: its plumbing, then its record and folder. */
  async #forget(): Promise<void> {
    await this.#context.unplugNics?.(this.#record.spec).catch(() => undefined);
    await this.#remove();
  }

  async #remove(): Promise<void> {
    this.#lanes.markRemoved();
    this.#context.onRemoved(this);
    await clearViews(join(this.#file.dir, VIEWS_FOLDER));
    await this.#file.remove();
  }
}
