/**
 * Lists a FAT12/16/32 filesystem inside a disk image by reading its structures directly: the boot
 * sector's BIOS parameter block, the allocation table, and the directories with their VFAT long
 * names. Layout and rules from Microsoft's "FAT: General Overview of On-Disk Format" (fatgen103).
 *
 * Why not mtools' mdir: run as host programs are run here (LC_ALL=C) it prints every non-ASCII
 * character of a long name as '_'; its bare listing (-b) has no sizes, and its full listing is
 * laid out in columns that a name with spaces makes ambiguous. Reading the few structures needed
 * is short, exact and lossless (long names are UTF-16 on disk), and needs no process per disk.
 *
 * Every number read from the image is checked before it is used (an image is untrusted input):
 * cluster numbers inside the data area, chains that end and never loop, directories no longer
 * than the 65,536 entries the format allows, reads inside the filesystem's byte range.
 */
import { type DiskFile, type FilesystemListing, type FilesystemSource, fileNotFound, refuseLargeFile, type WalkBudget } from './disk-listing.ts';
import { decodeFileName } from './file-name.ts';
import { NubisError } from '../../core/errors.ts';

const DIRECTORY_ENTRY_BYTES = 32;
/** fatgen103: a directory holds at most 65,536 entries. */
const MAX_DIRECTORY_BYTES = 65536 * DIRECTORY_ENTRY_BYTES;
const ATTRIBUTE_VOLUME_LABEL = 0x08;
const ATTRIBUTE_DIRECTORY = 0x10;
/** read-only | hidden | system | volume label: the attribute byte of a long-name entry. */
const ATTRIBUTE_LONG_NAME = 0x0f;

/** Where the parts of a FAT filesystem are, in bytes from its start. */
interface FatGeometry {
  type: 12 | 16 | 32;
  clusterBytes: number;
  /** The allocation table in use (FAT32 may mirror only one of its copies). */
  fatOffset: number;
  fatBytes: number;
  /** Cluster numbers run from 2 to clusterCount + 1. */
  clusterCount: number;
  dataOffset: number;
  /** FAT12/16: the fixed root directory. */
  rootOffset: number;
  rootBytes: number;
  /** FAT32: the first cluster of the root directory. */
  rootCluster: number;
}

/** Why the filesystem or one of its directories cannot be read. */
class FatFormatError extends Error {
  override readonly name = 'FatFormatError';
}

/** One entry of a directory. */
interface FatEntry {
  name: string;
  isDirectory: boolean;
  size: number;
  firstCluster: number;
}

/** Lists every entry of the FAT filesystem at `source`, within `budget`. A boot sector that is not FAT's makes the root unreadable. */
export async function listFatFiles(source: FilesystemSource, budget: WalkBudget): Promise<FilesystemListing> {
  let geometry: FatGeometry;
  try {
    geometry = parseBootSector(await readAt(source, 0, 512));
  } catch (error) {
    if (!(error instanceof FatFormatError)) throw error;
    return { files: [], unreadable: [{ path: '/', reason: error.message }] };
  }
  const files: DiskFile[] = [];
  const unreadable: FilesystemListing['unreadable'] = [];
  const visited = new Set<number>();
  const queue: Array<{ path: string; firstCluster: number }> = [{ path: '/', firstCluster: 0 }];
  while (queue.length > 0 && !budget.stopped) {
    budget.signal?.throwIfAborted();
    const directory = queue.shift()!;
    let entries: FatEntry[];
    try {
      entries = parseDirectory(await readDirectory(source, geometry, directory.firstCluster), geometry.type === 32);
    } catch (error) {
      if (!(error instanceof FatFormatError)) throw error;
      unreadable.push({ path: directory.path, reason: error.message });
      continue;
    }
    for (const entry of entries) {
      if (budget.msLeft() === 0 || !budget.take()) break;
      const path = directory.path === '/' ? `/${entry.name}` : `${directory.path}/${entry.name}`;
      files.push({ path, kind: entry.isDirectory ? 'dir' : 'file', size: entry.isDirectory ? 0 : entry.size });
      // An empty directory has no cluster; one met twice (only in a damaged image) is listed once.
      if (entry.isDirectory && entry.firstCluster !== 0 && !visited.has(entry.firstCluster)) {
        visited.add(entry.firstCluster);
        queue.push({ path, firstCluster: entry.firstCluster });
      }
    }
  }
  return { files, unreadable };
}

/** The geometry from the boot sector's BIOS parameter block, after checking it is one. */
export function parseBootSector(sector: Buffer): FatGeometry {
  const bytesPerSector = sector.readUInt16LE(11);
  const sectorsPerCluster = sector[13];
  const reservedSectors = sector.readUInt16LE(14);
  const fatCount = sector[16];
  const rootEntries = sector.readUInt16LE(17);
  const totalSectors = sector.readUInt16LE(19) || sector.readUInt32LE(32);
  const fatSize16 = sector.readUInt16LE(22);
  // fatgen103: FAT32 is the one whose 16-bit FAT size is 0 (the way Linux's vfat decides too).
  const isFat32 = fatSize16 === 0;
  const fatSectors = isFat32 ? sector.readUInt32LE(36) : fatSize16;
  const powerOfTwo = (value: number) => value > 0 && (value & (value - 1)) === 0;
  if (sector.readUInt16LE(510) !== 0xaa55) throw new FatFormatError('No boot sector signature (0x55AA)');
  if (![512, 1024, 2048, 4096].includes(bytesPerSector) || !powerOfTwo(sectorsPerCluster) || sectorsPerCluster > 128)
    throw new FatFormatError(`Not a FAT boot sector (${bytesPerSector} bytes per sector, ${sectorsPerCluster} sectors per cluster)`);
  if (reservedSectors === 0 || fatCount === 0 || fatSectors === 0 || totalSectors === 0) throw new FatFormatError('Not a FAT boot sector (an empty field)');
  const rootSectors = Math.ceil((rootEntries * DIRECTORY_ENTRY_BYTES) / bytesPerSector);
  const dataSector = reservedSectors + fatCount * fatSectors + rootSectors;
  const clusterCount = Math.floor((totalSectors - dataSector) / sectorsPerCluster);
  if (clusterCount < 1) throw new FatFormatError('The FAT boot sector leaves no room for data');
  // FAT32 with bit 7 of BPB_ExtFlags set keeps only the FAT numbered in bits 0-3 up to date.
  const extFlags = isFat32 ? sector.readUInt16LE(40) : 0;
  const activeFat = extFlags & 0x80 ? extFlags & 0x0f : 0;
  if (activeFat >= fatCount) throw new FatFormatError(`The active FAT ${activeFat} is not among the ${fatCount}`);
  return {
    type: isFat32 ? 32 : clusterCount < 4085 ? 12 : 16,
    clusterBytes: sectorsPerCluster * bytesPerSector,
    fatOffset: (reservedSectors + activeFat * fatSectors) * bytesPerSector,
    fatBytes: fatSectors * bytesPerSector,
    clusterCount,
    dataOffset: dataSector * bytesPerSector,
    rootOffset: (reservedSectors + fatCount * fatSectors) * bytesPerSector,
    rootBytes: rootSectors * bytesPerSector,
    rootCluster: isFat32 ? sector.readUInt32LE(44) : 0,
  };
}

/** The bytes of a directory: the fixed root of FAT12/16 (cluster 0), else its cluster chain. */
async function readDirectory(source: FilesystemSource, geometry: FatGeometry, firstCluster: number): Promise<Buffer> {
  if (firstCluster === 0 && geometry.type !== 32) return readAt(source, geometry.rootOffset, geometry.rootBytes);
  const start = firstCluster === 0 ? geometry.rootCluster : firstCluster;
  const maxClusters = Math.ceil(MAX_DIRECTORY_BYTES / geometry.clusterBytes);
  const parts: Buffer[] = [];
  for await (const cluster of clusterChain(source, geometry, start, maxClusters))
    parts.push(await readAt(source, geometry.dataOffset + (cluster - 2) * geometry.clusterBytes, geometry.clusterBytes));
  return Buffer.concat(parts);
}

/** The clusters of a chain in order; throws on a cluster outside the data area or a chain longer than `maxClusters`. */
async function* clusterChain(source: FilesystemSource, geometry: FatGeometry, start: number, maxClusters: number): AsyncGenerator<number> {
  const endOfChain = { 12: 0xff8, 16: 0xfff8, 32: 0x0ffffff8 }[geometry.type];
  let cluster = start;
  for (let count = 0; ; count++) {
    if (cluster < 2 || cluster > geometry.clusterCount + 1) throw new FatFormatError(`Cluster ${cluster} is outside the data area`);
    if (count === maxClusters) throw new FatFormatError(`A directory runs over ${maxClusters} clusters (a looping chain?)`);
    yield cluster;
    cluster = await nextCluster(source, geometry, cluster);
    if (cluster >= endOfChain) return;
  }
}

/** The FAT entry of `cluster`: the next cluster of its chain, or an end-of-chain mark. */
async function nextCluster(source: FilesystemSource, geometry: FatGeometry, cluster: number): Promise<number> {
  // FAT12 packs two 12-bit entries in three bytes: entry n starts at byte n * 1.5.
  const offset = { 12: cluster + (cluster >> 1), 16: cluster * 2, 32: cluster * 4 }[geometry.type];
  const entryBytes = geometry.type === 32 ? 4 : 2;
  if (offset + entryBytes > geometry.fatBytes) throw new FatFormatError(`Cluster ${cluster} is past the end of the FAT`);
  const bytes = await readAt(source, geometry.fatOffset + offset, entryBytes);
  if (geometry.type === 32) return bytes.readUInt32LE(0) & 0x0fffffff;
  const value = bytes.readUInt16LE(0);
  if (geometry.type === 16) return value;
  return cluster & 1 ? value >> 4 : value & 0x0fff;
}

/** The entries of a directory's bytes, with their long names where a valid one precedes the short entry. */
export function parseDirectory(bytes: Buffer, isFat32: boolean): FatEntry[] {
  const entries: FatEntry[] = [];
  let longName: { parts: Buffer[]; next: number; checksum: number } | undefined;
  for (let offset = 0; offset + DIRECTORY_ENTRY_BYTES <= bytes.length; offset += DIRECTORY_ENTRY_BYTES) {
    const entry = bytes.subarray(offset, offset + DIRECTORY_ENTRY_BYTES);
    if (entry[0] === 0x00) break; // fatgen103: this entry and all after it are free.
    const attributes = entry[11];
    if (entry[0] === 0xe5) {
      longName = undefined; // A deleted entry.
    } else if ((attributes & 0x3f) === ATTRIBUTE_LONG_NAME) {
      // Long-name entries come last part first: the first has bit 0x40 and the part count.
      const order = entry[0] & 0x1f;
      if (entry[0] & 0x40) longName = { parts: new Array(order), next: order, checksum: entry[13] };
      if (longName === undefined || order === 0 || order !== longName.next || entry[13] !== longName.checksum) longName = undefined;
      else {
        longName.parts[order - 1] = Buffer.concat([entry.subarray(1, 11), entry.subarray(14, 26), entry.subarray(28, 32)]);
        longName.next = order - 1;
      }
    } else if (attributes & ATTRIBUTE_VOLUME_LABEL) {
      longName = undefined;
    } else {
      const name = longName?.next === 0 && longName.checksum === shortNameChecksum(entry) ? joinLongName(longName.parts) : shortName(entry);
      longName = undefined;
      // A name with '/' or NUL (only in a damaged or forged image) would break the path: left out.
      if (name === '.' || name === '..' || name === '' || /[/\0]/.test(name)) continue;
      const isDirectory = (attributes & ATTRIBUTE_DIRECTORY) !== 0;
      // The high half of the first cluster exists on FAT32 only; elsewhere those bytes may hold other data (OS/2).
      const firstCluster = entry.readUInt16LE(26) + (isFat32 ? entry.readUInt16LE(20) * 0x10000 : 0);
      entries.push({ name, isDirectory, size: entry.readUInt32LE(28), firstCluster });
    }
  }
  return entries;
}

/** fatgen103's checksum of the 11-byte short name, stored in each of its long-name entries. */
function shortNameChecksum(entry: Buffer): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = (((sum & 1) << 7) + (sum >> 1) + entry[i]) & 0xff;
  return sum;
}

/** A long name from its parts: UTF-16LE, ended by 0x0000 when shorter than the parts (then padded with 0xFFFF). */
function joinLongName(parts: Buffer[]): string {
  const units = Buffer.concat(parts);
  let end = 0;
  while (end + 1 < units.length && units.readUInt16LE(end) !== 0) end += 2;
  return units.subarray(0, end).toString('utf16le');
}

/**
 * The 8.3 name of a short entry, lowercased where Windows NT's case bits (byte 12: 0x08 the
 * base, 0x10 the extension) say so. Bytes past ASCII are in an OEM code page that the image does
 * not name: they are kept as raw bytes (file-name.ts), not guessed.
 */
function shortName(entry: Buffer): string {
  const base = Buffer.from(entry.subarray(0, 8));
  // fatgen103: a first byte of 0xE5 is stored as 0x05, since 0xE5 marks a deleted entry.
  if (base[0] === 0x05) base[0] = 0xe5;
  const lower = (bytes: Buffer, yes: boolean) => (yes ? bytes.map((byte) => (byte >= 0x41 && byte <= 0x5a ? byte + 0x20 : byte)) : bytes);
  const trim = (bytes: Buffer) => {
    let end = bytes.length;
    while (end > 0 && bytes[end - 1] === 0x20) end -= 1;
    return bytes.subarray(0, end);
  };
  const name = decodeFileName(lower(trim(base), (entry[12] & 0x08) !== 0));
  const extension = decodeFileName(lower(trim(entry.subarray(8, 11)), (entry[12] & 0x10) !== 0));
  return extension === '' ? name : `${name}.${extension}`;
}

/** Exactly `length` bytes at `offset` inside the filesystem; throws when they are not all in its range and in the image. */
async function readAt(source: FilesystemSource, offset: number, length: number): Promise<Buffer> {
  if (offset < 0 || offset + length > source.sizeBytes) throw new FatFormatError(`Bytes ${offset}-${offset + length} are past the end of the filesystem`);
  const buffer = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await source.image.read(buffer, done, length - done, source.offsetBytes + offset + done);
    if (bytesRead === 0) throw new FatFormatError(`The image ends before byte ${source.offsetBytes + offset + length}`);
    done += bytesRead;
  }
  return buffer;
}

/**
 * The bytes of the file at `path` (absolute, inside the filesystem) of the FAT filesystem at
 * `source`: each directory on the way parsed as the listing does, names compared as listed (long
 * names, else the short ones), then the file's cluster chain read for its size. Throws
 * BACKUP_FILE_NOT_FOUND for a path that is not there or a directory, BACKUP_FILE_UNREADABLE for
 * structures that do not hold together.
 */
export async function readFatFile(source: FilesystemSource, path: string, maxBytes: number): Promise<Buffer> {
  try {
    const geometry = parseBootSector(await readAt(source, 0, 512));
    let current: FatEntry = { name: '/', isDirectory: true, size: 0, firstCluster: 0 };
    for (const name of path.split('/').filter((part) => part !== '')) {
      if (!current.isDirectory) throw fileNotFound(path);
      const entries = parseDirectory(await readDirectory(source, geometry, current.firstCluster), geometry.type === 32);
      const found = entries.find((entry) => entry.name === name);
      if (!found) throw fileNotFound(path);
      current = found;
    }
    if (current.isDirectory) throw fileNotFound(path, 'is a directory, not a regular file');
    refuseLargeFile(path, current.size, maxBytes);
    const parts: Buffer[] = [];
    let left = current.size;
    if (left > 0)
      for await (const cluster of clusterChain(source, geometry, current.firstCluster, Math.ceil(left / geometry.clusterBytes) + 1)) {
        const take = Math.min(left, geometry.clusterBytes);
        parts.push(await readAt(source, geometry.dataOffset + (cluster - 2) * geometry.clusterBytes, take));
        left -= take;
        if (left === 0) break;
      }
    if (left > 0) throw new FatFormatError(`The cluster chain of ${path} ends ${left} bytes before its size`);
    return Buffer.concat(parts);
  } catch (error) {
    if (error instanceof FatFormatError) throw new NubisError('BACKUP_FILE_UNREADABLE', `${path} cannot be read from its FAT filesystem: ${error.message}`);
    throw error;
  }
}
