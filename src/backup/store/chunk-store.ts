/**
 * The files of a backup store: sealed chunks by id and committed backups. The store never holds a
 * key: chunks and manifests are sealed by the client (backup/chunk-crypto.ts); what it sees of a
 * backup is its id, its time, the ids of its chunks and their sizes.
 *
 * Layout of the store folder (mode 0700):
 * - `chunks/<first 2 hex digits>/<id>`: a sealed chunk, and `<id>.sum`, the SHA-256 of its bytes
 *   as received, so that the store finds rotten bytes by itself (`check`) without any key.
 * - `chunks/.../<id>.tags`: the chunk's proof-of-retrievability tags, one of 32 bytes per 4 KiB
 *   block, made by the client (backup/proof/por.ts); the store answers challenges with them.
 * - `backups/<backup id>.json`: a committed backup: its public record and its sealed manifest.
 * - `backups/<backup id>.catalog.json`: its encrypted file catalog (backup/search/sse-index.ts),
 *   searched with tokens that do not show the word.
 * - `tmp/`: files being written; each is written there, fsynced and renamed into place, so a crash
 *   or a killed store leaves a whole chunk or none, and a backup committed or not at all.
 *
 * A backup is committed only once every chunk it names is present (`commit` checks), so an
 * interrupted backup leaves no half-made one in the list, and the previous ones stay whole.
 * Garbage collection removes chunks no committed backup names, but never one written or found
 * (by `missing`) within its grace period: those may belong to a backup being made (Proxmox
 * Backup Server marks chunks by atime for the same reason).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, stat, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { NubisError } from '../../core/errors.ts';
import { faultPoint } from '../../core/fault-points.ts';
import { CHUNK_ID } from '../chunk-crypto.ts';
import { BLOCK_BYTES, ELEMENT_BYTES } from '../proof/field.ts';
import type { ProofSource } from '../proof/por.ts';
import { EncryptedIndex, searchIndex } from '../search/sse-index.ts';

/** A backup id as the control plane makes them. */
export const BACKUP_ID = /^bak-[0-9a-f]{12}$/;
const BACKUP_FILE = /^bak-[0-9a-f]{12}\.json$/;
/** The largest sealed chunk accepted: a 4 MiB chunk with its IV and tag, and room. */
export const MAX_SEALED_CHUNK_BYTES = 4 * 1024 * 1024 + 1024;

/** What the store keeps of a committed backup besides its sealed manifest. */
export interface StoredBackup {
  id: string;
  createdAt: string;
  /** Every chunk the backup needs (each once). */
  chunks: string[];
  /** Bytes of the sealed manifest and of all its chunks as stored. */
  storedBytes: number;
}

interface BackupFile extends StoredBackup {
  format: 'nubis-backup-store/1';
  manifest: string;
}

/** What a check of the store's own bytes found. */
export interface StoreCheck {
  checkedChunks: number;
  missing: string[];
  corrupt: string[];
}

function checkChunkId(id: string): string {
  if (!CHUNK_ID.test(id)) throw new NubisError('VALIDATION_FAILED', `${JSON.stringify(id).slice(0, 80)} is not a chunk id (64 hex digits)`);
  return id;
}

function checkBackupId(id: string): string {
  if (!BACKUP_ID.test(id)) throw new NubisError('VALIDATION_FAILED', `${JSON.stringify(id).slice(0, 40)} is not a backup id (bak-<12 hex digits>)`);
  return id;
}

/** The chunks and backups in one folder. */
export class ChunkStore {
  readonly #dir: string;

  constructor(dir: string) {
    this.#dir = dir;
  }

  /** Makes the store's folders (mode 0700) and clears what a crash left half-written. */
  async open(): Promise<void> {
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    for (const sub of ['chunks', 'backups']) await mkdir(join(this.#dir, sub), { recursive: true, mode: 0o700 });
    await rm(join(this.#dir, 'tmp'), { recursive: true, force: true });
    await mkdir(join(this.#dir, 'tmp'), { mode: 0o700 });
  }

  #chunkPath(id: string): string {
    return join(this.#dir, 'chunks', checkChunkId(id).slice(0, 2), id);
  }

  #backupPath(id: string): string {
    return join(this.#dir, 'backups', `${checkBackupId(id)}.json`);
  }

  /** Writes `data` to `path` durably: beside it in tmp/, fsynced, renamed, the folder fsynced. */
  async #writeDurably(path: string, data: Buffer | string): Promise<void> {
    const temp = join(this.#dir, 'tmp', randomBytes(8).toString('hex'));
    const file = await open(temp, 'wx', 0o600);
    try {
      await file.writeFile(data);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temp, path);
    const folder = await open(join(path, '..'), 'r');
    try {
      await folder.sync();
    } finally {
      await folder.close();
    }
  }

  /** The ids of `ids` the store has not got; those it has are marked fresh (safe from a collection for its grace period). */
  async missing(ids: string[]): Promise<string[]> {
    const now = new Date();
    const missing: string[] = [];
    for (const id of ids) {
      try {
        await utimes(this.#chunkPath(id), now, now);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
        missing.push(id);
      }
    }
    return missing;
  }

  /** Stores the proof tags of chunk `id` (32 bytes per 4 KiB block of its sealed bytes); sent before the chunk. */
  async putTags(id: string, tags: Buffer): Promise<void> {
    const path = this.#chunkPath(id);
    const maxBytes = Math.ceil(MAX_SEALED_CHUNK_BYTES / BLOCK_BYTES) * ELEMENT_BYTES;
    if (tags.length === 0 || tags.length % ELEMENT_BYTES !== 0 || tags.length > maxBytes)
      throw new NubisError('VALIDATION_FAILED', `Proof tags are 32 bytes per 4 KiB block, at most ${maxBytes} bytes, not ${tags.length}`);
    await mkdir(join(path, '..'), { recursive: true, mode: 0o700 });
    await this.#writeDurably(`${path}.tags`, tags);
  }

  /** How a prover reads this store: blocks of the chunks' bytes and their tags. */
  proofSource(): ProofSource {
    const readAt = async (path: string, length: number, position: number): Promise<Buffer> => {
      const file = await open(path, 'r');
      try {
        const buffer = Buffer.alloc(length);
        const { bytesRead } = await file.read(buffer, 0, length, position);
        return buffer.subarray(0, bytesRead);
      } finally {
        await file.close();
      }
    };
    return {
      readBlock: (id, index) => readAt(this.#chunkPath(id), BLOCK_BYTES, index * BLOCK_BYTES),
      readTag: (id, index) => readAt(`${this.#chunkPath(id)}.tags`, ELEMENT_BYTES, index * ELEMENT_BYTES),
    };
  }

  /** Stores backup `id`'s encrypted file catalog (before the backup is committed). */
  async putCatalog(id: string, catalog: unknown): Promise<void> {
    EncryptedIndex.fromJSON(catalog);
    await this.#writeDurably(this.#catalogPath(id), JSON.stringify(catalog));
  }

  #catalogPath(id: string): string {
    return join(this.#dir, 'backups', `${checkBackupId(id)}.catalog.json`);
  }

  /**
   * The encrypted entries each backup's catalog holds under its token (the k1 of a search token,
   * one per backup since each catalog has its own key); a backup without a catalog finds nothing.
   */
  async searchCatalogs(queries: Array<{ backup: string; token: string }>): Promise<Array<{ backup: string; values: string[] }>> {
    const results: Array<{ backup: string; values: string[] }> = [];
    for (const { backup, token } of queries) {
      let text: string;
      try {
        text = await readFile(this.#catalogPath(backup), 'utf8');
      } catch {
        continue;
      }
      const values = searchIndex(EncryptedIndex.fromJSON(JSON.parse(text)), token);
      if (values.length > 0) results.push({ backup, values });
    }
    return results;
  }

  /** Stores a sealed chunk (an existing one is kept: same id, same content). */
  async putChunk(id: string, sealed: Buffer): Promise<{ stored: boolean }> {
    const path = this.#chunkPath(id);
    if ((await this.missing([id])).length === 0) return { stored: false };
    if (sealed.length > MAX_SEALED_CHUNK_BYTES)
      throw new NubisError('VALIDATION_FAILED', `A sealed chunk has at most ${MAX_SEALED_CHUNK_BYTES} bytes, not ${sealed.length}`);
    await mkdir(join(path, '..'), { recursive: true, mode: 0o700 });
    await this.#writeDurably(`${path}.sum`, createHash('sha256').update(sealed).digest('hex'));
    await this.#writeDurably(path, sealed);
    return { stored: true };
  }

  /** A sealed chunk's bytes; `BACKUP_CHUNK_MISSING` when the store has none. */
  async getChunk(id: string): Promise<Buffer> {
    try {
      return await readFile(this.#chunkPath(id));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT')
        throw new NubisError('BACKUP_CHUNK_MISSING', `The backup store has no chunk ${id.slice(0, 16)}…: it was lost or removed`, { details: { chunk: id } });
      throw error;
    }
  }

  /** Commits backup `id`: refused unless every chunk it names is present. */
  async commit(id: string, record: { createdAt: string; chunks: string[]; manifest: Buffer }): Promise<StoredBackup> {
    const chunks = [...new Set(record.chunks.map(checkChunkId))];
    let storedBytes = record.manifest.length;
    for (const chunk of chunks) {
      try {
        storedBytes += (await stat(this.#chunkPath(chunk))).size;
      } catch {
        throw new NubisError('BACKUP_CHUNK_MISSING', `Backup ${id} names chunk ${chunk.slice(0, 16)}…, which the store has not got; upload it first`, {
          details: { chunk },
        });
      }
    }
    const path = this.#backupPath(id);
    if (await stat(path).catch(() => undefined)) throw new NubisError('BACKUP_EXISTS', `The backup store already has backup ${id}`);
    await faultPoint('backup.commit.before-write');
    const stored: StoredBackup = { id, createdAt: record.createdAt, chunks, storedBytes };
    const file: BackupFile = { format: 'nubis-backup-store/1', ...stored, manifest: record.manifest.toString('base64') };
    await this.#writeDurably(path, JSON.stringify(file));
    return stored;
  }

  async #readBackup(id: string): Promise<BackupFile> {
    try {
      return JSON.parse(await readFile(this.#backupPath(id), 'utf8')) as BackupFile;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new NubisError('BACKUP_NOT_FOUND', `The backup store has no backup ${id}`);
      throw error;
    }
  }

  /** A committed backup's record and sealed manifest. */
  async backup(id: string): Promise<StoredBackup & { manifest: Buffer }> {
    const { format: _format, manifest, ...stored } = await this.#readBackup(id);
    return { ...stored, manifest: Buffer.from(manifest, 'base64') };
  }

  /** The committed backups, oldest first. */
  async list(): Promise<StoredBackup[]> {
    const names = (await readdir(join(this.#dir, 'backups'))).filter((name) => BACKUP_FILE.test(name));
    const backups = await Promise.all(names.map((name) => this.#readBackup(name.slice(0, -'.json'.length))));
    return backups.map(({ format: _f, manifest: _m, ...stored }) => stored).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  /** Forgets backup `id`; its chunks go at the next collection if no other backup names them. */
  async remove(id: string): Promise<void> {
    await this.#readBackup(id);
    await rm(this.#backupPath(id));
    await rm(this.#catalogPath(id), { force: true });
  }

  /** Removes the chunks no backup names that were not written or found within `graceSeconds`. */
  async collect(graceSeconds: number): Promise<{ removedChunks: number; freedBytes: number; keptChunks: number }> {
    const backups = await this.list();
    const used = new Set(backups.flatMap((backup) => backup.chunks));
    const before = Date.now() - graceSeconds * 1000;
    // Catalogs of backups never committed (an interrupted backup), past the grace period.
    const committed = new Set(backups.map((backup) => backup.id));
    for (const name of await readdir(join(this.#dir, 'backups'))) {
      const id = /^(bak-[0-9a-f]{12})\.catalog\.json$/.exec(name)?.[1];
      const path = join(this.#dir, 'backups', name);
      if (id && !committed.has(id) && (await stat(path)).mtimeMs < before) await rm(path, { force: true });
    }
    let removedChunks = 0;
    let freedBytes = 0;
    let keptChunks = 0;
    for (const { id, path } of await this.#allChunks()) {
      const info = await stat(path);
      if (used.has(id) || info.mtimeMs >= before) {
        keptChunks += 1;
        continue;
      }
      await rm(path);
      await rm(`${path}.sum`, { force: true });
      await rm(`${path}.tags`, { force: true });
      removedChunks += 1;
      freedBytes += info.size;
    }
    return { removedChunks, freedBytes, keptChunks };
  }

  async #allChunks(): Promise<Array<{ id: string; path: string }>> {
    const chunks: Array<{ id: string; path: string }> = [];
    for (const prefix of await readdir(join(this.#dir, 'chunks'))) {
      for (const name of await readdir(join(this.#dir, 'chunks', prefix))) {
        if (CHUNK_ID.test(name)) chunks.push({ id: name, path: join(this.#dir, 'chunks', prefix, name) });
      }
    }
    return chunks;
  }

  /**
   * Checks the bytes of backup `id`'s chunks (or of every chunk) against the digests taken when
   * they arrived: finds lost and rotten chunks without any key.
   */
  async check(id?: string): Promise<StoreCheck> {
    const ids = id ? (await this.backup(id)).chunks : (await this.#allChunks()).map((chunk) => chunk.id);
    const result: StoreCheck = { checkedChunks: ids.length, missing: [], corrupt: [] };
    for (const chunk of ids) {
      const path = this.#chunkPath(chunk);
      let bytes: Buffer;
      try {
        bytes = await readFile(path);
      } catch {
        result.missing.push(chunk);
        continue;
      }
      const expected = await readFile(`${path}.sum`, 'utf8').catch(() => '');
      if (createHash('sha256').update(bytes).digest('hex') !== expected.trim()) result.corrupt.push(chunk);
    }
    return result;
  }
}
