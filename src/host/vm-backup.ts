/**
 * Backups of one VM's disks on its host, and restores of a backed-up disk into a new file: the
 * client side of the backup store, where data is cut into chunks and sealed before it leaves the
 * host (backup/chunk-crypto.ts), with the tenant key the control plane hands over for the call
 * only (it is never written on a host).
 *
 * A backup of a running VM is crash-consistent: one QMP `transaction` starts a `blockdev-backup`
 * (sync=full) of every disk into a sparse raw file of the VM's `run/` folder, so every disk is
 * copied as of one instant while the guest goes on writing (QEMU copies a block before the guest
 * overwrites it: copy-before-write). The copies are then read, cut into 4 MiB chunks, and only
 * chunks the store has not got are sealed and sent: a second backup sends only what changed,
 * whatever happened in between (a reboot, a live migration, a restart elsewhere), since a chunk's
 * id depends only on its content. Zero chunks are not sent at all. A stopped VM's disks are read
 * as they are (`qemu-img convert`). Each copy is removed when done, also on failure.
 *
 * Each chunk sent goes with its proof-of-retrievability tags (backup/proof/por.ts), so the
 * tenant can later check that the store still holds it without reading it back. And the files of
 * the filesystems on each copy (ext2/3/4, FAT, also in MBR or GPT partitions; read offline with
 * debugfs and our FAT reader, backup/search/) go into the backup's encrypted catalog, searchable
 * by word without the store learning the word (backup/search/sse-index.ts).
 *
 * Reading whole copies costs reading every disk each time; QEMU's dirty bitmaps would tell which
 * blocks changed, but persist only in qcow2 files and are lost by a migration that mirrors the
 * disk, so the chunk ids stay the source of truth for what is sent.
 */
import { chown, open, readdir, rm, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { BOOT_DISK_NODE } from '../compute/qemu/command-line.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import { runCommand } from '../core/run-command.ts';
import { faultPoint } from '../core/fault-points.ts';
import type { TakenBackup } from '../agent-api/contract.ts';
import { backupKeysOf, CHUNK_BYTES, chunkIdOf, sealChunk, sealManifest, type BackupKeys } from '../backup/chunk-crypto.ts';
import type { BackupStoreClient } from '../backup/store-client.ts';
import type { SnapshotHost } from './vm-snapshot-control.ts';
import { type BackupManifest, type BackupManifestDisk, readBackupDisk } from '../backup/manifest.ts';
import { writeRawDisk } from '../backup/raw-disk.ts';
import { ProofKey, tagChunk } from '../backup/proof/por.ts';
import { listDiskFiles } from '../backup/search/disk-files.ts';
import { fileKeywords } from '../backup/search/keywords.ts';
import { buildIndex, type IndexDocument } from '../backup/search/sse-index.ts';

/** What a backup of one disk cost (the agent contract's form). */
export type BackupDiskReport = TakenBackup['disks'][number];

/** One disk to back up: its block node and where its contents are read from when QEMU does not run. */
interface BackupSource {
  id: string;
  source: string;
  /** A `qemu-img` source of the stopped VM's disk: a file, or an NBD URI. */
  offline: { path: string; format: string };
}

/** Chunks in flight per round trip to the store: 16 chunks, 64 MiB of memory at most. */
const CHUNKS_PER_ROUND = 16;
/** Copying a disk of many GiB under TCG may take long. */
const COPY_TIMEOUT_MS = 3_600_000;

/** The disks of `spec` a backup holds: every disk the guest can write. */
export function backupSourcesOf(spec: VmSpec): BackupSource[] {
  const sources: BackupSource[] =
    spec.boot.kind === 'disk' ? [{ id: BOOT_DISK_NODE, source: 'root', offline: { path: spec.boot.path, format: spec.boot.format } }] : [];
  for (const disk of spec.disks) {
    if (disk.readOnly) continue;
    if (disk.kind === 'file') sources.push({ id: disk.id, source: disk.localVolume ?? disk.path, offline: { path: disk.path, format: disk.format } });
    else sources.push({ id: disk.id, source: disk.exportName, offline: { path: `nbd+unix:///${disk.exportName}?socket=${disk.socketPath}`, format: 'raw' } });
  }
  return sources;
}

/** Takes backup `backupId` of the VM in `host` into the store (see the file header). */
export async function takeBackup(
  host: SnapshotHost,
  request: { backupId: string; key: Buffer; vm: Record<string, unknown>; store: BackupStoreClient; signal?: AbortSignal },
): Promise<TakenBackup> {
  const keys = backupKeysOf(request.key);
  const sources = backupSourcesOf(host.spec());
  const copies = sources.map((source) => join(host.dir, 'run', `${request.backupId}-${source.id}.raw`));
  await removeLeftCopies(join(host.dir, 'run'));
  try {
    await copyDisks(host, sources, copies, request.signal);
    const proofKey = ProofKey.fromSecret(keys.proofSecret);
    const disks: Array<BackupManifestDisk & Omit<BackupDiskReport, 'chunks'>> = [];
    for (const [index, source] of sources.entries())
      disks.push({ id: source.id, source: source.source, ...(await sendChunks(copies[index], keys, proofKey, request.store)) });
    const catalog = await catalogOf(sources, copies, request.signal);
    await request.store.putCatalog(request.backupId, buildIndex(keys.catalogKey(request.backupId), catalog.documents).toJSON());
    const createdAt = new Date().toISOString();
    const manifest: BackupManifest = {
      format: 'nubis-backup/1',
      backupId: request.backupId,
      createdAt,
      chunkBytes: CHUNK_BYTES,
      vm: request.vm,
      disks: disks.map(({ id, source, sizeBytes, chunks }) => ({ id, source, sizeBytes, chunks })),
    };
    const stored = await request.store.commit(request.backupId, {
      createdAt,
      chunks: disks.flatMap((disk) => disk.chunks.filter((chunk): chunk is string => chunk !== null)),
      manifest: sealManifest(keys, request.backupId, manifest),
    });
    return {
      disks: disks.map(({ chunks, ...report }) => ({ ...report, chunks: chunks.length })),
      storedBytes: stored.storedBytes,
      catalogFiles: catalog.documents.length,
      ...(catalog.notes.length > 0 ? { catalogNotes: catalog.notes.slice(0, 16) } : {}),
    };
  } finally {
    for (const copy of copies) await rm(copy, { force: true });
  }
}

/** Removes the copies a backup left when its agent was killed midway (backups of a VM run one at a time). */
async function removeLeftCopies(runDir: string): Promise<void> {
  for (const name of await readdir(runDir).catch(() => [] as string[]))
    if (/^bak-[0-9a-f]{12}-[a-z][a-z0-9-]*\.raw$/.test(name)) await rm(join(runDir, name), { force: true });
}

/**
 * Ends what a backup left in a QEMU whose agent was killed midway (QEMU outlives its agent): its
 * jobs (cancelled) and target nodes (deleted), which would otherwise make the next backup's
 * `blockdev-add` fail on their names.
 */
async function endLeftBackupJobs(qemu: NonNullable<ReturnType<SnapshotHost['qemu']>>): Promise<void> {
  const jobs = async () => (await qemu.qmp.execute<Array<{ device: string }>>('query-block-jobs')).filter((job) => job.device.startsWith('backup-'));
  for (const job of await jobs()) await qemu.qmp.execute('block-job-cancel', { device: job.device, force: true }).catch(() => undefined);
  const deadline = Date.now() + 60_000;
  while ((await jobs()).length > 0) {
    if (Date.now() > deadline) throw new NubisError('BACKUP_FAILED', 'A backup job left by an earlier agent did not end within 60 s');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const nodes = await qemu.qmp.execute<Array<{ 'node-name': string }>>('query-named-block-nodes', { flat: true });
  for (const node of nodes.filter((n) => n['node-name'].startsWith('backup-')))
    await qemu.qmp.execute('blockdev-del', { 'node-name': node['node-name'] }).catch(() => undefined);
}

/** Point-in-time copies of the disks into `copies`: one QMP transaction for a running VM, `qemu-img` for a stopped one. */
async function copyDisks(host: SnapshotHost, sources: BackupSource[], copies: string[], signal?: AbortSignal): Promise<void> {
  const qemu = host.qemu();
  if (!qemu) {
    for (const [index, source] of sources.entries())
      await runCommand('qemu-img', ['convert', '-U', '-f', source.offline.format, '-O', 'raw', source.offline.path, copies[index]], {
        timeoutMs: COPY_TIMEOUT_MS,
        ...(signal ? { signal } : {}),
      }).catch((error: unknown) => {
        throw new NubisError('BACKUP_FAILED', `Reading disk ${source.id} of VM ${host.name} failed: ${messageOf(error)}`, { cause: error });
      });
    return;
  }
  if (qemu.state !== 'running' && qemu.state !== 'paused')
    throw new NubisError('VM_INVALID_STATE', `VM ${host.name} is ${qemu.state}; backups are taken of running, paused or stopped VMs`);
  await endLeftBackupJobs(qemu);
  const nodes = await qemu.qmp.execute<Array<{ 'node-name': string; image: { 'virtual-size': number } }>>('query-named-block-nodes', { flat: true });
  const uid = host.spec().unixUid;
  const targets: string[] = [];
  try {
    for (const [index, source] of sources.entries()) {
      const size = nodes.find((node) => node['node-name'] === source.id)?.image['virtual-size'];
      if (size === undefined) throw new NubisError('BACKUP_FAILED', `VM ${host.name}'s QEMU has no disk ${source.id}`);
      // The unprivileged QEMU writes the copy: a file of its user in the one folder it may write.
      await (await open(copies[index], 'wx', 0o600)).close();
      await truncate(copies[index], size);
      if (uid !== undefined && process.getuid?.() === 0) await chown(copies[index], uid, uid);
      const target = `backup-${source.id}`;
      await qemu.qmp.execute('blockdev-add', { driver: 'raw', 'node-name': target, file: { driver: 'file', filename: copies[index] } });
      targets.push(target);
    }
    const done = sources.map((source) =>
      qemu.qmp.waitForEvent('BLOCK_JOB_COMPLETED', (event) => event.data.device === `backup-${source.id}`, { timeoutMs: COPY_TIMEOUT_MS }),
    );
    // Awaited below; jobs that never start (a failed transaction) must not leave waits to reject unheard.
    for (const wait of done) wait.catch(() => undefined);
    await qemu.qmp.execute('transaction', {
      actions: sources.map((source) => ({
        type: 'blockdev-backup',
        data: { 'job-id': `backup-${source.id}`, device: source.id, target: `backup-${source.id}`, sync: 'full' },
      })),
    });
    await faultPoint('backup.agent.after-copy-start');
    for (const event of await Promise.all(done)) {
      const error = (event.data as { error?: string }).error;
      if (error) throw new NubisError('BACKUP_FAILED', `Copying disk ${String(event.data.device).slice('backup-'.length)} of VM ${host.name} failed: ${error}`);
    }
  } finally {
    for (const target of targets) await qemu.qmp.execute('blockdev-del', { 'node-name': target }).catch(() => undefined);
  }
}

/** A catalog entry's id: which disk, and the path in it. */
export function catalogEntryId(source: string, path: string): string {
  return JSON.stringify([source, path]);
}

/** The files of the filesystems on the copies, as catalog documents, and why parts were left out. */
async function catalogOf(sources: BackupSource[], copies: string[], signal?: AbortSignal): Promise<{ documents: IndexDocument[]; notes: string[] }> {
  const documents: IndexDocument[] = [];
  const notes: string[] = [];
  for (const [index, source] of sources.entries()) {
    try {
      const listing = await listDiskFiles(copies[index], { ...(signal ? { signal } : {}) });
      for (const file of listing.files) documents.push({ id: catalogEntryId(source.source, file.path), keywords: fileKeywords(file.path) });
      for (const skipped of listing.skipped) notes.push(`${source.id} ${skipped.partition}${skipped.path ? ` ${skipped.path}` : ''}: ${skipped.reason}`);
      if (listing.truncated) notes.push(`${source.id}: ${listing.truncated}`);
    } catch (error) {
      notes.push(`${source.id}: ${messageOf(error)}`);
    }
  }
  return { documents, notes };
}

/** Cuts the copy at `path` into chunks and sends the store those it has not got, each with its proof tags. */
async function sendChunks(
  path: string,
  keys: BackupKeys,
  proofKey: ProofKey,
  store: BackupStoreClient,
): Promise<Omit<BackupDiskReport, 'id' | 'source' | 'chunks'> & { chunks: Array<string | null> }> {
  const sizeBytes = (await stat(path)).size;
  const file = await open(path, 'r');
  const chunks: Array<string | null> = [];
  let zeroChunks = 0;
  let newChunks = 0;
  let sentBytes = 0;
  try {
    for (let offset = 0; offset < sizeBytes; offset += CHUNK_BYTES * CHUNKS_PER_ROUND) {
      const round = new Map<string, Buffer>();
      for (let at = offset; at < Math.min(sizeBytes, offset + CHUNK_BYTES * CHUNKS_PER_ROUND); at += CHUNK_BYTES) {
        const data = Buffer.alloc(Math.min(CHUNK_BYTES, sizeBytes - at));
        await file.read(data, 0, data.length, at);
        if (isZero(data)) {
          chunks.push(null);
          zeroChunks += 1;
          continue;
        }
        const id = chunkIdOf(keys, data);
        chunks.push(id);
        round.set(id, data);
      }
      for (const id of round.size > 0 ? await store.missing([...round.keys()]) : []) {
        const sealed = sealChunk(keys, id, round.get(id)!);
        // Tags first: a chunk the store has is always one it can prove.
        await store.putTags(id, tagChunk(proofKey, id, sealed));
        await store.putChunk(id, sealed);
        newChunks += 1;
        sentBytes += sealed.length;
      }
    }
  } finally {
    await file.close();
  }
  return { sizeBytes, chunks, zeroChunks, newChunks, sentBytes };
}

const ZERO_CHUNK = Buffer.alloc(CHUNK_BYTES);

function isZero(data: Buffer): boolean {
  return data.equals(ZERO_CHUNK.subarray(0, data.length));
}

/**
 * Writes disk `diskId` of backup `backupId` into the new qcow2 file `target`: every chunk is
 * checked as it is opened (a damaged one fails the restore, nothing is written at `target`).
 */
export async function restoreDisk(
  request: { store: BackupStoreClient; backupId: string; key: Buffer; diskId: string; target: string },
  onProgress?: (doneChunks: number, totalChunks: number) => void,
): Promise<{ sizeBytes: number }> {
  const disk = await readBackupDisk(request.store, request.backupId, request.key, request.diskId);
  if (await stat(request.target).catch(() => undefined))
    throw new NubisError('VOLUME_EXISTS', `${request.target} exists already; a restore writes only into a new file`);
  const raw = `${request.target}.restoring.raw`;
  try {
    await writeRawDisk(request.store, backupKeysOf(request.key), disk, raw, onProgress ? { onProgress } : {});
    await runCommand('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, request.target], { timeoutMs: COPY_TIMEOUT_MS });
    return { sizeBytes: disk.sizeBytes };
  } catch (error) {
    await rm(request.target, { force: true });
    throw error;
  } finally {
    await rm(raw, { force: true });
  }
}
