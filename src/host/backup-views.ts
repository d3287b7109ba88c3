/**
 * A VM's disks as files for a backup to read: of a running VM, point-in-time views and which of
 * their chunks changed since the VM's last backup (changed-block tracking), so that a backup
 * reads only those; of a stopped VM, its disks where they live (no copy), read whole.
 *
 * The view (image fleecing): one QMP `transaction` starts a `blockdev-backup` with `sync=none` of
 * every disk into a small qcow2 "fleece" whose backing is the disk itself. Reading the fleece
 * gives the disk as of that instant: a block the guest overwrites afterwards is copied into the
 * fleece first (copy-before-write), the rest is read from the disk. So nothing is copied ahead of
 * the backup, and the fleece only grows by what the guest writes while the backup runs. The
 * VM's QEMU serves each fleece read-only on its own NBD server (a unix socket in its `run/`), and
 * a `qemu-storage-daemon` of the agent's mounts each export as a file (a FUSE export), which the
 * chunker and the catalog's debugfs read like any file.
 *
 * `run/` is the one folder the VM's unprivileged QEMU may write, so a QEMU taken over by its guest
 * could put a symlink there to make the agent (root) read another file into the VM's backup, or
 * another VM's socket. So the agent reads nothing by a path in `run/`: the views are mounted in
 * the VM's `backup/` folder (root's, 0700), and QEMU's socket is hard-linked there (a link to the
 * socket itself, never through a symlink) and checked to be a socket of the VM's user before
 * anything connects to it.
 *
 * What changed: the same transaction adds a dirty bitmap `nubis-cbt-<backup id>` to every disk
 * (granularity: one backup chunk), which records every write from that instant on. At the next
 * backup, that bitmap says which chunks differ from that backup: the transaction freezes it
 * (`block-dirty-bitmap-disable`) as it starts the new one, the NBD export carries it as the
 * metadata context `qemu:dirty-bitmap:<name>`, and storage/nbd/nbd-block-status.ts reads it; the
 * other chunks are taken from that backup's manifest without being read. A bitmap is used only
 * when its backup is in the store, its disk has the same size, and QEMU kept it recording and
 * consistent; otherwise every chunk is read (as the first backup does), which is always right.
 *
 * The bitmaps live in QEMU's memory only, for the life of one QEMU process, and go along with a
 * live migration (the `dirty-bitmaps` capability: the destination's QEMU records on from where
 * the source's stopped). A stop, a restart or a snapshot rollback (which stops QEMU) ends them,
 * so no write can reach a disk unseen by its bitmap. The next backup then reads in full once,
 * and sends only what changed all the same (chunk ids are content ids). When a backup fails,
 * both its new bitmap and the one it froze are removed, so the next one reads in full too.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { chown, link, lstat, mkdir, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { CHUNK_BYTES } from '../backup/chunk-crypto.ts';
import type { BackupManifestDisk } from '../backup/manifest.ts';
import { NubisError } from '../core/errors.ts';
import { faultPoint } from '../core/fault-points.ts';
import { runCommand } from '../core/run-command.ts';
import { readMetaContext } from '../storage/nbd/nbd-block-status.ts';
import type { SnapshotHost } from './vm-snapshot-control.ts';

type Qemu = NonNullable<ReturnType<SnapshotHost['qemu']>>;

/**
 * The migration capability both ends of a live migration turn on so that the bitmaps go along
 * with the VM (QEMU matches them by node name, which is the disk's id on both ends).
 */
export const MIGRATED_BITMAPS = 'dirty-bitmaps';

/** Dirty bitmaps named so record the writes since the instant of the backup whose id follows. */
const BITMAP_PREFIX = 'nubis-cbt-';
const BACKUP_ID = /^bak-[0-9a-f]{12}$/;
/** Names of the fleece nodes, block jobs and exports of a backup in the VM's QEMU. */
const NODE_PREFIX = 'backup-';
const NBD_SOCKET = 'backup-nbd.sock';
const DAEMON_PIDFILE = 'views.pid';
/** The folder of the VM's directory where the agent keeps a backup's views: root's alone. */
export const VIEWS_FOLDER = 'backup';
/** A FUSE mount of a few exports takes milliseconds; this bounds a stuck one. */
const MOUNT_TIMEOUT_MS = 30_000;

/** A disk of a running VM to back up: its block node and what the backup calls it. */
interface ViewedDisk {
  id: string;
  source: string;
}

/** One disk's view: a file to read, and the chunks to read of it when not all. */
export interface DiskView {
  path: string;
  sizeBytes: number;
  /** From the bitmap of backup `since`: the chunks that may differ from its manifest's `chunks`; the others are its. */
  changed?: { since: string; chunks: Set<number>; parent: BackupManifestDisk };
}

/** The views of one backup, open until `close`. */
export interface BackupViews {
  views: DiskView[];
  /** Ends the views; `committed` says whether the backup is in the store (then its bitmaps are the ones to keep). */
  close(committed: boolean): Promise<void>;
}

interface DirtyBitmapInfo {
  name: string;
  granularity: number;
  recording: boolean;
  busy: boolean;
  inconsistent?: boolean;
}

/**
 * Opens the views of `disks` for backup `backupId` (see the file header). `parentDisk` finds disk
 * `diskId` of an earlier backup in the store (undefined when that backup is gone).
 */
export async function openBackupViews(
  host: SnapshotHost,
  request: { backupId: string; disks: ViewedDisk[]; parentDisk: (backupId: string, diskId: string) => Promise<BackupManifestDisk | undefined> },
): Promise<BackupViews> {
  const qemu = host.qemu();
  if (!qemu) throw new NubisError('VM_INVALID_STATE', `VM ${host.name} has no running QEMU to take a backup through`);
  const runDir = join(host.dir, 'run');
  const viewsDir = await viewsFolderOf(host.dir);
  await endLeftBackupWork(qemu, runDir, viewsDir);
  const nodes = await qemu.qmp.execute<Array<{ 'node-name': string; image: { 'virtual-size': number }; 'dirty-bitmaps'?: DirtyBitmapInfo[] }>>(
    'query-named-block-nodes',
    { flat: true },
  );
  const opened: OpenedDisk[] = [];
  const cleanup = new ViewCleanup(qemu, viewsDir);
  try {
    for (const disk of request.disks) {
      const node = nodes.find((n) => n['node-name'] === disk.id);
      if (!node) throw new NubisError('BACKUP_FAILED', `VM ${host.name}'s QEMU has no disk ${disk.id}`);
      const sizeBytes = node.image['virtual-size'];
      const parent = await usableParent(qemu, disk.id, sizeBytes, node['dirty-bitmaps'] ?? [], request.parentDisk);
      const fleece = join(runDir, `${request.backupId}-${disk.id}.fleece.qcow2`);
      await createFleece(join(viewsDir, basename(fleece)), fleece, sizeBytes, host.spec().unixUid);
      await qemu.qmp.execute('blockdev-add', {
        driver: 'qcow2',
        'node-name': `${NODE_PREFIX}${disk.id}`,
        file: { driver: 'file', filename: fleece },
        backing: disk.id,
      });
      cleanup.fleeces.push({ node: `${NODE_PREFIX}${disk.id}`, file: fleece });
      opened.push({ disk, sizeBytes, parent, path: join(viewsDir, `${request.backupId}-${disk.id}.raw`) });
    }
    await startFleecing(qemu, request.backupId, opened, cleanup);
    await qemu.qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: join(runDir, NBD_SOCKET) } } });
    cleanup.nbdServer = true;
    cleanup.files.push(join(runDir, NBD_SOCKET));
    const socket = await pinnedSocket(join(runDir, NBD_SOCKET), join(viewsDir, NBD_SOCKET), host.spec().unixUid);
    for (const { disk, parent } of opened)
      await qemu.qmp.execute('block-export-add', {
        type: 'nbd',
        id: `${NODE_PREFIX}${disk.id}`,
        'node-name': `${NODE_PREFIX}${disk.id}`,
        name: disk.id,
        writable: false,
        ...(parent ? { bitmaps: [{ node: disk.id, name: parent.bitmap }] } : {}),
      });
    const views: DiskView[] = [];
    for (const { disk, sizeBytes, parent, path } of opened) {
      const chunks = parent ? await changedChunks(socket, disk.id, parent.bitmap) : undefined;
      views.push({ path, sizeBytes, ...(parent && chunks ? { changed: { since: parent.since, chunks, parent: parent.disk } } : {}) });
    }
    const nbd = (exportName: string) => ({ driver: 'nbd', server: { type: 'unix', path: socket }, export: exportName });
    cleanup.daemon = (
      await mountViews(
        viewsDir,
        opened.map(({ disk, path }) => ({ blockdev: nbd(disk.id), path })),
      )
    ).daemon;
    await faultPoint('backup.agent.after-views-mounted');
    return { views, close: (committed) => cleanup.run(request.backupId, opened, committed) };
  } catch (error) {
    await cleanup.run(request.backupId, opened, false);
    throw error;
  }
}

interface OpenedDisk {
  disk: ViewedDisk;
  sizeBytes: number;
  /** The bitmap this backup reads its changes from, and the disk of its backup. */
  parent?: { bitmap: string; since: string; disk: BackupManifestDisk };
  /** Where the view is mounted. */
  path: string;
}

/**
 * The disk's bitmap that may stand for "changed since backup X" (see the file header), after
 * removing every other bitmap of ours on it: only one is ever kept, and a stale one would only
 * cost memory and writes.
 */
async function usableParent(
  qemu: Qemu,
  diskId: string,
  sizeBytes: number,
  bitmaps: DirtyBitmapInfo[],
  parentDisk: (backupId: string, diskId: string) => Promise<BackupManifestDisk | undefined>,
): Promise<OpenedDisk['parent']> {
  const ours = bitmaps.filter((bitmap) => bitmap.name.startsWith(BITMAP_PREFIX));
  let parent: OpenedDisk['parent'];
  for (const bitmap of ours) {
    if (
      parent ||
      !BACKUP_ID.test(bitmap.name.slice(BITMAP_PREFIX.length)) ||
      !bitmap.recording ||
      bitmap.busy ||
      bitmap.inconsistent ||
      bitmap.granularity !== CHUNK_BYTES
    )
      continue;
    const since = bitmap.name.slice(BITMAP_PREFIX.length);
    const disk = await parentDisk(since, diskId).catch(() => undefined);
    if (disk && disk.sizeBytes === sizeBytes && disk.chunks.length === Math.ceil(sizeBytes / CHUNK_BYTES)) parent = { bitmap: bitmap.name, since, disk };
  }
  for (const bitmap of ours)
    if (bitmap.name !== parent?.bitmap) await qemu.qmp.execute('block-dirty-bitmap-remove', { node: diskId, name: bitmap.name }).catch(() => undefined);
  return parent;
}

/**
 * The fleece at `fleece` in `run/`, of the VM's user `uid` (its QEMU writes it): made at `made`,
 * in root's folder, then renamed into place. rename(2) replaces whatever is at `fleece`, a
 * symlink too, where making it there would follow a symlink QEMU put in its way.
 */
async function createFleece(made: string, fleece: string, sizeBytes: number, uid: number | undefined): Promise<void> {
  await runCommand('qemu-img', ['create', '-q', '-f', 'qcow2', made, String(sizeBytes)], { timeoutMs: 30_000 });
  if (uid !== undefined && process.getuid?.() === 0) await chown(made, uid, uid);
  await rename(made, fleece);
}

/** One transaction, so one instant for every disk: new bitmaps start, the parents' freeze, the fleecing jobs start. */
async function startFleecing(qemu: Qemu, backupId: string, opened: OpenedDisk[], cleanup: ViewCleanup): Promise<void> {
  const actions: unknown[] = [];
  for (const { disk, parent } of opened) {
    actions.push({ type: 'block-dirty-bitmap-add', data: { node: disk.id, name: `${BITMAP_PREFIX}${backupId}`, granularity: CHUNK_BYTES, persistent: false } });
    if (parent) actions.push({ type: 'block-dirty-bitmap-disable', data: { node: disk.id, name: parent.bitmap } });
    actions.push({
      type: 'blockdev-backup',
      data: { 'job-id': `${NODE_PREFIX}${disk.id}`, device: disk.id, target: `${NODE_PREFIX}${disk.id}`, sync: 'none' },
    });
  }
  await qemu.qmp.execute('transaction', { actions });
  cleanup.jobsStarted = true;
}

/** The chunks that bitmap `bitmap` marks as written, read through the export of disk `diskId`. */
async function changedChunks(socket: string, diskId: string, bitmap: string): Promise<Set<number>> {
  const chunks = new Set<number>();
  const extents = await readMetaContext({ path: socket, exportName: diskId, context: `qemu:dirty-bitmap:${bitmap}` });
  // qemu:dirty-bitmap: bit 0 set means dirty.
  for (const extent of extents.filter((e) => (e.flags & 1) !== 0))
    for (let chunk = Math.floor(extent.offset / CHUNK_BYTES); chunk * CHUNK_BYTES < extent.offset + extent.length; chunk += 1) chunks.add(chunk);
  return chunks;
}

/** The VM's `backup/` folder (see the file header), made root's alone whatever it was. */
async function viewsFolderOf(vmDir: string): Promise<string> {
  const dir = join(vmDir, VIEWS_FOLDER);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const info = await lstat(dir);
  if (!info.isDirectory() || info.uid !== 0 || (info.mode & 0o077) !== 0)
    throw new NubisError('BACKUP_FAILED', `${dir} is not a folder of root's alone (mode 0700); remove it and try again`);
  return dir;
}

/**
 * A hard link at `pinned` (a folder only root writes) to the socket QEMU made at `made`: link(2)
 * links a symlink itself, never its target, so `pinned` is whatever `made` was, and it is used
 * only when that is a socket of the VM's user `uid`.
 */
async function pinnedSocket(made: string, pinned: string, uid: number | undefined): Promise<string> {
  await rm(pinned, { force: true });
  await link(made, pinned);
  const info = await lstat(pinned);
  if (!info.isSocket() || (uid !== undefined && info.uid !== uid)) {
    await rm(pinned, { force: true });
    throw new NubisError(
      'BACKUP_FAILED',
      `${made} is not the socket the VM's QEMU made (a ${info.isSymbolicLink() ? 'symlink' : 'file'} of uid ${info.uid}); the backup reads nothing through it`,
    );
  }
  return pinned;
}

/** A disk to mount as a file at `path`: how qemu-storage-daemon opens it (a blockdev, without its node name). */
interface MountedDisk {
  blockdev: Record<string, unknown>;
  path: string;
}

/**
 * A qemu-storage-daemon that mounts each disk as a file at its `path` (FUSE exports, read-only);
 * resolves once all are mounted, with their sizes.
 */
async function mountViews(viewsDir: string, disks: MountedDisk[]): Promise<{ daemon: ChildProcess; sizes: number[] }> {
  const args = ['--pidfile', join(viewsDir, DAEMON_PIDFILE)];
  for (const [index, { blockdev, path }] of disks.entries()) {
    await (await open(path, 'w', 0o600)).close();
    const node = `view${index}`;
    args.push(
      '--blockdev',
      JSON.stringify({ ...blockdev, 'node-name': node, 'read-only': true }),
      '--export',
      JSON.stringify({ type: 'fuse', id: node, 'node-name': node, mountpoint: path, writable: false }),
    );
  }
  const daemon = spawn('qemu-storage-daemon', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  daemon.stderr?.on('data', (data: Buffer) => (stderr = (stderr + data.toString('utf8')).slice(-2000)));
  const deadline = Date.now() + MOUNT_TIMEOUT_MS;
  for (;;) {
    // An unmounted mountpoint is the empty file made above; a mounted one has the disk's size.
    const sizes = await Promise.all(
      disks.map(({ path }) =>
        stat(path).then(
          (s) => s.size,
          () => 0,
        ),
      ),
    );
    if (sizes.every((size) => size > 0)) return { daemon, sizes };
    if (daemon.exitCode !== null || daemon.signalCode !== null || Date.now() > deadline) {
      daemon.kill();
      throw new NubisError('BACKUP_FAILED', `Mounting the disks as files failed: ${stderr.trim() || 'qemu-storage-daemon did not mount them in time'}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * The disks of a stopped VM as files, each opened read-only from where it lives (`blockdev`: its
 * image file, or its storage-node volume over NBD) and mounted in the VM's `backup/` folder: read
 * in place, with no copy and no room needed. No bitmap knows what changed, so every chunk is read.
 */
export async function openStoppedViews(
  vmDir: string,
  request: { backupId: string; disks: Array<{ id: string; blockdev: Record<string, unknown> }> },
): Promise<BackupViews> {
  const viewsDir = await viewsFolderOf(vmDir);
  await clearViews(viewsDir);
  const disks = request.disks.map(({ id, blockdev }) => ({ blockdev, path: join(viewsDir, `${request.backupId}-${id}.raw`) }));
  let daemon: ChildProcess | undefined;
  const close = async () => {
    if (daemon) await stopDaemon(daemon);
    await clearViews(viewsDir);
  };
  try {
    const mounted = await mountViews(viewsDir, disks);
    daemon = mounted.daemon;
    return { views: disks.map(({ path }, index) => ({ path, sizeBytes: mounted.sizes[index] })), close: () => close() };
  } catch (error) {
    await close();
    throw error;
  }
}

/** What a backup's views set up, undone in reverse; each step goes on when an earlier one failed. */
class ViewCleanup {
  fleeces: Array<{ node: string; file: string }> = [];
  /** QEMU's socket in `run/` (what is in the views folder goes with it). */
  files: string[] = [];
  jobsStarted = false;
  nbdServer = false;
  daemon?: ChildProcess;

  constructor(
    readonly qemu: Qemu,
    readonly viewsDir: string,
  ) {}

  async run(backupId: string, opened: OpenedDisk[], committed: boolean): Promise<void> {
    if (this.daemon) await stopDaemon(this.daemon);
    await clearViews(this.viewsDir);
    if (this.nbdServer) await this.qemu.qmp.execute('nbd-server-stop').catch(() => undefined);
    for (const file of this.files) await rm(file, { force: true });
    if (this.jobsStarted) await cancelJobs(this.qemu);
    for (const fleece of this.fleeces) {
      await this.qemu.qmp.execute('blockdev-del', { 'node-name': fleece.node }).catch(() => undefined);
      await rm(fleece.file, { force: true });
    }
    for (const { disk, parent } of opened) {
      if (!this.jobsStarted) continue;
      // Kept: the bitmap of the backup now in the store. Removed: the one it replaces, and both when it failed.
      const drop = committed ? [parent?.bitmap] : [parent?.bitmap, `${BITMAP_PREFIX}${backupId}`];
      for (const name of drop) if (name) await this.qemu.qmp.execute('block-dirty-bitmap-remove', { node: disk.id, name }).catch(() => undefined);
    }
  }
}

async function stopDaemon(daemon: ChildProcess): Promise<void> {
  if (daemon.exitCode !== null || daemon.signalCode !== null) return;
  const exited = new Promise((resolve) => daemon.once('exit', resolve));
  daemon.kill('SIGTERM');
  const timer = setTimeout(() => daemon.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** A FUSE mount whose daemon died stays mounted (and unreadable) until unmounted. */
async function unmount(path: string): Promise<void> {
  const mounts = await readFile('/proc/self/mounts', 'utf8').catch(() => '');
  if (mounts.split('\n').some((line) => line.split(' ')[1] === path)) await runCommand('umount', ['-l', path], { timeoutMs: 10_000 }).catch(() => undefined);
}

/** Cancels the fleecing jobs (a `sync=none` job runs until cancelled) and waits for them to end. */
async function cancelJobs(qemu: Qemu): Promise<void> {
  const jobs = async () => (await qemu.qmp.execute<Array<{ device: string }>>('query-block-jobs')).filter((job) => job.device.startsWith(NODE_PREFIX));
  for (const job of await jobs()) await qemu.qmp.execute('block-job-cancel', { device: job.device, force: true }).catch(() => undefined);
  const deadline = Date.now() + 60_000;
  while ((await jobs()).length > 0) {
    if (Date.now() > deadline) throw new NubisError('BACKUP_FAILED', 'A backup job did not end within 60 s of being cancelled');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * Ends what a backup left when its agent was killed midway (QEMU and the storage daemon outlive
 * it): the daemon and its mounts, the exports and NBD server, the jobs, the fleece nodes and
 * files. Otherwise the next backup's names would be taken.
 */
async function endLeftBackupWork(qemu: Qemu, runDir: string, viewsDir: string): Promise<void> {
  await clearViews(viewsDir);
  const exports = await qemu.qmp.execute<Array<{ id: string }>>('query-block-exports').catch(() => [] as Array<{ id: string }>);
  if (exports.some((e) => e.id.startsWith(NODE_PREFIX))) await qemu.qmp.execute('nbd-server-stop').catch(() => undefined);
  await cancelJobs(qemu);
  const nodes = await qemu.qmp.execute<Array<{ 'node-name': string }>>('query-named-block-nodes', { flat: true });
  for (const node of nodes.filter((n) => n['node-name'].startsWith(NODE_PREFIX)))
    await qemu.qmp.execute('blockdev-del', { 'node-name': node['node-name'] }).catch(() => undefined);
  for (const name of await readdir(runDir).catch(() => [] as string[]))
    if (/^bak-[0-9a-f]{12}-[a-z][a-z0-9-]*\.fleece\.qcow2$/.test(name)) await rm(join(runDir, name), { force: true });
  await rm(join(runDir, NBD_SOCKET), { force: true });
}

/**
 * Empties the views folder `viewsDir`: ends the storage daemon its pidfile names (one a killed
 * agent left, or one already asked to stop), unmounts each view (a mount outlives its daemon, and
 * would keep the VM's folder from being removed) and removes every file. A VM's backups run one
 * at a time, so whatever is in the folder is the current backup's or a dead one's.
 */
export async function clearViews(viewsDir: string): Promise<void> {
  const pidfile = join(viewsDir, DAEMON_PIDFILE);
  const pid = Number((await readFile(pidfile, 'utf8').catch(() => '')).trim());
  if (Number.isInteger(pid) && pid > 1) {
    // Only the daemon that wrote this pidfile: a recycled pid belongs to someone else.
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('qemu-storage-daemon') && cmdline.includes(pidfile)) process.kill(pid, 'SIGKILL');
  }
  for (const name of await readdir(viewsDir).catch(() => [] as string[])) {
    await unmount(join(viewsDir, name));
    await rm(join(viewsDir, name), { force: true });
  }
}
