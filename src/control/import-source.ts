/**
 * The files an image import reads, and nothing else: regular files inside the control plane's
 * import folder (`<data>/import/`), opened without following a symlink and without blocking, and
 * checked by content (a kernel by its boot header, an initrd by its magic, a disk by its qcow2
 * header and `qemu-img info`). Copies into the image store are written by us with our own mode.
 */
import { constants, type Stats } from 'node:fs';
import { lstat, open, readlink, realpath, type FileHandle } from 'node:fs/promises';
import { isAbsolute, join, normalize, relative, sep } from 'node:path';
import { importFileNamePattern } from '../wire/schemas.ts';
import { NubisError, isNubisError, messageOf } from '../core/errors.ts';
import { runCommand } from '../core/run-command.ts';

/** What an imported file is for. */
export type ImportFileRole = 'disk' | 'kernel' | 'initrd';

/** An import file, open for reading: what was checked is what is read. */
export interface ImportSource {
  /** The name the client gave, for messages. */
  readonly given: string;
  /** Where it really is (inside the import folder). */
  readonly path: string;
  readonly handle: FileHandle;
  /** Its size when opened; a copy reads exactly this many bytes. */
  readonly sizeBytes: number;
}

/** How long `qemu-img info` may take. It reads a header; seconds mean something is wrong. */
const QEMU_IMG_TIMEOUT_MS = 30_000;
const namePattern = new RegExp(importFileNamePattern);

function invalid(message: string, cause?: unknown): NubisError {
  return new NubisError('IMAGE_INVALID', message, cause === undefined ? {} : { cause });
}

/** What a non-regular file is, in words. */
function fileType(stats: Stats): string {
  if (stats.isSymbolicLink()) return 'a symbolic link';
  if (stats.isFIFO()) return 'a FIFO';
  if (stats.isCharacterDevice()) return 'a character device';
  if (stats.isBlockDevice()) return 'a block device';
  if (stats.isDirectory()) return 'a directory';
  if (stats.isSocket()) return 'a socket';
  return 'not a regular file';
}

function isInside(dir: string, path: string): boolean {
  const rel = relative(dir, path);
  return rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel);
}

/**
 * Checks a client-given file name against the import folder's rule (the API schema checks the
 * same pattern; this is the check the opening code trusts) and returns the path it names.
 */
export function importPathOf(importDir: string, given: string): string {
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(given)) throw invalid(`The import file name ${JSON.stringify(given)} holds a control character; rename the file`);
  if (given.length > 1024) throw invalid(`The import file name ${given.slice(0, 64)}... is longer than 1024 characters; rename the file`);
  if (!namePattern.test(given)) {
    throw invalid(
      `The import file name ${given} is not allowed: use letters, digits and . _ + @ - / without .. segments, naming a file in the import folder ${importDir}`,
    );
  }
  const path = isAbsolute(given) ? normalize(given) : join(importDir, given);
  return path;
}

/**
 * Opens an import file for reading after checking that it is a regular file inside the import
 * folder: by name, by lstat (a symlink, FIFO, device or directory is refused before anything
 * opens it), by realpath (no symlinked folder leads out), and again on the opened descriptor
 * (O_NOFOLLOW|O_NONBLOCK, then fstat and the descriptor's own path), so a file swapped between
 * the checks is refused rather than read. The caller closes `handle`.
 */
export async function openImportSource(importDir: string, given: string, role: ImportFileRole): Promise<ImportSource> {
  const path = importPathOf(importDir, given);
  const realDir = await realpath(importDir).catch(() => undefined);
  if (!isInside(importDir, path) && !(realDir && isInside(realDir, path))) {
    throw invalid(`The ${role} file ${given} is outside the import folder ${importDir}; copy it there (nubis image import does) and give its name`);
  }
  if (!realDir) throw new NubisError('IMAGE_IMPORT_FOLDER_MISSING', `The import folder ${importDir} is missing; restart the control plane, which creates it`);
  let linkStats: Stats;
  try {
    linkStats = await lstat(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT' || (error as NodeJS.ErrnoException).code === 'ENOTDIR') {
      throw invalid(`No ${role} file ${given} in the import folder ${importDir}; copy it there first`, error);
    }
    throw invalid(`Cannot read the ${role} file ${given}: ${messageOf(error)}`, error);
  }
  if (!linkStats.isFile()) throw invalid(`The ${role} file ${given} is ${fileType(linkStats)}; import a regular file`);
  const real = await realpath(path);
  if (!isInside(realDir, real)) throw invalid(`The ${role} file ${given} leads out of the import folder ${importDir} (to ${real}); copy the file itself there`);
  let handle: FileHandle;
  try {
    handle = await open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ELOOP')
      throw invalid(`The ${role} file ${given} became a symbolic link while it was checked; import a regular file`, error);
    throw invalid(`Cannot open the ${role} file ${given}: ${messageOf(error)}`, error);
  }
  try {
    const stats = await handle.stat();
    if (!stats.isFile()) throw invalid(`The ${role} file ${given} is ${fileType(stats)}; import a regular file`);
    if (stats.dev !== linkStats.dev || stats.ino !== linkStats.ino)
      throw invalid(`The ${role} file ${given} was replaced while it was checked; import it again`);
    // The descriptor's own path: a folder swapped for a symlink after realpath shows here.
    const opened = await readlink(`/proc/self/fd/${handle.fd}`);
    if (!isInside(realDir, opened))
      throw invalid(`The ${role} file ${given} leads out of the import folder ${importDir} (to ${opened}); copy the file itself there`);
    return { given, path: real, handle, sizeBytes: stats.size };
  } catch (error) {
    await handle.close();
    throw error;
  }
}

/** The first bytes of a file (up to `length`). */
export async function readHead(handle: FileHandle, length = 4096): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  const { bytesRead } = await handle.read(buffer, 0, length, 0);
  return buffer.subarray(0, bytesRead);
}

const magic = {
  qcow2: Buffer.from('QFI\xfb', 'latin1'),
  gzip: Buffer.from([0x1f, 0x8b]),
  xz: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]),
  zstd: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]),
  lz4: Buffer.from([0x02, 0x21, 0x4c, 0x18]),
  bzip2: Buffer.from('BZh', 'latin1'),
  cpioNewc: Buffer.from('070701', 'latin1'),
  cpioCrc: Buffer.from('070702', 'latin1'),
  elf: Buffer.from([0x7f, 0x45, 0x4c, 0x46]),
  linuxBoot: Buffer.from('HdrS', 'latin1'),
};

/** The initrd formats the kernel unpacks (Documentation/driver-api/early-userspace), by magic. */
function initrdFormat(head: Buffer): string | undefined {
  if (head.subarray(0, 6).equals(magic.cpioNewc) || head.subarray(0, 6).equals(magic.cpioCrc)) return 'cpio';
  for (const name of ['gzip', 'xz', 'zstd', 'lz4', 'bzip2'] as const) if (head.subarray(0, magic[name].length).equals(magic[name])) return name;
  return undefined;
}

/** Linux boot protocol (Documentation/arch/x86/boot.rst): the setup header's magic "HdrS" is at 0x202. */
function isLinuxKernel(head: Buffer): boolean {
  return head.subarray(0x202, 0x206).equals(magic.linuxBoot);
}

/** What the first bytes of a file look like, for a message that says why it was refused. */
export function describeContent(head: Buffer): string {
  if (head.length === 0) return 'an empty file';
  if (isLinuxKernel(head)) return 'a Linux kernel';
  if (head.subarray(0, 4).equals(magic.qcow2)) return 'a qcow2 image';
  if (head.subarray(0, 4).equals(magic.elf)) return 'an ELF file (an uncompressed vmlinux? import the bzImage)';
  const initrd = initrdFormat(head);
  if (initrd) return `${initrd} data`;
  if (head.every((byte) => byte === 0)) return 'zeros';
  if (head.every((byte) => byte === 0x09 || byte === 0x0a || byte === 0x0d || (byte >= 0x20 && byte < 0x7f))) return 'text';
  return `unrecognised data starting ${head.subarray(0, 8).toString('hex')}`;
}

/** Refuses a file that is not a Linux x86 kernel. */
export async function checkKernel(source: { given: string; handle: FileHandle }): Promise<void> {
  const head = await readHead(source.handle);
  if (!isLinuxKernel(head))
    throw invalid(`The kernel file ${source.given} is not a Linux x86 kernel (no HdrS boot header at 0x202): it looks like ${describeContent(head)}`);
}

/** Refuses a file that is not a (compressed) cpio archive. */
export async function checkInitrd(source: { given: string; handle: FileHandle }): Promise<void> {
  const head = await readHead(source.handle);
  if (!initrdFormat(head))
    throw invalid(`The initrd file ${source.given} is not a cpio archive (plain or gzip/xz/zstd/lz4/bzip2-compressed): it looks like ${describeContent(head)}`);
}

/**
 * Checks a disk image and returns its format, `qcow2` or `raw`. A qcow2 header is read first
 * (docs/interop/qcow2.txt: backing_file_offset at 8, incompatible_features bit 2 "external data
 * file" at 72 from version 3), so qemu-img never opens a file a hostile header names; then
 * `qemu-img info` reads the open descriptor (`/dev/fd/3`, not the path, which could be swapped)
 * with a deadline and the caller's signal.
 */
export async function checkDisk(source: { given: string; handle: FileHandle }, signal?: AbortSignal): Promise<'qcow2' | 'raw'> {
  const head = await readHead(source.handle);
  const isQcow2 = head.subarray(0, 4).equals(magic.qcow2);
  if (isQcow2) {
    if (head.length < 104) throw invalid(`The disk file ${source.given} has a truncated qcow2 header; import a complete image`);
    if (head.readBigUInt64BE(8) !== 0n)
      throw invalid(`The disk file ${source.given} is a qcow2 image that has a backing file; flatten it first (qemu-img convert -O qcow2)`);
    if (head.readUInt32BE(4) >= 3 && (head.readBigUInt64BE(72) & 4n) !== 0n) {
      throw invalid(
        `The disk file ${source.given} is a qcow2 image that has an external data file; convert it to a self-contained image first (qemu-img convert -O qcow2)`,
      );
    }
  }
  let info: { format?: string; 'backing-filename'?: string; 'format-specific'?: { data?: { 'data-file'?: string } } };
  try {
    const args = ['info', '--output=json', ...(isQcow2 ? ['-f', 'qcow2'] : []), '/dev/fd/3'];
    info = JSON.parse((await runCommand('qemu-img', args, { timeoutMs: QEMU_IMG_TIMEOUT_MS, signal, passFds: [source.handle.fd] })).stdout) as typeof info;
  } catch (error) {
    if (signal?.aborted) throw error;
    if (isNubisError(error, 'COMMAND_MISSING')) throw error;
    const reason = isNubisError(error, 'COMMAND_FAILED')
      ? String(error.details?.stderr ?? '')
          .trim()
          .replaceAll('/dev/fd/3', source.given)
      : messageOf(error);
    throw invalid(`qemu-img cannot read the disk file ${source.given}: ${reason || messageOf(error)}`, error);
  }
  if (info.format !== 'qcow2' && info.format !== 'raw') {
    throw invalid(`The disk file ${source.given} is a ${info.format} image; import qcow2 or raw (convert with qemu-img convert -O qcow2)`);
  }
  if (info['backing-filename']) throw invalid(`The disk file ${source.given} has a backing file; flatten it first (qemu-img convert -O qcow2)`);
  if (info['format-specific']?.data?.['data-file'])
    throw invalid(`The disk file ${source.given} has an external data file; convert it to a self-contained image first (qemu-img convert -O qcow2)`);
  return info.format;
}

/** Options of {@link copyImportSource}. */
export interface CopyOptions {
  /** Stops the copy between chunks; the partial file is the caller's to remove. */
  signal?: AbortSignal;
  /** Leave all-zero chunks as holes (for disk images: a sparse raw stays sparse). */
  sparse?: boolean;
  /** Called with the share copied (0..1), at most every 10 %. */
  onProgress?: (share: number) => void | Promise<void>;
}

const CHUNK_BYTES = 1024 * 1024;

/**
 * Copies an open import file into a new file `destination` created with mode 0640 (never the
 * source's mode: a 0666 source does not make a world-writable image). A loop of positioned reads
 * rather than copyFile, so the abort signal stops it between chunks and zero chunks can stay
 * holes; exactly `sizeBytes` are read, so a file that grows while copied cannot hold the copy.
 */
export async function copyImportSource(source: ImportSource, destination: string, options: CopyOptions = {}): Promise<void> {
  const target = await open(destination, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o640);
  try {
    const buffer = Buffer.alloc(CHUNK_BYTES);
    const zeros = Buffer.alloc(CHUNK_BYTES);
    let position = 0;
    let reported = 0;
    while (position < source.sizeBytes) {
      options.signal?.throwIfAborted();
      const want = Math.min(CHUNK_BYTES, source.sizeBytes - position);
      const { bytesRead } = await source.handle.read(buffer, 0, want, position);
      if (bytesRead === 0) throw invalid(`The file ${source.given} shrank while it was copied; import it again`);
      const chunk = buffer.subarray(0, bytesRead);
      if (!(options.sparse && chunk.equals(zeros.subarray(0, bytesRead)))) await target.write(chunk, 0, bytesRead, position);
      position += bytesRead;
      const share = position / source.sizeBytes;
      if (options.onProgress && share - reported >= 0.1) {
        reported = share;
        await options.onProgress(share);
      }
    }
    options.signal?.throwIfAborted();
    await target.truncate(source.sizeBytes);
    await target.datasync();
  } finally {
    await target.close();
  }
}
