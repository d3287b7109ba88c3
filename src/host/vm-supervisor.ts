/**
 * The host agent's side of VMs: a registry of one `ManagedVm` per VM of this host. It creates
 * them (a new VM, the destination of a migration), adopts them after an agent restart (reading
 * every VM folder and re-attaching to the QEMUs that still run), finds them, and forwards each
 * call to the VM's own object, which owns the VM's QEMU, record and queues and decides which
 * call waits for which (see `managed-vm.ts`). Nothing here touches QEMU.
 */
import type { MigrationTlsCredentials } from '../compute/qemu/migration-tls.ts';
import type { MigrateOutOptions } from './vm-migration-control.ts';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Accelerator, CpuControls, DiskLimits, DiskSpec, NicBandwidthSpec, VmSpec } from '../compute/vm-spec.ts';
import { BOOT_DISK_NODE } from '../compute/qemu/command-line.ts';
import type { QemuProcess } from '../compute/qemu/qemu-process.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import { ManagedVm, type ManagedVmContext } from './managed-vm.ts';
import { deleteSnapshot, rollbackSnapshot, sealTemplate, type TakenSnapshot, takeSnapshot } from './vm-snapshot-control.ts';
import { type QemuDriver, qemuProcessDriver } from './vm-qemu.ts';
import { takeBackup } from './vm-backup.ts';
import type { LiveRestores } from './live-restore.ts';
import type { PauseTimes, TakenBackup, VmStatus } from '../agent-api/contract.ts';
import type { UsageSource } from './usage-sampler.ts';
import type { VmCgroups } from './cgroups.ts';
import type { MemorySettings, VmMemoryReport } from '../compute/memory-spec.ts';
import { applyBalloon, memoryAfter, readMemoryReport } from './vm-memory.ts';
import { limitsAnything, specWithDiskLimits } from '../compute/qemu/disk-throttle.ts';
import type { VcpuSettings } from '../compute/cpu-topology.ts';
import { applyVcpus, vcpuChange } from './vm-vcpus.ts';

export interface VmSupervisorOptions {
  /** Folder holding one sub-folder per VM. */
  vmsDir: string;
  accelerator: Accelerator;
  /** How long a guest may take to print its readiness line before it is reported not ready (default 600 s). */
  readyTimeoutMs?: number;
  /** Plugs a new VM's network NICs (taps) in and returns the spec QEMU starts from; unplugs a deleted VM's. */
  plugNics?: (spec: VmSpec) => Promise<VmSpec>;
  unplugNics?: (spec: VmSpec) => Promise<void>;
  /** Called after every change of a VM's actual state. */
  onChange?: (status: VmStatus) => void;
  log?: (level: 'debug' | 'info' | 'warn' | 'error', message: string) => void;
  /** Launches and re-attaches QEMU processes (default: real ones; tests pass fakes). */
  qemu?: QemuDriver;
  /** The VMs' cgroups, for their CPU controls (none: QEMU runs in the agent's groups). */
  cgroups?: VmCgroups;
}

/** The VMs of this host, one `ManagedVm` each; every call is forwarded to the VM's object. */
export class VmSupervisor {
  readonly #options: VmSupervisorOptions;
  readonly #context: ManagedVmContext;
  readonly #vms = new Map<string, ManagedVm>();
  /** Where automatic reclaim has taken each guest below its current memory (host/memory-reclaimer.ts). */
  readonly reclaimTargets = new Map<string, number>();

  constructor(options: VmSupervisorOptions) {
    this.#options = Object.freeze({ ...options });
    this.#context = Object.freeze({
      accelerator: options.accelerator,
      qemu: options.qemu ?? qemuProcessDriver,
      cgroups: options.cgroups,
      readyTimeoutMs: options.readyTimeoutMs ?? 600_000,
      plugNics: options.plugNics,
      unplugNics: options.unplugNics,
      onChange: options.onChange,
      log: options.log,
      onRemoved: (vm: ManagedVm) => {
        if (this.#vms.get(vm.id) === vm) this.#vms.delete(vm.id);
      },
    });
  }

  #vmDir(id: string): string {
    return join(this.#options.vmsDir, id);
  }

  #vm(id: string): ManagedVm {
    const vm = this.#vms.get(id);
    if (!vm) throw new NubisError('VM_NOT_FOUND', `VM ${id} is not on this host`);
    return vm;
  }

  /**
   * Reads every VM folder and re-attaches to the QEMUs that still run. A VM that should run but
   * whose QEMU is gone is reported `crashed`; what a rolled-back migration left is reaped (see
   * `ManagedVm.adopt`); nothing else is started or stopped here.
   */
  async adoptAll(): Promise<void> {
    if (!existsSync(this.#options.vmsDir)) return;
    for (const entry of readdirSync(this.#options.vmsDir, { withFileTypes: true })) {
      const dir = join(this.#options.vmsDir, entry.name);
      if (!entry.isDirectory() || !existsSync(join(dir, 'vm.json'))) continue;
      let vm: ManagedVm;
      try {
        vm = await ManagedVm.read(this.#context, dir);
      } catch (error) {
        this.#options.log?.('error', `Cannot read the record in ${dir}: ${messageOf(error)}`);
        continue;
      }
      this.#vms.set(vm.id, vm);
      await vm.adopt();
    }
  }

  /** What the usage sampler reads, for every VM whose QEMU runs here. */
  usageSources(): UsageSource[] {
    return [...this.#vms.values()].flatMap((vm) => vm.usageSource() ?? []);
  }

  /** Statuses of every VM on this host. */
  list(): VmStatus[] {
    return [...this.#vms.values()].map((vm) => vm.status());
  }

  status(id: string): VmStatus {
    return this.#vm(id).status();
  }

  spec(id: string): VmSpec {
    return this.#vm(id).spec();
  }

  /**
   * Registers a new VM object for `spec.id` once whatever an earlier one of that id was doing has
   * ended (a delete under way); an id still taken then is refused.
   */
  async #register(spec: VmSpec, make: () => ManagedVm): Promise<ManagedVm> {
    await this.#vms.get(spec.id)?.settled();
    if (this.#vms.has(spec.id)) throw new NubisError('VM_EXISTS', `VM ${spec.name} already exists on this host`);
    const vm = make();
    this.#vms.set(spec.id, vm);
    return vm;
  }

  /** Defines a VM on this host and starts it. Creating an existing id is refused. */
  async create(spec: VmSpec): Promise<VmStatus> {
    const vm = await this.#register(spec, () => ManagedVm.defined(this.#context, this.#vmDir(spec.id), spec));
    return vm.create();
  }

  start(id: string): Promise<VmStatus> {
    return this.#vm(id).start();
  }

  stop(id: string, options: { force?: boolean; gracefulTimeoutMs?: number } = {}): Promise<VmStatus> {
    return this.#vm(id).stop(options);
  }

  /** Reboot: a clean stop and a fresh QEMU, or with `force` a hard reset of the running one. */
  reboot(id: string, options: { force?: boolean; gracefulTimeoutMs?: number } = {}): Promise<VmStatus> {
    return this.#vm(id).reboot(options);
  }

  pause(id: string): Promise<VmStatus> {
    return this.#vm(id).pause();
  }

  resume(id: string): Promise<VmStatus> {
    return this.#vm(id).resume();
  }

  /** Adds a disk: hot-plugged into a running VM, or simply part of the next boot of a stopped one. */
  attachDisk(id: string, disk: DiskSpec): Promise<VmStatus> {
    return this.#vm(id).attachDisk(disk);
  }

  /** Removes a disk: hot-unplugged from a running VM (the guest must release it), or dropped from a stopped one. */
  detachDisk(id: string, diskId: string): Promise<VmStatus> {
    return this.#vm(id).detachDisk(diskId);
  }

  setCpuControls(id: string, controls: CpuControls): Promise<VmStatus> {
    const cpuControls = Object.keys(controls).length > 0 ? controls : undefined;
    return this.#vm(id).tune('changing its CPU controls', { cpuControls }, async () => this.#context.cgroups?.apply(id, cpuControls));
  }

  /** Sets disk `diskId`'s IO limits (empty: none), live when the VM runs. */
  setDiskLimits(id: string, diskId: string, limits: DiskLimits): Promise<VmStatus> {
    const vm = this.#vm(id);
    const given = limitsAnything(limits) ? limits : undefined;
    return vm.tune('changing its disk limits', specWithDiskLimits(vm.spec(), diskId, given), (qemu) => qemu.setDiskLimits(diskId, given));
  }

  /**
   * Sets NIC `nicId`'s bandwidth limits (empty: none): in its spec for every later start, and on
   * its tap through `applyLive` when the VM runs.
   */
  setNicBandwidth(id: string, nicId: string, bandwidth: NicBandwidthSpec, applyLive: (spec: VmSpec) => Promise<void>): Promise<VmStatus> {
    const vm = this.#vm(id);
    const spec = vm.spec();
    if (!spec.nics.some((nic) => nic.id === nicId && nic.mode === 'tap'))
      throw new NubisError('NET_NIC_NOT_FOUND', `VM ${spec.name} has no NIC ${nicId} on a virtual network`);
    const given = Object.keys(bandwidth).length > 0 ? bandwidth : undefined;
    const nics = spec.nics.map((nic) => {
      if (nic.id !== nicId) return nic;
      const { bandwidth: _old, ...rest } = nic;
      return given ? { ...rest, bandwidth: given } : rest;
    });
    return vm.tune('changing its NIC bandwidth', { nics }, () => applyLive({ ...spec, nics }));
  }

  /** Sets the VM's current memory (live through its balloon) and whether reclaim may take from it; a new owner target ends reclaim's. */
  setMemory(id: string, settings: MemorySettings): Promise<VmStatus> {
    const vm = this.#vm(id);
    const change = memoryAfter(vm.spec(), settings);
    return vm.tune('changing its memory', change, async (qemu) => {
      await applyBalloon(qemu.qmp, { ...vm.spec(), ...change });
      this.reclaimTargets.delete(id);
    });
  }

  /** Sets the vCPUs present: hot-added while the VM runs (fewer refused then), from the next start when stopped. */
  setCpus(id: string, settings: VcpuSettings): Promise<VmStatus> {
    const vm = this.#vm(id);
    return vm.tune('changing its vCPUs', vcpuChange(vm.spec(), settings), (qemu) => applyVcpus(qemu.qmp, vm.name, settings.cpus));
  }

  /**
   * Grows file disk `path` through the QEMU of the VM that has it, when that VM runs here (QMP
   * `block_resize` on its qcow2 node: the guest sees the new size at once, and QEMU, which holds
   * the image's lock, writes the new size itself). False when no running VM has it.
   */
  async growFileDisk(path: string, sizeBytes: number): Promise<boolean> {
    for (const vm of this.#vms.values()) {
      const disk = vm.spec().disks.find((d) => d.kind === 'file' && d.path === path);
      if (!disk || !vm.hasQemu) continue;
      let grown = false;
      await vm.tune(`growing disk ${disk.id}`, {}, async (qemu) => {
        await qemu.qmp.execute('block_resize', { 'node-name': disk.id, size: sizeBytes });
        grown = true;
      });
      return grown;
    }
    return false;
  }

  /** The VM's memory as its guest and host see it; undefined while its QEMU does not run. */
  async memoryReport(id: string): Promise<VmMemoryReport | undefined> {
    const source = this.#vm(id).usageSource();
    return source?.qmp ? readMemoryReport({ pid: source.pid, qmp: source.qmp }, this.reclaimTargets.get(id)) : undefined;
  }

  /**
   * Destination of a live migration: starts QEMU waiting for the stream (see
   * `ManagedVm.prepareIncoming`). What an earlier migration of this VM left here, when this agent
   * could not be told to clean up (say, it was down) and its QEMU is gone, is discarded first.
   */
  async prepareIncoming(
    spec: VmSpec,
    listenUri: string,
    capabilities: Record<string, boolean>,
    carried: Partial<VmStatus>,
    mirror?: { newFiles: Array<{ path: string; sizeBytes: number }>; listen: { host: string; port: number }; diskIds: string[] },
    tls?: MigrationTlsCredentials,
  ): Promise<VmStatus> {
    await this.#vms.get(spec.id)?.discardIfLeftover();
    const vm = await this.#register(spec, () => ManagedVm.incoming(this.#context, this.#vmDir(spec.id), spec, carried));
    return vm.prepareIncoming(listenUri, capabilities, carried.startedAt, { mirror, tls });
  }

  /** Destination, after the source reported the migration complete: the VM runs and announces itself here. */
  activateIncoming(id: string, timeoutMs = 60_000): Promise<VmStatus> {
    return this.#vm(id).activateIncoming(timeoutMs);
  }

  /** Source: the guest's dirty rate in bytes per second, sampled over `seconds` while it runs. */
  sampleDirtyRate(id: string, seconds: number): Promise<number> {
    return this.#vm(id).sampleDirtyRate(seconds);
  }

  /** Source: starts mirroring local disks into the destination's NBD exports. */
  startDiskMirrors(id: string, diskIds: string[], target: { host: string; port: number }): Promise<void> {
    // The boot overlay's image is on both hosts (the destination made its overlay over it), so
    // only the overlay's own clusters cross; volumes are copied whole.
    const disks = diskIds.map((diskId) => ({ id: diskId, sync: diskId === BOOT_DISK_NODE ? ('top' as const) : ('full' as const) }));
    return this.#vm(id).migration.startDiskMirrors(disks, target);
  }

  /** Source: the disk mirrors of a migration in progress (not queued). */
  diskMirrors(id: string): ReturnType<QemuProcess['diskMirrors']> {
    return this.#vm(id).migration.diskMirrors();
  }

  /** Source, on rollback: abandons the disk mirrors. */
  async abortDiskMirrors(id: string): Promise<void> {
    await this.#vm(id).migration.abortDiskMirrors();
  }

  /** Source: starts sending a running VM to `uri`; returns once the migration has started. */
  migrateOut(id: string, uri: string, options: MigrateOutOptions): Promise<VmStatus> {
    return this.#vm(id).migration.migrateOut(uri, options);
  }

  /** The QEMU `query-migrate` of a VM on this host (not queued: read while a migration runs). */
  async migrationStatus(id: string): Promise<Record<string, unknown>> {
    return this.#vm(id).migration.migrationStatus();
  }

  /** The times of the VM's last STOP and RESUME, without asking QEMU (not queued). */
  pauseTimes(id: string): PauseTimes {
    return this.#vm(id).migration.pauseTimes();
  }

  /** Changes the parameters of the running migration (e.g. a widened downtime limit). */
  async setMigrationParameters(id: string, parameters: { downtimeLimitMs?: number; maxBandwidthBytesPerSec?: number }): Promise<void> {
    await this.#vm(id).migration.setMigrationParameters(parameters);
  }

  /** Source: switches the running migration to post-copy. */
  async startPostcopy(id: string): Promise<void> {
    await this.#vm(id).migration.startPostcopy();
  }

  /** Either end, in post-copy: closes the stream so this end waits in `postcopy-paused`. */
  async pauseMigration(id: string): Promise<void> {
    await this.#vm(id).migration.pauseMigration();
  }

  /** Destination in `postcopy-paused`: listens on `uri` for the source to resume. */
  async recoverIncoming(id: string, uri: string): Promise<void> {
    await this.#vm(id).migration.recoverIncoming(uri);
  }

  /** Source in `postcopy-paused`: reconnects to the destination's recovery listener. */
  async resumeMigration(id: string, uri: string): Promise<void> {
    await this.#vm(id).migration.resumeMigration(uri);
  }

  /** Source: cancels the migration; the VM goes on running here. A VM not here is no error. */
  async cancelMigration(id: string): Promise<void> {
    await this.#vms.get(id)?.migration.cancelMigration();
  }

  /** Takes snapshot `tag` of the VM's disks, and with `withMemory` of its running state (vm-snapshot-control.ts). */
  takeSnapshot(id: string, tag: string, withMemory: boolean): Promise<TakenSnapshot> {
    return this.#vm(id).snapshotWork('taking a snapshot', (host) => takeSnapshot(host, tag, withMemory));
  }

  /** Backs the VM's disks up into the backup store (vm-backup.ts), in its lifecycle lane. */
  takeBackup(id: string, request: Omit<Parameters<typeof takeBackup>[1], 'signal'>): Promise<TakenBackup> {
    return this.#vm(id).snapshotWork('taking a backup', (host) => takeBackup(host, request));
  }

  /**
   * Copies into the VM's disks restored live what they still read from their backup
   * (live-restore.ts), in its lifecycle lane: it is not stopped, moved or snapshotted meanwhile.
   */
  pullRestoredDisks(id: string, restores: LiveRestores): Promise<Array<{ disk: string; fetchedBytes: number }>> {
    return this.#vm(id).snapshotWork('pulling its restored disks', (host) => restores.stream(host));
  }

  /** Rolls the VM back to snapshot `tag`: its disks, and for a memory snapshot its running state. */
  async rollbackSnapshot(id: string, tag: string, snapshot: { disks: string[]; withMemory: boolean }): Promise<VmStatus> {
    const vm = this.#vm(id);
    await vm.snapshotWork('rolling back to a snapshot', (host) => rollbackSnapshot(host, tag, snapshot));
    return vm.status();
  }

  /** Deletes snapshot `tag` from the VM's disks and its memory file. */
  deleteSnapshot(id: string, tag: string): Promise<void> {
    return this.#vm(id).snapshotWork('deleting a snapshot', (host) => deleteSnapshot(host, tag));
  }

  /** Makes the stopped VM's disks a template's: read-only, readable by its linked clones' QEMUs. */
  sealTemplate(id: string): Promise<void> {
    return this.#vm(id).snapshotWork('making it a template', (host) => sealTemplate(host));
  }

  /** Stops the VM if it runs (forcefully after the deadline) and removes all its files. */
  delete(id: string, options: { gracefulTimeoutMs?: number } = {}): Promise<void> {
    return this.#vm(id).delete(options);
  }

  /**
   * Resolves with the status once the guest has printed its readiness line in its current boot;
   * rejects with `VM_READY_TIMEOUT` after `timeoutMs`, or `VM_INVALID_STATE` when it is not running.
   */
  async waitReady(id: string, timeoutMs: number): Promise<VmStatus> {
    return this.#vm(id).waitReady(timeoutMs);
  }

  /** The last `lines` lines of the VM's serial console. */
  async consoleLog(id: string, lines: number): Promise<string[]> {
    return this.#vm(id).consoleLog(lines);
  }

  /** The unix socket of the VM's serial console, for an interactive attach. */
  consoleSocket(id: string): string {
    return this.#vm(id).consoleSocket();
  }

  /** The unix socket of the VM's VNC display. */
  vncSocket(id: string): string {
    return this.#vm(id).vncSocket();
  }

  /** The VM's display takes `password` for `validSeconds` (one client's way in). */
  setVncPassword(id: string, password: string, validSeconds: number): Promise<void> {
    return this.#vm(id).setVncPassword(password, validSeconds);
  }

  /** The VM's display password stops working now. */
  expireVncPassword(id: string): Promise<void> {
    return this.#vm(id).expireVncPassword();
  }

  /** Lets go of every QEMU without stopping it (agent shutdown): VMs keep running. */
  detachAll(): void {
    for (const vm of this.#vms.values()) vm.detach();
  }

  /** Stops every running VM (used by `nubis down` without --keep-vms). */
  async stopAll(options: { gracefulTimeoutMs?: number } = {}): Promise<void> {
    await Promise.all([...this.#vms.values()].filter((vm) => vm.hasQemu).map((vm) => vm.stop(options).catch(() => undefined)));
  }
}
