/**
 * Lists an ext2/3/4 filesystem inside a disk image with e2fsprogs' debugfs, without mounting it.
 *
 * - Read-only: debugfs opens the image for writing only with -w; -c ("catastrophic mode") also
 *   skips reading the allocation bitmaps, which `ls` does not need.
 * - No file name is ever passed to debugfs: directories are named by inode number (`<12>`), so
 *   names with spaces, quotes, newlines or a leading '-' cannot be misread as its arguments.
 * - The image is handed over as an open descriptor (/dev/fd/3) and the partition's place as
 *   `?offset=N` (e2fsprogs' unix I/O manager option), so an image path holding '?' cannot be
 *   taken for an option either.
 * - `ls -p` prints one record per entry, `/inode/mode/uid/gid/name/size/` then a newline (the
 *   size is empty for a directory), with the name's raw bytes. A name holds no '/', so splitting
 *   the output at '/' gives exactly seven fields per record, whatever bytes (even newlines) the
 *   names hold.
 * - Directories are listed breadth first, a batch of them per debugfs run (`-f` command file): one
 *   run per directory would cost a process start each, seconds on a system disk.
 */
import { open, readFile, rm, writeFile, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isNubisError, messageOf, NubisError } from '../../core/errors.ts';
import { runCommand } from '../../core/run-command.ts';
import { type DiskFile, type FileKind, type FilesystemListing, type FilesystemSource, fileNotFound, refuseLargeFile, type WalkBudget } from './disk-listing.ts';
import { decodeFileName } from './file-name.ts';

/** Directories listed by one debugfs run. */
const DIRECTORIES_PER_RUN = 256;
/** No `ls -p` record is longer: five numbers of at most 20 digits, a name of at most 255 bytes, slashes. */
const MAX_RECORD_BYTES = 400;
/** The inode of the root directory of every ext filesystem. */
const ROOT_INODE = 2;

/** One entry as `ls -p` printed it. */
export interface ExtEntry {
  inode: number;
  mode: number;
  name: Buffer;
  /** Undefined for a directory (debugfs prints no size for one). */
  size?: number;
}

interface PendingDirectory {
  inode: number;
  path: string;
}

/** Lists every entry of the ext filesystem at `source`, within `budget`. */
export async function listExtFiles(source: FilesystemSource, budget: WalkBudget): Promise<FilesystemListing> {
  const files: DiskFile[] = [];
  const unreadable: FilesystemListing['unreadable'] = [];
  const visited = new Set<number>([ROOT_INODE]);
  let queue: PendingDirectory[] = [{ inode: ROOT_INODE, path: '/' }];
  while (queue.length > 0 && !budget.stopped) {
    const batch = queue.slice(0, DIRECTORIES_PER_RUN);
    queue = queue.slice(batch.length);
    const run = await runDebugfs(source, batch, budget);
    if (run === undefined) break;
    for (const directory of batch) {
      const entries = run.listings.get(directory.inode);
      // Every directory holds '.' and '..': no records at all means debugfs could not read it (its error is on stderr).
      if (entries === undefined || entries.length === 0) {
        if (!run.cut) unreadable.push({ path: directory.path, reason: `debugfs could not list the directory${run.problem ? `: ${run.problem}` : ''}` });
        continue;
      }
      for (const entry of entries) {
        const name = decodeFileName(entry.name);
        // debugfs lists unused slots too (inode 0, no name: lost+found's preallocated blocks are full of them).
        if (entry.inode === 0 || name === '.' || name === '..') continue;
        if (!budget.take()) break;
        const path = directory.path === '/' ? `/${name}` : `${directory.path}/${name}`;
        const kind = kindOfMode(entry.mode);
        files.push({ path, kind, size: entry.size ?? 0 });
        // A directory reached twice (only in a damaged filesystem) is listed once: no loops.
        if (kind === 'dir' && !visited.has(entry.inode)) {
          visited.add(entry.inode);
          queue.push({ inode: entry.inode, path });
        }
      }
    }
  }
  return { files, unreadable };
}

interface DebugfsRun {
  listings: Map<number, ExtEntry[]>;
  /** The output was cut at the budget's worth of records: the last directories are incomplete. */
  cut: boolean;
  /** What debugfs said on stderr, beyond its banner. */
  problem?: string;
}

/** Lists `batch` with one debugfs run; undefined when the deadline killed it. */
async function runDebugfs(source: FilesystemSource, batch: PendingDirectory[], budget: WalkBudget): Promise<DebugfsRun | undefined> {
  const timeoutMs = budget.msLeft();
  if (timeoutMs === 0) return undefined;
  const commands = await openCommandFile(batch.map((directory) => `ls -p <${directory.inode}>\n`).join(''));
  // Output past what the budget can still take is never read: it would only be dropped.
  const maxOutputBytes = budget.entriesLeft * MAX_RECORD_BYTES + 64 * 1024;
  try {
    const { stdout, stderr } = await runCommand('debugfs', ['-c', '-f', '/dev/fd/4', `/dev/fd/3?offset=${source.offsetBytes}`], {
      timeoutMs,
      signal: budget.signal,
      passFds: [source.image.fd, commands.fd],
      maxOutputBytes,
      encoding: 'latin1',
    });
    const cut = stdout.length >= maxOutputBytes;
    const problem = stderr
      .split('\n')
      .filter((line) => line !== '' && !/^debugfs \d|^catastrophic mode/.test(line))
      .slice(0, 3)
      .join('; ');
    try {
      return { listings: parseDebugfsListing(stdout, cut), cut, problem: problem || undefined };
    } catch (error) {
      // Output this parser does not know (a damaged filesystem, another debugfs): this batch is unreadable.
      return { listings: new Map(), cut: false, problem: messageOf(error) };
    }
  } catch (error) {
    if (isNubisError(error, 'COMMAND_TIMEOUT')) {
      budget.stopForTime();
      return undefined;
    }
    throw error;
  } finally {
    await commands.close();
  }
}

/**
 * Writes debugfs's commands to a file and opens it; the file is removed at once, the open
 * descriptor (handed to debugfs as /dev/fd/4) keeps it readable, and nothing is left behind.
 */
async function openCommandFile(text: string) {
  const dir = await mkdtemp(join(tmpdir(), 'nubis-debugfs-'));
  try {
    await writeFile(join(dir, 'commands'), text);
    return await open(join(dir, 'commands'), 'r');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The echo debugfs prints before the output of each command read with -f. */
const ECHO = /debugfs: ls -p <(\d+)>\n/g;

/**
 * Parses the output of `ls -p <inode>` commands run with -f: the entries of each directory, by
 * its inode. The text is the output decoded as latin1 (one character per byte). Between records
 * and before the first stand only newlines and debugfs's echoes of the commands, which tell
 * whose records follow; anything else means the output is not what this parser knows, and it
 * throws rather than guess. When `cut`, the output stopped early and its incomplete tail is dropped.
 */
export function parseDebugfsListing(text: string, cut = false): Map<number, ExtEntry[]> {
  const fields = text.split('/');
  const listings = new Map<number, ExtEntry[]>();
  let current: ExtEntry[] | undefined;
  const readSeparator = (index: number) => {
    const separator = fields[index];
    for (const [, inode] of separator.matchAll(ECHO)) {
      current = [];
      listings.set(Number(inode), current);
    }
    // Cut output may end inside an echo; everything before its last field is whole.
    const whole = !cut || index < fields.length - 1;
    if (whole && !/^\n*$/.test(separator.replace(ECHO, ''))) throw new Error(`Unexpected text in debugfs output: ${JSON.stringify(separator.slice(0, 80))}`);
  };
  readSeparator(0);
  const records = Math.floor((fields.length - 1) / 7);
  if (!cut && (fields.length - 1) % 7 !== 0) throw new Error('The debugfs output ends inside a record');
  for (let record = 0; record < records; record++) {
    const [inode, mode, uid, gid, name, size] = fields.slice(1 + record * 7, 7 + record * 7);
    if (!/^\d+$/.test(inode) || !/^[0-7]{1,7}$/.test(mode) || !/^\d+$/.test(uid) || !/^\d+$/.test(gid) || !/^\d*$/.test(size))
      throw new Error(`Unexpected debugfs record for ${JSON.stringify(name)}`);
    if (current === undefined) throw new Error('A debugfs record came before any command');
    current.push({ inode: Number(inode), mode: Number.parseInt(mode, 8), name: Buffer.from(name, 'latin1'), size: size === '' ? undefined : Number(size) });
    readSeparator(7 + record * 7);
  }
  return listings;
}

/** The kind of an entry from its mode's type bits (S_IFMT). */
function kindOfMode(mode: number): FileKind {
  switch (mode & 0o170000) {
    case 0o040000:
      return 'dir';
    case 0o100000:
      return 'file';
    case 0o120000:
      return 'symlink';
    default:
      return 'other';
  }
}

/**
 * The bytes of the regular file at `path` (absolute, inside the filesystem) of the ext filesystem
 * at `source`: its directories looked up by inode one at a time, as the listing does, then the
 * file dumped by inode into a file of a folder of our own (no name of the image on a command
 * line). Throws BACKUP_FILE_NOT_FOUND for a path that is not there or not a regular file.
 */
export async function readExtFile(source: FilesystemSource, path: string, budget: WalkBudget, maxBytes: number): Promise<Buffer> {
  let inode = ROOT_INODE;
  let kind: FileKind = 'dir';
  let size = 0;
  for (const name of path.split('/').filter((part) => part !== '')) {
    if (kind !== 'dir') throw fileNotFound(path);
    const run = await runDebugfs(source, [{ inode, path: '' }], budget);
    const entry = run?.listings.get(inode)?.find((candidate) => candidate.inode !== 0 && decodeFileName(candidate.name) === name);
    if (!entry) throw fileNotFound(path);
    inode = entry.inode;
    kind = kindOfMode(entry.mode);
    size = entry.size ?? 0;
  }
  if (kind !== 'file') throw fileNotFound(path, `is a ${kind === 'dir' ? 'directory' : kind}, not a regular file`);
  refuseLargeFile(path, size, maxBytes);
  const dir = await mkdtemp(join(tmpdir(), 'nubis-debugfs-'));
  try {
    const out = join(dir, 'file');
    // debugfs splits -R at blanks: the folder mkdtemp made must hold none.
    if (!/^[\w./-]+$/.test(out)) throw new NubisError('BACKUP_FILE_UNREADABLE', `The temporary folder ${dir} has characters debugfs would misread`);
    await runCommand('debugfs', ['-c', '-R', `dump <${inode}> ${out}`, `/dev/fd/3?offset=${source.offsetBytes}`], {
      timeoutMs: Math.max(1, budget.msLeft()),
      signal: budget.signal,
      passFds: [source.image.fd],
    });
    return await readFile(out).catch((error: unknown) => {
      throw new NubisError('BACKUP_FILE_UNREADABLE', `debugfs could not read ${path} (inode ${inode}): ${messageOf(error)}`, { cause: error });
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
