// A pool over different kinds of devices: a sparse file and an export of another NBD server
// (nbdkit's memory plugin) mirrored in raid1, served through our NBD server to qemu-io; the data
// survives losing either kind of member, and a file member is rebuilt from the remote one.
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { StorageService } from '../../src/storage/service.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;

describe('pool over a file and a remote NBD export', () => {
  let dir: string;
  let nbdkit: ChildProcess | undefined;
  let service: StorageService | undefined;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-hetero-'));
  });

  after(async () => {
    await service?.close();
    if (nbdkit && nbdkit.exitCode === null) {
      const exited = new Promise((resolve) => nbdkit!.once('exit', resolve));
      nbdkit.kill('SIGTERM');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('mirrors a file and an nbdkit export and serves from either alone', async () => {
    const remoteSocket = join(dir, 'nbdkit.sock');
    nbdkit = spawn('nbdkit', ['-f', '-U', remoteSocket, 'memory', '56M'], { stdio: 'ignore' });
    for (let i = 0; i < 50; i++) {
      try {
        await run('nbdinfo', ['--size', `nbd+unix:///?socket=${remoteSocket}`]);
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const file = join(dir, 'local.img');
    await writeFile(file, '');
    await truncate(file, 48 * MiB);
    const remote = `nbd+unix:///?socket=${remoteSocket}`;
    ({ service } = await StorageService.start({ poolsDir: join(dir, 'pools'), socketPath: join(dir, 'ours.sock') }));
    const pool = await service.createPool({ name: 'mixed', layout: 'raid1', devices: [file, remote], allocationUnit: '256K' });
    assert.equal(pool.members[1]!.sizeBytes, 56 * MiB);
    assert.ok(pool.wasteBytes >= 8 * MiB, 'the larger member is reported as waste');
    await service.createVolume('mixed', 'disk', '16M');
    const uri = service.exportUri('mixed', 'disk');
    const io = (commands: string[]) => run('qemu-io', ['-f', 'raw', uri, ...commands.flatMap((c) => ['-c', c])]);
    const { stdout } = await io(['write -P 0x6b 0 2M', 'flush', 'read -P 0x6b 0 2M']);
    assert.doesNotMatch(stdout, /verification failed/);

    await service.offlineMember('mixed', 0);
    const remoteOnly = await io(['read -P 0x6b 0 2M']);
    assert.doesNotMatch(remoteOnly.stdout, /verification failed/, 'served by the NBD member alone');

    // Rebuild a new local file from the remote member, then lose the remote one.
    const replacement = join(dir, 'local2.img');
    await writeFile(replacement, '');
    await truncate(replacement, 48 * MiB);
    await service.replaceMember('mixed', 0, replacement);
    assert.equal(service.getPool('mixed').state, 'online');
    await service.offlineMember('mixed', 1);
    const fileOnly = await io(['read -P 0x6b 0 2M']);
    assert.doesNotMatch(fileOnly.stdout, /verification failed/, 'served by the rebuilt file member alone');
    // After a restart the offlined remote member stays out: its copy may be stale.
    await service.close();
    ({ service } = await StorageService.start({ poolsDir: join(dir, 'pools'), socketPath: join(dir, 'ours.sock') }));
    assert.equal(service.getPool('mixed').state, 'degraded');
    assert.equal(service.getPool('mixed').members[1]!.state, 'faulted');
    const afterRestart = await run('qemu-io', ['-f', 'raw', service.exportUri('mixed', 'disk'), '-c', 'read -P 0x6b 0 2M']);
    assert.doesNotMatch(afterRestart.stdout, /verification failed/);
  });
});
