/**
 * The default key provider: key-encryption keys (KEKs) in one key file of the storage node,
 * `<data>/storage/keys/kek.json`, mode 0600 in a folder of mode 0700, whatever the umask.
 *
 * A data key is wrapped with AES-256-GCM (NIST SP 800-38D): a random 96-bit IV, and as
 * additional authenticated data the format, the KEK's id and the volume's id, so a wrapped key
 * neither unwraps under another KEK nor for another volume, and a wrong or damaged one is refused
 * instead of decrypting into a wrong key. Stored as base64 of IV (12) | ciphertext (64) | tag (16).
 *
 * The file is only ever replaced whole (written beside it, fsynced, renamed over it, the folder
 * fsynced), so a crash leaves the old file or the new one. A rotation first writes a file with the
 * new KEK current and the old ones kept; `retire` writes one with the new KEK alone, then
 * overwrites the replaced file's blocks with zeroes through a handle opened before the rename
 * (on filesystems that write in place; a copy-on-write filesystem or an SSD may keep the old
 * blocks, which no file can prevent).
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { NubisError } from '../../core/errors.ts';
import { newId } from '../../core/ids.ts';
import type { KeyProvider, KeyProviderStatus, KeyRotation, WrappedKey } from './key-provider.ts';

const FILE_FORMAT = 'nubis-kek/1';
const WRAP_FORMAT = 'nubis/volume-data-key/v1';
const KEK_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
/** A KEK id as this provider makes them; checked before one is used in a message or a lookup. */
const KEK_ID = /^kek-[0-9a-f]{12}$/;

interface Kek {
  id: string;
  key: Buffer;
  createdAt: string;
}

interface KeyFile {
  format: typeof FILE_FORMAT;
  current: string;
  keks: Array<{ id: string; key: string; createdAt: string }>;
}

/** KEKs in a key file of mode 0600. */
export class FileKeyProvider implements KeyProvider {
  readonly #dir: string;
  readonly #path: string;
  #keks?: Map<string, Kek>;
  #current?: string;
  /** File writes and the first load run one at a time. */
  #queue: Promise<unknown> = Promise.resolve();

  /** `dir`: the folder of the key file (created with mode 0700 when the first KEK is made). */
  constructor(dir: string) {
    this.#dir = dir;
    this.#path = join(dir, 'kek.json');
  }

  /** The key file's path. */
  get path(): string {
    return this.#path;
  }

  #serial<T>(action: () => Promise<T>): Promise<T> {
    const next = this.#queue.catch(() => undefined).then(action);
    this.#queue = next;
    return next;
  }

  /** Reads the key file once (absent: no KEK yet); refuses one that others could read. */
  async #load(): Promise<Map<string, Kek>> {
    if (this.#keks) return this.#keks;
    let text: string;
    try {
      const info = await stat(this.#path);
      if ((info.mode & 0o077) !== 0 || (process.getuid && info.uid !== process.getuid())) {
        throw new NubisError(
          'KEY_FILE_UNSAFE',
          `Key file ${this.#path} has mode ${(info.mode & 0o777).toString(8)} or another owner: only its owner may read it (chmod 600, chown to the storage node's user)`,
        );
      }
      text = await readFile(this.#path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      this.#keks = new Map();
      return this.#keks;
    }
    const file = parseKeyFile(text, this.#path);
    this.#keks = new Map(file.keks.map((k) => [k.id, { id: k.id, key: Buffer.from(k.key, 'base64'), createdAt: k.createdAt }]));
    this.#current = file.current;
    return this.#keks;
  }

  /** Replaces the key file with `keks`, `current` first; returns the handle of the file it replaced. */
  async #writeFile(keks: Kek[], current: string): Promise<FileHandle | undefined> {
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    await chmod(this.#dir, 0o700);
    const file: KeyFile = { format: FILE_FORMAT, current, keks: keks.map((k) => ({ id: k.id, key: k.key.toString('base64'), createdAt: k.createdAt })) };
    const temporary = `${this.#path}.tmp`;
    await rm(temporary, { force: true });
    const handle = await open(temporary, 'wx', 0o600);
    try {
      await handle.chmod(0o600);
      await handle.writeFile(`${JSON.stringify(file, null, 2)}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
    const replaced = await open(this.#path, 'r+').catch(() => undefined);
    await rename(temporary, this.#path);
    const folder = await open(this.#dir, 'r');
    try {
      await folder.sync();
    } finally {
      await folder.close();
    }
    return replaced;
  }

  /** The current KEK, made (and written durably) if there is none yet. */
  async #currentKek(): Promise<Kek> {
    const keks = await this.#serial(() => this.#load());
    if (this.#current) return keks.get(this.#current)!;
    return this.#serial(async () => {
      if (this.#current) return keks.get(this.#current)!;
      const kek: Kek = { id: newId('kek'), key: randomBytes(KEK_BYTES), createdAt: new Date().toISOString() };
      await (await this.#writeFile([kek], kek.id))?.close();
      keks.set(kek.id, kek);
      this.#current = kek.id;
      return kek;
    });
  }

  async wrap(dataKey: Buffer, volumeId: string): Promise<WrappedKey> {
    const kek = await this.#currentKek();
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', kek.key, iv);
    cipher.setAAD(additionalData(kek.id, volumeId));
    const sealed = Buffer.concat([iv, cipher.update(dataKey), cipher.final(), cipher.getAuthTag()]);
    return { kekId: kek.id, wrapped: sealed.toString('base64') };
  }

  async unwrap(wrapped: WrappedKey, volumeId: string): Promise<Buffer> {
    const keks = await this.#serial(() => this.#load());
    const kek = KEK_ID.test(wrapped.kekId) ? keks.get(wrapped.kekId) : undefined;
    if (!kek) {
      throw new NubisError(
        'VOLUME_KEY_UNAVAILABLE',
        `The key of volume ${volumeId} is wrapped by key-encryption key ${JSON.stringify(wrapped.kekId.slice(0, 40))}, which ${this.#path} does not hold`,
        { details: { volumeId } },
      );
    }
    const sealed = Buffer.from(wrapped.wrapped, 'base64');
    try {
      if (sealed.length <= IV_BYTES + TAG_BYTES) throw new Error('too short');
      const decipher = createDecipheriv('aes-256-gcm', kek.key, sealed.subarray(0, IV_BYTES));
      decipher.setAAD(additionalData(kek.id, volumeId));
      decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
      return Buffer.concat([decipher.update(sealed.subarray(IV_BYTES, sealed.length - TAG_BYTES)), decipher.final()]);
    } catch (error) {
      throw new NubisError(
        'VOLUME_KEY_UNAVAILABLE',
        `The wrapped key of volume ${volumeId} does not authenticate under ${kek.id}: it is damaged or not this volume's`,
        {
          details: { volumeId },
          cause: error,
        },
      );
    }
  }

  async rotate(): Promise<KeyRotation> {
    await this.#currentKek();
    const kek: Kek = { id: newId('kek'), key: randomBytes(KEK_BYTES), createdAt: new Date().toISOString() };
    await this.#serial(async () => {
      const keks = await this.#load();
      await (await this.#writeFile([kek, ...keks.values()], kek.id))?.close();
      keks.set(kek.id, kek);
      this.#current = kek.id;
    });
    return { kekId: kek.id, retire: () => this.#retireAllBut(kek.id) };
  }

  /** Destroys every KEK but `keep`: in the file, then in the replaced file's blocks and in memory. */
  #retireAllBut(keep: string): Promise<{ destroyedKekIds: string[] }> {
    return this.#serial(async () => {
      const keks = await this.#load();
      const kept = keks.get(keep);
      if (!kept) throw new NubisError('KEY_FILE_CORRUPT', `Key file ${this.#path} lost the key-encryption key ${keep}`);
      const destroyed = [...keks.values()].filter((k) => k.id !== keep);
      if (destroyed.length === 0) return { destroyedKekIds: [] };
      const replaced = await this.#writeFile([kept], keep);
      if (replaced) {
        try {
          const { size } = await replaced.stat();
          await replaced.write(Buffer.alloc(size), 0, size, 0);
          await replaced.sync();
        } finally {
          await replaced.close();
        }
      }
      for (const kek of destroyed) {
        kek.key.fill(0);
        keks.delete(kek.id);
      }
      return { destroyedKekIds: destroyed.map((k) => k.id) };
    });
  }

  async status(): Promise<KeyProviderStatus> {
    const keks = await this.#serial(() => this.#load());
    const current = this.#current ? keks.get(this.#current) : undefined;
    return {
      provider: 'file',
      location: this.#path,
      ...(current ? { currentKekId: current.id, currentKekCreatedAt: current.createdAt } : {}),
      retiredKekIds: [...keks.keys()].filter((id) => id !== this.#current),
    };
  }
}

/** What GCM authenticates besides the key: the format, the KEK and the volume it is wrapped for. */
function additionalData(kekId: string, volumeId: string): Buffer {
  return Buffer.from(`${WRAP_FORMAT}\0${kekId}\0${volumeId}`, 'utf8');
}

/** The key file's content, checked; `KEY_FILE_CORRUPT` naming the file otherwise. */
function parseKeyFile(text: string, path: string): KeyFile {
  const corrupt = (why: string): NubisError => new NubisError('KEY_FILE_CORRUPT', `Key file ${path} is not usable: ${why}`);
  let file: KeyFile;
  try {
    file = JSON.parse(text) as KeyFile;
  } catch {
    throw corrupt('it is not JSON');
  }
  if (file?.format !== FILE_FORMAT || !Array.isArray(file.keks)) throw corrupt(`it is not a ${FILE_FORMAT} file`);
  for (const kek of file.keks) {
    if (typeof kek?.id !== 'string' || !KEK_ID.test(kek.id) || typeof kek.key !== 'string' || Buffer.from(kek.key, 'base64').length !== KEK_BYTES) {
      throw corrupt('a key entry is malformed');
    }
  }
  if (!file.keks.some((k) => k.id === file.current)) throw corrupt('its current key is not among its keys');
  return file;
}
