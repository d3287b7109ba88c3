/**
 * Client-side encryption of backups: what a backup store receives is only ever sealed here, with
 * keys derived from a tenant's backup key that the store never sees.
 *
 * - A disk is cut into fixed chunks of {@link CHUNK_BYTES} (as Proxmox Backup Server's fixed index
 *   does for VM images: a disk's chunk N always covers the same bytes, so an unchanged region gives
 *   the same chunk in every backup, which is what makes the next backup incremental).
 * - A chunk's id is HMAC-SHA256 of its plaintext under the tenant's id key: equal chunks of one
 *   tenant share an id (deduplication), but the store cannot test a guess of the content, as it
 *   could with a plain SHA-256, and two tenants' equal chunks do not meet.
 * - A chunk's bytes are AES-256-GCM (NIST SP 800-38D) with the chunk id as additional authenticated
 *   data: sealed = IV (12) | ciphertext | tag (16). The IV is derived from the id (HMAC under the
 *   seal key), so a chunk always seals to the same bytes: an id names one plaintext, so an IV is
 *   never used for two plaintexts (GCM's one rule), and the store never holds two different
 *   contents under one id, which the proofs of retrievability need (backup/proof/por.ts: tags of
 *   two contents of one id and length would let the store learn the proof key). Opening checks the tag
 *   and then that the plaintext's HMAC is the id it was asked for, so a chunk altered, truncated,
 *   swapped for another chunk or opened with a wrong key is refused (`BACKUP_CHUNK_CORRUPT`),
 *   never returned as wrong data.
 * - A backup's manifest (which disk, which chunks, the VM's settings) is sealed the same way with
 *   its own key and the backup id as additional data.
 *
 * Keys: HKDF-SHA256 (RFC 5869) of the 32-byte tenant key, one `info` per purpose, so a key of one
 * purpose never serves another.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { NubisError } from '../core/errors.ts';

/** Bytes of plaintext per chunk (the last chunk of a disk may be shorter). */
export const CHUNK_BYTES = 4 * 1024 * 1024;
/** A chunk id: HMAC-SHA256 in hex. */
export const CHUNK_ID = /^[0-9a-f]{64}$/;
const IV_BYTES = 12;
const TAG_BYTES = 16;
/** What sealing adds to a chunk: its IV and its GCM tag. */
export const SEAL_OVERHEAD_BYTES = IV_BYTES + TAG_BYTES;
const KEY_BYTES = 32;

/** The keys one tenant's backups are sealed with, derived from its backup key. */
export interface BackupKeys {
  readonly chunkId: Buffer;
  readonly chunkSeal: Buffer;
  readonly manifestSeal: Buffer;
  /** The secret of the proof-of-retrievability key (backup/proof/por.ts `ProofKey.fromSecret`). */
  readonly proofSecret: Buffer;
  /** Derives the key of one backup's encrypted file catalog (each its own: see backup/search/sse-index.ts). */
  catalogKey(backupId: string): Buffer;
}

/** Derives the keys of each purpose from a tenant's 32-byte backup key. */
export function backupKeysOf(tenantKey: Buffer): BackupKeys {
  if (tenantKey.length !== KEY_BYTES) throw new NubisError('BACKUP_KEY_INVALID', `A backup key has ${KEY_BYTES} bytes, not ${tenantKey.length}`);
  const derive = (info: string) => Buffer.from(hkdfSync('sha256', tenantKey, Buffer.alloc(0), `nubis-backup/v1 ${info}`, KEY_BYTES));
  return {
    chunkId: derive('chunk id'),
    chunkSeal: derive('chunk seal'),
    manifestSeal: derive('manifest seal'),
    proofSecret: derive('proof key'),
    catalogKey: (backupId) => derive(`catalog ${backupId}`),
  };
}

/** The id of a chunk of plaintext `data`. */
export function chunkIdOf(keys: BackupKeys, data: Buffer): string {
  return createHmac('sha256', keys.chunkId).update(data).digest('hex');
}

function seal(key: Buffer, aad: string, data: Buffer, iv = randomBytes(IV_BYTES)): Buffer {
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(aad));
  return Buffer.concat([iv, cipher.update(data), cipher.final(), cipher.getAuthTag()]);
}

/** The plaintext, or undefined when the bytes do not authenticate under `key` and `aad`. */
function open(key: Buffer, aad: string, sealed: Buffer): Buffer | undefined {
  if (sealed.length < IV_BYTES + TAG_BYTES) return undefined;
  const decipher = createDecipheriv('aes-256-gcm', key, sealed.subarray(0, IV_BYTES));
  decipher.setAAD(Buffer.from(aad));
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
  try {
    return Buffer.concat([decipher.update(sealed.subarray(IV_BYTES, sealed.length - TAG_BYTES)), decipher.final()]);
  } catch {
    return undefined;
  }
}

/** Chunk `data` sealed for the store under its id. */
export function sealChunk(keys: BackupKeys, id: string, data: Buffer): Buffer {
  const iv = createHmac('sha256', keys.chunkSeal).update(`iv ${id}`).digest().subarray(0, IV_BYTES);
  return seal(keys.chunkSeal, `chunk ${id}`, data, iv);
}

/** The plaintext of chunk `id`; `BACKUP_CHUNK_CORRUPT` when its bytes are not that chunk's. */
export function openChunk(keys: BackupKeys, id: string, sealed: Buffer): Buffer {
  const data = open(keys.chunkSeal, `chunk ${id}`, sealed);
  const actual = data && createHmac('sha256', keys.chunkId).update(data).digest();
  if (!data || !actual || !timingSafeEqual(actual, Buffer.from(id, 'hex')))
    throw new NubisError(
      'BACKUP_CHUNK_CORRUPT',
      `Chunk ${id.slice(0, 16)}… of the backup store does not authenticate: it was altered or damaged, or the backup key is not this backup's`,
      { details: { chunk: id } },
    );
  return data;
}

/** A manifest sealed for the store, bound to its backup id. */
export function sealManifest(keys: BackupKeys, backupId: string, manifest: unknown): Buffer {
  return seal(keys.manifestSeal, `manifest ${backupId}`, Buffer.from(JSON.stringify(manifest)));
}

/** The manifest of backup `backupId`; `BACKUP_KEY_INVALID` when it does not open with these keys. */
export function openManifest<T>(keys: BackupKeys, backupId: string, sealed: Buffer): T {
  const data = open(keys.manifestSeal, `manifest ${backupId}`, sealed);
  if (!data)
    throw new NubisError(
      'BACKUP_KEY_INVALID',
      `The manifest of backup ${backupId} does not open with this project's backup key: the key is wrong or the manifest was altered`,
    );
  return JSON.parse(data.toString()) as T;
}
