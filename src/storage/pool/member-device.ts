/**
 * A device a pool is built from. Regular files and block devices are opened here; anything else
 * with positioned reads and writes (a remote NBD export through NbdClient, a test double that
 * fails on demand) implements the same interface.
 */
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { NubisError } from '../../core/errors.ts';
import { NbdClient } from '../nbd/nbd-client.ts';

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

/** Largest single request sent to a remote member (proto.md: 32 MiB is always acceptable). */
const NBD_MEMBER_MAX_REQUEST_BYTES = 4 * 1024 * 1024;

/**
 * An export of another NBD server used as a pool member. `path` is an NBD URI:
 * `nbd://host:port/export` or `nbd+unix:///export?socket=/path`.
 */
export class NbdMemberDevice implements MemberDevice {
  readonly path: string;
  readonly sizeBytes: number;
  readonly #client: NbdClient;

  private constructor(path: string, client: NbdClient) {
    this.path = path;
    this.#client = client;
    this.sizeBytes = client.sizeBytes;
  }

  static async open(uri: string): Promise<NbdMemberDevice> {
    let parsed: URL;
    try {
      parsed = new URL(uri);
    } catch (error) {
      throw new NubisError('POOL_DEVICE_UNREADABLE', `Device ${uri} is not a valid NBD URI`, { cause: error, details: { path: uri } });
    }
    const exportName = decodeURIComponent(parsed.pathname.replace(/^\//, ''));
    try {
      const client =
        parsed.protocol === 'nbd+unix:'
          ? await NbdClient.connect({ path: parsed.searchParams.get('socket') ?? '', exportName })
          : await NbdClient.connect({ host: parsed.hostname, port: Number(parsed.port || 10809), exportName });
      if (client.readOnly) {
        client.destroy();
        throw new NubisError('POOL_DEVICE_UNREADABLE', `NBD export ${uri} is read-only`, { details: { path: uri } });
      }
      return new NbdMemberDevice(uri, client);
    } catch (error) {
      if (error instanceof NubisError) throw error;
      throw new NubisError('POOL_DEVICE_UNREADABLE', `Cannot attach NBD export ${uri}: ${(error as Error).message}`, { cause: error, details: { path: uri } });
    }
  }

  async read(buffer: Buffer, offset: number, length: number, position: number): Promise<void> {
    for (let done = 0; done < length; done += NBD_MEMBER_MAX_REQUEST_BYTES) {
      const n = Math.min(NBD_MEMBER_MAX_REQUEST_BYTES, length - done);
      (await this.#client.read(position + done, n)).copy(buffer, offset + done);
    }
  }

  async write(buffer: Buffer, offset: number, length: number, position: number): Promise<void> {
    for (let done = 0; done < length; done += NBD_MEMBER_MAX_REQUEST_BYTES) {
      const n = Math.min(NBD_MEMBER_MAX_REQUEST_BYTES, length - done);
      await this.#client.write(position + done, buffer.subarray(offset + done, offset + done + n));
    }
  }

  async flush(): Promise<void> {
    await this.#client.flush();
  }

  async close(): Promise<void> {
    await this.#client.close().catch(() => this.#client.destroy());
  }
}

/** Opens any member by path: `nbd://` and `nbd+unix://` URIs remotely, everything else as a file. */
export async function openMemberDevice(path: string): Promise<MemberDevice> {
  return /^nbd(\+unix)?:\/\//.test(path) ? NbdMemberDevice.open(path) : FileMemberDevice.open(path);
}
