/**
 * Backups of one VM's disks on its host, and restores of a backed-up disk into a new file: the
 * client side of the backup store, where data is cut into chunks and sealed before it leaves the
 * host (backup/chunk-crypto.ts), with the tenant key the control plane hands over for the call
 * only (it is never written on a host).
 *
 * A backup of a running VM is crash-consistent: every disk is read as of one instant while the
 * guest goes on writing (image fleecing, host/backup-views.ts), and QEMU's dirty bitmaps say which
 * chunks changed since the VM's last backup, so that only those are read (changed-block
 * tracking; after a restart of QEMU every chunk is read once more). The disks are cut into 4 MiB
 * chunks, and only chunks the store has not got are sealed and sent: a second backup sends only
 * what changed, whatever happened in between (a reboot, a live migration, a restart elsewhere),
 * since a chunk's id depends only on its content. Zero chunks are not sent at all. A stopped VM's
 * disks are read where they live, whole, mounted as files the same way.
 *
 * Each chunk sent goes with its proof-of-retrievability tags (backup/proof/por.ts), so the
 * tenant can later check that the store still holds it without reading it back. And the files of
 * the filesystems on each copy (ext2/3/4, FAT, also in MBR or GPT partitions; read offline with
 * debugfs and our FAT reader, backup/search/) go into the backup's encrypted catalog, searchable
 * by word without the store learning the word (backup/search/sse-index.ts).
 */
import { open, rm, stat } from 'node:fs/promises';
import { BOOT_DISK_NODE } from '../compute/qemu/command-line.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import { runCommand } from '../core/run-command.ts';
import type { TakenBackup } from '../agent-api/contract.ts';
import { backupKeysOf, CHUNK_BYTES, chunkIdOf, sealChunk, sealManifest, type BackupKeys } from '../backup/chunk-crypto.ts';
import type { BackupStoreClient } from '../backup/store-client.ts';
import type { SnapshotHost } from './vm-snapshot-control.ts';
import { type BackupManifest, type BackupManifestDisk, readBackupDisk, readBackupManifest } from '../backup/manifest.ts';
import { type BackupViews, type DiskView, openBackupViews, openStoppedViews } from './backup-views.ts';
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
  /** How the stopped VM's disk is opened (a QEMU blockdev, read-only): its image file, or its volume over NBD. */
  offline: Record<string, unknown>;
}

/** Chunks in flight per round trip to the store: 16 chunks, 64 MiB of memory at most. */
const CHUNKS_PER_ROUND = 16;
/** Converting a restored disk of many GiB may take long. */
const COPY_TIMEOUT_MS = 3_600_000;

/** The disks of `spec` a backup holds: every disk the guest can write. */
export function backupSourcesOf(spec: VmSpec): BackupSource[] {
  const sources: BackupSource[] =
    spec.boot.kind === 'disk' ? [{ id: BOOT_DISK_NODE, source: 'root', offline: imageFile(spec.boot.path, spec.boot.format) }] : [];
  for (const disk of spec.disks) {
    if (disk.readOnly) continue;
    if (disk.kind === 'file') sources.push({ id: disk.id, source: disk.localVolume ?? disk.path, offline: imageFile(disk.path, disk.format) });
    else
      sources.push({
        id: disk.id,
        source: disk.exportName,
        offline: { driver: 'raw', file: { driver: 'nbd', server: { type: 'unix', path: disk.socketPath }, export: disk.exportName } },
      });
  }
  return sources;
}

/** An image file opened read-only and shared (as `qemu-img -U`): its backing images may be open in running VMs. */
function imageFile(path: string, format: string): Record<string, unknown> {
  return { driver: format, 'force-share': true, file: { driver: 'file', filename: path } };
}

/** Takes backup `backupId` of the VM in `host` into the store (see the file header). */
export async function takeBackup(
  host: SnapshotHost,
  request: { backupId: string; key: Buffer; vm: Record<string, unknown>; store: BackupStoreClient; signal?: AbortSignal },
): Promise<TakenBackup> {
  const keys = backupKeysOf(request.key);
  const sources = backupSourcesOf(host.spec());
  const reading = await openDisks(host, sources, request);
  let committed = false;
  try {
    const proofKey = ProofKey.fromSecret(keys.proofSecret);
    const disks: Array<BackupManifestDisk & Omit<BackupDiskReport, 'chunks'>> = [];
    for (const [index, source] of sources.entries())
      disks.push({ id: source.id, source: source.source, ...(await sendChunks(reading.views[index], keys, proofKey, request.store)) });
    const catalog = await catalogOf(
      sources,
      reading.views.map((view) => view.path),
      request.signal,
    );
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
    committed = true;
    return {
      disks: disks.map(({ chunks, ...report }) => ({ ...report, chunks: chunks.length })),
      storedBytes: stored.storedBytes,
      catalogFiles: catalog.documents.length,
      ...(catalog.notes.length > 0 ? { catalogNotes: catalog.notes.slice(0, 16) } : {}),
    };
  } finally {
    await reading.close(committed);
  }
}

/**
 * The disks as of one instant, as files (host/backup-views.ts): a running or paused VM's through
 * its QEMU (point-in-time views that know what changed since its last backup), a stopped VM's
 * opened where they live (every chunk read).
 */
async function openDisks(
  host: SnapshotHost,
  sources: BackupSource[],
  request: { backupId: string; key: Buffer; store: BackupStoreClient; signal?: AbortSignal },
): Promise<BackupViews> {
  const qemu = host.qemu();
  if (qemu) {
    if (qemu.state !== 'running' && qemu.state !== 'paused')
      throw new NubisError('VM_INVALID_STATE', `VM ${host.name} is ${qemu.state}; backups are taken of running, paused or stopped VMs`);
    const manifests = new Map<string, Promise<BackupManifest>>();
    const parentDisk = async (backupId: string, diskId: string) => {
      if (!manifests.has(backupId)) manifests.set(backupId, readBackupManifest(request.store, backupId, request.key));
      const manifest = await manifests.get(backupId)!;
      const source = sources.find((s) => s.id === diskId)?.source;
      // The same disk of this VM: same node and same source, in chunks of the same size.
      return manifest.chunkBytes === CHUNK_BYTES ? manifest.disks.find((disk) => disk.id === diskId && disk.source === source) : undefined;
    };
    return openBackupViews(host, { backupId: request.backupId, disks: sources, parentDisk });
  }
  return openStoppedViews(host.dir, { backupId: request.backupId, disks: sources.map(({ id, offline }) => ({ id, blockdev: offline })) });
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

/**
 * Cuts the disk `view` into chunks and sends the store those it has not got, each with its proof
 * tags. Of a view that knows what changed, only the changed chunks are read; the others are its
 * parent backup's.
 */
async function sendChunks(
  view: DiskView,
  keys: BackupKeys,
  proofKey: ProofKey,
  store: BackupStoreClient,
): Promise<Omit<BackupDiskReport, 'id' | 'source' | 'chunks'> & { chunks: Array<string | null> }> {
  const { sizeBytes, changed } = view;
  const file = await open(view.path, 'r');
  const chunks: Array<string | null> = [];
  let zeroChunks = 0;
  let newChunks = 0;
  let sentBytes = 0;
  let readBytes = 0;
  try {
    for (let offset = 0; offset < sizeBytes; offset += CHUNK_BYTES * CHUNKS_PER_ROUND) {
      const round = new Map<string, Buffer>();
      for (let at = offset; at < Math.min(sizeBytes, offset + CHUNK_BYTES * CHUNKS_PER_ROUND); at += CHUNK_BYTES) {
        const index = at / CHUNK_BYTES;
        if (changed && !changed.chunks.has(index)) {
          const unchanged = changed.parent.chunks[index];
          chunks.push(unchanged);
          if (unchanged === null) zeroChunks += 1;
          continue;
        }
        const data = Buffer.alloc(Math.min(CHUNK_BYTES, sizeBytes - at));
        await file.read(data, 0, data.length, at);
        readBytes += data.length;
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
  return { sizeBytes, chunks, zeroChunks, newChunks, sentBytes, readBytes, ...(changed ? { changedSince: changed.since } : {}) };
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
