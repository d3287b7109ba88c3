/**
 * The files of a VM on its host, and who owns them, when its QEMU runs as the VM's own user
 * (compute/vm-user.ts):
 *
 * - the VM's folder stays root's (mode 0711): the agent's record of the VM, QEMU's log, the root
 *   disk overlay's name; QEMU's user cannot create, rename or replace anything in it, so nothing
 *   the agent (root) opens there can have been swapped for a link;
 * - `run/` in it is the VM user's (0700): what QEMU creates (QMP, console and screen sockets, the
 *   serial log, its pid file) and the swtpm's state. The agent reads in it only through checks
 *   (serial-log.ts opens no links; sockets are checked before connecting, `ownSocket`);
 * - the disks the VM writes (its root overlay, file volumes, UEFI variables) are the user's,
 *   mode 0600, given to it at every launch (a volume may have been another VM's before).
 *
 * Folders on the way to those files must be passable by others (the data folder's are,
 * core/data-folder.ts); a volume in a folder QEMU's user cannot reach is refused before the start
 * with the folder to open.
 */
import { execFile } from 'node:child_process';
import { lstatSync } from 'node:fs';
import { chmod, chown, lstat, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import type { DiskSpec, VmSpec } from '../compute/vm-spec.ts';
import { isVmUid, type VmUser, vmUserOf } from '../compute/vm-user.ts';
import { liveRestoreSocketOf } from './dir-pools.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import { vmUsersAvailable } from './vm-launcher.ts';

/** Makes `vmDir` root's and passable, and `runDir` in it the user's alone. */
export async function prepareVmFolder(vmDir: string, runDir: string, user: VmUser): Promise<void> {
  await mkdir(vmDir, { recursive: true });
  await chown(vmDir, 0, 0);
  await chmod(vmDir, 0o711);
  await mkdir(runDir, { recursive: true });
  // `run` is in the root-owned folder, so the user cannot have replaced it by a link.
  await chown(runDir, user.uid, user.gid);
  await chmod(runDir, 0o700);
}

const runFile = promisify(execFile);

/**
 * Creates a VM's root disk in `vmDir`: a qcow2 overlay over `boot` (an image, or for a linked
 * clone its template's root disk), which stays read-only and shared; with `copy` (a full clone)
 * a copy of `boot`'s contents that needs it no more (still over `boot`'s own image, if any,
 * which is read-only and shared like every image).
 */
export async function createBootOverlay(
  vmDir: string,
  boot: { path: string; format: 'qcow2' | 'raw'; copy?: boolean },
  vmName: string,
): Promise<{ kind: 'disk'; path: string; format: 'qcow2' }> {
  const overlay = `${vmDir}/root.qcow2`;
  try {
    if (boot.copy) {
      // The template's own clusters are copied; its image below stays the backing file.
      const backing = JSON.parse((await runFile('qemu-img', ['info', '-U', '--output=json', boot.path])).stdout) as {
        'full-backing-filename'?: string;
        'backing-filename-format'?: string;
      };
      const base = backing['full-backing-filename'];
      const onBase = base ? ['-B', base, '-F', backing['backing-filename-format'] ?? 'qcow2'] : [];
      await runFile('qemu-img', ['convert', '-q', '-f', boot.format, '-O', 'qcow2', ...onBase, boot.path, overlay]);
    } else {
      await runFile('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', boot.format, '-b', boot.path, overlay]);
    }
  } catch (error) {
    throw new NubisError(
      'VM_START_FAILED',
      `Cannot create the root disk of VM ${vmName} over ${boot.path}: ${(error as { stderr?: string }).stderr?.trim() || messageOf(error)}`,
    );
  }
  return { kind: 'disk', path: overlay, format: 'qcow2' };
}

/** An empty qcow2 disk of `sizeBytes` at `path` for a migration's mirror to fill; never over a file. */
export async function createMirrorCopy(path: string, sizeBytes: number): Promise<void> {
  if (lstatSync(path, { throwIfNoEntry: false }))
    throw new NubisError('VOLUME_EXISTS', `${path} already exists on this host; it would be overwritten by the mirrored disk`);
  await runFile('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(sizeBytes)]);
}

/**
 * Gives `user` the files of `spec` that its QEMU writes: its root overlay and writable file disks,
 * and the socket a disk restored live reads its backup through (live-restore.ts).
 */
export async function giveDisksTo(spec: Pick<VmSpec, 'name' | 'boot' | 'disks'>, user: VmUser): Promise<void> {
  const paths = spec.disks.flatMap((disk) => (disk.kind === 'file' && !disk.readOnly ? [disk.path] : []));
  if (spec.boot.kind === 'disk') paths.push(spec.boot.path);
  for (const path of paths) {
    await giveFileTo(path, user, `disk of VM ${spec.name}`);
    await giveRestoreSocket(liveRestoreSocketOf(path), user);
  }
}

/**
 * The groups of the templates whose disks `spec`'s disks are linked clones of: a template's disks
 * are root's and readable by its group alone, the template VM's own (vm-snapshot-control.ts
 * `sealTemplate`; a template never runs), so that only the QEMUs of its clones, launched in that
 * group too, can read them, and no other VM of the host can. Which template is the control
 * plane's word (the spec's `templateUid`), never the backing file named in a clone's qcow2
 * header, which its QEMU can rewrite.
 */
export function templateGroupsOf(spec: Pick<VmSpec, 'templateUid'>): number[] {
  return spec.templateUid !== undefined && isVmUid(spec.templateUid) ? [spec.templateUid] : [];
}

/** The socket of a live restore beside a volume, when there is one, given to the VM's user alone. */
async function giveRestoreSocket(socket: string, user: VmUser | { uid: 0; gid: 0 }): Promise<void> {
  if (!(await lstat(socket).catch(() => undefined))?.isSocket()) return;
  await chown(socket, user.uid, user.gid);
  await chmod(socket, 0o600);
}

/** Gives a file disk hot-plugged into a running VM to the VM's user, as a launch gives the others. */
export async function giveHotplugDisk(spec: Pick<VmSpec, 'id' | 'name' | 'unixUid'>, disk: DiskSpec): Promise<void> {
  if (disk.kind !== 'file' || disk.readOnly || !vmUsersAvailable()) return;
  await giveFileTo(disk.path, vmUserOf(spec), `disk ${disk.id} of VM ${spec.name}`);
}

/**
 * Gives file disks the VM no longer has (detached, or the VM deleted) back to root (mode 0600), so
 * the VM's QEMU, which may still run, cannot open a volume that is no longer its own, nor one
 * later attached elsewhere. The file is in a pool folder that is root's, so its user cannot
 * have swapped it for a link; one already gone is fine.
 */
export async function takeDisksBack(disks: readonly DiskSpec[]): Promise<void> {
  if (!vmUsersAvailable()) return;
  for (const disk of disks) {
    if (disk.kind !== 'file' || disk.readOnly) continue;
    const info = await lstat(disk.path).catch(() => undefined);
    if (!info?.isFile()) continue;
    await chown(disk.path, 0, 0);
    await chmod(disk.path, 0o600);
    await giveRestoreSocket(liveRestoreSocketOf(disk.path), { uid: 0, gid: 0 });
  }
}

/** Gives one file to `user` (mode 0600), after checking that its user can reach it. */
export async function giveFileTo(path: string, user: VmUser, what: string): Promise<void> {
  const info = await lstat(path);
  if (!info.isFile()) throw new NubisError('VM_START_FAILED', `The ${what} ${path} is not a regular file (a link or a device is never given to a VM)`);
  checkReachable(path, what);
  await chown(path, user.uid, user.gid);
  await chmod(path, 0o600);
}

/**
 * Refuses a file whose folders others cannot pass (QEMU, running as the VM's user, could not
 * open it), naming the folder to open.
 */
function checkReachable(path: string, what: string): void {
  for (let folder = dirname(path); ; folder = dirname(folder)) {
    const { mode } = lstatSync(folder);
    if ((mode & 0o001) === 0)
      throw new NubisError(
        'VM_START_FAILED',
        `The ${what} ${path} is in ${folder}, which others may not pass through (mode ${(mode & 0o777).toString(8)}), so the VM's unprivileged QEMU cannot open it: run chmod o+x ${folder}, or keep pools in a folder others may pass through`,
      );
    if (folder === dirname(folder)) return;
  }
}

/**
 * `socketPath` in a VM's `run/`, once checked to be a socket of the folder's owner, the VM's user
 * (the agent gave it the folder, whose root-owned parent it cannot change): a QEMU a guest took
 * over could otherwise leave a link there to another VM's socket, and the agent (root) would
 * connect a user's console, or itself, to the wrong VM. Unchecked when VMs run as the agent's user.
 */
export function ownSocket(socketPath: string): string {
  if (foreignSocket(socketPath, { mustExist: true }))
    throw new NubisError('VM_CONSOLE_FAILED', `${socketPath} is not a socket of the VM's own user; the agent does not connect to it`);
  return socketPath;
}

/** The same check before re-attaching to QMP after an agent restart; a missing socket is left to the attach. */
export function checkRunSocket(socketPath: string): void {
  if (foreignSocket(socketPath, { mustExist: false }))
    throw new NubisError('VM_START_FAILED', `${socketPath} is not a socket of the VM's own user; the agent does not connect to it`);
}

function foreignSocket(socketPath: string, options: { mustExist: boolean }): boolean {
  if (!vmUsersAvailable()) return false;
  const info = lstatSync(socketPath, { throwIfNoEntry: false });
  if (!info) return options.mustExist;
  return !info.isSocket() || info.uid !== lstatSync(dirname(socketPath), { throwIfNoEntry: false })?.uid;
}
