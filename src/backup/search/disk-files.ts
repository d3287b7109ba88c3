/**
 * Lists the files of a raw disk image offline, without mounting it: the catalog a backup is
 * searched by. The image holds either one filesystem on the whole disk or an MBR or GPT
 * partition table; ext2/3/4 (ext-lister.ts, debugfs) and FAT12/16/32 (fat-lister.ts) are listed,
 * any other filesystem is reported in `skipped` with the type blkid named.
 *
 * Paths: '/etc/hostname' for a filesystem on the whole disk; 'p1:/etc/hostname' on a partitioned
 * disk, with the partition's number as the kernel would name it (/dev/sda1; logical MBR
 * partitions start at 5), even when there is only one partition.
 *
 * Detection: `blkid -p` (low-level probing, no cache) on the whole image first, since a FAT boot
 * sector also ends in 0x55AA and sfdisk alone takes it for an empty MBR; a partition table found
 * there is read with `sfdisk --json`, and each partition is probed again with blkid at its offset.
 *
 * Bounds: at most `maxEntries` entries (files, directories, links) over all partitions and
 * `timeoutMs` in all; past either, the listing so far is returned with `truncated` saying which.
 */
import { open } from 'node:fs/promises';
import { NubisError, messageOf } from '../../core/errors.ts';
import { runCommand } from '../../core/run-command.ts';
import { type DiskListing, type FilesystemListing, type FilesystemSource, fileNotFound, type SkippedPart, WalkBudget } from './disk-listing.ts';
import { listExtFiles, readExtFile } from './ext-lister.ts';
import { listFatFiles, readFatFile } from './fat-lister.ts';

/** Options of {@link listDiskFiles}. */
export interface ListDiskFilesOptions {
  /** Entries listed at most, over all partitions. Default 200,000. */
  maxEntries?: number;
  /** Time the whole listing may take. Default 5 minutes. */
  timeoutMs?: number;
  /** Cancels the listing; it then rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** One filesystem to list: where it is and what blkid found there. */
interface Region {
  /** 'disk' or 'p1', 'p2', ... */
  partition: string;
  offsetBytes: number;
  sizeBytes: number;
  /** Set when the region is skipped without probing. */
  skipReason?: string;
  /** What blkid found, when it was already asked. */
  probe?: BlkidResult;
}

/** blkid's KEY=VALUE lines (TYPE, PTTYPE, ...), or why it failed. */
type BlkidResult = Record<string, string | undefined> & { error?: string };

/** blkid's and sfdisk's share of the time: they read a few sectors. */
const PROBE_TIMEOUT_MS = 30_000;
/** MBR types of extended partitions: containers whose logical partitions sfdisk lists on their own. */
const EXTENDED_MBR_TYPES = new Set(['5', 'f', '85']);

/**
 * Lists the files of the raw disk image file at `imagePath`. Rejects with BACKUP_IMAGE_UNREADABLE
 * when it cannot be opened or is not a regular file, and with COMMAND_MISSING when blkid, sfdisk
 * or debugfs is not installed.
 */
export async function listDiskFiles(imagePath: string, options: ListDiskFilesOptions = {}): Promise<DiskListing> {
  const budget = new WalkBudget(options.maxEntries ?? 200_000, options.timeoutMs ?? 5 * 60_000, options.signal);
  const image = await open(imagePath, 'r').catch((error: unknown) => {
    throw new NubisError('BACKUP_IMAGE_UNREADABLE', `Cannot open the disk image ${imagePath}: ${messageOf(error)}`, { cause: error });
  });
  try {
    const listing: DiskListing = { files: [], skipped: [] };
    const stat = await image.stat();
    // A raw image file: a block device would report size 0 here, a folder has no sectors.
    if (!stat.isFile()) throw new NubisError('BACKUP_IMAGE_UNREADABLE', `The disk image ${imagePath} is not a regular file`);
    const imageBytes = stat.size;
    for (const region of await findRegions(image.fd, imageBytes, budget)) {
      if (budget.stopped) break;
      const family = region.skipReason === undefined ? filesystemFamily(region.probe ?? (await blkid(image.fd, region, budget))) : { skip: region.skipReason };
      if ('skip' in family) {
        listing.skipped.push({ partition: region.partition, reason: family.skip });
        continue;
      }
      const source: FilesystemSource = { image, offsetBytes: region.offsetBytes, sizeBytes: region.sizeBytes };
      const found = family.lister === 'ext' ? await listExtFiles(source, budget) : await listFatFiles(source, budget);
      addListing(listing, region.partition, found, region.partition !== 'disk');
    }
    if (budget.stoppedBecause !== undefined) listing.truncated = budget.stoppedBecause;
    return listing;
  } finally {
    await image.close();
  }
}

/**
 * The bytes of the regular file at `path` of the raw disk image at `imagePath`, `path` as the
 * listing names it ('/etc/hostname', or 'p1:/etc/hostname' on a partitioned disk). The same
 * detection as the listing finds its filesystem; ext2/3/4 and FAT are read. A file over
 * `maxBytes` is refused (BACKUP_FILE_TOO_LARGE) before it is read.
 */
export async function readDiskFile(imagePath: string, path: string, options: { maxBytes: number; timeoutMs?: number; signal?: AbortSignal }): Promise<Buffer> {
  const budget = new WalkBudget(1_000_000, options.timeoutMs ?? 5 * 60_000, options.signal);
  const [, partition = 'disk', inner] = /^(?:(p\d+):)?(\/.*)$/s.exec(path) ?? [];
  if (inner === undefined) throw fileNotFound(path, "is not a path of a backed-up disk ('/dir/file', or 'p1:/dir/file' on a partitioned disk)");
  const image = await open(imagePath, 'r');
  try {
    const regions = await findRegions(image.fd, (await image.stat()).size, budget);
    const region = regions.find((candidate) => candidate.partition === partition);
    if (!region)
      throw fileNotFound(
        path,
        `is on ${partition === 'disk' ? 'a disk with a partition table: name the partition (p1:/...)' : `partition ${partition}, which the disk has not`}`,
      );
    const family = region.skipReason === undefined ? filesystemFamily(region.probe ?? (await blkid(image.fd, region, budget))) : { skip: region.skipReason };
    if ('skip' in family) throw fileNotFound(path, `is on a part of the disk that is not read (${family.skip})`);
    const source: FilesystemSource = { image, offsetBytes: region.offsetBytes, sizeBytes: region.sizeBytes };
    return family.lister === 'ext' ? await readExtFile(source, inner, budget, options.maxBytes) : await readFatFile(source, inner, options.maxBytes);
  } finally {
    await image.close();
  }
}

/** Adds a filesystem's entries under its partition's prefix; an unreadable root skips the partition. */
function addListing(listing: DiskListing, partition: string, found: FilesystemListing, prefixed: boolean): void {
  for (const file of found.files) listing.files.push(prefixed ? { ...file, path: `${partition}:${file.path}` } : file);
  for (const { path, reason } of found.unreadable) {
    const skipped: SkippedPart = path === '/' ? { partition, reason } : { partition, path, reason };
    listing.skipped.push(skipped);
  }
}

/** The filesystems to look at: the whole disk, or each partition of its table. */
async function findRegions(fd: number, imageBytes: number, budget: WalkBudget): Promise<Region[]> {
  const whole: Region = { partition: 'disk', offsetBytes: 0, sizeBytes: imageBytes };
  const probe = await blkid(fd, whole, budget);
  if (probe.PTTYPE === undefined) return [{ ...whole, probe }];
  const { stdout } = await runCommand('sfdisk', ['--json', '/dev/fd/3'], { timeoutMs: PROBE_TIMEOUT_MS, signal: budget.signal, passFds: [fd] });
  const table = (JSON.parse(stdout) as SfdiskJson).partitiontable;
  const sectorBytes = table.sectorsize ?? 512;
  return (table.partitions ?? []).map((partition, index): Region => {
    const number = /^p?(\d+)$/.exec(partition.node.slice(table.device.length))?.[1] ?? String(index + 1);
    const region: Region = { partition: `p${number}`, offsetBytes: partition.start * sectorBytes, sizeBytes: partition.size * sectorBytes };
    if (table.label === 'dos' && EXTENDED_MBR_TYPES.has(partition.type.toLowerCase()))
      region.skipReason = 'Extended partition: its logical partitions are listed on their own';
    else if (region.offsetBytes + region.sizeBytes > imageBytes) region.skipReason = 'The partition runs past the end of the image';
    return region;
  });
}

/** What `sfdisk --json` prints, as far as it is read here. */
interface SfdiskJson {
  partitiontable: {
    label: string;
    device: string;
    sectorsize?: number;
    partitions?: Array<{ node: string; start: number; size: number; type: string }>;
  };
}

/** Which reader lists the filesystem blkid found, or why the region is skipped. */
function filesystemFamily(probe: BlkidResult): { lister: 'ext' | 'fat' } | { skip: string } {
  const type = probe.TYPE;
  if (type === 'ext2' || type === 'ext3' || type === 'ext4') return { lister: 'ext' };
  if (type === 'vfat' || type === 'msdos') return { lister: 'fat' };
  if (probe.error !== undefined) return { skip: probe.error };
  if (type === undefined) return { skip: probe.PTTYPE ? `A nested ${probe.PTTYPE} partition table is not read` : 'No filesystem found' };
  return { skip: `${type} filesystems are not listed (ext2/3/4 and FAT are)` };
}

/** `blkid -p -o export` on a region: its KEY=VALUE lines, or what went wrong. */
async function blkid(fd: number, region: Region, budget: WalkBudget): Promise<BlkidResult> {
  const args = ['-p', '-o', 'export', '-O', String(region.offsetBytes), '-S', String(region.sizeBytes), '/dev/fd/3'];
  try {
    const { stdout } = await runCommand('blkid', args, { timeoutMs: PROBE_TIMEOUT_MS, signal: budget.signal, passFds: [fd] });
    return Object.fromEntries(
      stdout.split('\n').flatMap((line) => (line.includes('=') ? [[line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]] : [])),
    );
  } catch (error) {
    // blkid(8): exit status 2 means it found nothing it knows.
    if (error instanceof NubisError && error.code === 'COMMAND_FAILED') return error.details?.exitCode === 2 ? {} : { error: `blkid failed: ${error.message}` };
    throw error;
  }
}
