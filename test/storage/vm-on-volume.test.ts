/**
 * The storage node end to end with real VMs: a RAID 5 pool over devices of unequal sizes, thin
 * volumes attached to tiny VMs through QEMU's own NBD client and our NBD server, guest-written
 * checksummed data verified across a restart, a snapshot and a clone of it, and bad input.
 */
import assert from 'node:assert/strict';
import { lstatSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { requestJson } from '../../src/core/http-json.ts';
import type { StorageVmSocketState } from '../../src/storage/host-fencing.ts';
import type { Vm } from '../../src/wire/schemas.ts';
import { NubisInstance, freePort, httpGet, runOnConsole } from '../helpers/nubis-instance.ts';

describe('VMs on volumes of the storage node', () => {
  const nubis = new NubisInstance('storage-vm');
  const devices: string[] = [];

  before(async () => {
    await nubis.up();
    for (const [index, sizeMb] of [256, 256, 320].entries()) {
      const path = join(nubis.dataDir, `member-${index}.img`);
      writeFileSync(path, '');
      truncateSync(path, sizeMb * 2 ** 20);
      devices.push(path);
    }
  });
  after(() => nubis.destroy());

  /** The VM sockets the storage node serves on `host`, as it reports them. */
  function vmSockets(host: string): Promise<StorageVmSocketState[]> {
    return requestJson<StorageVmSocketState[]>(`unix:${join(nubis.dataDir, 'storage', 'manage.sock')}`, { method: 'GET', path: `/storage/hosts/${host}/vms` });
  }

  /** The uid a process runs as (its real uid). */
  function uidOf(pid: number): number {
    return Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
  }

  async function guestDisk(port: number, op: 'write' | 'verify', seed: number): Promise<{ ok: boolean; blocks?: number; badCount?: number }> {
    const body = await httpGet(`http://127.0.0.1:${port}/cgi-bin/disk?op=${op}&dev=vda&mb=16&seed=${seed}`, 60_000);
    return JSON.parse(body ?? '{}') as { ok: boolean };
  }

  it('refuses bad pools and volumes with the reason', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['pool', 'create', 'bad', '--layout', 'raid5', '--device', devices[0], '--device', devices[1]], /raid5 pool needs at least 3 devices; 2 given/],
      [['pool', 'create', 'bad', '--layout', 'raid7', '--device', devices[0]], /layout/i],
      [['volume', 'create', 'v', '--pool', 'nope', '--size', '1G'], /nope/],
    ];
    for (const [args, message] of cases) {
      const result = await nubis.cli(args);
      assert.notEqual(result.code, 0, args.join(' '));
      assert.match(result.stderr, message);
    }
    assert.deepEqual(await nubis.cliJson(['pool', 'list']), []);
  });

  it('creates a RAID 5 pool over unequal devices and thin volumes on it', async () => {
    const pool = await nubis.cliJson<{ layout: string; state: string; sizeBytes: number; wasteBytes: number; members: unknown[] }>([
      'pool',
      'create',
      'p1',
      '--layout',
      'raid5',
      '--device',
      ...devices.flatMap((d) => ['--device', d]).slice(1),
    ]);
    assert.equal(pool.layout, 'raid5');
    assert.equal(pool.state, 'online');
    assert.equal(pool.members.length, 3);
    assert.ok(pool.wasteBytes >= 64 * 2 ** 20, "the larger member's extra 64 MiB is shown as waste");
    const volume = await nubis.cliJson<{ sizeBytes: number; allocatedBytes: number }>(['volume', 'create', 'data1', '--pool', 'p1', '--size', '64M']);
    assert.equal(volume.sizeBytes, 64 * 2 ** 20);
    assert.equal(volume.allocatedBytes, 0, 'thin: nothing allocated before a write');
    const badSize = await nubis.cli(['volume', 'create', 'v2', '--pool', 'p1', '--size', 'lots']);
    assert.notEqual(badSize.code, 0);
    assert.match(badSize.stderr, /lots/);
  });

  it('boots a VM with the volume as its disk; guest-written data survives a restart', async () => {
    const port = await freePort();
    const vm = await nubis.cliJson<Vm>(['vm', 'create', 'db1', '--image', 'tiny', '--disk', 'p1/data1', '--publish', `${port}:80`]);
    assert.deepEqual(vm.disks, [{ device: 'vda', volume: 'p1/data1' }]);
    assert.equal((await guestDisk(port, 'write', 7)).ok, true);
    assert.equal((await guestDisk(port, 'verify', 7)).ok, true);
    assert.equal((await guestDisk(port, 'verify', 8)).ok, false, 'verification can fail: another seed does not match');
    await nubis.cliJson(['vm', 'stop', 'db1']);
    await nubis.cliJson(['vm', 'start', 'db1']);
    assert.equal((await guestDisk(port, 'verify', 7)).ok, true, 'the data is on the pool, not in the VM');
    const volume = await nubis.cliJson<{ allocatedBytes: number; usedBy: string }>(['volume', 'show', 'p1/data1']);
    assert.equal(volume.usedBy, 'db1');
    assert.ok(volume.allocatedBytes >= 16 * 2 ** 20);
    const inUse = await nubis.cli(['vm', 'create', 'db2', '--image', 'tiny', '--disk', 'p1/data1']);
    assert.match(inUse.stderr, /attached to VM db1/);
    const deleteInUse = await nubis.cli(['volume', 'delete', 'p1/data1']);
    assert.match(deleteInUse.stderr, /used by VM\(s\) db1/);
    const shrink = await nubis.cli(['volume', 'resize', 'p1/data1', '32M']);
    assert.match(shrink.stderr, /p1\/data1 is a disk of VM db1, and a disk never shrinks under a VM; detach it first/);
    assert.equal((await nubis.cliJson<{ sizeBytes: number }>(['volume', 'show', 'p1/data1'])).sizeBytes, 64 * 2 ** 20, 'nothing changed');
    const missing = await nubis.cli(['vm', 'create', 'db3', '--image', 'tiny', '--disk', 'p1/nope']);
    assert.notEqual(missing.code, 0);
    assert.equal((await nubis.cliJson<Vm[]>(['vm', 'list'])).length, 1, 'refused VMs left nothing behind');

    // A snapshot keeps the data while the origin changes; a clone of it is writable.
    await nubis.cliJson(['volume', 'snapshot', 'p1/data1', 'snap1']);
    assert.equal((await guestDisk(port, 'write', 9)).ok, true);
    assert.equal((await guestDisk(port, 'verify', 9)).ok, true);
    await nubis.cliJson(['volume', 'clone', 'p1/snap1', 'restored']);
    const restoredPort = await freePort();
    await nubis.cliJson(['vm', 'create', 'db4', '--image', 'tiny', '--memory', '128', '--disk', 'p1/restored', '--publish', `${restoredPort}:80`]);
    assert.equal((await guestDisk(restoredPort, 'verify', 7)).ok, true, 'the clone of the snapshot has the data from before the change');
    const scrub = await nubis.cli(['pool', 'scrub', 'p1', '--json']);
    assert.equal(scrub.code, 0, scrub.stderr);
    assert.equal((JSON.parse(scrub.stdout) as { unrepairedBlocks: number }).unrepairedBlocks, 0);
    await nubis.cliJson(['vm', 'delete', 'db4']);
    await nubis.cliJson(['vm', 'delete', 'db1']);
    await nubis.cliJson(['volume', 'delete', 'p1/restored']);
    await nubis.cliJson(['volume', 'delete', 'p1/snap1']);
    await nubis.cliJson(['volume', 'delete', 'p1/data1']);
    const pool = await nubis.cliJson<{ allocatedBytes: number }>(['pool', 'show', 'p1']);
    assert.equal(pool.allocatedBytes, 0, 'deleting the volumes returned their space');
  });

  it('hot-plugs a volume into a running VM and unplugs it again, data intact', async () => {
    await nubis.cliJson(['volume', 'create', 'hot', '--pool', 'p1', '--size', '32M']);
    const port = await freePort();
    await nubis.cliJson(['vm', 'create', 'hp1', '--image', 'tiny', '--memory', '128', '--publish', `${port}:80`]);
    const waitForDisk = 'for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done; ls /dev/vda';
    const attached = await nubis.cliJson<Vm>(['vm', 'attach', 'hp1', 'p1/hot']);
    assert.deepEqual(
      attached.disks.map((d) => d.volume),
      ['p1/hot'],
    );
    assert.match(await runOnConsole(nubis, 'hp1', waitForDisk), /\/dev\/vda\r?\n/, 'the guest sees the new disk');
    assert.equal((await guestDisk(port, 'write', 5)).ok, true);
    // The VM's QEMU reached the volume through a socket of its own, which its uid alone owns.
    const vm = await nubis.cliJson<Vm>(['vm', 'show', 'hp1']);
    const uid = uidOf(vm.pid!);
    const [own] = await vmSockets(vm.host);
    assert.deepEqual({ uid: own?.uid, exports: own?.exports, connections: own?.connections }, { uid, exports: ['p1/hot'], connections: 1 });
    const socketFile = lstatSync(own!.socket);
    assert.deepEqual({ owner: socketFile.uid, mode: socketFile.mode & 0o777 }, { owner: uid, mode: 0o600 });
    const detached = await nubis.cliJson<Vm>(['vm', 'detach', 'hp1', 'p1/hot']);
    assert.deepEqual(detached.disks, []);
    assert.match(await runOnConsole(nubis, 'hp1', '[ -b /dev/vda ] || echo gone'), /gone/, 'the guest released the disk');
    assert.equal((await nubis.cliJson<{ usedBy?: string }>(['volume', 'show', 'p1/hot'])).usedBy, undefined);
    assert.deepEqual(await vmSockets(vm.host), [], 'its last volume gone, the VM socket is released');
    await nubis.cliJson(['vm', 'attach', 'hp1', 'p1/hot']);
    await runOnConsole(nubis, 'hp1', waitForDisk);
    assert.equal((await guestDisk(port, 'verify', 5)).ok, true, 'what the guest wrote before the detach is still there');
    await nubis.cliJson(['vm', 'delete', 'hp1']);
    assert.deepEqual(await vmSockets(vm.host), [], 'a deleted VM keeps no socket');
    await nubis.cliJson(['volume', 'delete', 'p1/hot']);
    await nubis.cliJson(['pool', 'delete', 'p1']);
  });
});
