/**
 * Live restore (`nubis backup restore --live`): a VM made of a backup starts at once, its disks
 * read from the backup store on first use while QEMU copies the rest in the background, so the
 * time to a running VM does not grow with the size of its disks.
 *
 * A volume restored live is a qcow2 file whose backing file is an NBD export this agent serves on
 * a unix socket beside it (`<volume>.restore.sock`): a read of a block the volume does not hold yet
 * goes to the export, which fetches the chunk from the store and opens it with the tenant key (a
 * damaged chunk is an I/O error in the guest, never wrong data); the guest's writes land in the
 * qcow2 file. Once the VM runs, a QMP `block-stream` job copies every block the backing file holds
 * into the volume and then drops the backing file from it; the export ends there. Zero chunks
 * are holes in the export's allocation map, so the stream skips them.
 *
 * The socket is root's (0600) until the VM's QEMU starts, which is given it with the volume
 * (vm-files.ts): no other VM's user can read the backup through it. The tenant key lives only in
 * this agent's memory, as for every backup call: an agent that ends before the stream is done
 * takes the export with it, and the control plane then removes the restored VM (backup-restore.ts).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { backupKeysOf, openChunk, type BackupKeys } from '../backup/chunk-crypto.ts';
import { readBackupDisk, type BackupManifestDisk } from '../backup/manifest.ts';
import type { BackupStoreClient } from '../backup/store-client.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import { runCommand } from '../core/run-command.ts';
import { mapCatalog, NbdError, type NbdExport, type NbdExtent } from '../storage/nbd/nbd-export.ts';
import { NbdServer } from '../storage/nbd/nbd-server.ts';
import { liveRestoreSocketOf } from './dir-pools.ts';
import type { SnapshotHost } from './vm-snapshot-control.ts';

/** The export's name in the backing file's NBD address. */
const EXPORT_NAME = 'backup';
/** Opened chunks kept in memory per export: 16 of 4 MiB. */
const CACHED_CHUNKS = 16;
/** Pulling a disk of many GiB under TCG may take long. */
const STREAM_TIMEOUT_MS = 6 * 3_600_000;

/**
 * One backed-up disk as a read-only NBD export: each read fetches the chunks it covers from the
 * store, checked and opened, and keeps the last few (with the next one fetched ahead, as a
 * stream and most guests read on).
 */
export class BackupDiskExport implements NbdExport {
  readonly readOnly = true;
  readonly sizeBytes: number;
  readonly description: string;
  readonly #store: BackupStoreClient;
  readonly #keys: BackupKeys;
  readonly #disk: BackupManifestDisk;
  readonly #chunkBytes: number;
  /** Opened chunks by index, oldest first. */
  readonly #chunks = new Map<number, Promise<Buffer>>();
  /** Bytes fetched from the store. */
  fetchedBytes = 0;

  constructor(store: BackupStoreClient, keys: BackupKeys, disk: BackupManifestDisk, chunkBytes: number) {
    this.#store = store;
    this.#keys = keys;
    this.#disk = disk;
    this.#chunkBytes = chunkBytes;
    this.sizeBytes = disk.sizeBytes;
    this.description = `disk ${disk.id} of a backup`;
  }

  async read(buffer: Buffer, position: number): Promise<void> {
    for (let done = 0; done < buffer.length; ) {
      const at = position + done;
      const index = Math.floor(at / this.#chunkBytes);
      const offset = at - index * this.#chunkBytes;
      const length = Math.min(buffer.length - done, this.#chunkBytes - offset);
      const data = this.#disk.chunks[index] ? await this.#chunk(index) : undefined;
      const copied = data ? data.copy(buffer, done, offset, offset + length) : 0;
      buffer.fill(0, done + copied, done + length);
      done += length;
    }
  }

  write(): Promise<void> {
    return Promise.reject(new NbdError('NBD_EPERM', 'A backup is read-only'));
  }

  async flush(): Promise<void> {}

  /** Zero chunks are holes: nothing to read, nothing to copy. */
  async blockStatus(position: number, lengthBytes: number): Promise<NbdExtent[]> {
    const extents: NbdExtent[] = [];
    const end = Math.min(position + lengthBytes, this.sizeBytes);
    for (let at = position; at < end; ) {
      const index = Math.floor(at / this.#chunkBytes);
      const next = Math.min((index + 1) * this.#chunkBytes, end);
      const hole = this.#disk.chunks[index] === null;
      const last = extents.at(-1);
      if (last && last.hole === hole) last.lengthBytes += next - at;
      else extents.push({ lengthBytes: next - at, hole, zero: hole });
      at = next;
    }
    return extents;
  }

  #chunk(index: number): Promise<Buffer> {
    const cached = this.#chunks.get(index);
    if (cached) {
      this.#chunks.delete(index);
      this.#chunks.set(index, cached);
      return cached;
    }
    const opened = this.#fetch(index);
    const ahead = index + 1;
    if (this.#disk.chunks[ahead] && !this.#chunks.has(ahead)) this.#remember(ahead, this.#fetch(ahead));
    return this.#remember(index, opened);
  }

  #remember(index: number, chunk: Promise<Buffer>): Promise<Buffer> {
    this.#chunks.set(index, chunk);
    // A failed fetch is not kept: the next read asks the store again.
    chunk.catch(() => this.#chunks.get(index) === chunk && this.#chunks.delete(index));
    while (this.#chunks.size > CACHED_CHUNKS) this.#chunks.delete(this.#chunks.keys().next().value as number);
    return chunk;
  }

  async #fetch(index: number): Promise<Buffer> {
    const id = this.#disk.chunks[index] as string;
    try {
      const sealed = await this.#store.getChunk(id);
      this.fetchedBytes += sealed.length;
      return openChunk(this.#keys, id, sealed);
    } catch (error) {
      throw new NbdError('NBD_EIO', `Chunk ${index} of disk ${this.#disk.id} could not be read from the backup store: ${messageOf(error)}`, {
        cause: error,
      });
    }
  }
}

interface LiveRestore {
  server: NbdServer;
  export: BackupDiskExport;
}

/** The volumes of this host being restored live, by file path. */
export class LiveRestores {
  readonly #store: BackupStoreClient;
  readonly #byPath = new Map<string, LiveRestore>();

  constructor(store: BackupStoreClient) {
    this.#store = store;
  }

  /**
   * Makes `path` a new volume that reads disk `diskId` of backup `backupId` through an export of
   * this agent (see the file header). Nothing is left at `path` when this fails.
   */
  async start(path: string, request: { backupId: string; diskId: string; key: Buffer }): Promise<void> {
    if (this.#byPath.has(path)) throw new NubisError('VOLUME_EXISTS', `${path} is being restored already`);
    const disk = await readBackupDisk(this.#store, request.backupId, request.key, request.diskId);
    const diskExport = new BackupDiskExport(this.#store, backupKeysOf(request.key), disk, disk.chunkBytes);
    const server = new NbdServer({ catalog: mapCatalog(new Map([[EXPORT_NAME, diskExport]]), EXPORT_NAME) });
    const socket = liveRestoreSocketOf(path);
    try {
      // Bound in a folder of root's alone, then moved beside the volume with its mode (nbd-server.ts).
      const bindFolder = join(dirname(path), '.tmp');
      await mkdir(bindFolder, { recursive: true, mode: 0o700 });
      const bindPath = join(bindFolder, `${basename(socket)}.${randomBytes(6).toString('hex')}`);
      await server.listen({ path: socket, file: { mode: 0o600, bindPath } });
      // The backing file's address as JSON: no part of the path is read as URL syntax.
      const backing = `json:${JSON.stringify({ driver: 'raw', file: { driver: 'nbd', server: { type: 'unix', path: socket }, export: EXPORT_NAME } })}`;
      await runCommand('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', backing, '-F', 'raw', path, String(disk.sizeBytes)], { timeoutMs: 60_000 });
    } catch (error) {
      await server.close();
      await rm(path, { force: true });
      throw error;
    }
    this.#byPath.set(path, { server, export: diskExport });
  }

  has(path: string): boolean {
    return this.#byPath.has(path);
  }

  /**
   * Copies into each of the running VM's disks restored live all its backup still holds for it,
   * then ends their exports: the VM no longer needs the store. Resolves with what each disk pulled.
   */
  async stream(host: SnapshotHost): Promise<Array<{ disk: string; fetchedBytes: number }>> {
    const disks = host.spec().disks.flatMap((disk) => (disk.kind === 'file' && this.#byPath.has(disk.path) ? [{ id: disk.id, path: disk.path }] : []));
    const qemu = host.qemu();
    if (disks.length > 0 && qemu?.state !== 'running')
      throw new NubisError('VM_INVALID_STATE', `VM ${host.name} is ${qemu?.state ?? 'stopped'}; its restored disks are pulled while it runs`);
    const pulled: Array<{ disk: string; fetchedBytes: number }> = [];
    for (const disk of disks) {
      const job = `restore-${disk.id}`;
      const done = qemu!.qmp.waitForEvent('BLOCK_JOB_COMPLETED', (event) => event.data.device === job, { timeoutMs: STREAM_TIMEOUT_MS });
      // Awaited below; a job that never starts must not leave its wait to reject unheard.
      done.catch(() => undefined);
      await qemu!.qmp.execute('block-stream', { 'job-id': job, device: disk.id });
      const error = ((await done).data as { error?: string }).error;
      if (error) throw new NubisError('BACKUP_RESTORE_FAILED', `Pulling disk ${disk.id} of VM ${host.name} from the backup failed: ${error}`);
      pulled.push({ disk: disk.id, fetchedBytes: this.#byPath.get(disk.path)?.export.fetchedBytes ?? 0 });
      await this.end(disk.path);
    }
    return pulled;
  }

  /** Ends the export of `path` (its volume pulled, or deleted); its socket file goes with it. */
  async end(path: string): Promise<void> {
    const restore = this.#byPath.get(path);
    this.#byPath.delete(path);
    await restore?.server.close();
    await rm(liveRestoreSocketOf(path), { force: true });
  }

  /** Ends every export (the agent stops). */
  async close(): Promise<void> {
    for (const path of [...this.#byPath.keys()]) await this.end(path);
  }
}
