/**
 * The host agent's side of VMs: it owns the QEMU processes of this host, keeps each VM's spec and
 * desired state on disk beside its control files, re-adopts running QEMUs after a restart, and
 * tells its listener every change of actual state.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { promisify } from 'node:util';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { NubisError, messageOf } from '../core/errors.ts';
import { QemuProcess, runtimePathsOf, type QemuRunState } from '../compute/qemu/qemu-process.ts';
import { READINESS_PATTERN, serialLogOffset, serialLogTail, waitForSerialLine } from '../compute/serial-log.ts';
import type { Accelerator, DiskSpec, VmSpec } from '../compute/vm-spec.ts';
import { BOOT_DISK_NODE, HOTPLUG_PORTS } from '../compute/qemu/command-line.ts';
import { KeyedSerialQueue } from '../core/serial-queue.ts';
import type { VmStatus } from '../agent-api/contract.ts';

/** What survives an agent restart about a VM, in `<vmDir>/vm.json`. */
interface VmRecord {
  spec: VmSpec;
  desired: 'running' | 'stopped';
  status: VmStatus;
  /** Root ports of disks hot-plugged since this QEMU started (disk id -> port). */
  hotplugged?: Record<string, string>;
  /** Destination of a migration: the disk copies made here for the source to mirror into. */
  mirrorCopies?: string[];
}

export interface VmSupervisorOptions {
  /** Folder holding one sub-folder per VM. */
  vmsDir: string;
  accelerator: Accelerator;
  /** How long a guest may take to print its readiness line before it is reported not ready. */
  readyTimeoutMs?: number;
  /** Plugs a new VM's network NICs (taps) in and returns the spec QEMU starts from; unplugs a deleted VM's. */
  plugNics?: (spec: VmSpec) => Promise<VmSpec>;
  unplugNics?: (spec: VmSpec) => Promise<void>;
  /** Called after every change of a VM's actual state. */
  onChange?: (status: VmStatus) => void;
  log?: (level: 'debug' | 'info' | 'warn' | 'error', message: string) => void;
}

const runFile = promisify(execFile);

/** Lines of console log kept with a crash report. */
const CRASH_LOG_LINES = 20;

export class VmSupervisor {
  readonly #options: VmSupervisorOptions;
  readonly #records = new Map<string, VmRecord>();
  readonly #processes = new Map<string, QemuProcess>();
  readonly #readyWaits = new Map<string, AbortController>();
  readonly #queue = new KeyedSerialQueue();
  /** Callbacks of `waitReady` calls, run whenever readiness or liveness of any VM changes. */
  readonly #waiters = new Set<() => void>();
  /** QEMU's timestamps of each VM's last STOP and RESUME events: a migration's true pause is
   * the source's STOP to the destination's RESUME, which QEMU's own `downtime` does not cover. */
  readonly #pauseTimes = new Map<string, { stoppedAtMs?: number; resumedAtMs?: number }>();
  /** The last write of each VM's record, so that writes happen one after another. */
  readonly #saves = new Map<string, Promise<void>>();

  constructor(options: VmSupervisorOptions) {
    this.#options = Object.freeze({ ...options });
  }

  #vmDir(id: string): string {
    return join(this.#options.vmsDir, id);
  }

  #record(id: string): VmRecord {
    const record = this.#records.get(id);
    if (!record) throw new NubisError('VM_NOT_FOUND', `VM ${id} is not on this host`);
    return record;
  }

  /**
   * Writes the record to disk after any write of it still under way (state changes save without
   * waiting, so two writes could otherwise share the temporary file and one rename would fail).
   * Each write takes the record as it is by then. A record no longer kept (the VM was deleted or
   * discarded) is not written again, so no deleted folder comes back.
   */
  #save(record: VmRecord): Promise<void> {
    const id = record.spec.id;
    const write = async (): Promise<void> => {
      if (this.#records.get(id) !== record) return;
      const dir = this.#vmDir(id);
      await mkdir(dir, { recursive: true });
      const path = join(dir, 'vm.json');
      // Write then rename, so a crash mid-write never leaves a torn record.
      await writeFile(`${path}.tmp`, `${JSON.stringify(record, null, 2)}\n`);
      await rename(`${path}.tmp`, path);
    };
    const saved = (this.#saves.get(id) ?? Promise.resolve()).catch(() => undefined).then(write);
    this.#saves.set(id, saved);
    void saved
      .catch(() => undefined)
      .finally(() => {
        if (this.#saves.get(id) === saved) this.#saves.delete(id);
      });
    return saved;
  }

  /** Removes a VM's folder once no write of its record is under way. */
  async #removeVmDir(id: string): Promise<void> {
    await this.#saves.get(id)?.catch(() => undefined);
    await rm(this.#vmDir(id), { recursive: true, force: true });
  }

  #update(record: VmRecord, change: Partial<VmStatus>): void {
    Object.assign(record.status, change);
    void this.#save(record).catch((error) => this.#options.log?.('error', `Cannot save state of VM ${record.spec.name}: ${messageOf(error)}`));
    this.#options.onChange?.({ ...record.status });
  }

  /**
   * Reads every VM folder and re-attaches to the QEMUs that still run. A VM that should run but
   * whose QEMU is gone is reported `crashed`; nothing is started or stopped here.
   */
  async adoptAll(): Promise<void> {
    if (!existsSync(this.#options.vmsDir)) return;
    for (const entry of readdirSync(this.#options.vmsDir, { withFileTypes: true })) {
      if (!entry.isDirectory()) continue;
      const file = join(this.#options.vmsDir, entry.name, 'vm.json');
      if (!existsSync(file)) continue;
      const record = JSON.parse(await readFile(file, 'utf8')) as VmRecord;
      this.#records.set(record.spec.id, record);
      let qemu: QemuProcess | undefined;
      try {
        qemu = await QemuProcess.attach(this.#vmDir(record.spec.id), this.#eventsFor(record));
      } catch (error) {
        this.#options.log?.('warn', `Cannot re-attach to VM ${record.spec.name}: ${messageOf(error)}`);
      }
      if (qemu) {
        this.#track(record, qemu);
        this.#update(record, { state: qemu.state, pid: qemu.pid });
        if (!record.status.readyAt && qemu.state === 'running') void this.#watchReadiness(record, 0);
      } else if (record.status.state === 'incoming') {
        // The destination of a migration that ended while this agent was down, before the guest
        // ran here (a guest that runs here is saved as running): the VM stayed on its source.
        this.#options.log?.('info', `Discarding the incoming migration of VM ${record.spec.name}: its QEMU ended while the agent was not running`);
        await this.#discardIncoming(record);
      } else if (record.desired === 'running' && record.status.state !== 'stopped') {
        await this.#markCrashed(record, 'QEMU is gone (it ended while the agent was not running)');
      } else {
        this.#update(record, { state: 'stopped', pid: undefined });
      }
    }
  }

  /** Statuses of every VM on this host. */
  list(): VmStatus[] {
    return [...this.#records.values()].map((record) => ({ ...record.status }));
  }

  status(id: string): VmStatus {
    return { ...this.#record(id).status };
  }

  spec(id: string): VmSpec {
    return this.#record(id).spec;
  }

  /** Defines a VM on this host and starts it. Creating an existing id is refused. */
  create(spec: VmSpec): Promise<VmStatus> {
    return this.#queue.run(spec.id, async () => {
      if (this.#records.has(spec.id)) throw new NubisError('VM_EXISTS', `VM ${spec.id} already exists on this host`);
      const record: VmRecord = { spec, desired: 'running', status: { id: spec.id, name: spec.name, state: 'stopped' } };
      this.#records.set(spec.id, record);
      try {
        await this.#save(record);
        await this.#prepareBootDisk(record);
        if (this.#options.plugNics) record.spec = await this.#options.plugNics(record.spec);
        await this.#launch(record);
      } catch (error) {
        // Nothing half-built: a VM that never started is removed again, taps and all.
        await this.#forget(record);
        throw error;
      }
      return { ...record.status };
    });
  }

  /**
   * A VM booting from a disk image gets its own copy-on-write overlay over the image, so that
   * images stay read-only and any number of VMs can share one.
   */
  async #prepareBootDisk(record: VmRecord): Promise<void> {
    const boot = record.spec.boot;
    if (boot.kind !== 'disk') return;
    const overlay = join(this.#vmDir(record.spec.id), 'root.qcow2');
    try {
      await runFile('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', boot.format, '-b', boot.path, overlay]);
    } catch (error) {
      throw new NubisError(
        'VM_START_FAILED',
        `Cannot create the root disk of VM ${record.spec.name} over ${boot.path}: ${(error as { stderr?: string }).stderr?.trim() || messageOf(error)}`,
      );
    }
    record.spec = { ...record.spec, boot: { kind: 'disk', path: overlay, format: 'qcow2' } };
    await this.#save(record);
  }

  start(id: string): Promise<VmStatus> {
    return this.#queue.run(id, async () => {
      const record = this.#record(id);
      if (this.#processes.has(id)) throw new NubisError('VM_INVALID_STATE', `VM ${record.spec.name} is already ${record.status.state}; stop it first`);
      record.desired = 'running';
      await this.#launch(record);
      return { ...record.status };
    });
  }

  stop(id: string, options: { force?: boolean; gracefulTimeoutMs?: number } = {}): Promise<VmStatus> {
    return this.#queue.run(id, async () => {
      const record = this.#record(id);
      record.desired = 'stopped';
      await this.#save(record);
      const qemu = this.#processes.get(id);
      if (!qemu) return { ...record.status };
      this.#update(record, { state: 'stopping' });
      const how = await qemu.stop(options);
      this.#update(record, {
        state: 'stopped',
        pid: undefined,
        readyAt: undefined,
        lastError: how === 'graceful' ? undefined : `Stopped ${how} after the guest did not shut down in time`,
      });
      return { ...record.status };
    });
  }

  /** Reboot: a clean stop and a fresh QEMU, or with `force` a hard reset of the running one. */
  reboot(id: string, options: { force?: boolean; gracefulTimeoutMs?: number } = {}): Promise<VmStatus> {
    return this.#queue.run(id, async () => {
      const record = this.#record(id);
      const qemu = this.#processes.get(id);
      if (!qemu) throw new NubisError('VM_INVALID_STATE', `VM ${record.spec.name} is ${record.status.state}; start it instead of rebooting it`);
      if (options.force) {
        const offset = await serialLogOffset(runtimePathsOf(this.#vmDir(id)).serialLog);
        await qemu.reset();
        this.#update(record, { readyAt: undefined, startedAt: new Date().toISOString() });
        void this.#watchReadiness(record, offset);
      } else {
        this.#update(record, { state: 'stopping' });
        await qemu.stop(options);
        await this.#launch(record);
      }
      return { ...record.status };
    });
  }

  pause(id: string): Promise<VmStatus> {
    return this.#queue.run(id, async () => {
      const qemu = this.#running(id);
      await qemu.pause();
      return this.status(id);
    });
  }

  resume(id: string): Promise<VmStatus> {
    return this.#queue.run(id, async () => {
      const record = this.#record(id);
      const qemu = this.#processes.get(id);
      if (qemu?.state !== 'paused') throw new NubisError('VM_INVALID_STATE', `VM ${record.spec.name} is ${record.status.state}, not paused`);
      await qemu.resume();
      return this.status(id);
    });
  }

  /** Adds a disk: hot-plugged into a running VM, or simply part of the next boot of a stopped one. */
  attachDisk(id: string, disk: DiskSpec): Promise<VmStatus> {
    return this.#queue.run(id, async () => {
      const record = this.#record(id);
      if (record.spec.disks.some((d) => d.id === disk.id)) throw new NubisError('VM_DISK_EXISTS', `VM ${record.spec.name} already has a disk ${disk.id}`);
      const qemu = this.#processes.get(id);
      if (qemu) {
        const used = new Set(Object.values(record.hotplugged ?? {}));
        const port = HOTPLUG_PORTS.find((candidate) => !used.has(candidate));
        if (!port)
          throw new NubisError(
            'VM_NO_HOTPLUG_SLOT',
            `VM ${record.spec.name} has no free hot-plug slot (${HOTPLUG_PORTS.length}); stop it to attach more disks`,
          );
        await qemu.attachDisk(disk, port);
        record.hotplugged = { ...record.hotplugged, [disk.id]: port };
      }
      record.spec = { ...record.spec, disks: [...record.spec.disks, disk] };
      await this.#save(record);
      return { ...record.status };
    });
  }

  /** Removes a disk: hot-unplugged from a running VM (the guest must release it), or dropped from a stopped one. */
  detachDisk(id: string, diskId: string): Promise<VmStatus> {
    return this.#queue.run(id, async () => {
      const record = this.#record(id);
      if (!record.spec.disks.some((d) => d.id === diskId)) throw new NubisError('VM_DISK_NOT_FOUND', `VM ${record.spec.name} has no disk ${diskId}`);
      const qemu = this.#processes.get(id);
      if (qemu) await qemu.detachDisk(diskId);
      const { [diskId]: _freed, ...stillPlugged } = record.hotplugged ?? {};
      record.hotplugged = stillPlugged;
      record.spec = { ...record.spec, disks: record.spec.disks.filter((d) => d.id !== diskId) };
      await this.#save(record);
      return { ...record.status };
    });
  }

  /**
   * Destination of a live migration: plugs the VM's NICs, starts QEMU with the identical device
   * model waiting for the migration stream (`-incoming defer`), agrees on the capabilities and
   * listens on `listenUri`. Nothing half-built is left when a step fails.
   */
  prepareIncoming(
    spec: VmSpec,
    listenUri: string,
    capabilities: Record<string, boolean>,
    carried: Partial<VmStatus>,
    mirror?: { newFiles: Array<{ path: string; sizeBytes: number }>; listen: { host: string; port: number }; diskIds: string[] },
  ): Promise<VmStatus> {
    return this.#queue.run(spec.id, async () => {
      const earlier = this.#records.get(spec.id);
      if (earlier && !this.#processes.has(spec.id) && earlier.status.state !== 'running') {
        // What an earlier migration left here when this agent could not be told to clean up
        // (say, it was down): its QEMU is gone, so the record is only in the way.
        await this.#discardIncoming(earlier);
      }
      if (this.#records.has(spec.id)) throw new NubisError('VM_EXISTS', `VM ${spec.name} already exists on this host`);
      const record: VmRecord = {
        spec,
        desired: 'running',
        status: { id: spec.id, name: spec.name, state: 'incoming', guestIps: carried.guestIps },
        mirrorCopies: [],
      };
      this.#records.set(spec.id, record);
      let qemu: QemuProcess | undefined;
      try {
        await this.#save(record);
        // Empty copies of the disks the source mirrors here, the same size; never over a file.
        for (const file of mirror?.newFiles ?? []) {
          if (existsSync(file.path))
            throw new NubisError('VOLUME_EXISTS', `${file.path} already exists on this host; it would be overwritten by the mirrored disk`);
          await runFile('qemu-img', ['create', '-q', '-f', 'qcow2', file.path, String(file.sizeBytes)]);
          // Saved before anything else can fail, so a restarted agent knows what to delete.
          record.mirrorCopies?.push(file.path);
          await this.#save(record);
        }
        // A VM booting from an image gets its own empty overlay here, which the source's mirror
        // fills with what its overlay holds.
        await this.#prepareBootDisk(record);
        if (this.#options.plugNics) record.spec = await this.#options.plugNics(record.spec);
        qemu = await QemuProcess.launch(record.spec, this.#vmDir(spec.id), {
          accelerator: this.#options.accelerator,
          incoming: 'defer',
          events: this.#eventsFor(record),
        });
        await qemu.setMigrationCapabilities(capabilities);
        if (mirror && mirror.diskIds.length > 0) await qemu.exportDisksForMirror(mirror.diskIds, mirror.listen);
        await qemu.acceptIncomingMigration(listenUri);
      } catch (error) {
        await qemu?.stop({ force: true }).catch(() => undefined);
        await this.#discardIncoming(record);
        throw error;
      }
      this.#track(record, qemu);
      this.#update(record, { state: 'incoming', pid: qemu.pid, startedAt: carried.startedAt });
      return { ...record.status };
    });
  }

  /**
   * Drops the destination side of a migration whose guest never ran here (its QEMU already
   * ended): the NICs plumbed for it, the disk copies made for the mirror, and the VM folder.
   */
  async #discardIncoming(record: VmRecord): Promise<void> {
    for (const path of record.mirrorCopies ?? []) await rm(path, { force: true });
    await this.#forget(record);
  }

  /** Removes a VM whose QEMU is gone from this host: its plumbing, its record and its folder. */
  async #forget(record: VmRecord): Promise<void> {
    await this.#options.unplugNics?.(record.spec).catch(() => undefined);
    this.#records.delete(record.spec.id);
    this.#pauseTimes.delete(record.spec.id);
    await this.#removeVmDir(record.spec.id);
  }

  /**
   * Destination, after the source reported the migration complete: waits for the VM to run here,
   * has it announce itself so switches (and VXLAN learning) move its MAC, and reports it ready.
   */
  activateIncoming(id: string, timeoutMs = 60_000): Promise<VmStatus> {
    return this.#queue.run(id, async () => {
      const record = this.#record(id);
      const qemu = this.#processes.get(id);
      if (!qemu) throw new NubisError('VM_INVALID_STATE', `VM ${record.spec.name} has no QEMU on this host`);
      const deadline = Date.now() + timeoutMs;
      while (qemu.state !== 'running') {
        const status = await qemu.migrationStatus();
        if (status.status === 'failed') throw new NubisError('MIGRATION_FAILED', `The incoming migration of ${record.spec.name} failed here`);
        if ((await qemu.qmp.execute<{ status: string }>('query-status')).status === 'running') break;
        if (Date.now() > deadline) throw new NubisError('MIGRATION_TIMEOUT', `VM ${record.spec.name} did not start running here within ${timeoutMs / 1000} s`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      // The source's mirrors ended before the switch-over; their exports can go.
      await qemu.stopDiskExports().catch(() => undefined);
      await qemu.announceSelf();
      delete record.mirrorCopies; // the VM's own disks from now on
      await this.#save(record);
      this.#update(record, { state: 'running', readyAt: new Date().toISOString() });
      return { ...record.status };
    });
  }

  /** Source: the guest's dirty rate in bytes per second, sampled over `seconds` while it runs. */
  sampleDirtyRate(id: string, seconds: number): Promise<number> {
    return this.#queue.run(id, () => this.#running(id).sampleDirtyRate(seconds));
  }

  /** Source: starts mirroring local disks into the destination's NBD exports. */
  startDiskMirrors(id: string, diskIds: string[], target: { host: string; port: number }): Promise<void> {
    // The boot overlay's image is on both hosts (the destination made its overlay over it), so
    // only the overlay's own clusters cross; volumes are copied whole.
    const disks = diskIds.map((diskId) => ({ id: diskId, sync: diskId === BOOT_DISK_NODE ? ('top' as const) : ('full' as const) }));
    return this.#queue.run(id, () => this.#running(id).startDiskMirrors(disks, target));
  }

  /** Source: the disk mirrors of a migration in progress. */
  diskMirrors(id: string): ReturnType<QemuProcess['diskMirrors']> {
    return this.#qemuOf(id).diskMirrors();
  }

  /** Source, on rollback: abandons the disk mirrors. */
  async abortDiskMirrors(id: string): Promise<void> {
    await this.#qemuOf(id).endDiskMirrors({ force: true });
  }

  /**
   * Source: starts sending a running VM to `uri`. With mirrored disks QEMU pauses right before
   * the switch-over (the VM already stopped); the mirrors are ended there, so the destination's
   * copies are complete, and the migration goes on, all here and without a round trip.
   */
  migrateOut(
    id: string,
    uri: string,
    options: { capabilities: Record<string, boolean>; downtimeLimitMs: number; maxBandwidthBytesPerSec?: number; mirroredDisks?: string[] },
  ): Promise<VmStatus> {
    return this.#queue.run(id, async () => {
      const qemu = this.#running(id);
      const mirrored = (options.mirroredDisks ?? []).length > 0;
      await qemu.setMigrationCapabilities({ ...options.capabilities, 'pause-before-switchover': mirrored });
      if (mirrored) void this.#switchOverMirrors(qemu, this.#record(id).spec.name);
      await qemu.startMigration(uri, { downtimeLimitMs: options.downtimeLimitMs, maxBandwidthBytesPerSec: options.maxBandwidthBytesPerSec });
      return this.status(id);
    });
  }

  async #switchOverMirrors(qemu: QemuProcess, name: string): Promise<void> {
    for await (const event of qemu.qmp.events()) {
      if (event.event !== 'MIGRATION') continue;
      const status = event.data.status;
      if (status === 'pre-switchover') {
        try {
          await qemu.endDiskMirrors();
          await qemu.qmp.execute('migrate-continue', { state: 'pre-switchover' });
        } catch (error) {
          this.#options.log?.('error', `VM ${name}: ending the disk mirrors at the switch-over failed, cancelling the migration: ${messageOf(error)}`);
          await qemu.cancelMigration().catch(() => undefined);
        }
        return;
      }
      if (status === 'completed' || status === 'failed' || status === 'cancelled') return;
    }
  }

  /** The QEMU `query-migrate` of a VM on this host (not queued: read while a migration runs). */
  async migrationStatus(id: string): Promise<Record<string, unknown>> {
    return this.#qemuOf(id).migrationStatus();
  }

  /**
   * The times of the VM's last STOP and RESUME, without asking QEMU: on a post-copy destination
   * whose main loop waits for a page, in-band QMP commands queue up, and a full queue keeps
   * even out-of-band commands (the recovery) from being read.
   */
  pauseTimes(id: string): { stoppedAtMs?: number; resumedAtMs?: number } {
    this.#record(id);
    return { ...this.#pauseTimes.get(id) };
  }

  /** Changes the parameters of the running migration (e.g. a widened downtime limit). */
  async setMigrationParameters(id: string, parameters: { downtimeLimitMs?: number; maxBandwidthBytesPerSec?: number }): Promise<void> {
    await this.#qemuOf(id).setMigrationParameters(parameters);
  }

  /** Source: switches the running migration to post-copy. */
  async startPostcopy(id: string): Promise<void> {
    await this.#qemuOf(id).startPostcopy();
  }

  /** Either end, in post-copy: closes the stream so this end waits in `postcopy-paused`. */
  async pauseMigration(id: string): Promise<void> {
    await this.#qemuOf(id).pauseMigration();
  }

  /** Destination in `postcopy-paused`: listens on `uri` for the source to resume. */
  async recoverIncoming(id: string, uri: string): Promise<void> {
    await this.#qemuOf(id).recoverIncomingMigration(uri);
  }

  /** Source in `postcopy-paused`: reconnects to the destination's recovery listener. */
  async resumeMigration(id: string, uri: string): Promise<void> {
    await this.#qemuOf(id).resumeMigration(uri);
  }

  #qemuOf(id: string): QemuProcess {
    const qemu = this.#processes.get(id);
    if (!qemu) throw new NubisError('VM_INVALID_STATE', `VM ${this.#record(id).spec.name} has no QEMU on this host`);
    return qemu;
  }

  /** Source: cancels the migration; the VM goes on running here. */
  async cancelMigration(id: string): Promise<void> {
    const qemu = this.#processes.get(id);
    if (qemu) await qemu.cancelMigration().catch(() => undefined);
  }

  /** Stops the VM if it runs (forcefully after the deadline) and removes all its files. */
  delete(id: string, options: { gracefulTimeoutMs?: number } = {}): Promise<void> {
    return this.#queue.run(id, async () => {
      const record = this.#record(id);
      record.desired = 'stopped';
      const qemu = this.#processes.get(id);
      if (qemu) await qemu.stop({ gracefulTimeoutMs: options.gracefulTimeoutMs ?? 10_000 });
      this.#readyWaits.get(id)?.abort();
      await this.#options.unplugNics?.(record.spec);
      this.#records.delete(id);
      this.#pauseTimes.delete(id);
      await this.#removeVmDir(id);
    });
  }

  /**
   * Resolves with the status once the guest has printed its readiness line in its current boot;
   * rejects with `VM_READY_TIMEOUT` after `timeoutMs`, or `VM_INVALID_STATE` when it is not running.
   */
  async waitReady(id: string, timeoutMs: number): Promise<VmStatus> {
    const record = this.#record(id);
    if (record.status.readyAt) return { ...record.status };
    if (!this.#processes.has(id)) throw new NubisError('VM_INVALID_STATE', `VM ${record.spec.name} is ${record.status.state}; it cannot become ready`);
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        if (record.status.readyAt) resolve({ ...record.status });
        else if (!this.#processes.has(id))
          reject(
            new NubisError(
              'VM_NOT_READY',
              `VM ${record.spec.name} ended (${record.status.state}) before its guest was ready: ${record.status.lastError ?? ''}`.trim(),
            ),
          );
        else return false;
        return true;
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter);
        reject(
          new NubisError(
            'VM_READY_TIMEOUT',
            `The guest of VM ${record.spec.name} did not print its readiness line within ${timeoutMs} ms; see nubis vm log ${record.spec.name}`,
          ),
        );
      }, timeoutMs);
      const waiter = (): void => {
        if (check()) {
          clearTimeout(timer);
          this.#waiters.delete(waiter);
        }
      };
      this.#waiters.add(waiter);
    });
  }

  /** The last `lines` lines of the VM's serial console. */
  async consoleLog(id: string, lines: number): Promise<string[]> {
    this.#record(id);
    return serialLogTail(runtimePathsOf(this.#vmDir(id)).serialLog, lines);
  }

  /** The unix socket of the VM's serial console, for an interactive attach. */
  consoleSocket(id: string): string {
    this.#running(id);
    return runtimePathsOf(this.#vmDir(id)).consoleSocket;
  }

  /** The QEMU process of a running VM, for migration and disk operations. */
  qemuOf(id: string): QemuProcess | undefined {
    return this.#processes.get(id);
  }

  /** Lets go of every QEMU without stopping it (agent shutdown): VMs keep running. */
  detachAll(): void {
    for (const wait of this.#readyWaits.values()) wait.abort();
    for (const qemu of this.#processes.values()) qemu.detach();
    this.#processes.clear();
  }

  /** Stops every running VM (used by `nubis down` without --keep-vms). */
  async stopAll(options: { gracefulTimeoutMs?: number } = {}): Promise<void> {
    await Promise.all([...this.#processes.keys()].map((id) => this.stop(id, options).catch(() => undefined)));
  }

  #running(id: string): QemuProcess {
    const record = this.#record(id);
    const qemu = this.#processes.get(id);
    if (qemu?.state !== 'running') throw new NubisError('VM_INVALID_STATE', `VM ${record.spec.name} is ${record.status.state}, not running`);
    return qemu;
  }

  async #launch(record: VmRecord): Promise<void> {
    const dir = this.#vmDir(record.spec.id);
    await mkdir(dir, { recursive: true });
    const offset = await serialLogOffset(runtimePathsOf(dir).serialLog);
    this.#update(record, { state: 'starting', readyAt: undefined, lastError: undefined, crashLogTail: undefined, guestIps: undefined });
    record.hotplugged = {}; // a fresh QEMU puts every disk on the root bus
    let qemu: QemuProcess;
    try {
      qemu = await QemuProcess.launch(record.spec, dir, { accelerator: this.#options.accelerator, events: this.#eventsFor(record) });
    } catch (error) {
      this.#update(record, { state: 'stopped', lastError: messageOf(error) });
      throw error;
    }
    await this.#save(record);
    this.#track(record, qemu);
    this.#update(record, { state: qemu.state, pid: qemu.pid, startedAt: new Date().toISOString() });
    void this.#watchReadiness(record, offset);
  }

  #eventsFor(record: VmRecord) {
    return {
      onState: (state: QemuRunState) => {
        if (state !== 'stopped' && state !== 'crashed') this.#update(record, { state });
      },
      onQmpEvent: (event: { event: string; timestampMs: number }) => {
        if (event.event === 'STOP' || event.event === 'RESUME') {
          const times = this.#pauseTimes.get(record.spec.id) ?? {};
          this.#pauseTimes.set(
            record.spec.id,
            event.event === 'STOP' ? { ...times, stoppedAtMs: event.timestampMs } : { ...times, resumedAtMs: event.timestampMs },
          );
        }
        // A guest-initiated reboot starts a new boot: readiness must be seen again.
        if (event.event === 'RESET' && record.status.readyAt) {
          void serialLogOffset(runtimePathsOf(this.#vmDir(record.spec.id)).serialLog).then((offset) => {
            this.#update(record, { readyAt: undefined });
            void this.#watchReadiness(record, offset);
          });
        }
      },
      onQmpTraffic: (direction: '>' | '<', line: string) => this.#options.log?.('debug', `qmp ${record.spec.name} ${direction} ${line}`),
    };
  }

  #track(record: VmRecord, qemu: QemuProcess): void {
    this.#processes.set(record.spec.id, qemu);
    void qemu.exited.then(async (ended) => {
      if (this.#processes.get(record.spec.id) !== qemu) return;
      this.#processes.delete(record.spec.id);
      this.#readyWaits.get(record.spec.id)?.abort();
      if (!this.#records.has(record.spec.id)) return;
      if (ended === 'crashed') await this.#markCrashed(record, 'QEMU exited without a shutdown (killed or failed)');
      else if (!qemu.stopRequested) {
        // The guest powered itself off: that is a stop the user asked for from inside.
        record.desired = 'stopped';
        this.#update(record, { state: 'stopped', pid: undefined, readyAt: undefined, lastError: 'The guest shut itself down' });
      }
      for (const waiter of this.#waiters) waiter();
    });
  }

  async #markCrashed(record: VmRecord, reason: string): Promise<void> {
    const tail = await serialLogTail(runtimePathsOf(this.#vmDir(record.spec.id)).serialLog, CRASH_LOG_LINES).catch(() => []);
    this.#update(record, { state: 'crashed', pid: undefined, readyAt: undefined, lastError: reason, crashLogTail: tail });
    this.#options.log?.('warn', `VM ${record.spec.name} crashed: ${reason}`);
  }

  async #watchReadiness(record: VmRecord, fromOffset: number): Promise<void> {
    const id = record.spec.id;
    this.#readyWaits.get(id)?.abort();
    const controller = new AbortController();
    this.#readyWaits.set(id, controller);
    try {
      const match = await waitForSerialLine(runtimePathsOf(this.#vmDir(id)).serialLog, READINESS_PATTERN, {
        fromOffset,
        timeoutMs: this.#options.readyTimeoutMs ?? 600_000,
        signal: controller.signal,
      });
      const ips = match[2] === 'none' ? [] : match[2].split(',');
      this.#update(record, { readyAt: new Date().toISOString(), guestIps: ips });
    } catch (error) {
      if (!controller.signal.aborted) this.#options.log?.('warn', `VM ${record.spec.name}: ${messageOf(error)}`);
    } finally {
      if (this.#readyWaits.get(id) === controller) this.#readyWaits.delete(id);
      for (const waiter of this.#waiters) waiter();
    }
  }
}
