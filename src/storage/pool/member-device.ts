/**
 * A device a pool is built from. Regular files and block devices are opened here; anything else
 * with positioned reads and writes (a remote NBD export through NbdClient, a test double that
 * fails on demand) implements the same interface.
 */
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { NubisError } from '../../core/errors.ts';

/** Positioned I/O on one pool member. Reads and writes either complete fully or throw. */
export interface MemberDevice {
  readonly path: string;
  readonly sizeBytes: number;
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<void>;
  write(buffer: Buffer, offset: number, length: number, position: number): Promise<void>;
  /** Make completed writes durable (fdatasync). */
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** A regular file or block device on this host. */
export class FileMemberDevice implements MemberDevice {
  readonly path: string;
  readonly sizeBytes: number;
  readonly #handle: FileHandle;

  private constructor(path: string, handle: FileHandle, sizeBytes: number) {
    this.path = path;
    this.#handle = handle;
    this.sizeBytes = sizeBytes;
  }

  /** Opens `path` read-write; a block device's size comes from sysfs (stat reports 0). */
  static async open(path: string): Promise<FileMemberDevice> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r+');
    } catch (error) {
      throw new NubisError('POOL_DEVICE_UNREADABLE', `Cannot open device ${path}: ${(error as Error).message}`, { cause: error, details: { path } });
    }
    try {
      const stat = await handle.stat();
      let size = stat.size;
      if (stat.isBlockDevice()) size = await blockDeviceSize(stat.rdev);
      else if (!stat.isFile()) throw new NubisError('POOL_DEVICE_UNREADABLE', `Device ${path} is neither a regular file nor a block device`, { details: { path } });
      return new FileMemberDevice(path, handle, size);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  async read(buffer: Buffer, offset: number, length: number, position: number): Promise<void> {
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.#handle.read(buffer, offset + done, length - done, position + done);
      if (bytesRead === 0) {
        // Past the end of a sparse or short file: reads as zeroes, like an unwritten disk.
        buffer.fill(0, offset + done, offset + length);
        return;
      }
      done += bytesRead;
    }
  }

  async write(buffer: Buffer, offset: number, length: number, position: number): Promise<void> {
    let done = 0;
    while (done < length) {
      const { bytesWritten } = await this.#handle.write(buffer, offset + done, length - done, position + done);
      done += bytesWritten;
    }
  }

  async flush(): Promise<void> {
    await this.#handle.datasync();
  }

  async close(): Promise<void> {
    await this.#handle.close();
  }
}

async function blockDeviceSize(rdev: number): Promise<number> {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | (Math.floor(rdev / 4096) & ~0xff);
  const sectors = await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8');
  return Number(sectors.trim()) * 512;
}
