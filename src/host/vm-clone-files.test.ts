/**
 * The files of clones, made by real qemu-img and read back with qemu-io: a linked dir-pool
 * volume is an overlay over its template's and reads its bytes; a full copy reads the same bytes
 * and has no backing file; a full clone's root disk keeps only the image as its backing file and
 * reads what the template's overlay held; an existing file is never overwritten.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { DirPools } from './dir-pools.ts';
import { createBootOverlay } from './vm-files.ts';

const root = mkdtempSync(join(tmpdir(), 'nubis-clone-files-'));

/** Writes `pattern` (one byte value) at `offset` into a qcow2 file. */
function write(file: string, pattern: number, offset: number): void {
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', `write -P ${pattern} ${offset} 64k`, file]);
}

/** True when the 64 KiB at `offset` of `file` (its whole chain) are all `pattern`. */
function holds(file: string, pattern: number, offset: number): boolean {
  const output = execFileSync('qemu-io', ['-r', '-U', '-f', 'qcow2', '-c', `read -P ${pattern} ${offset} 64k`, file], { encoding: 'utf8' });
  return !/Pattern verification failed/.test(output);
}

function backingOf(file: string): string | undefined {
  return (JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', file], { encoding: 'utf8' })) as { 'backing-filename'?: string })[
    'backing-filename'
  ];
}

describe('the files of clones', () => {
  after(() => rmSync(root, { recursive: true, force: true }));

  it('makes linked and full copies of a dir-pool volume that read its bytes', async () => {
    const pools = new DirPools(join(root, 'pools'));
    await pools.ensurePool('p');
    const source = await pools.createVolume('p', 'base', 4 * 1024 * 1024);
    write(source.path, 0x5a, 0);
    const linked = await pools.copyVolume('p', 'base', 'kid', true);
    const full = await pools.copyVolume('p', 'base', 'copy', false);
    assert.equal(backingOf(linked.path), source.path);
    assert.equal(backingOf(full.path), undefined);
    for (const file of [linked.path, full.path]) assert.ok(holds(file, 0x5a, 0), `${file} reads the template's bytes`);
    write(linked.path, 0x11, 0);
    assert.ok(holds(source.path, 0x5a, 0), "a clone's write leaves the template as it was");
    await assert.rejects(pools.copyVolume('p', 'base', 'kid', true), /already has a file/);
    await assert.rejects(pools.copyVolume('p', 'nothing', 'x', true), /has no file/);
  });

  it("makes a full clone's root disk over the image, holding the template's own clusters", async () => {
    const image = join(root, 'image.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '4M']);
    write(image, 0x22, 0);
    const templateDir = join(root, 'template');
    const cloneDir = join(root, 'clone');
    for (const dir of [templateDir, cloneDir]) execFileSync('mkdir', ['-p', dir]);
    const templateRoot = await createBootOverlay(templateDir, { path: image, format: 'qcow2' }, 'template');
    write(templateRoot.path, 0x33, 65536);
    const copied = await createBootOverlay(cloneDir, { path: templateRoot.path, format: 'qcow2', copy: true }, 'clone');
    assert.equal(backingOf(copied.path), image, 'a full copy needs the image, not the template');
    assert.ok(holds(copied.path, 0x22, 0), "the image's bytes");
    assert.ok(holds(copied.path, 0x33, 65536), "the template's own bytes");
  });
});
