/**
 * Who may enter the data folder. VMs run as unprivileged users of their own (compute/vm-user.ts),
 * and their QEMU must reach its own folder (`hosts/<host>/vms/<id>/run`), the images it reads and
 * its storage-node socket, all inside the data folder, which also holds the database and the
 * platform's secrets. So the data folder and the folders on those ways are passable by others
 * (mode 0711: enter a name you know, never list), and everything else in them is closed to
 * others (no read, write or pass for "other"), whoever created it and with whatever umask.
 *
 * | path | others may |
 * | --- | --- |
 * | `<data>`, `<data>/hosts`, `<data>/hosts/<host>`, `.../vms`, `.../vms/<id>` | pass through |
 * | `<data>/hosts/<host>/pools`, `.../pools/<pool>` (dir pools; each volume is root's or its VM's) | pass through |
 * | `<data>/storage`, `storage/hosts`, `storage/hosts/<host>` | pass through, to each VM's own NBD socket (its uid's, mode 0600; storage/host-fencing.ts) |
 * | `<data>/storage/keys` (the KEKs of encrypted volumes) | nothing: the folder is 0700 and its key file 0600, set by storage/keys/file-key-provider.ts whatever the umask |
 * | `<data>/images` | read, for the VMs' group only (base images that VMs' disks are overlays of, `openImagesToVms`) |
 * | `.../vms/<id>/run`, the VM's own disks | nothing: they belong to the VM's user (host/vm-files.ts) |
 * | anything else (database, tokens, keys, logs, pools, agent records; in `storage/`: pools, the shared, management and per-host sockets, the fencing state) | nothing |
 */
import { chmod, chown, lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/** Folders of the data folder that others may pass through. */
const PASSABLE = new Set(['hosts', 'storage']);
/** Folders whose content others may read. */
const READABLE = new Set(['images']);

/** A folder others may pass through but not list: its mode without their read and write, with their pass. */
export async function makePassable(path: string): Promise<void> {
  const { mode } = await lstat(path);
  await chmod(path, (mode & 0o7770) | 0o001);
}

/** Takes every permission of "other" from `path` (not following a link). */
export async function closeToOthers(path: string): Promise<void> {
  const info = await lstat(path);
  if (info.isSymbolicLink() || (info.mode & 0o007) === 0) return;
  await chmod(path, info.mode & 0o7770);
}

/**
 * Closes `dataDir` to others but for the ways VMs need (the table above), one level deep: what
 * lies below a closed folder is closed with it. Run by the control plane and by every agent at
 * start, and safe to run again at any time.
 */
export async function closeDataFolder(dataDir: string): Promise<void> {
  await chmod(dataDir, 0o711);
  for (const entry of await readdir(dataDir)) {
    const path = join(dataDir, entry);
    if (entry === 'storage') await closeStorageFolder(path).catch(ignoreGone);
    else if (PASSABLE.has(entry)) await makePassable(path).catch(ignoreGone);
    else if (!READABLE.has(entry)) await closeToOthers(path).catch(ignoreGone);
  }
}

/**
 * The control plane, the storage node and the agents of one data folder start together and make
 * and remove files meanwhile (a journal, a socket): one gone by the time its turn came is fine.
 */
function ignoreGone(error: unknown): void {
  if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
}

/**
 * Closes the storage node's folder (`<data>/storage`) to others but for the way to each VM's NBD
 * socket: the folder, `hosts` and each host's folder in it are passable; everything else (pools,
 * the shared and management sockets, the fencing state, the staging folder) is closed. The
 * sockets in a host's folder keep what the storage node gave them (the host's root's, each VM's
 * its uid's, all 0600). Run by the storage node at start and with `closeDataFolder`.
 */
export async function closeStorageFolder(storageDir: string): Promise<void> {
  await makePassable(storageDir);
  const isFolder = async (path: string) => (await lstat(path)).isDirectory();
  for (const entry of await readdir(storageDir)) {
    const path = join(storageDir, entry);
    if (entry !== 'hosts' || !(await isFolder(path).catch(() => false))) {
      await closeToOthers(path).catch(ignoreGone);
      continue;
    }
    await makePassable(path).catch(ignoreGone);
    for (const host of await readdir(path)) {
      const hostPath = join(path, host);
      if (!host.startsWith('.') && (await isFolder(hostPath).catch(() => false))) await makePassable(hostPath).catch(ignoreGone);
      else await closeToOthers(hostPath).catch(ignoreGone);
    }
  }
}

/**
 * Closes a host's folder (`<data>/hosts/<host>`) to others but for the ways to its VMs' folders
 * and its dir pools: the host folder, `vms` and `pools` are passable, everything else in it (the
 * agent's identity and token) closed.
 */
export async function closeHostFolder(hostDir: string): Promise<void> {
  await makePassable(hostDir);
  for (const entry of await readdir(hostDir)) {
    const path = join(hostDir, entry);
    if (entry === 'vms' || entry === 'pools') await makePassable(path).catch(ignoreGone);
    else await closeToOthers(path).catch(ignoreGone);
  }
}

/**
 * Lets the VMs' group (`vmsGid`, compute/vm-user.ts VMS_GID) read the image store (`<data>/images`, folders 0750 and files 0640): a
 * VM's root disk is an overlay whose backing file QEMU, running as the VM's user, opens there.
 * Other users of the host still cannot. Run at start and after every import; needs root (a
 * control plane of another user leaves the store its own: its VMs run as that user anyway).
 */
export async function openImagesToVms(imagesDir: string, vmsGid: number): Promise<void> {
  if (process.getuid?.() !== 0) return;
  const walk = async (path: string, depth: number): Promise<void> => {
    const info = await lstat(path);
    if (info.isSymbolicLink()) return;
    await chown(path, info.uid, vmsGid);
    // Explicit modes: the daemons run with umask 077, so what they made is 0700/0600.
    await chmod(path, info.isDirectory() ? 0o750 : 0o640);
    if (info.isDirectory() && depth > 0) for (const entry of await readdir(path)) await walk(join(path, entry), depth - 1);
  };
  // The store, each image's folder, the image's files.
  await walk(imagesDir, 2);
}
