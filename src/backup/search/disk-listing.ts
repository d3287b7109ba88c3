/**
 * What listing a disk image produces, and the bounds every filesystem reader shares: the readers
 * (ext-lister.ts, fat-lister.ts) and the disk walk (disk-files.ts) all speak these types.
 */
import type { FileHandle } from 'node:fs/promises';
import { NubisError } from '../../core/errors.ts';

/** What an entry is. FAT has files and directories only; ext also has links, devices, FIFOs ('other'). */
export type FileKind = 'file' | 'dir' | 'symlink' | 'other';

/** One entry of a filesystem in a disk image. */
export interface DiskFile {
  /**
   * Absolute inside its filesystem ('/etc/hostname'); on a disk with a partition table the
   * partition comes first: 'p1:/etc/hostname' (the number is the partition's, as in /dev/sda1).
   * Bytes that are not UTF-8 are kept as U+DC80-U+DCFF (file-name.ts).
   */
  path: string;
  /** Bytes of a file; a symlink's target length; 0 for a directory. */
  size: number;
  kind: FileKind;
}

/** A partition, or a directory inside one, that was not listed, and why. */
export interface SkippedPart {
  /** 'p1', 'p2', ... on a partitioned disk; 'disk' for a filesystem on the whole disk. */
  partition: string;
  /** A directory that could not be read; absent when the whole partition was skipped. */
  path?: string;
  reason: string;
}

/** The files of a disk image. */
export interface DiskListing {
  files: DiskFile[];
  skipped: SkippedPart[];
  /** Set when a bound stopped the walk early (entries or time): `files` is then a part of the disk. */
  truncated?: string;
}

/** Where a filesystem is: an image opened read-only, and the byte range the filesystem is in. */
export interface FilesystemSource {
  image: FileHandle;
  offsetBytes: number;
  sizeBytes: number;
}

/** What a filesystem reader returns: its entries (paths inside the filesystem) and the directories it could not read. */
export interface FilesystemListing {
  files: DiskFile[];
  unreadable: Array<{ path: string; reason: string }>;
}

/**
 * The bounds of one disk walk, shared by its partitions: a number of entries and a deadline. A
 * disk image is untrusted input, and a catalog job must end: the readers ask this before each
 * entry and each host program, and stop, leaving the reason here, once either is spent.
 */
export class WalkBudget {
  #entriesLeft: number;
  readonly #maxEntries: number;
  readonly #deadline: number;
  readonly #timeoutMs: number;
  readonly signal?: AbortSignal;
  /** Why the walk stopped early, once it did. */
  stoppedBecause?: string;

  constructor(maxEntries: number, timeoutMs: number, signal?: AbortSignal) {
    this.#entriesLeft = maxEntries;
    this.#maxEntries = maxEntries;
    this.#timeoutMs = timeoutMs;
    this.#deadline = Date.now() + timeoutMs;
    this.signal = signal;
  }

  /** Entries that may still be listed. */
  get entriesLeft(): number {
    return this.#entriesLeft;
  }

  /** Counts one entry; false, and the walk is stopped, when the limit was already reached. */
  take(): boolean {
    if (this.stoppedBecause !== undefined) return false;
    if (this.#entriesLeft === 0) {
      this.stoppedBecause = `Stopped at ${this.#maxEntries} entries`;
      return false;
    }
    this.#entriesLeft -= 1;
    return true;
  }

  /** Milliseconds left before the deadline; 0, and the walk is stopped, once it has passed. */
  msLeft(): number {
    const left = this.#deadline - Date.now();
    if (left <= 0) this.stopForTime();
    return Math.max(0, left);
  }

  /** Marks the walk as stopped by the deadline (a host program was killed at it). */
  stopForTime(): void {
    this.stoppedBecause ??= `Stopped after ${this.#timeoutMs} ms`;
  }

  get stopped(): boolean {
    return this.stoppedBecause !== undefined;
  }
}

/** BACKUP_FILE_NOT_FOUND for `path` of a backed-up disk, and `why`. */
export function fileNotFound(path: string, why = 'is not in the backed-up filesystem'): NubisError {
  return new NubisError('BACKUP_FILE_NOT_FOUND', `${path} ${why}; find files with nubis backup search WORD`);
}

/** BACKUP_FILE_TOO_LARGE when a file of `sizeBytes` is over `maxBytes`. */
export function refuseLargeFile(path: string, sizeBytes: number, maxBytes: number): void {
  if (sizeBytes > maxBytes)
    throw new NubisError(
      'BACKUP_FILE_TOO_LARGE',
      `${path} has ${sizeBytes} bytes; one file is restored up to ${Math.floor(maxBytes / 1048576)} MiB (restore the VM for more)`,
    );
}
