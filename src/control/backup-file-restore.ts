/**
 * `nubis backup file-restore BACKUP PATH [--disk DISK]`: one file out of a backup, without a VM.
 * The control plane (which holds the project's key) writes the disk's chunks, each checked as it
 * is opened, into a sparse raw file of a folder of its own (mode 0700, removed at once after),
 * and reads the file from its filesystem offline as the catalog listed it (ext2/3/4 with
 * debugfs, FAT with our reader: backup/search/). A file is answered whole, up to 64 MiB.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NubisError } from '../core/errors.ts';
import { backupKeysOf } from '../backup/chunk-crypto.ts';
import { readBackupManifest } from '../backup/manifest.ts';
import { writeRawDisk } from '../backup/raw-disk.ts';
import { readDiskFile } from '../backup/search/disk-files.ts';
import type { BackupStoreClient } from '../backup/store-client.ts';
import { FILE_RESTORE_MAX_BYTES, type RestoredFile } from '../wire/backup-schemas.ts';

/** File `request.path` of disk `request.disk` (needed when the backup has several) of backup `backupId`. */
export async function restoreFile(
  store: BackupStoreClient,
  backupId: string,
  key: Buffer,
  request: { path: string; disk?: string },
  signal?: AbortSignal,
): Promise<RestoredFile> {
  const manifest = await readBackupManifest(store, backupId, key);
  const names = manifest.disks.map((disk) => disk.source).join(', ');
  const disk = request.disk === undefined && manifest.disks.length === 1 ? manifest.disks[0] : manifest.disks.find((d) => d.source === request.disk);
  if (!disk)
    throw new NubisError(
      request.disk === undefined ? 'VALIDATION_FAILED' : 'BACKUP_DISK_NOT_FOUND',
      request.disk === undefined
        ? `Backup ${backupId} holds several disks (${names}); name one with --disk`
        : `Backup ${backupId} has no disk ${request.disk}; its disks: ${names}`,
    );
  const dir = await mkdtemp(join(tmpdir(), 'nubis-file-restore-'));
  try {
    const image = join(dir, 'disk.raw');
    await writeRawDisk(store, backupKeysOf(key), { ...disk, chunkBytes: manifest.chunkBytes }, image, signal ? { signal } : {});
    const content = await readDiskFile(image, request.path, { maxBytes: FILE_RESTORE_MAX_BYTES, ...(signal ? { signal } : {}) });
    return {
      backup: backupId,
      disk: disk.source,
      path: request.path,
      sizeBytes: content.length,
      sha256: createHash('sha256').update(content).digest('hex'),
      contentBase64: content.toString('base64'),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
