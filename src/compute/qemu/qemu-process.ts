/**
 * One QEMU process on this host: launched detached (so it outlives the agent), re-attached after
 * an agent restart, driven over QMP, and observed through QMP events rather than polling.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { NubisError } from '../../core/errors.ts';
import { processAlive } from '../../core/process-alive.ts';
import { QmpClient, QmpError, type QmpEvent } from '../qmp/qmp-client.ts';
import type { DiskLimits, DiskSpec, VmSpec } from '../vm-spec.ts';
import { blockIoThrottleArgs, limitsAnything } from './disk-throttle.ts';
import { type MigrationTlsCredentials, loadMigrationTls } from './migration-tls.ts';
import { buildQemuArgs, STORAGE_TLS_OBJECT, type QemuLaunchOptions, type VmRuntimePaths } from './command-line.ts';

export const QEMU_BINARY = 'qemu-system-x86_64';

/** The migration stream's cap when none is asked for: far above any link, so in effect none. */
const UNCAPPED_MIGRATION_BYTES_PER_SEC = 100_000_000_000;

/** The run state of a VM's QEMU process as a user sees it. */
/** Names of the block nodes, jobs and exports that mirror a disk during a migration. */
const MIRROR_PREFIX = 'mirror-';

export type QemuRunState = 'running' | 'paused' | 'stopped' | 'crashed' | 'migrating' | 'incoming';

/**
 * The control files of a VM in its folder. What QEMU itself creates (sockets, the serial log, its
 * pid file) is in `run/`, the one folder QEMU's user may write (host/vm-files.ts); QEMU's own log
 * is the agent's, opened by the agent and handed over as QEMU's output.
 */
export function runtimePathsOf(vmDir: string): VmRuntimePaths & { runDir: string; qemuLog: string } {
  const runDir = join(vmDir, 'run');
  return {
    runDir,
    qmpSocket: join(runDir, 'qmp.sock'),
    consoleSocket: join(runDir, 'console.sock'),
    vncSocket: join(runDir, 'vnc.sock'),
    serialLog: join(runDir, 'serial.log'),
    pidFile: join(runDir, 'qemu.pid'),
    qemuLog: join(vmDir, 'qemu.log'),
  };
}

/** True when `pid` is alive and is a QEMU whose command line names `qmpSocket` (not a reused pid). */
function isOurQemu(pid: number, qmpSocket: string): boolean {
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmdline.includes(qmpSocket);
  } catch {
    return false;
  }
}

function readPid(pidFile: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(pidFile, 'utf8').trim(), 10);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** The pid of the QEMU running for `vmDir`, or undefined (no pid file, gone, or a reused pid). */
export function runningQemuPid(vmDir: string): number | undefined {
  const paths = runtimePathsOf(vmDir);
  const pid = readPid(paths.pidFile);
  return pid !== undefined && isOurQemu(pid, paths.qmpSocket) ? pid : undefined;
}

/** Maps QMP's `query-status` run states onto ours. */
function runStateFromQmp(status: string): QemuRunState {
  switch (status) {
    case 'running':
      return 'running';
    case 'inmigrate':
    case 'prelaunch':
      return 'incoming';
    case 'finish-migrate':
    case 'postmigrate':
      return 'migrating';
    case 'shutdown':
      return 'stopped';
    case 'guest-panicked':
    case 'internal-error':
    case 'io-error':
      return 'crashed';
    default:
      return 'paused';
  }
}

export interface QemuProcessEvents {
  /** The run state changed (from a QMP event or the process ending). */
  onState?: (state: QemuRunState, reason: string) => void;
  /** Every QMP event, for the event log and migration progress. */
  onQmpEvent?: (event: QmpEvent) => void;
  /** QMP wire traffic, for a debug-level log. */
  onQmpTraffic?: (direction: '>' | '<', line: string) => void;
}

/** A running (or just ended) QEMU process and its QMP session. */
export class QemuProcess {
  readonly pid: number;
  readonly vmDir: string;
  readonly qmp: QmpClient;
  #state: QemuRunState;
  #shutdownSeen = false;
  #stopRequested = false;
  #detached = false;
  readonly #events: QemuProcessEvents;
  /** Resolves when the process has ended, with the state it ended in. */
  readonly exited: Promise<QemuRunState>;

  private constructor(pid: number, vmDir: string, qmp: QmpClient, state: QemuRunState, events: QemuProcessEvents) {
    this.pid = pid;
    this.vmDir = vmDir;
    this.qmp = qmp;
    this.#state = state;
    this.#events = events;
    void this.#followEvents();
    this.exited = qmp.closed.then(async () => {
      if (this.#detached) return this.#state;
      await waitForPidGone(pid);
      const ended: QemuRunState = this.#shutdownSeen || this.#stopRequested ? 'stopped' : 'crashed';
      this.#setState(ended, ended === 'crashed' ? 'QEMU exited without a shutdown' : 'QEMU exited after shutdown');
      return ended;
    });
  }

  /**
   * Starts QEMU for `spec` in `vmDir`, detached in its own session so that it survives the agent,
   * and returns once QMP answers. A QEMU that fails to start rejects with `VM_START_FAILED`
   * and the end of QEMU's own error output.
   */
  static async launch(spec: VmSpec, vmDir: string, options: QemuLaunchOptions & { timeoutMs?: number; events?: QemuProcessEvents }): Promise<QemuProcess> {
    const paths = runtimePathsOf(vmDir);
    await mkdir(paths.runDir, { recursive: true });
    // Stale sockets from an earlier run would make QEMU fail to bind.
    await Promise.all([paths.qmpSocket, paths.consoleSocket, paths.vncSocket, paths.pidFile].map((path) => rm(path, { force: true })));
    const args = buildQemuArgs(spec, paths, options);
    const logFd = openSync(paths.qemuLog, 'a', 0o600);
    let child: ChildProcess;
    try {
      // Files the agent opened and measured (kernel, initrd) become QEMU's fds 3, 4, ...
      const launcher = options.platform?.launcher;
      const [command, commandArgs] = launcher ? [launcher.command, [...launcher.args, QEMU_BINARY, ...args]] : [QEMU_BINARY, args];
      child = spawn(command, commandArgs, { detached: true, stdio: ['ignore', logFd, logFd, ...(options.platform?.inheritFds ?? [])] });
    } finally {
      closeSync(logFd);
    }
    let exitedEarly: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let spawnError: Error | undefined;
    child.on('error', (error) => (spawnError = error));
    child.on('exit', (code, signal) => (exitedEarly = { code, signal }));
    child.unref();
    const deadline = Date.now() + (options.timeoutMs ?? 30_000);
    // QEMU creates the QMP socket while it initialises; connecting is the event we wait for.
    for (;;) {
      if (spawnError)
        throw new NubisError('VM_START_FAILED', `Cannot run ${QEMU_BINARY}: ${spawnError.message}; install the qemu-system-x86 package`, { cause: spawnError });
      if (exitedEarly) {
        const log = await readFile(paths.qemuLog, 'utf8').catch(() => '');
        const tail = log.trim().split('\n').slice(-5).join('\n');
        throw new NubisError('VM_START_FAILED', `QEMU exited while starting VM ${spec.name} (code ${exitedEarly.code ?? exitedEarly.signal}): ${tail}`, {
          details: { qemuLog: tail },
        });
      }
      if (existsSync(paths.qmpSocket)) {
        try {
          const qmp = await QmpClient.connect(paths.qmpSocket, { timeoutMs: 10_000, traffic: options.events?.onQmpTraffic });
          const status = await qmp.execute<{ status: string }>('query-status');
          return new QemuProcess(child.pid!, vmDir, qmp, runStateFromQmp(status.status), options.events ?? {});
        } catch (error) {
          if (!(error instanceof QmpError) || error.code !== 'QMP_CONNECT_FAILED') throw error;
        }
      }
      if (Date.now() > deadline) {
        if (child.pid) process.kill(child.pid, 'SIGKILL');
        throw new NubisError('VM_START_FAILED', `QEMU for VM ${spec.name} did not open its QMP socket within ${options.timeoutMs ?? 30_000} ms`);
      }
      await delay(20);
    }
  }

  /**
   * Re-attaches to the QEMU of `vmDir` after an agent restart. Returns undefined when no QEMU of
   * this VM runs (the pid file is missing, the process is gone, or the pid was reused).
   */
  static async attach(vmDir: string, events: QemuProcessEvents = {}): Promise<QemuProcess | undefined> {
    const paths = runtimePathsOf(vmDir);
    const pid = readPid(paths.pidFile);
    if (pid === undefined || !isOurQemu(pid, paths.qmpSocket)) return undefined;
    const qmp = await QmpClient.connect(paths.qmpSocket, { timeoutMs: 10_000, traffic: events.onQmpTraffic });
    const status = await qmp.execute<{ status: string }>('query-status');
    return new QemuProcess(pid, vmDir, qmp, runStateFromQmp(status.status), events);
  }

  get state(): QemuRunState {
    return this.#state;
  }

  /** True once Nubis asked this QEMU to stop (so its end is no surprise). */
  get stopRequested(): boolean {
    return this.#stopRequested;
  }

  /** Pauses the vCPUs (QMP `stop`). */
  async pause(): Promise<void> {
    await this.qmp.execute('stop');
    this.#setState('paused', 'paused by request');
  }

  /** Resumes the vCPUs (QMP `cont`). */
  async resume(): Promise<void> {
    await this.qmp.execute('cont');
    this.#setState('running', 'resumed by request');
  }

  /**
   * Hot-plugs a disk into a free root port. Returns the port, which the caller keeps until
   * `detachDisk` or the next boot (a fresh QEMU puts every disk on the root bus).
   */
  async attachDisk(disk: DiskSpec, port: string): Promise<void> {
    await this.qmp.execute('blockdev-add', blockdevQmpOf(disk));
    try {
      await this.qmp.execute('device_add', { driver: 'virtio-blk-pci', id: `${disk.id}-disk`, drive: disk.id, bus: port });
      if (limitsAnything(disk.limits)) await this.setDiskLimits(disk.id, disk.limits);
    } catch (error) {
      await this.qmp.execute('blockdev-del', { 'node-name': disk.id }).catch(() => undefined);
      throw error;
    }
  }

  /**
   * Sets (none: lifts) the IO limits of disk `diskId` in its device's block backend
   * (disk-throttle.ts). The backend belongs to the virtio-blk device inside the PCI proxy that
   * -device names, so QMP is given that inner device's QOM path.
   */
  async setDiskLimits(diskId: string, limits: DiskLimits | undefined): Promise<void> {
    await this.qmp.execute('block_set_io_throttle', { ...blockIoThrottleArgs(`/machine/peripheral/${diskId}-disk/virtio-backend`, limits) });
  }

  /**
   * Unplugs a disk: the guest is asked to let go (PCIe hot-unplug), and only once QEMU reports
   * the device gone is the block node removed, so no write in flight is lost.
   */
  async detachDisk(diskId: string, timeoutMs = 30_000): Promise<void> {
    const deviceId = `${diskId}-disk`;
    const deleted = this.qmp.waitForEvent('DEVICE_DELETED', (event) => event.data.device === deviceId, { timeoutMs });
    await this.qmp.execute('device_del', { id: deviceId });
    try {
      await deleted;
    } catch (error) {
      throw new NubisError(
        'VM_DETACH_TIMEOUT',
        `The guest did not release disk ${diskId} within ${timeoutMs / 1000} s; is something using it? (it stays attached)`,
        { cause: error },
      );
    }
    await this.qmp.execute('blockdev-del', { 'node-name': diskId });
  }

  /** Turns migration capabilities on or off (both ends must agree, e.g. on `postcopy-ram`). */
  async setMigrationCapabilities(capabilities: Record<string, boolean>): Promise<void> {
    await this.qmp.execute('migrate-set-capabilities', { capabilities: Object.entries(capabilities).map(([capability, state]) => ({ capability, state })) });
  }

  /** Loads a migration's TLS credentials for the next migration, or clears them (migration-tls.ts). */
  async loadMigrationTls(tls: MigrationTlsCredentials | undefined): Promise<void> {
    await loadMigrationTls(this.qmp, this.vmDir, tls);
  }

  /** Destination: starts listening for the migration stream (QEMU was started with `-incoming defer`). */
  async acceptIncomingMigration(uri: string): Promise<void> {
    await this.qmp.execute('migrate-incoming', { uri });
  }

  /** Source: starts sending the VM to `uri` with the given limits. */
  async startMigration(uri: string, limits: { downtimeLimitMs: number; maxBandwidthBytesPerSec?: number }): Promise<void> {
    await this.qmp.execute('migrate-set-parameters', {
      'downtime-limit': limits.downtimeLimitMs,
      // Always set: QEMU keeps parameters from an earlier (say, cancelled and capped) migration,
      // and its own default caps the stream at 128 MiB/s.
      'max-bandwidth': limits.maxBandwidthBytesPerSec ?? UNCAPPED_MIGRATION_BYTES_PER_SEC,
      // A cap holds in post-copy too (QEMU's own default there is unlimited: 0).
      'max-postcopy-bandwidth': limits.maxBandwidthBytesPerSec ?? 0,
    });
    await this.qmp.execute('migrate', { uri });
  }

  /** QEMU's view of the migration in progress (`query-migrate`). */
  migrationStatus(): Promise<Record<string, unknown>> {
    return this.qmp.execute<Record<string, unknown>>('query-migrate');
  }

  /** Changes migration parameters, also while a migration runs (e.g. a widened `downtime-limit`). */
  async setMigrationParameters(parameters: { downtimeLimitMs?: number; maxBandwidthBytesPerSec?: number }): Promise<void> {
    await this.qmp.execute('migrate-set-parameters', {
      ...(parameters.downtimeLimitMs !== undefined ? { 'downtime-limit': parameters.downtimeLimitMs } : {}),
      ...(parameters.maxBandwidthBytesPerSec !== undefined ? { 'max-bandwidth': parameters.maxBandwidthBytesPerSec } : {}),
    });
  }

  /**
   * How fast the guest dirties memory, sampled over `seconds` by QEMU's `calc-dirty-rate` in its
   * default page-sampling mode, which needs neither KVM's dirty ring nor dirty logging of all
   * memory, so it measures the same way under TCG and KVM. Bytes per second.
   */
  async sampleDirtyRate(seconds: number): Promise<number> {
    await this.qmp.execute('calc-dirty-rate', { 'calc-time': seconds });
    const deadline = Date.now() + seconds * 1000 + 10_000;
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(250, seconds * 250)));
      const result = await this.qmp.execute<{ status: string; 'dirty-rate'?: number }>('query-dirty-rate');
      // QEMU reports whole MB/s.
      if (result.status === 'measured') return (result['dirty-rate'] ?? 0) * 1_000_000;
      if (Date.now() > deadline) throw new Error(`calc-dirty-rate did not finish within ${seconds + 10} s (status ${result.status})`);
    }
  }

  /**
   * Post-copy with a broken or stalled link: shuts the migration stream here, so this end waits in
   * `postcopy-paused` (guest pages still missing stay missing; nothing is lost) for a recovery.
   */
  async pauseMigration(): Promise<void> {
    await this.qmp.execute('migrate-pause', undefined, { outOfBand: true, timeoutMs: 10_000 });
  }

  /**
   * Destination in `postcopy-paused`: listens on `uri` for the source to resume the stream.
   * Out-of-band, like the pause: the destination's main loop may be stuck on a missing page.
   */
  async recoverIncomingMigration(uri: string): Promise<void> {
    await this.qmp.execute('migrate-recover', { uri }, { outOfBand: true, timeoutMs: 10_000 });
  }

  /** Source in `postcopy-paused`: reconnects to the destination's recovery listener and goes on. */
  async resumeMigration(uri: string): Promise<void> {
    await this.qmp.execute('migrate', { uri, resume: true });
  }

  /**
   * Destination: serves `diskIds` over NBD at `listen` so that the source can mirror its local
   * disks into them while the VM still runs there (QEMU activates the exported nodes for writing).
   */
  async exportDisksForMirror(diskIds: string[], listen: { host: string; port: number }): Promise<void> {
    await this.qmp.execute('nbd-server-start', { addr: { type: 'inet', data: { host: listen.host, port: String(listen.port) } } });
    for (const id of diskIds)
      await this.qmp.execute('block-export-add', { type: 'nbd', id: `${MIRROR_PREFIX}${id}`, 'node-name': id, name: id, writable: true });
  }

  /** Destination, after the switch-over: the mirror exports are no longer needed. */
  async stopDiskExports(): Promise<void> {
    await this.qmp.execute('nbd-server-stop');
  }

  /**
   * Source: mirrors each disk into the destination's export of the same name: `full` copies a
   * whole disk, `top` only an overlay's own clusters (its image is on both hosts). Write-
   * blocking: once a mirror is ready, every guest write reaches both copies before it completes,
   * so the copies stay equal however fast the guest writes.
   */
  async startDiskMirrors(disks: Array<{ id: string; sync: 'full' | 'top' }>, target: { host: string; port: number }): Promise<void> {
    for (const { id, sync } of disks) {
      await this.qmp.execute('blockdev-add', {
        driver: 'nbd',
        'node-name': `${MIRROR_PREFIX}${id}`,
        server: { type: 'inet', host: target.host, port: String(target.port) },
        export: id,
      });
      await this.qmp.execute('blockdev-mirror', {
        'job-id': `${MIRROR_PREFIX}${id}`,
        device: id,
        target: `${MIRROR_PREFIX}${id}`,
        sync,
        'copy-mode': 'write-blocking',
      });
    }
  }

  /** Source: the disk mirrors in progress, with bytes copied and whether each is in step. */
  async diskMirrors(): Promise<Array<{ disk: string; lengthBytes: number; copiedBytes: number; ready: boolean; status: string }>> {
    const jobs = await this.qmp.execute<Array<{ device: string; len: number; offset: number; ready: boolean; status: string }>>('query-block-jobs');
    return jobs
      .filter((job) => job.device.startsWith(MIRROR_PREFIX))
      .map((job) => ({ disk: job.device.slice(MIRROR_PREFIX.length), lengthBytes: job.len, copiedBytes: job.offset, ready: job.ready, status: job.status }));
  }

  /**
   * Source, with the VM stopped for the switch-over: ends the mirrors leaving the destination's
   * copies complete (cancelling a ready mirror flushes it and keeps the source as it is).
   * `force` abandons them instead (rollback); either way the NBD connections go.
   */
  async endDiskMirrors(options: { force?: boolean } = {}): Promise<void> {
    const jobs = await this.diskMirrors();
    for (const job of jobs) await this.qmp.execute('block-job-cancel', { device: `${MIRROR_PREFIX}${job.disk}`, ...(options.force ? { force: true } : {}) });
    const deadline = Date.now() + 60_000;
    while ((await this.diskMirrors()).length > 0) {
      if (Date.now() > deadline) throw new Error('Disk mirrors did not end within 60 s');
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const nodes = await this.qmp.execute<Array<{ 'node-name': string }>>('query-named-block-nodes', { flat: true });
    for (const node of nodes.filter((n) => n['node-name'].startsWith(MIRROR_PREFIX)))
      await this.qmp.execute('blockdev-del', { 'node-name': node['node-name'] }).catch(() => undefined);
  }

  /**
   * Source, in `pre-switchover` (capability `pause-before-switchover`): lets the paused migration
   * go on to the switch-over.
   */
  async continueMigration(): Promise<void> {
    await this.qmp.execute('migrate-continue', { state: 'pre-switchover' });
  }

  /** Asks QEMU for its run state (`query-status`), for when an event may have been missed. */
  /**
   * Bytes read and written by the guest's disks since this QEMU started, summed over its block
   * devices (QMP `query-blockstats`: `stats.rd_bytes`, `stats.wr_bytes`).
   */
  async blockStats(): Promise<{ readBytes: number; writtenBytes: number }> {
    const devices = await this.qmp.execute<Array<{ stats?: { rd_bytes?: number; wr_bytes?: number } }>>('query-blockstats');
    let readBytes = 0;
    let writtenBytes = 0;
    for (const device of devices) {
      readBytes += device.stats?.rd_bytes ?? 0;
      writtenBytes += device.stats?.wr_bytes ?? 0;
    }
    return { readBytes, writtenBytes };
  }

  async queryRunState(): Promise<QemuRunState> {
    return runStateFromQmp((await this.qmp.execute<{ status: string }>('query-status')).status);
  }

  /** Source: switches a running pre-copy migration to post-copy (needs `postcopy-ram` on both ends). */
  async startPostcopy(): Promise<void> {
    await this.qmp.execute('migrate-start-postcopy');
  }

  /** Source: abandons the migration before switch-over; the VM keeps running here. */
  async cancelMigration(): Promise<void> {
    await this.qmp.execute('migrate_cancel');
  }

  /**
   * Sets the VNC password and when it stops being accepted (QAPI ui.json `set_password`, then
   * `expire_password` with `+N` seconds). VNC authentication uses at most 8 characters of it.
   * The expiry counts only when a client authenticates: connections already in are kept.
   */
  async setVncPassword(password: string, validSeconds: number): Promise<void> {
    await this.qmp.execute('set_password', { protocol: 'vnc', password }, { timeoutMs: 5_000 });
    await this.qmp.execute('expire_password', { protocol: 'vnc', time: `+${Math.max(1, Math.round(validSeconds))}` }, { timeoutMs: 5_000 });
  }

  /** Expires the VNC password at once (`expire_password` `now`): no further client gets in with it. */
  async expireVncPassword(): Promise<void> {
    await this.qmp.execute('expire_password', { protocol: 'vnc', time: 'now' }, { timeoutMs: 5_000 });
  }

  /** Destination: tells the network where the VM now is (RARP from each NIC, repeated). */
  async announceSelf(): Promise<void> {
    await this.qmp.execute('announce-self', { initial: 50, max: 550, rounds: 5, step: 100 });
  }

  /** Hard reset, like the reset button. */
  async reset(): Promise<void> {
    await this.qmp.execute('system_reset');
  }

  /**
   * Stops the VM: ACPI power button first, so the guest shuts down cleanly; if it is still
   * running after `gracefulTimeoutMs` (or `force`), QEMU is told to quit; if QEMU does not end,
   * it is killed. Resolves when the process is gone. Returns how it ended.
   */
  async stop(options: { gracefulTimeoutMs?: number; force?: boolean } = {}): Promise<'graceful' | 'forced' | 'killed'> {
    this.#stopRequested = true;
    if (this.qmp.isClosed) {
      await this.exited;
      return 'graceful';
    }
    const gracefulTimeoutMs = options.gracefulTimeoutMs ?? 30_000;
    if (!options.force && this.#state === 'running') {
      await this.qmp.execute('system_powerdown').catch(() => undefined);
      const ended = await Promise.race([this.exited.then(() => true), delay(gracefulTimeoutMs).then(() => false)]);
      if (ended) return 'graceful';
    }
    await this.qmp.execute('quit', undefined, { timeoutMs: 5_000 }).catch(() => undefined);
    const ended = await Promise.race([this.exited.then(() => true), delay(10_000).then(() => false)]);
    if (ended) return 'forced';
    process.kill(this.pid, 'SIGKILL');
    await this.exited;
    return 'killed';
  }

  /** Drops the QMP session without touching QEMU (the agent is shutting down). */
  detach(): void {
    this.#detached = true; // QEMU goes on running: its end must not be reported from here
    this.qmp.close();
  }

  #setState(state: QemuRunState, reason: string): void {
    if (this.#state === state) return;
    this.#state = state;
    this.#events.onState?.(state, reason);
  }

  async #followEvents(): Promise<void> {
    for await (const event of this.qmp.events()) {
      this.#events.onQmpEvent?.(event);
      switch (event.event) {
        case 'STOP':
          if (this.#state === 'running') this.#setState('paused', 'vCPUs stopped');
          break;
        case 'RESUME':
          this.#setState('running', 'vCPUs resumed');
          break;
        case 'SHUTDOWN':
          this.#shutdownSeen = true;
          break;
        case 'GUEST_PANICKED':
          this.#setState('crashed', 'the guest kernel panicked');
          break;
        default:
          break;
      }
    }
  }
}

/** The QMP `blockdev-add` arguments of a disk, matching what `diskBlockdev` puts on the command line. */
function blockdevQmpOf(disk: DiskSpec): Record<string, unknown> {
  const file =
    disk.kind === 'file'
      ? { driver: 'file', filename: disk.path }
      : disk.tcp
        ? // The credentials object exists when the VM started with a disk over TCP (command-line.ts).
          {
            driver: 'nbd',
            server: { type: 'inet', host: disk.tcp.host, port: String(disk.tcp.port) },
            export: disk.exportName,
            'tls-creds': STORAGE_TLS_OBJECT,
          }
        : { driver: 'nbd', server: { type: 'unix', path: disk.socketPath }, export: disk.exportName };
  return { driver: disk.kind === 'file' ? disk.format : 'raw', 'node-name': disk.id, 'read-only': disk.readOnly ?? false, file };
}

/**
 * After QMP closes, the process may need a moment to exit. A re-attached QEMU is not our child,
 * so its end is seen through /proc.
 */
async function waitForPidGone(pid: number): Promise<void> {
  for (let attempt = 0; attempt < 500 && processAlive(pid); attempt++) await delay(10);
}
