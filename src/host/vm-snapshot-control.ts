/**
 * Snapshots of one VM on its host: taken, rolled back and deleted in the VM's lifecycle lane
 * (managed-vm.ts `snapshotWork`), so no start, stop or disk change comes between their steps.
 *
 * Mechanisms, per kind of disk, and why:
 * - qcow2 files (the root overlay over an image, dir-pool volumes): qcow2 internal snapshots. They
 *   live inside the file itself (nothing to name, copy or lose beside it), are instant
 *   (copy-on-write on the clusters' refcounts) and QMP takes them on a running VM:
 *   `blockdev-snapshot-internal-sync`, all disks in one `transaction`, so one instant for all
 *   disks. A stopped VM's are taken with `qemu-img snapshot -c`. Rollback is `qemu-img snapshot -a`
 *   with QEMU stopped: a guest's page cache over a disk changed under it would be corrupt, so a
 *   disk-only rollback of a running VM restarts it (a fresh boot), as Proxmox and Incus do.
 * - storage-node volumes (raw over NBD) and raw files: refused for now (VM_SNAPSHOT_UNSUPPORTED).
 *   The storage engine snapshots a volume (`nubis volume snapshot`) but has no rollback in place,
 *   and a VM snapshot that covers only some of its disks would not be one instant.
 * - memory (`--with-memory`): QEMU's migration stream written to a file (`file:` URI, QEMU 8.2+)
 *   in the VM's `run/`, the one folder its unprivileged QEMU may write. The vCPUs stop first
 *   (QMP `stop`), the disks are snapshotted, the memory saved, then the vCPUs go on: disks and
 *   memory are of the same instant. (`snapshot-save` would keep the memory in a qcow2 too, but a
 *   VM booted from a kernel, like the tiny image, may have no qcow2 at all.) Rollback: QEMU stops,
 *   the disks are reverted, a new QEMU starts with `-incoming defer` and loads the file
 *   (`migrate-incoming`), and the guest continues from the snapshot point without a reboot.
 *
 * Nothing here is kept on the host but the qcow2 snapshots and the memory files: which snapshots
 * a VM has is the control plane's record, so they survive an agent restart as the files do.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, chown, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { BOOT_DISK_NODE } from '../compute/qemu/command-line.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import { VMS_GID } from '../compute/vm-user.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import type { VmQemu } from './vm-qemu.ts';

const run = promisify(execFile);

/** A snapshot's name inside qcow2 files and memory files: the control plane's snapshot id. */
export const SNAPSHOT_TAG_FORMAT = /^snap-[0-9a-f]{12}$/;

/** How long saving or loading a guest's memory may take (a few hundred MiB under TCG). */
const MEMORY_TIMEOUT_MS = 300_000;

/** One disk a snapshot covers: its block node and its qcow2 file. */
export interface SnapshotDisk {
  id: string;
  path: string;
}

/** What the lifecycle lane hands snapshot work: the VM, its QEMU, and ways to stop and relaunch it. */
export interface SnapshotHost {
  readonly name: string;
  readonly dir: string;
  spec(): VmSpec;
  /** The disks hot-plugged into its running QEMU (a fresh QEMU has them elsewhere). */
  hotplugged(): string[];
  qemu(): VmQemu | undefined;
  /** Ends its QEMU at once (its state is being replaced, so nothing is shut down cleanly). */
  stopQemu(): Promise<void>;
  /** Starts QEMU again: a boot, or with `incoming` one that waits for a saved state. */
  launch(incoming?: string): Promise<VmQemu>;
  /** The guest goes on from a saved state: wanted running, and ready as it was. */
  restored(): void;
}

/** What a snapshot took. */
export interface TakenSnapshot {
  disks: string[];
  memoryBytes?: number;
}

function checkedTag(tag: string): string {
  if (!SNAPSHOT_TAG_FORMAT.test(tag))
    throw new NubisError('VALIDATION_FAILED', `${JSON.stringify(tag).slice(0, 40)} is not a snapshot id (snap-<12 hex digits>)`);
  return tag;
}

/** The file a snapshot's memory is saved in. */
export function memoryFileOf(dir: string, tag: string): string {
  return join(dir, 'run', `${checkedTag(tag)}.vmstate`);
}

/**
 * The disks a snapshot of `spec` covers (its writable qcow2 files); a writable disk of another
 * kind is refused, naming it and what to do, since a snapshot must hold every disk the guest writes.
 */
export function snapshotDisksOf(spec: VmSpec): SnapshotDisk[] {
  for (const disk of spec.disks) {
    if (disk.readOnly || (disk.kind === 'file' && disk.format === 'qcow2')) continue;
    const what = disk.kind === 'nbd' ? `storage-node volume ${disk.exportName}` : `raw file ${disk.path}`;
    throw new NubisError(
      'VM_SNAPSHOT_UNSUPPORTED',
      `VM ${spec.name} has disk ${disk.id} on a ${what}, which VM snapshots do not cover (qcow2 disks only); snapshot it with nubis volume snapshot, or detach it first`,
    );
  }
  return qcow2DisksOf(spec);
}

/** The VM's writable qcow2 disks: its root overlay, then its file volumes. */
function qcow2DisksOf(spec: VmSpec): SnapshotDisk[] {
  const disks: SnapshotDisk[] = spec.boot.kind === 'disk' ? [{ id: BOOT_DISK_NODE, path: spec.boot.path }] : [];
  for (const disk of spec.disks) if (disk.kind === 'file' && disk.format === 'qcow2' && !disk.readOnly) disks.push({ id: disk.id, path: disk.path });
  return disks;
}

/**
 * What a saved memory state needs of the QEMU that loads it: the same devices, as live migration
 * needs (vCPUs, RAM, disks, NICs, TPM and firmware). Kept beside the memory file, in the VM's
 * root-owned folder, and compared before a rollback stops anything.
 */
function deviceModelOf(spec: VmSpec, hotplugged: string[]): string {
  return JSON.stringify({
    cpus: spec.cpus,
    maxCpus: spec.maxCpus ?? spec.cpus,
    topology: spec.cpuTopology ?? null,
    memoryMb: spec.memoryMb,
    boot: spec.boot.kind,
    disks: spec.disks.map((d) => d.id),
    nics: spec.nics.map((n) => [n.id, n.mac]),
    tpm: spec.tpm ?? false,
    firmware: spec.firmware ?? 'bios',
    hotplugged,
  });
}

function deviceModelFileOf(dir: string, tag: string): string {
  return join(dir, `${checkedTag(tag)}.devices.json`);
}

async function qemuImg(args: string[]): Promise<void> {
  try {
    await run('qemu-img', args);
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim();
    throw new NubisError('VM_SNAPSHOT_FAILED', `qemu-img ${args.slice(0, 3).join(' ')} failed: ${stderr || messageOf(error)}`);
  }
}

/**
 * Takes snapshot `tag` of every qcow2 disk, and with `withMemory` of the running guest's memory,
 * all of one instant (see the file header). A paused VM stays paused; a stopped one has no memory
 * to save.
 */
export async function takeSnapshot(host: SnapshotHost, tag: string, withMemory: boolean): Promise<TakenSnapshot> {
  checkedTag(tag);
  const disks = snapshotDisksOf(host.spec());
  const qemu = host.qemu();
  if (!qemu) {
    if (withMemory)
      throw new NubisError('VM_INVALID_STATE', `VM ${host.name} is stopped, so it has no memory to save; take the snapshot without --with-memory`);
    for (const disk of disks) await qemuImg(['snapshot', '-c', tag, disk.path]);
    return { disks: disks.map((d) => d.id) };
  }
  if (qemu.state !== 'running' && qemu.state !== 'paused')
    throw new NubisError('VM_INVALID_STATE', `VM ${host.name} is ${qemu.state}; snapshots are taken of running, paused or stopped VMs`);
  if (withMemory && host.hotplugged().length > 0)
    throw new NubisError(
      'VM_INVALID_STATE',
      `VM ${host.name} has disks hot-plugged since it started (${host.hotplugged().join(', ')}), which a restored QEMU could not match; restart it, or take the snapshot without --with-memory`,
    );
  if (withMemory) await writeFile(deviceModelFileOf(host.dir, tag), deviceModelOf(host.spec(), []), { mode: 0o600 });
  const wasRunning = qemu.state === 'running';
  // Stopping the vCPUs drains every disk's requests in flight: what follows is one instant.
  if (wasRunning) await qemu.pause();
  const memoryFile = memoryFileOf(host.dir, tag);
  try {
    if (disks.length > 0)
      await qemu.qmp.execute('transaction', {
        actions: disks.map((disk) => ({ type: 'blockdev-snapshot-internal-sync', data: { device: disk.id, name: tag } })),
      });
    if (withMemory) await saveMemory(qemu, memoryFile);
  } catch (error) {
    await rm(memoryFile, { force: true });
    await rm(deviceModelFileOf(host.dir, tag), { force: true });
    await deleteLive(qemu, disks, tag).catch(() => undefined);
    throw error instanceof NubisError
      ? error
      : new NubisError('VM_SNAPSHOT_FAILED', `Snapshot of VM ${host.name} failed: ${messageOf(error)}`, { cause: error });
  } finally {
    if (wasRunning) await qemu.resume();
  }
  return { disks: disks.map((d) => d.id), ...(withMemory ? { memoryBytes: await sizeOf(memoryFile) } : {}) };
}

/** Writes the paused guest's state to `file` and waits for it to be complete. */
async function saveMemory(qemu: VmQemu, file: string): Promise<void> {
  await rm(file, { force: true });
  // What a live migration into this QEMU may have turned on does not suit a file (and the QEMU
  // that loads it expects no dirty bitmaps: they end with the QEMU, host/backup-views.ts).
  await qemu.setMigrationCapabilities({ 'postcopy-ram': false, 'pause-before-switchover': false, 'dirty-bitmaps': false });
  await qemu.startMigration(`file:${file}`, { downtimeLimitMs: 300 });
  await migrationEnded(qemu, 'saving the memory');
}

async function migrationEnded(qemu: VmQemu, what: string): Promise<void> {
  const deadline = Date.now() + MEMORY_TIMEOUT_MS;
  for (;;) {
    const status = await qemu.migrationStatus();
    if (status.status === 'completed') return;
    if (status.status === 'failed' || status.status === 'cancelled')
      throw new NubisError('VM_SNAPSHOT_FAILED', `QEMU failed ${what}: ${String(status['error-desc'] ?? status.status)}`);
    if (Date.now() > deadline) throw new NubisError('VM_SNAPSHOT_FAILED', `QEMU did not finish ${what} within ${MEMORY_TIMEOUT_MS / 1000} s`);
    await delay(50);
  }
}

async function sizeOf(file: string): Promise<number> {
  return (await stat(file)).size;
}

/**
 * Rolls the VM back to snapshot `tag`: the disks it covered (`disks`, which must be the VM's
 * qcow2 disks now) and, for a memory snapshot, its running state. A running VM without a memory
 * snapshot restarts (a fresh boot); a stopped one stays stopped.
 */
export async function rollbackSnapshot(host: SnapshotHost, tag: string, snapshot: { disks: string[]; withMemory: boolean }): Promise<void> {
  checkedTag(tag);
  const disks = snapshotDisksOf(host.spec());
  const now = disks.map((d) => d.id).sort();
  if (now.join(',') !== [...snapshot.disks].sort().join(','))
    throw new NubisError(
      'VM_SNAPSHOT_MISMATCH',
      `VM ${host.name} has disks ${now.join(', ') || 'none'} now, its snapshot covers ${snapshot.disks.join(', ') || 'none'}; attach or detach volumes to match it first`,
    );
  const memoryFile = memoryFileOf(host.dir, tag);
  if (snapshot.withMemory) await checkDeviceModel(host, tag, memoryFile);
  const wasRunning = host.qemu() !== undefined;
  await host.stopQemu();
  for (const disk of disks) await qemuImg(['snapshot', '-a', tag, disk.path]);
  if (snapshot.withMemory) {
    const qemu = await host.launch('defer');
    try {
      await qemu.acceptIncomingMigration(`file:${memoryFile}`);
      await migrationEnded(qemu, 'loading the memory');
      // Saved while paused, so it loads paused: the guest goes on from here.
      await qemu.resume();
    } catch (error) {
      await host.stopQemu();
      throw error;
    }
    host.restored();
  } else if (wasRunning) {
    await host.launch();
  }
}

/** Refuses to load a memory state that is missing, or was saved by a QEMU with other devices. */
async function checkDeviceModel(host: SnapshotHost, tag: string, memoryFile: string): Promise<void> {
  if (!existsSync(memoryFile))
    throw new NubisError('VM_SNAPSHOT_FAILED', `The memory of snapshot ${tag} of VM ${host.name} is missing (${memoryFile}); roll back to another snapshot`);
  const saved = await readFile(deviceModelFileOf(host.dir, tag), 'utf8').catch(() => '');
  if (saved !== deviceModelOf(host.spec(), []))
    throw new NubisError(
      'VM_SNAPSHOT_MISMATCH',
      `VM ${host.name} has other devices (vCPUs, memory, disks or NICs) than when memory snapshot ${tag} was taken, so its memory cannot be loaded; set them back first`,
    );
}

/** Deletes snapshot `tag` from every disk that has it (live through QMP, else qemu-img) and its memory file. */
export async function deleteSnapshot(host: SnapshotHost, tag: string): Promise<void> {
  checkedTag(tag);
  const disks = qcow2DisksOf(host.spec()).filter((disk) => existsSync(disk.path));
  const qemu = host.qemu();
  if (qemu) await deleteLive(qemu, disks, tag);
  else for (const disk of disks) await qemuImg(['snapshot', '-d', tag, disk.path]).catch((error) => ignoreMissing(error, tag));
  await rm(memoryFileOf(host.dir, tag), { force: true });
  await rm(deviceModelFileOf(host.dir, tag), { force: true });
}

async function deleteLive(qemu: VmQemu, disks: SnapshotDisk[], tag: string): Promise<void> {
  for (const disk of disks)
    await qemu.qmp.execute('blockdev-snapshot-delete-internal-sync', { device: disk.id, name: tag }).catch((error: unknown) => ignoreMissing(error, tag));
}

/** A disk that never had the snapshot (attached after it, or a failed take) is no failure of a delete. */
function ignoreMissing(error: unknown, tag: string): void {
  if (/not found|can't find|cannot find|could not find/i.test(messageOf(error))) return;
  throw new NubisError('VM_SNAPSHOT_FAILED', `Cannot delete snapshot ${tag}: ${messageOf(error)}`);
}

/**
 * Makes a stopped VM's disks a template's: root's, readable by the template VM's own group alone
 * (0640), so that the QEMUs of its linked clones, each running as a user of its own and launched
 * in that group too (vm-files.ts `templateGroupsOf`), can read them as the backing files of their
 * overlays, and no other VM of the host (another tenant's) nor user can. The group has no other
 * member: a template never starts, so nothing writes its disks again either.
 */
export async function sealTemplate(host: SnapshotHost): Promise<void> {
  if (host.qemu()) throw new NubisError('VM_INVALID_STATE', `VM ${host.name} runs; stop it before making it a template`);
  const root = process.getuid?.() === 0;
  // A VM made before VMs had uids of their own has no uid for its clones' specs to name: its
  // template stays readable by every VM's group, as all templates were.
  const group = host.spec().unixUid ?? VMS_GID;
  for (const disk of snapshotDisksOf(host.spec())) {
    if (root) await chown(disk.path, 0, group);
    await chmod(disk.path, root ? 0o640 : 0o644);
  }
}
