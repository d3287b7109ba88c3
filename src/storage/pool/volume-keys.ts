/**
 * The data keys of a pool's encrypted volumes, unwrapped in memory, and their wrapped form in the
 * pool's metadata (VolumeRecord.encryption).
 *
 * Key hierarchy: each encrypted volume has a data key (XTS-AES-256, volume-cipher.ts), wrapped
 * by a key-encryption key (KEK) of the key provider (storage/keys/) for that volume alone (the
 * provider binds `<pool uuid>/<volume id>` to the wrapped bytes). Only wrapped keys are stored;
 * unwrapped ones live in this process while the pool is open.
 *
 * Snapshots and clones share their origin's data key (each with its own wrapped copy): they share
 * its blocks, which are encrypted with that key at the same volume offsets, and a clone that got
 * a key of its own would have to re-encrypt every shared block on creation, making an instant,
 * space-sharing copy a full one. So the key is destroyed (crypto-shredded) with the last volume
 * that holds it; `keyId` says which volumes share one.
 */
import { NubisError } from '../../core/errors.ts';
import { newId } from '../../core/ids.ts';
import type { KeyProvider } from '../keys/key-provider.ts';
import type { VolumeEncryption, VolumeRecord } from './metadata-format.ts';
import { CRYPT_SECTOR_BYTES, VolumeCipher } from './volume-cipher.ts';

/** One data key in memory and the volumes that use it. */
interface LoadedKey {
  cipher: VolumeCipher;
  users: Set<number>;
}

/** Unwrapped data keys of one open pool, by volume. */
export class VolumeKeys {
  readonly #poolName: string;
  readonly #poolUuid: string;
  readonly #provider: KeyProvider | undefined;
  readonly #byKeyId = new Map<string, LoadedKey>();
  /** Volume id -> why its key could not be unwrapped. */
  readonly #unavailable = new Map<number, string>();

  constructor(args: { poolName: string; poolUuid: string; provider?: KeyProvider }) {
    this.#poolName = args.poolName;
    this.#poolUuid = args.poolUuid;
    this.#provider = args.provider;
  }

  /** The id a volume's key is wrapped for: unique over every pool of every node. */
  #wrapId(volumeId: number): string {
    return `${this.#poolUuid}/${volumeId}`;
  }

  #requireProvider(): KeyProvider {
    if (!this.#provider) {
      throw new NubisError('ENCRYPTION_UNAVAILABLE', `The storage node serving pool ${this.#poolName} has no key provider, so it cannot encrypt volumes`);
    }
    return this.#provider;
  }

  /**
   * Unwraps the key of every encrypted volume in `records`. A key that does not unwrap (its KEK
   * gone, the bytes damaged) leaves its volume unavailable, with the reason, and fails nothing else.
   */
  async load(records: Iterable<VolumeRecord>): Promise<void> {
    for (const record of records) {
      if (!record.encryption) continue;
      try {
        await this.#adopt(record, record.encryption);
      } catch (error) {
        this.#unavailable.set(record.id, (error as Error).message);
      }
    }
  }

  async #adopt(record: Pick<VolumeRecord, 'id'>, encryption: VolumeEncryption): Promise<void> {
    if (encryption.cipher !== 'aes-256-xts' || encryption.sectorBytes !== CRYPT_SECTOR_BYTES) {
      throw new NubisError(
        'VOLUME_KEY_UNAVAILABLE',
        `Volume ${record.id} uses ${encryption.cipher} with ${encryption.sectorBytes}-byte sectors, which this version cannot read`,
      );
    }
    const known = this.#byKeyId.get(encryption.keyId);
    const dataKey = await this.#requireProvider().unwrap({ kekId: encryption.kekId, wrapped: encryption.wrappedKey }, this.#wrapId(record.id));
    try {
      if (known) {
        // Every copy of a shared key must unwrap to the same key.
        const existing = known.cipher.exportKey();
        const same = existing.equals(dataKey);
        existing.fill(0);
        if (!same) throw new NubisError('VOLUME_KEY_UNAVAILABLE', `Volume ${record.id} holds another key under id ${encryption.keyId}`);
        known.users.add(record.id);
      } else {
        this.#byKeyId.set(encryption.keyId, { cipher: new VolumeCipher(dataKey), users: new Set([record.id]) });
      }
    } finally {
      dataKey.fill(0);
    }
  }

  /** The cipher of `record`, undefined for a plain volume; `VOLUME_KEY_UNAVAILABLE` when its key is not loaded. */
  cipherOf(record: VolumeRecord): VolumeCipher | undefined {
    if (!record.encryption) return undefined;
    const loaded = this.#byKeyId.get(record.encryption.keyId);
    if (!loaded?.users.has(record.id)) {
      const reason = this.#unavailable.get(record.id) ?? 'its key was not loaded';
      throw new NubisError('VOLUME_KEY_UNAVAILABLE', `Volume ${record.name} of pool ${this.#poolName} is encrypted and cannot be read: ${reason}`, {
        details: { pool: this.#poolName, volume: record.name },
      });
    }
    return loaded.cipher;
  }

  /** A new data key for volume `id`, in memory and wrapped; `forget` it if the volume is not made. */
  async create(id: number): Promise<VolumeEncryption> {
    const provider = this.#requireProvider();
    const cipher = VolumeCipher.generate();
    const dataKey = cipher.exportKey();
    try {
      const { kekId, wrapped } = await provider.wrap(dataKey, this.#wrapId(id));
      const keyId = newId('key');
      this.#byKeyId.set(keyId, { cipher, users: new Set([id]) });
      return { cipher: 'aes-256-xts', sectorBytes: CRYPT_SECTOR_BYTES, keyId, kekId, wrappedKey: wrapped };
    } finally {
      dataKey.fill(0);
    }
  }

  /** The key of `source` wrapped for volume `id` (a snapshot or clone of it): they share it. */
  async share(source: VolumeRecord, id: number): Promise<VolumeEncryption | undefined> {
    const cipher = this.cipherOf(source);
    if (!cipher || !source.encryption) return undefined;
    const dataKey = cipher.exportKey();
    try {
      const { kekId, wrapped } = await this.#requireProvider().wrap(dataKey, this.#wrapId(id));
      this.#byKeyId.get(source.encryption.keyId)!.users.add(id);
      return { ...source.encryption, kekId, wrappedKey: wrapped };
    } finally {
      dataKey.fill(0);
    }
  }

  /** `record`'s data key wrapped anew with the provider's current KEK. */
  async rewrap(record: VolumeRecord): Promise<{ kekId: string; wrappedKey: string }> {
    const cipher = this.cipherOf(record)!;
    const dataKey = cipher.exportKey();
    try {
      const { kekId, wrapped } = await this.#requireProvider().wrap(dataKey, this.#wrapId(record.id));
      return { kekId, wrappedKey: wrapped };
    } finally {
      dataKey.fill(0);
    }
  }

  /**
   * Volume `id` is gone (or was never made): its key is destroyed in memory once no volume uses
   * it. Returns whether it was destroyed (false while a snapshot or clone still holds it).
   */
  forget(id: number, encryption: VolumeEncryption | undefined): boolean {
    this.#unavailable.delete(id);
    if (!encryption) return false;
    const loaded = this.#byKeyId.get(encryption.keyId);
    if (!loaded) return true;
    loaded.users.delete(id);
    if (loaded.users.size > 0) return false;
    loaded.cipher.destroy();
    this.#byKeyId.delete(encryption.keyId);
    return true;
  }

  /** Destroys every key in memory (the pool closes). */
  destroyAll(): void {
    for (const loaded of this.#byKeyId.values()) loaded.cipher.destroy();
    this.#byKeyId.clear();
  }
}
