/**
 * A backup's manifest: which disks it holds, their sizes and their chunks, and the VM's settings.
 * Sealed with the tenant's key (chunk-crypto.ts) by the host that takes the backup; the store
 * keeps it without being able to read it.
 */
import { NubisError } from '../core/errors.ts';
import { openManifest, backupKeysOf } from './chunk-crypto.ts';
import type { BackupStoreClient } from './store-client.ts';

/** What a backup holds of one disk: its place in the VM, its size and its chunks (null: all zero). */
export interface BackupManifestDisk {
  id: string;
  /** `root` for the disk the VM boots from, else the volume (`pool/volume`). */
  source: string;
  sizeBytes: number;
  chunks: Array<string | null>;
}

/** The sealed description of one backup. */
export interface BackupManifest {
  format: 'nubis-backup/1';
  backupId: string;
  createdAt: string;
  chunkBytes: number;
  /** What the control plane recorded of the VM (its settings), sealed with the data. */
  vm: Record<string, unknown>;
  disks: BackupManifestDisk[];
}

/**
 * Disk `diskId` of backup `backupId`, with the manifest's chunk size (BACKUP_DISK_NOT_FOUND when
 * the backup has no such disk).
 */
export async function readBackupDisk(
  store: BackupStoreClient,
  backupId: string,
  key: Buffer,
  diskId: string,
): Promise<BackupManifestDisk & { chunkBytes: number }> {
  const manifest = await readBackupManifest(store, backupId, key);
  const disk = manifest.disks.find((d) => d.id === diskId);
  if (!disk) throw new NubisError('BACKUP_DISK_NOT_FOUND', `Backup ${backupId} has no disk ${diskId}`);
  return { ...disk, chunkBytes: manifest.chunkBytes };
}

/** The manifest of backup `backupId`, opened with the tenant key. */
export async function readBackupManifest(store: BackupStoreClient, backupId: string, key: Buffer): Promise<BackupManifest> {
  return openManifest<BackupManifest>(backupKeysOf(key), backupId, (await store.backup(backupId)).manifest);
}
