import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { assertNoPlaintext } from '../../../test/helpers/plaintext-forms.ts';
import { isNubisError } from '../../core/errors.ts';
import { listDiskFiles, readDiskFile } from './disk-files.ts';
import type { DiskFile, DiskListing } from './disk-listing.ts';
import { decodeFileName, fileNameBytes } from './file-name.ts';
import { fileKeywords } from './keywords.ts';
import { EncryptedIndex, buildIndex, openResults, searchIndex, searchToken } from './sse-index.ts';

const MIB = 1024 * 1024;
const SECTOR = 512;
/** mtools reads and writes long names in the locale's charset: UTF-8 here, or every 'é' becomes '_'. */
const MTOOLS_ENV = { ...process.env, LC_ALL: 'C.UTF-8', MTOOLS_SKIP_CHECK: '1' };

function run(command: string, args: string[], env: NodeJS.ProcessEnv = process.env, input?: string): string {
  const result = spawnSync(command, args, { env, input, encoding: 'utf8' });
  assert.equal(result.status, 0, `${command} ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

/** A raw image file of `bytes`, sparse. */
function blankImage(path: string, bytes: number): string {
  writeFileSync(path, '');
  truncateSync(path, bytes);
  return path;
}

/** Writes the bytes of `source` into `disk` from sector `startSector` on, as dd would. */
function writeInto(disk: string, startSector: number, source: string): void {
  const fd = openSync(disk, 'r+');
  try {
    const bytes = readFileSync(source);
    writeSync(fd, bytes, 0, bytes.length, startSector * SECTOR);
  } finally {
    closeSync(fd);
  }
}

/** The entries under `root` as listDiskFiles reports them, read with Node (names as raw bytes). */
function walk(root: Buffer, prefix = ''): DiskFile[] {
  return readdirSync(root, { withFileTypes: true, encoding: 'buffer' }).flatMap((entry) => {
    const full = Buffer.concat([root, Buffer.from('/'), entry.name]);
    const path = `${prefix}/${decodeFileName(entry.name)}`;
    const stat = lstatSync(full);
    const kind = stat.isDirectory() ? 'dir' : stat.isFile() ? 'file' : stat.isSymbolicLink() ? 'symlink' : 'other';
    const file: DiskFile = { path, kind, size: kind === 'dir' || kind === 'other' ? 0 : stat.size };
    return kind === 'dir' ? [file, ...walk(full, path)] : [file];
  });
}

const byPath = (files: DiskFile[]) => [...files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
const prefixed = (partition: string, files: DiskFile[]) => files.map((file) => ({ ...file, path: `${partition}:${file.path}` }));

/** Names both filesystems take: spaces, Unicode in and beyond the BMP, leading dashes, nesting, an empty folder. */
function fillCommon(root: string): void {
  mkdirSync(join(root, 'sub/deeper'), { recursive: true });
  mkdirSync(join(root, 'dir with space'));
  mkdirSync(join(root, 'empty folder'));
  writeFileSync(join(root, 'a b.txt'), 'hello');
  writeFileSync(join(root, 'Ünïcödé ✓.txt'), 'ü');
  writeFileSync(join(root, '-rf'), 'x');
  writeFileSync(join(root, '--help'), 'y');
  writeFileSync(join(root, 'sub/deeper/Quarterly_Report-2026.pdf'), Buffer.alloc(5000, 7));
  writeFileSync(join(root, 'dir with space/empty'), '');
  writeFileSync(join(root, `${'long'.repeat(50)}.name`), 'l');
  // Enough names that a FAT12 directory spans several clusters.
  mkdirSync(join(root, 'crowd'));
  for (let i = 0; i < 60; i++) writeFileSync(join(root, 'crowd', `member number ${i}.dat`), String(i));
}

/** ext alone: bytes no FAT name may hold, a link, a FIFO, a name that mimics debugfs's own echo, and 300 folders (two debugfs runs). */
function fillExtOnly(root: string): void {
  // mtools 4.0.32 stores a character beyond the BMP as one UTF-16 unit (U+1F642 as U+F642), so only ext gets one.
  writeFileSync(join(root, '🙂 smile.txt'), 'smile');
  for (const name of ['new\nline', 'ta\tb', 'back\\slash', 'quo"te', '\ndebugfs: ls -p <2>\n', 'co:lon', 'ends with space '])
    writeFileSync(join(root, name), name);
  writeFileSync(Buffer.concat([Buffer.from(`${root}/bad`), Buffer.from([0xff, 0xfe]), Buffer.from('name.bin')]), 'bad');
  symlinkSync('a b.txt', join(root, 'link to a b'));
  run('mkfifo', [join(root, 'a fifo')]);
  for (let i = 0; i < 300; i++) mkdirSync(join(root, 'many', `folder${String(i).padStart(3, '0')}`), { recursive: true });
}

/** FAT alone: names stored as bare 8.3 entries (upper case, and lower case through the NT case bits) and mixed case. */
function fillFatOnly(root: string): void {
  writeFileSync(join(root, 'UPPER.TXT'), 'u');
  writeFileSync(join(root, 'lower.txt'), 'l');
  writeFileSync(join(root, 'MiXeD.Txt'), 'm');
}

function makeExt(image: string, type: string, source: string): string {
  blankImage(image, 16 * MIB);
  run('mke2fs', ['-q', '-t', type, '-d', source, image]);
  return image;
}

function makeFat(image: string, bytes: number, fatBits: 12 | 16 | 32, source: string): string {
  blankImage(image, bytes);
  run('mkfs.vfat', ['-F', String(fatBits), ...(fatBits === 32 ? ['-s', '1'] : []), image]);
  const entries = readdirSync(source).map((name) => join(source, name));
  run('mcopy', ['-s', '-i', image, ...entries, '::/'], MTOOLS_ENV);
  return image;
}

/** The paths mtools' own reader lists, as an independent check of the FAT reader. */
function mtoolsPaths(image: string): string[] {
  const lines = run('mdir', ['-/', '-b', '-i', image, '::/'], MTOOLS_ENV).split('\n').filter(Boolean);
  return lines.map((line) => line.replace(/^::/, '').replace(/\/$/, '')).sort();
}

function partitionDisk(image: string, bytes: number, script: string): string {
  blankImage(image, bytes);
  run('sfdisk', ['-q', image], process.env, script);
  return image;
}

describe('listDiskFiles', () => {
  let dir: string;
  let expectedExt: DiskFile[];
  let expectedFat: DiskFile[];
  const images: Record<string, string> = {};
  let extSource: string;
  let fatSource: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'nubis-disk-files-'));
    extSource = join(dir, 'ext-source');
    fatSource = join(dir, 'fat-source');
    mkdirSync(extSource);
    mkdirSync(fatSource);
    fillCommon(extSource);
    fillExtOnly(extSource);
    fillCommon(fatSource);
    fillFatOnly(fatSource);
    // mke2fs adds lost+found; everything else is what the folder holds.
    expectedExt = byPath([...walk(Buffer.from(extSource)), { path: '/lost+found', kind: 'dir', size: 0 }]);
    expectedFat = byPath(walk(Buffer.from(fatSource)));
    images.ext4 = makeExt(join(dir, 'ext4.img'), 'ext4', extSource);
    images.ext2 = makeExt(join(dir, 'ext2.img'), 'ext2', extSource);
    images.fat12 = makeFat(join(dir, 'fat12.img'), 4 * MIB, 12, fatSource);
    images.fat16 = makeFat(join(dir, 'fat16.img'), 16 * MIB, 16, fatSource);
    images.fat32 = makeFat(join(dir, 'fat32.img'), 40 * MIB, 32, fatSource);
    images.swap = blankImage(join(dir, 'swap.img'), MIB);
    run('mkswap', [images.swap]);
    // p1 ext4, p2 FAT12, p3 swap, p4 an extended partition holding p5, which is left empty.
    images.mbr = partitionDisk(
      join(dir, 'mbr.img'),
      26 * MIB,
      'label: dos\nstart=2048, size=32768, type=83\nstart=34816, size=8192, type=c\nstart=43008, size=2048, type=82\nstart=45056, size=8192, type=5\nstart=47104, size=2048, type=83\n',
    );
    writeInto(images.mbr, 2048, images.ext4);
    writeInto(images.mbr, 34816, images.fat12);
    writeInto(images.mbr, 43008, images.swap);
    images.gpt = partitionDisk(join(dir, 'gpt.img'), 22 * MIB, 'label: gpt\nstart=2048, size=8192, type=U\nstart=10240, size=32768, type=L\n');
    writeInto(images.gpt, 2048, images.fat12);
    writeInto(images.gpt, 10240, images.ext4);
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  it('lists an ext4 or ext2 filesystem on the whole disk: every name, size and kind put in, byte for byte', async () => {
    for (const image of [images.ext4, images.ext2]) {
      const listing = await listDiskFiles(image);
      assert.deepEqual(listing.skipped, []);
      assert.equal(listing.truncated, undefined);
      assert.deepEqual(byPath(listing.files), expectedExt, image);
    }
  });

  it('lists FAT12, FAT16 and FAT32 filesystems with their long names, as mtools reads them too', async () => {
    for (const image of [images.fat12, images.fat16, images.fat32]) {
      const listing = await listDiskFiles(image);
      assert.deepEqual(listing.skipped, []);
      assert.deepEqual(byPath(listing.files), expectedFat, image);
      assert.deepEqual(listing.files.map((file) => file.path).sort(), mtoolsPaths(image), image);
    }
  });

  it('lists each partition of an MBR disk under its number, and says why the others were skipped', async () => {
    const listing = await listDiskFiles(images.mbr);
    assert.deepEqual(byPath(listing.files), byPath([...prefixed('p1', expectedExt), ...prefixed('p2', expectedFat)]));
    assert.deepEqual(listing.skipped, [
      { partition: 'p3', reason: 'swap filesystems are not listed (ext2/3/4 and FAT are)' },
      { partition: 'p4', reason: 'Extended partition: its logical partitions are listed on their own' },
      { partition: 'p5', reason: 'No filesystem found' },
    ]);
  });

  it('reads every listed file back, byte for byte, from each filesystem and partition (file-restore)', async () => {
    const sourceOf = (root: string, path: string) => readFileSync(Buffer.concat([Buffer.from(root), fileNameBytes(path)]));
    const cases: Array<[string, string, string, DiskFile[]]> = [
      [images.ext4, '', extSource, expectedExt],
      [images.fat16, '', fatSource, expectedFat],
      [images.fat32, '', fatSource, expectedFat],
      [images.mbr, 'p1:', extSource, expectedExt],
      [images.gpt, 'p1:', fatSource, expectedFat],
    ];
    for (const [image, prefix, root, expected] of cases) {
      const files = expected.filter((file) => file.kind === 'file' && !file.path.startsWith('/many'));
      for (const file of files)
        assert.ok((await readDiskFile(image, `${prefix}${file.path}`, { maxBytes: MIB })).equals(sourceOf(root, file.path)), `${image} ${file.path}`);
    }
  });

  it('refuses what is not one regular file with a reason: a folder, a link, a missing path, a file too large, a partition not named', async () => {
    const refusals: Array<[string, string, RegExp]> = [
      [images.ext4, '/sub', /\/sub is a directory, not a regular file/],
      [images.ext4, '/link to a b', /is a symlink, not a regular file/],
      [images.ext4, '/nowhere/a b.txt', /\/nowhere\/a b.txt is not in the backed-up filesystem/],
      [images.ext4, '/a b.txt/under', /is not in the backed-up filesystem/],
      [images.fat12, '/crowd', /is a directory/],
      [images.fat12, '/NOPE.TXT', /is not in the backed-up filesystem/],
      [images.ext4, '/sub/deeper/Quarterly_Report-2026.pdf', /has 5000 bytes; one file is restored up to/],
      [images.fat12, '/sub/deeper/Quarterly_Report-2026.pdf', /has 5000 bytes/],
      [images.mbr, '/a b.txt', /a disk with a partition table: name the partition/],
      [images.mbr, 'p3:/a', /not read \(swap filesystems/],
      [images.mbr, 'p9:/a', /partition p9, which the disk has not/],
      [images.ext4, 'a b.txt', /is not a path of a backed-up disk/],
    ];
    for (const [image, path, reason] of refusals)
      await assert.rejects(readDiskFile(image, path, { maxBytes: 4096 }), (error: Error) => {
        assert.match(error.message, reason, path);
        return true;
      });
  });

  it('lists each partition of a GPT disk', async () => {
    const listing = await listDiskFiles(images.gpt);
    assert.deepEqual(byPath(listing.files), byPath([...prefixed('p1', expectedFat), ...prefixed('p2', expectedExt)]));
    assert.deepEqual(listing.skipped, []);
  });

  it('stops at the entry limit, counted over all partitions, and at the deadline, and says so', async () => {
    const fewer = await listDiskFiles(images.mbr, { maxEntries: expectedExt.length + 3 });
    assert.equal(fewer.truncated, `Stopped at ${expectedExt.length + 3} entries`);
    assert.equal(fewer.files.filter((file) => file.path.startsWith('p1:')).length, expectedExt.length);
    assert.equal(fewer.files.filter((file) => file.path.startsWith('p2:')).length, 3);
    const fat = await listDiskFiles(images.fat32, { maxEntries: 5 });
    assert.deepEqual([fat.files.length, fat.truncated], [5, 'Stopped at 5 entries']);
    const late = await listDiskFiles(images.ext4, { timeoutMs: 1 });
    assert.equal(late.truncated, 'Stopped after 1 ms');
    assert.ok(late.files.length < expectedExt.length);
  });

  it('skips an ext filesystem that debugfs cannot read, with what debugfs said', async () => {
    // Zero the block group descriptors, right after the superblock (block 2 with 1 KiB blocks, else block 1).
    const damaged = join(dir, 'damaged.img');
    const bytes = readFileSync(images.ext4);
    const blockBytes = 1024 << bytes.readUInt32LE(1024 + 24);
    bytes.fill(0, blockBytes === 1024 ? 2048 : blockBytes, (blockBytes === 1024 ? 2048 : blockBytes) + blockBytes);
    writeFileSync(damaged, bytes);
    const listing = await listDiskFiles(damaged);
    assert.deepEqual(listing.files, []);
    assert.equal(listing.skipped.length, 1);
    assert.equal(listing.skipped[0].partition, 'disk');
    assert.match(listing.skipped[0].reason, /^debugfs could not list the directory: ls: .*inode 2/);
  });

  it('reports a disk without a filesystem as skipped, and an image it cannot open as unreadable', async () => {
    const blank = blankImage(join(dir, 'blank.img'), MIB);
    assert.deepEqual(await listDiskFiles(blank), { files: [], skipped: [{ partition: 'disk', reason: 'No filesystem found' }] });
    await assert.rejects(
      listDiskFiles(join(dir, 'missing.img')),
      (error) => isNubisError(error, 'BACKUP_IMAGE_UNREADABLE') && /missing\.img/.test(error.message),
    );
    await assert.rejects(listDiskFiles(dir), (error) => isNubisError(error, 'BACKUP_IMAGE_UNREADABLE') && /not a regular file/.test(error.message));
  });

  it('indexes the listed files so that every search equals the plaintext answer, with no name in the index', async () => {
    const listings: Array<[string, DiskListing]> = [];
    for (const disk of ['mbr', 'fat32'] as const) listings.push([disk, await listDiskFiles(images[disk])]);
    const documents = listings.flatMap(([disk, listing]) => listing.files.map((file) => ({ id: `${disk}|${file.path}`, keywords: fileKeywords(file.path) })));
    const reference = new Map<string, string[]>();
    for (const { id, keywords } of documents) for (const word of keywords) reference.set(word, [...(reference.get(word) ?? []), id]);
    assert.ok(reference.size > 100, `${reference.size} keywords`);

    const key = randomBytes(32);
    const text = JSON.stringify(buildIndex(key, documents));
    const index = EncryptedIndex.fromJSON(JSON.parse(text));
    const search = (searchKey: Buffer, word: string) => searchIndex(index, searchToken(searchKey, word).k1);
    for (const [word, ids] of reference) assert.deepEqual(openResults(key, word, search(key, word)), ids, word);
    for (const word of ['nowhere', 'report-2026', 'quarterly_report', 'd', 'mbr']) assert.deepEqual(search(key, word), [], word);

    const names = documents.map(({ id }) => id.slice(id.lastIndexOf('/') + 1));
    assertNoPlaintext(text, [...reference.keys(), ...names], 'the serialized index');
    const otherKey = randomBytes(32);
    for (const word of reference.keys()) assert.deepEqual(search(otherKey, word), [], word);
  });
});
