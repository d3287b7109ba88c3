import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isNubisError } from '../core/errors.ts';
import { checkInitrd, checkKernel, copyImportSource, describeContent, importPathOf, openImportSource } from './import-source.ts';

describe('import sources', () => {
  let dir: string;
  let importDir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), `nubis-import-source-${process.pid}-`));
    importDir = join(dir, 'import');
    mkdirSync(importDir, { mode: 0o700 });
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('maps names into the import folder and refuses control characters, .. and odd characters', () => {
    assert.equal(importPathOf(importDir, 'a.qcow2'), join(importDir, 'a.qcow2'));
    assert.equal(importPathOf(importDir, join(importDir, 'x', 'y')), join(importDir, 'x', 'y'));
    for (const bad of ['a\u0000b', 'a\u001bb', '../x', 'a/../../x', 'a b', 'x'.repeat(1025), '']) {
      assert.throws(
        () => importPathOf(importDir, bad),
        (error) => isNubisError(error, 'IMAGE_INVALID'),
        JSON.stringify(bad),
      );
    }
  });

  it('tells what a file looks like', () => {
    const kernel = Buffer.alloc(0x300);
    kernel.write('HdrS', 0x202, 'latin1');
    assert.equal(describeContent(kernel), 'a Linux kernel');
    assert.equal(describeContent(Buffer.from('hello\n')), 'text');
    assert.equal(describeContent(Buffer.alloc(16)), 'zeros');
    assert.equal(describeContent(Buffer.alloc(0)), 'an empty file');
    assert.equal(describeContent(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 1])), 'zstd data');
    assert.match(describeContent(Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2])), /ELF/);
  });

  it('accepts initrds by their magic and kernels by their boot header', async () => {
    const magics: Record<string, Buffer> = {
      cpio: Buffer.from('070701000000'),
      cpioCrc: Buffer.from('070702000000'),
      gzip: Buffer.from([0x1f, 0x8b, 8]),
      xz: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]),
      zstd: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]),
      lz4: Buffer.from([0x02, 0x21, 0x4c, 0x18]),
      bzip2: Buffer.from('BZh9'),
    };
    for (const [name, bytes] of Object.entries(magics)) {
      writeFileSync(join(importDir, name), bytes);
      const source = await openImportSource(importDir, name, 'initrd');
      try {
        await checkInitrd(source);
        await assert.rejects(checkKernel(source), (error) => isNubisError(error, 'IMAGE_INVALID') && /not a Linux x86 kernel/.test(error.message));
      } finally {
        await source.handle.close();
      }
    }
  });

  it('copies with mode 0640 whatever the source mode, keeps holes, and stops on abort', async () => {
    const data = Buffer.alloc(3 * 1024 * 1024);
    data.write('middle', 1024 * 1024 + 7);
    writeFileSync(join(importDir, 'sparse.raw'), data, { mode: 0o666 });
    const source = await openImportSource(importDir, 'sparse.raw', 'disk');
    try {
      await copyImportSource(source, join(dir, 'copy.raw'), { sparse: true });
      assert.ok(readFileSync(join(dir, 'copy.raw')).equals(data));
      const stats = statSync(join(dir, 'copy.raw'));
      assert.equal(stats.mode & 0o777 & ~0o640, 0);
      assert.ok(stats.blocks * 512 < data.length, 'zero chunks stay holes');
      const controller = new AbortController();
      controller.abort(new Error('stop'));
      await assert.rejects(copyImportSource(source, join(dir, 'aborted.raw'), { signal: controller.signal }), /stop/);
      await assert.rejects(copyImportSource(source, join(dir, 'copy.raw')), (error) => (error as NodeJS.ErrnoException).code === 'EEXIST');
    } finally {
      await source.handle.close();
    }
  });
});
