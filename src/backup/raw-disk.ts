/**
 * A backed-up disk written back as a sparse raw file: the one way a restore (host/vm-backup.ts)
 * and a file restore (control/backup-file-restore.ts) turn chunks into a disk image.
 */
import { open } from 'node:fs/promises';
import { type BackupKeys, openChunk } from './chunk-crypto.ts';
import type { BackupManifestDisk } from './manifest.ts';
import type { BackupStoreClient } from './store-client.ts';

/**
 * Writes `disk` into the new file `path` (never over an existing one; the caller removes it on
 * failure): zero chunks stay holes, every other chunk is fetched and checked as it is opened (a
 * damaged one throws, never lands as wrong bytes); synced before it resolves.
 */
export async function writeRawDisk(
  store: BackupStoreClient,
  keys: BackupKeys,
  disk: BackupManifestDisk & { chunkBytes: number },
  path: string,
  options: { onProgress?: (doneChunks: number, totalChunks: number) => void; signal?: AbortSignal } = {},
): Promise<void> {
  const file = await open(path, 'wx', 0o600);
  try {
    await file.truncate(disk.sizeBytes);
    for (const [index, id] of disk.chunks.entries()) {
      options.signal?.throwIfAborted();
      if (id !== null) {
        const data = openChunk(keys, id, await store.getChunk(id));
        await file.write(data, 0, data.length, index * disk.chunkBytes);
      }
      options.onProgress?.(index + 1, disk.chunks.length);
    }
    await file.sync();
  } finally {
    await file.close();
  }
}
