import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isNubisError } from '../core/errors.ts';
import { stageForImport } from './import-staging.ts';

describe('stageForImport', () => {
  let dir: string;
  let importDir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), `nubis-import-staging-${process.pid}-`));
    importDir = join(dir, 'import');
    mkdirSync(importDir, { mode: 0o700 });
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('puts an outside file into the import folder under a new name and removes it afterwards', async () => {
    writeFileSync(join(dir, 'my disk.raw'), 'disk bytes');
    const staged = await stageForImport(importDir, [join(dir, 'my disk.raw')]);
    assert.equal(staged.names.length, 1);
    assert.match(staged.names[0], /^cli-\d+-[0-9a-f]{8}-my_disk\.raw$/);
    assert.equal(readFileSync(join(importDir, staged.names[0]), 'utf8'), 'disk bytes');
    await staged.remove();
    assert.deepEqual(readdirSync(importDir), []);
  });

  it('passes a file already in the import folder by its name and leaves it there', async () => {
    mkdirSync(join(importDir, 'sub'));
    writeFileSync(join(importDir, 'sub', 'k'), 'kernel');
    const staged = await stageForImport(importDir, [join(importDir, 'sub', 'k')]);
    assert.deepEqual(staged.names, ['sub/k']);
    await staged.remove();
    assert.ok(existsSync(join(importDir, 'sub', 'k')));
    rmSync(join(importDir, 'sub'), { recursive: true });
  });

  it('refuses what is not a regular file and leaves nothing of a half-staged pair', async () => {
    writeFileSync(join(dir, 'kernel'), 'kernel');
    execFileSync('mkfifo', [join(dir, 'fifo')]);
    await assert.rejects(
      stageForImport(importDir, [join(dir, 'kernel'), join(dir, 'fifo')]),
      (error) => isNubisError(error, 'IMAGE_INVALID') && /fifo is not a regular file/.test(error.message),
    );
    await assert.rejects(stageForImport(importDir, [join(dir, 'missing')]), (error) => isNubisError(error, 'IMAGE_INVALID') && /No file/.test(error.message));
    assert.deepEqual(readdirSync(importDir), []);
  });

  it('says how to import from another machine when there is no import folder', async () => {
    await assert.rejects(
      stageForImport(join(dir, 'nowhere'), [join(dir, 'kernel')]),
      (error) => isNubisError(error, 'CLI_NOT_CONFIGURED') && /--in-import-folder/.test(error.message),
    );
  });
});
