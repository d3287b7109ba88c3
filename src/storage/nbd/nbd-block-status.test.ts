// Reading QEMU's dirty bitmaps through NBD_CMD_BLOCK_STATUS (nbd-block-status.ts), against a real
// qemu-storage-daemon: the client must report exactly the blocks written since the bitmap began.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { QmpClient } from '../../compute/qmp/qmp-client.ts';
import { runCommand } from '../../core/run-command.ts';
import { readMetaContext } from './nbd-block-status.ts';
import { NbdClient } from './nbd-client.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('NBD metadata contexts (QEMU dirty bitmaps)', () => {
  let dir: string;
  let daemon: ChildProcess;
  let qmp: QmpClient;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-nbd-status-'));
    await runCommand('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'disk.qcow2'), '64M'], { timeoutMs: 30_000 });
    daemon = spawn(
      'qemu-storage-daemon',
      [
        '--blockdev',
        `driver=qcow2,node-name=disk0,file.driver=file,file.filename=${join(dir, 'disk.qcow2')}`,
        '--chardev',
        `socket,id=monitor,path=${join(dir, 'qmp.sock')},server=on,wait=off`,
        '--monitor',
        'chardev=monitor',
        '--nbd-server',
        `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`,
      ],
      { stdio: 'ignore' },
    );
    const deadline = Date.now() + 10_000;
    while (!existsSync(join(dir, 'qmp.sock')) || !existsSync(join(dir, 'nbd.sock'))) {
      assert.ok(Date.now() < deadline, 'qemu-storage-daemon did not open its sockets within 10 s');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    qmp = await QmpClient.connect(join(dir, 'qmp.sock'));
  });

  after(async () => {
    qmp?.close();
    daemon?.kill();
    await rm(dir, { recursive: true, force: true });
  });

  it('reports the blocks written since a bitmap began, at its granularity, and nothing else', async () => {
    await qmp.execute('block-dirty-bitmap-add', { node: 'disk0', name: 'since-b1', granularity: 4 * MiB });
    await qmp.execute('block-export-add', { type: 'nbd', id: 'writer', 'node-name': 'disk0', name: 'writer', writable: true });
    const writer = await NbdClient.connect({ path: join(dir, 'nbd.sock'), exportName: 'writer' });
    await writer.write(5 * MiB + 12 * KiB, Buffer.alloc(4 * KiB, 0xaa));
    await writer.write(40 * MiB - 512, Buffer.alloc(KiB, 0xbb)); // across the boundary of two blocks
    await writer.close();
    // A read-only export of an enabled bitmap is refused by QEMU: freeze it first, as a backup does.
    await qmp.execute('block-dirty-bitmap-disable', { node: 'disk0', name: 'since-b1' });
    await qmp.execute('block-export-add', { type: 'nbd', id: 'reader', 'node-name': 'disk0', name: 'reader', bitmaps: ['since-b1'] });

    const extents = await readMetaContext({ path: join(dir, 'nbd.sock'), exportName: 'reader', context: 'qemu:dirty-bitmap:since-b1' });
    assert.equal(extents[0].offset, 0);
    for (let i = 1; i < extents.length; i += 1) assert.equal(extents[i].offset, extents[i - 1].offset + extents[i - 1].length, 'extents without gaps');
    const last = extents.at(-1)!;
    assert.equal(last.offset + last.length, 64 * MiB, 'the whole export described');
    const dirty = extents.filter((extent) => extent.flags & 1).map(({ offset, length }) => [offset / MiB, length / MiB]);
    assert.deepEqual(dirty, [
      [4, 4],
      [36, 8],
    ]);
  });

  it('names the context when the export does not offer it', async () => {
    await assert.rejects(
      readMetaContext({ path: join(dir, 'nbd.sock'), exportName: 'reader', context: 'qemu:dirty-bitmap:nope' }),
      /does not offer metadata context qemu:dirty-bitmap:nope/,
    );
  });
});
