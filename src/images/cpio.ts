// A writer for the "newc" cpio format, the only archive format the Linux kernel unpacks as an
// initramfs (Documentation/driver-api/early-userspace/buffer-format.rst). Imports nothing from
// the application but the error type, so it can be lifted out as it is.
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import { NubisError } from '../core/errors.ts';

const gzipAsync = promisify(gzip);

/** One member of an archive. Paths are relative ("bin/sh"); a leading "/" is dropped. */
export type CpioEntry =
  | { type: 'directory'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Uint8Array | string; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'char-device' | 'block-device'; path: string; major: number; minor: number; mode?: number };

/** Options of {@link encodeCpio}. */
export interface CpioOptions {
  /** Modification time of every member, in seconds since the epoch. Default 0, so that the
   * same members always give the same bytes (a reproducible image has a stable sha256). */
  mtimeSec?: number;
}

// File type bits of st_mode (inode(7)).
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

const TRAILER = 'TRAILER!!!';

/**
 * Encodes `entries` as an uncompressed newc cpio archive. Missing parent directories are added
 * (mode 0755) before their first child, because the kernel's unpacker does not create them;
 * two members with the same path are an error. Owner is root, inode numbers are sequential.
 */
export function encodeCpio(entries: readonly CpioEntry[], options: CpioOptions = {}): Buffer {
  const mtimeSec = options.mtimeSec ?? 0;
  const chunks: Buffer[] = [];
  const seen = new Set<string>();
  let inode = 1;

  const push = (path: string, mode: number, data: Buffer, rdev: [number, number] = [0, 0]): void => {
    chunks.push(header({ inode: inode++, mode, nlink: mode & S_IFDIR ? 2 : 1, mtimeSec, size: data.length, rdev, path }));
    chunks.push(data, padding(data.length));
  };

  for (const entry of entries) {
    const path = normalizePath(entry.path);
    if (seen.has(path)) {
      throw new NubisError('IMAGE_CPIO_INVALID_ENTRY', `Archive member ${path} is listed twice`);
    }
    // Parents first: "a/b/c" needs "a" and "a/b" already unpacked.
    const parts = path.split('/');
    for (let depth = 1; depth < parts.length; depth++) {
      const parent = parts.slice(0, depth).join('/');
      if (!seen.has(parent)) {
        seen.add(parent);
        push(parent, S_IFDIR | 0o755, Buffer.alloc(0));
      }
    }
    seen.add(path);
    switch (entry.type) {
      case 'directory':
        push(path, S_IFDIR | permissions(entry.mode, 0o755, path), Buffer.alloc(0));
        break;
      case 'file':
        push(path, S_IFREG | permissions(entry.mode, 0o644, path), toBuffer(entry.data));
        break;
      case 'symlink':
        // A symlink's target is stored as its data, without a trailing NUL.
        push(path, S_IFLNK | 0o777, Buffer.from(entry.target, 'utf8'));
        break;
      case 'char-device':
      case 'block-device':
        push(path, (entry.type === 'char-device' ? S_IFCHR : S_IFBLK) | permissions(entry.mode, 0o600, path), Buffer.alloc(0), [entry.major, entry.minor]);
        break;
    }
  }
  chunks.push(header({ inode: 0, mode: 0, nlink: 1, mtimeSec: 0, size: 0, rdev: [0, 0], path: TRAILER }));
  return Buffer.concat(chunks);
}

/** {@link encodeCpio}, gzip-compressed (level 9) off the main thread: what `-initrd` takes. */
export async function encodeCpioGzip(entries: readonly CpioEntry[], options: CpioOptions = {}): Promise<Buffer> {
  return gzipAsync(encodeCpio(entries, options), { level: 9 });
}

interface HeaderFields {
  inode: number;
  mode: number;
  nlink: number;
  mtimeSec: number;
  size: number;
  rdev: [number, number];
  path: string;
}

// newc header: the magic "070701", then 13 fields of 8 ASCII hex digits: ino, mode, uid, gid,
// nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize (with its NUL),
// check (0 for newc). Header plus name are padded to a multiple of 4, as is the data.
function header(fields: HeaderFields): Buffer {
  const name = Buffer.from(`${fields.path}\0`, 'utf8');
  const values = [fields.inode, fields.mode, 0, 0, fields.nlink, fields.mtimeSec, fields.size, 0, 0, fields.rdev[0], fields.rdev[1], name.length, 0];
  const text = `070701${values.map((value) => hex8(value, fields.path)).join('')}`;
  const head = Buffer.concat([Buffer.from(text, 'ascii'), name]);
  return Buffer.concat([head, padding(head.length)]);
}

function hex8(value: number, path: string): string {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new NubisError('IMAGE_CPIO_INVALID_ENTRY', `Archive member ${path} has a field value ${value} that does not fit newc's 32 bits`);
  }
  return value.toString(16).padStart(8, '0');
}

function padding(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

function toBuffer(data: Uint8Array | string): Buffer {
  return typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

function permissions(mode: number | undefined, fallback: number, path: string): number {
  const value = mode ?? fallback;
  if (!Number.isInteger(value) || value < 0 || value > 0o7777) {
    throw new NubisError('IMAGE_CPIO_INVALID_ENTRY', `Archive member ${path} has mode ${value}; give permission bits only (0 to 0o7777)`);
  }
  return value;
}

function normalizePath(path: string): string {
  const trimmed = path.replace(/^\/+/, '').replace(/\/+$/, '');
  const parts = trimmed.split('/');
  if (trimmed === '' || trimmed === TRAILER || parts.some((part) => part === '' || part === '.' || part === '..')) {
    throw new NubisError('IMAGE_CPIO_INVALID_ENTRY', `Archive member path ${JSON.stringify(path)} is not a plain relative path`);
  }
  return trimmed;
}
