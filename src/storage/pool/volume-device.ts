/**
 * One volume as a block device (the shape the NBD server's export interface expects, without
 * importing it). The handle follows the volume by id, so a rename cannot redirect it.
 */
import type { VolumeRecord } from './metadata-format.ts';

/** What a `VolumeDevice` needs of its pool (`StoragePool` provides it). */
export interface VolumeDeviceBackend {
  readonly name: string;
  readonly readOnlyReason: string | undefined;
  volumeRecord(id: number): VolumeRecord;
  readVolume(id: number, buffer: Buffer, position: number): Promise<void>;
  writeVolume(id: number, data: Buffer, position: number, fua: boolean): Promise<void>;
  commit(): Promise<void>;
  trimVolume(id: number, position: number, length: number, fua: boolean): Promise<void>;
  writeZeroesVolume(id: number, position: number, length: number, fua: boolean, noHole: boolean): Promise<void>;
  blockStatusVolume(id: number, position: number, length: number): Array<{ lengthBytes: number; hole: boolean; zero: boolean }>;
}

/**
 * One volume of a pool as a block device: reads, writes, flush, trim, write-zeroes and block
 * status, each passed to the pool with the volume's id.
 */
export class VolumeDevice {
  readonly #pool: VolumeDeviceBackend;
  readonly #id: number;
  readonly multiConn = true;

  constructor(pool: VolumeDeviceBackend, id: number) {
    this.#pool = pool;
    this.#id = id;
  }

  get sizeBytes(): number {
    return this.#pool.volumeRecord(this.#id).sizeBytes;
  }

  get readOnly(): boolean {
    return this.#pool.volumeRecord(this.#id).readOnly || this.#pool.readOnlyReason !== undefined;
  }

  get description(): string {
    const record = this.#pool.volumeRecord(this.#id);
    return `${record.kind} ${record.name} of pool ${this.#pool.name}`;
  }

  read(buffer: Buffer, position: number): Promise<void> {
    return this.#pool.readVolume(this.#id, buffer, position);
  }

  write(data: Buffer, position: number, options: { fua: boolean }): Promise<void> {
    return this.#pool.writeVolume(this.#id, data, position, options.fua);
  }

  flush(): Promise<void> {
    return this.#pool.commit();
  }

  trim(position: number, lengthBytes: number, options: { fua: boolean }): Promise<void> {
    return this.#pool.trimVolume(this.#id, position, lengthBytes, options.fua);
  }

  writeZeroes(position: number, lengthBytes: number, options: { fua: boolean; noHole: boolean }): Promise<void> {
    return this.#pool.writeZeroesVolume(this.#id, position, lengthBytes, options.fua, options.noHole);
  }

  async blockStatus(position: number, lengthBytes: number): Promise<Array<{ lengthBytes: number; hole: boolean; zero: boolean }>> {
    return this.#pool.blockStatusVolume(this.#id, position, lengthBytes);
  }
}
