import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { isNubisError } from '../core/errors.ts';
import { encodeCpio, encodeCpioGzip, type CpioEntry } from './cpio.ts';

const entries: CpioEntry[] = [
  { type: 'directory', path: 'dev' },
  { type: 'char-device', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
  { type: 'file', path: 'bin/busybox', data: Buffer.from('#!/bin/sh\necho hi\n'), mode: 0o755 },
  { type: 'symlink', path: 'bin/sh', target: 'busybox' },
  // 5 bytes: the data needs padding to the next multiple of 4.
  { type: 'file', path: '/etc/hostname', data: 'tiny\n' },
];

/** Runs busybox's cpio applet on `archive`, the independent reader the kernel's format matches. */
function busyboxCpio(args: string[], archive: Buffer, cwd?: string): string {
  const result = spawnSync('busybox', ['cpio', ...args], { input: archive, cwd, encoding: 'utf8' });
  assert.equal(result.status, 0, result.stderr);
  return result.stdout;
}

test('busybox cpio lists every member, parents added before their children', () => {
  const listed = busyboxCpio(['-t'], encodeCpio(entries)).trim().split('\n');
  assert.deepEqual(listed, ['dev', 'dev/console', 'bin', 'bin/busybox', 'bin/sh', 'etc', 'etc/hostname']);
});

test('busybox cpio reports the types and modes that were written', () => {
  const lines = busyboxCpio(['-tv'], encodeCpio(entries)).trim().split('\n');
  // "<mode> <uid>/<gid> <size or major, minor> <date> <time> <name>[ -> <target>]"
  const byName = new Map(lines.map((line) => [line.split(' -> ')[0].split(/\s+/).at(-1)!, line]));
  assert.match(byName.get('dev/console')!, /^crw------- 0\/0 /);
  assert.match(byName.get('bin/busybox')!, /^-rwxr-xr-x 0\/0\s+18 /);
  assert.match(byName.get('bin/sh')!, /^lrwxrwxrwx .* bin\/sh -> busybox$/);
  assert.match(byName.get('etc/hostname')!, /^-rw-r--r-- 0\/0\s+5 /);
  assert.match(byName.get('dev')!, /^drwxr-xr-x /);
});

test('extracted files carry the bytes, modes and link targets that were written', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nubis-cpio-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  // Creating a device node needs root; elsewhere the node is left out.
  const asRoot = process.getuid?.() === 0;
  busyboxCpio(['-i', '-d'], encodeCpio(entries.filter((entry) => asRoot || entry.type !== 'char-device')), dir);
  if (asRoot) {
    const consoleNode = lstatSync(join(dir, 'dev/console'));
    assert.ok(consoleNode.isCharacterDevice());
    assert.equal(consoleNode.rdev, (5 << 8) | 1);
  }
  assert.equal(readFileSync(join(dir, 'bin/busybox'), 'utf8'), '#!/bin/sh\necho hi\n');
  assert.equal(lstatSync(join(dir, 'bin/busybox')).mode & 0o777, 0o755);
  assert.equal(readlinkSync(join(dir, 'bin/sh')), 'busybox');
  assert.equal(readFileSync(join(dir, 'etc/hostname'), 'utf8'), 'tiny\n');
});

test('the archive is reproducible and every header starts on a 4-byte boundary', () => {
  const archive = encodeCpio(entries);
  assert.deepEqual(archive, encodeCpio(entries));
  assert.equal(archive.length % 4, 0);
  let offset = 0;
  let names = 0;
  while (offset < archive.length) {
    assert.equal(archive.toString('ascii', offset, offset + 6), '070701', `header at ${offset}`);
    const field = (index: number) => parseInt(archive.toString('ascii', offset + 6 + index * 8, offset + 14 + index * 8), 16);
    const nameSize = field(11);
    const name = archive.toString('utf8', offset + 110, offset + 110 + nameSize - 1);
    names++;
    const dataStart = Math.ceil((offset + 110 + nameSize) / 4) * 4;
    offset = Math.ceil((dataStart + field(6)) / 4) * 4;
    if (name === 'TRAILER!!!') break;
  }
  assert.equal(offset, archive.length);
  assert.equal(names, 8);
});

test('the gzip variant decompresses to the plain archive', async () => {
  assert.deepEqual(gunzipSync(await encodeCpioGzip(entries)), encodeCpio(entries));
});

test('duplicate and escaping paths are refused with IMAGE_CPIO_INVALID_ENTRY', () => {
  const invalid = (list: CpioEntry[]) => () => encodeCpio(list);
  const code = (error: unknown) => isNubisError(error, 'IMAGE_CPIO_INVALID_ENTRY');
  assert.throws(
    invalid([
      { type: 'directory', path: 'a' },
      { type: 'directory', path: 'a/' },
    ]),
    code,
  );
  assert.throws(invalid([{ type: 'file', path: '../etc/passwd', data: '' }]), code);
  assert.throws(invalid([{ type: 'file', path: 'a', data: '', mode: 0o10000 }]), code);
});
