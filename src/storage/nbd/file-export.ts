/**
 * An NBD export over one regular file or block device, read and written with positioned I/O on
 * a file handle. The reference export for tests and benchmarks. Imports nothing from the application.
 */
import { open, type FileHandle } from 'node:fs/promises';
import type { NbdExport, NbdWriteOptions } from './nbd-export.ts';

const ZERO_CHUNK_BYTES = 1024 * 1024;

/** A file served as-is; its size is fixed when opened. */
export class FileExport implements NbdExport {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  readonly multiConn = true;
  readonly #handle: FileHandle;
  #zeroes?: Buffer;

  private constructor(handle: FileHandle, sizeBytes: number, readOnly: boolean) {
    this.#handle = handle;
    this.sizeBytes = sizeBytes;
    this.readOnly = readOnly;
  }

  /** Opens `path` (read-write unless `readOnly`). */
  static async open(path: string, options: { readOnly?: boolean } = {}): Promise<FileExport> {
    const handle = await open(path, options.readOnly ? 'r' : 'r+');
    const stat = await handle.stat();
    return new FileExport(handle, stat.size, options.readOnly === true);
  }

  async read(buffer: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < buffer.length) {
      const { bytesRead } = await this.#handle.read(buffer, done, buffer.length - done, position + done);
      if (bytesRead === 0) {
        buffer.fill(0, done);
        return;
      }
      done += bytesRead;
    }
  }

  async write(data: Buffer, position: number, options: NbdWriteOptions): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.#handle.write(data, done, data.length - done, position + done);
      done += bytesWritten;
    }
    if (options.fua) await this.#handle.datasync();
  }

  async flush(): Promise<void> {
    await this.#handle.datasync();
  }

  async writeZeroes(position: number, lengthBytes: number, options: NbdWriteOptions): Promise<void> {
    this.#zeroes ??= Buffer.alloc(ZERO_CHUNK_BYTES);
    for (let done = 0; done < lengthBytes; done += ZERO_CHUNK_BYTES) {
      const n = Math.min(ZERO_CHUNK_BYTES, lengthBytes - done);
      await this.write(this.#zeroes.subarray(0, n), position + done, { fua: false });
    }
    if (options.fua) await this.#handle.datasync();
  }

  async close(): Promise<void> {
    await this.#handle.close();
  }
}
