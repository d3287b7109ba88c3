/**
 * Block encryption of one volume: AES-256 in XTS mode (IEEE 1619-2007, node:crypto's
 * `aes-256-xts`, whose 64-byte key is two AES-256 keys: one encrypts the data, one the tweak).
 *
 * One XTS data unit is one 4 KiB sector of the volume, and its tweak is the sector's number in
 * the volume (byte offset / 4096) as a 128-bit little-endian integer, as dm-crypt's `plain64` IV
 * with 4 KiB sectors. So equal plaintext at different offsets encrypts differently, and the
 * tweak follows the volume offset, not where the pool put the block: copy-on-write may move a
 * block to another physical allocation unit, a snapshot or clone shares it at the same offset,
 * and both still decrypt it. 4 KiB (not 512 B) because it is the pool's checksum block, so the
 * engine's own read-modify-write unit, and because node:crypto costs one cipher object per data
 * unit: eight per 4 KiB would cost a third of the throughput.
 *
 * A stored sector of all zero bytes reads as zeroes: the pool leaves the sectors of a fresh
 * allocation unit that no write touched as raw zeroes, and an XTS ciphertext is all zeroes with
 * a probability of 2^-32768. It reveals nothing the raw device did not show already (which
 * sectors were never written).
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { NubisError } from '../../core/errors.ts';

/** Bytes of one XTS data unit (an encryption sector). */
export const CRYPT_SECTOR_BYTES = 4096;
/** Bytes of an XTS-AES-256 data key: the data key and the tweak key. */
export const DATA_KEY_BYTES = 64;
const CIPHER = 'aes-256-xts';
const ZERO_SECTOR = Buffer.alloc(CRYPT_SECTOR_BYTES);

/** The XTS tweak of sector `sector`: its number as a 128-bit little-endian integer (into `into`, reused per sector). */
export function sectorTweak(sector: number, into = Buffer.alloc(16)): Buffer {
  into.writeUInt32LE(sector % 0x1_0000_0000, 0);
  into.writeUInt32LE(Math.floor(sector / 0x1_0000_0000), 4);
  return into;
}

/** Encrypts and decrypts whole 4 KiB sectors of one volume with its data key. */
export class VolumeCipher {
  readonly #key: Buffer;

  /** Takes a copy of `dataKey` (64 bytes; its two halves must differ, as XTS requires). */
  constructor(dataKey: Buffer) {
    if (dataKey.length !== DATA_KEY_BYTES) {
      throw new NubisError('VOLUME_KEY_MALFORMED', `An XTS-AES-256 data key has ${DATA_KEY_BYTES} bytes, not ${dataKey.length}`);
    }
    // IEEE 1619 5.1 and OpenSSL: a key whose halves are equal defeats the tweak.
    if (dataKey.subarray(0, 32).equals(dataKey.subarray(32))) throw new NubisError('VOLUME_KEY_MALFORMED', 'The two halves of an XTS data key must differ');
    this.#key = Buffer.from(dataKey);
  }

  /** A cipher with a new random data key. */
  static generate(): VolumeCipher {
    for (;;) {
      const key = randomBytes(DATA_KEY_BYTES);
      if (!key.subarray(0, 32).equals(key.subarray(32))) {
        const cipher = new VolumeCipher(key);
        key.fill(0);
        return cipher;
      }
    }
  }

  /** A copy of the data key, to wrap it (the caller zeroes it when done). */
  exportKey(): Buffer {
    return Buffer.from(this.#key);
  }

  #checkRange(data: Buffer, position: number): void {
    if (data.length % CRYPT_SECTOR_BYTES !== 0 || position % CRYPT_SECTOR_BYTES !== 0 || position < 0) {
      throw new NubisError('VOLUME_IO_RANGE', `Encryption works on whole 4 KiB sectors; ${data.length} bytes at ${position} are not`);
    }
  }

  /** The ciphertext of `plain` (whole sectors) that starts at volume byte `position`. */
  encrypt(plain: Buffer, position: number): Buffer {
    this.#checkRange(plain, position);
    const out = Buffer.allocUnsafe(plain.length);
    const first = position / CRYPT_SECTOR_BYTES;
    const tweak = Buffer.alloc(16);
    for (let at = 0; at < plain.length; at += CRYPT_SECTOR_BYTES) {
      // One cipher object per sector: node:crypto takes the tweak only as the IV of a new one.
      const cipher = createCipheriv(CIPHER, this.#key, sectorTweak(first + at / CRYPT_SECTOR_BYTES, tweak));
      const sealed = cipher.update(plain.subarray(at, at + CRYPT_SECTOR_BYTES));
      sealed.copy(out, at);
      cipher.final();
    }
    return out;
  }

  /** Decrypts `data` (whole sectors stored from volume byte `position`) in place. */
  decryptInPlace(data: Buffer, position: number): void {
    this.#checkRange(data, position);
    const first = position / CRYPT_SECTOR_BYTES;
    const tweak = Buffer.alloc(16);
    for (let at = 0; at < data.length; at += CRYPT_SECTOR_BYTES) {
      const sector = data.subarray(at, at + CRYPT_SECTOR_BYTES);
      // Never written: raw zeroes read as zeroes (see the comment at the top).
      if (sector.equals(ZERO_SECTOR)) continue;
      const decipher = createDecipheriv(CIPHER, this.#key, sectorTweak(first + at / CRYPT_SECTOR_BYTES, tweak));
      decipher.update(sector).copy(sector);
      decipher.final();
    }
  }

  /** Overwrites the key in memory; the cipher is unusable afterwards. */
  destroy(): void {
    this.#key.fill(0);
  }
}
