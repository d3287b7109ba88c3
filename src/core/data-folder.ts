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
 * | `<data>/storage` | pass through (its sockets are each one VM's, storage/host-fencing.ts) |
 * | `<data>/storage/keys` (the KEKs of encrypted volumes) | nothing: the folder is 0700 and its key file 0600, set by storage/keys/file-key-provider.ts whatever the umask |
 * | `<data>/images` | read (base images that VMs' disks are overlays of) |
 * | `.../vms/<id>/run`, the VM's own disks | nothing: they belong to the VM's user (host/vm-files.ts) |
 * | anything else (database, tokens, keys, logs, pools, agent records) | nothing |
 */
import { lstat, readdir } from 'node:fs/promises';
import { chmod } from 'node:fs/promises';
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
    if (PASSABLE.has(entry)) await makePassable(path);
    else if (!READABLE.has(entry)) await closeToOthers(path);
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
    if (entry === 'vms' || entry === 'pools') await makePassable(path);
    else await closeToOthers(path);
  }
}
