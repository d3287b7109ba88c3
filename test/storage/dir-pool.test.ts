/**
 * Host-based storage: a `dir` pool of qcow2 files on each host, beside a storage-node pool in
 * `nubis pool list`; a VM on a dir volume runs on the volume's host; live migration mirrors the
 * volume to the destination while the guest keeps writing, and the data verifies there; a VM
 * booting from an imported disk image migrates with its overlay mirrored; bad input changes
 * nothing.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Vm } from '../../src/wire/schemas.ts';
import { makeTinyBootDisk } from '../helpers/tiny-boot-disk.ts';
import { NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';

interface PoolView {
  name: string;
  kind: string;
  state: string;
  hosts?: string[];
  volumes: number;
  members: Array<{ host?: string; path: string }>;
}
interface VolumeView {
  name: string;
  pool: string;
  sizeBytes: number;
  host?: string;
  usedBy?: string;
}

/** A console command printing the md5 of MiB [skip, skip+count) of /dev/vda as the disk holds it, not the page cache. */
const regionSum = (skip: number, count: number): string =>
  `sync; echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=1M skip=${skip} count=${count} 2>/dev/null | md5sum`;
const md5Of = (output: string): string => {
  const match = /\b([0-9a-f]{32})\s+-/.exec(output);
  assert.ok(match, `an md5sum in: ${output.slice(-300)}`);
  assert.notEqual(match[1], 'd41d8cd98f00b204e9800998ecf8427e', 'dd read something (that is the md5 of nothing)');
  return match[1];
};

describe('dir pools (host-based storage)', { skip: process.getuid?.() !== 0 ? 'needs root for network namespaces' : false }, () => {
  const nubis = new NubisInstance('dir-pool');
  const fileOn = (host: string, volume: string): string => join(nubis.dataDir, 'hosts', host, 'pools', 'local', `${volume}.qcow2`);

  before(async () => {
    await nubis.up(['--hosts', '2']);
    const device = join(nubis.dataDir, 'san.img');
    writeFileSync(device, '');
    truncateSync(device, 128 * 2 ** 20);
    await nubis.cliJson(['pool', 'create', 'shared', '--layout', 'raid0', '--device', device]);
  });
  after(() => nubis.destroy());

  it('creates a dir pool on every host, listed beside the storage-node pool with its kind', async () => {
    const created = await nubis.cliJson<PoolView>(['pool', 'create', 'local', '--kind', 'dir']);
    assert.deepEqual([created.kind, created.state, created.hosts], ['dir', 'online', ['host-1', 'host-2']]);
    const pools = await nubis.cliJson<PoolView[]>(['pool', 'list']);
    assert.deepEqual(
      pools.map((p) => [p.name, p.kind]),
      [
        ['shared', 'san'],
        ['local', 'dir'],
      ],
    );
    assert.ok(existsSync(join(nubis.dataDir, 'hosts', 'host-2', 'pools', 'local')), 'each host got its folder');
  });

  it('refuses bad input with the reason, changing nothing', async () => {
    const twice = await nubis.cli(['pool', 'create', 'shared', '--kind', 'dir']);
    assert.match(twice.stderr, /A pool named shared exists/);
    const mixed = await nubis.cli(['pool', 'create', 'x1', '--kind', 'dir', '--layout', 'raid1']);
    assert.match(mixed.stderr, /takes hosts, not a layout/);
    const whichHost = await nubis.cli(['volume', 'create', 'v0', '--pool', 'local', '--size', '16M']);
    assert.match(whichHost.stderr, /on host-1, host-2; choose the volume's host with --host/);
    const badSize = await nubis.cli(['volume', 'create', 'v0', '--pool', 'local', '--size', 'lots', '--host', 'host-1']);
    assert.notEqual(badSize.code, 0);
    assert.deepEqual(
      (await nubis.cliJson<PoolView[]>(['pool', 'list'])).map((p) => [p.name, p.volumes]),
      [
        ['shared', 0],
        ['local', 0],
      ],
    );
  });

  it('runs a VM on its dir volume and moves the volume with it when it migrates, while the guest writes', async () => {
    const volume = await nubis.cliJson<VolumeView>(['volume', 'create', 'lv1', '--pool', 'local', '--size', '64M', '--host', 'host-1']);
    assert.deepEqual([volume.host, volume.sizeBytes], ['host-1', 64 * 2 ** 20]);
    assert.ok(existsSync(fileOn('host-1', 'lv1')));
    const refused = await nubis.cli(['vm', 'create', 'wrong', '--image', 'tiny', '--disk', 'local/lv1', '--host', 'host-2']);
    assert.match(refused.stderr, /lives on host-1, so the VM must run there/);
    const snapshot = await nubis.cli(['volume', 'snapshot', 'local/lv1', 'snap1']);
    assert.match(snapshot.stderr, /dir pool/);

    await nubis.cliJson(['network', 'create', 'dnet', '--subnet', '10.91.0.0/24']);
    const vm = await nubis.cliJson<Vm>(['vm', 'create', 'dv1', '--image', 'tiny', '--disk', 'local/lv1', '--network', 'dnet']);
    assert.equal(vm.host, 'host-1', 'placed where its volume lives');
    // 32 MiB of one pattern, then the guest rewrites the first 8 MiB with another in the
    // background, while the disk is being mirrored (one console session for both).
    const started = await runOnConsole(
      nubis,
      'dv1',
      'nubis-tool disk-write /dev/vda 32 5 && echo written-ok; (nubis-tool disk-write /dev/vda 8 6 > /tmp/w.log 2>&1; echo $? > /tmp/w.status) & echo writer-started',
      { timeoutMs: 120_000 },
    );
    assert.match(started, /written-ok/);
    assert.match(started, /writer-started/);
    const tailBefore = md5Of(await runOnConsole(nubis, 'dv1', regionSum(8, 24), { timeoutMs: 120_000 }));
    const moved = await nubis.cliJson<{ to: string; figures: { transferredBytes: number } }>(['vm', 'migrate', 'dv1', '--to', 'host-2']);
    assert.equal(moved.to, 'host-2');
    assert.match(await runOnConsole(nubis, 'dv1', 'while [ ! -s /tmp/w.status ]; do sleep 1; done; cat /tmp/w.status', { timeoutMs: 120_000 }), /\n0\r?\n/);
    assert.match(
      await runOnConsole(nubis, 'dv1', 'nubis-tool disk-verify /dev/vda 8 6 && echo head-ok', { timeoutMs: 120_000 }),
      /head-ok/,
      'what the guest wrote during the mirror is on the new copy',
    );
    assert.equal(
      md5Of(await runOnConsole(nubis, 'dv1', regionSum(8, 24), { timeoutMs: 120_000 })),
      tailBefore,
      'what the guest wrote before the mirror is on the new copy',
    );

    const after = await nubis.cliJson<VolumeView>(['volume', 'show', 'local/lv1']);
    assert.deepEqual([after.host, after.usedBy], ['host-2', 'dv1']);
    assert.ok(existsSync(fileOn('host-2', 'lv1')), 'the copy is on host-2');
    assert.ok(!existsSync(fileOn('host-1', 'lv1')), 'the old copy is gone from host-1');

    // It keeps working on its new host: a restart boots with the moved disk.
    await nubis.cliJson(['vm', 'stop', 'dv1']);
    await nubis.cliJson(['vm', 'start', 'dv1']);
    assert.match(await runOnConsole(nubis, 'dv1', 'nubis-tool disk-verify /dev/vda 8 6 && echo still-ok', { timeoutMs: 120_000 }), /still-ok/);
  });

  it('migrates a VM booting from an imported disk image, its overlay mirrored while the guest writes', async () => {
    // A bootable disk image of the tiny guest: a FAT file system with syslinux, kernel and initrd.
    const image = join(nubis.dataDir, 'tiny-disk.img');
    makeTinyBootDisk(image, 'di1');
    await nubis.cliJson(['image', 'import', 'tiny-disk', image]);

    const vm = await nubis.cliJson<Vm>(['vm', 'create', 'di1', '--image', 'tiny-disk', '--memory', '256', '--network', 'dnet', '--host', 'host-1']);
    const overlayOn = (host: string): string => join(nubis.dataDir, 'hosts', host, 'vms', vm.id, 'root.qcow2');
    for (let i = 0; i < 300 && !(await nubis.cliJson<Vm>(['vm', 'show', 'di1'])).ready; i++) await new Promise((resolve) => setTimeout(resolve, 200));
    // The guest writes into its boot disk (its overlay: the image stays as imported), over the
    // file system it booted from (kernel and initrd are in memory by now), then rewrites the
    // start in the background during the mirror.
    const started = await runOnConsole(
      nubis,
      'di1',
      'nubis-tool disk-write /dev/vda 24 8 && echo written-ok; (nubis-tool disk-write /dev/vda 6 9 > /tmp/w.log 2>&1; echo $? > /tmp/w.status) & echo writer-started',
      { timeoutMs: 120_000 },
    );
    assert.match(started, /written-ok/);
    assert.match(started, /writer-started/);
    // Written before the mirror: only the initial copy of the overlay's clusters carries it.
    const tailBefore = md5Of(await runOnConsole(nubis, 'di1', regionSum(6, 18), { timeoutMs: 120_000 }));
    const moved = await nubis.cliJson<{ to: string }>(['vm', 'migrate', 'di1', '--to', 'host-2']);
    assert.equal(moved.to, 'host-2');
    assert.match(await runOnConsole(nubis, 'di1', 'while [ ! -s /tmp/w.status ]; do sleep 1; done; cat /tmp/w.status', { timeoutMs: 120_000 }), /\n0\r?\n/);
    assert.match(
      await runOnConsole(nubis, 'di1', 'nubis-tool disk-verify /dev/vda 6 9 && echo head-ok', { timeoutMs: 120_000 }),
      /head-ok/,
      'what the guest wrote during the mirror is on host-2',
    );
    assert.equal(
      md5Of(await runOnConsole(nubis, 'di1', regionSum(6, 18), { timeoutMs: 120_000 })),
      tailBefore,
      'what the guest wrote before the mirror is on host-2',
    );
    // The new overlay holds the guest's writes over the same image; the old one is gone.
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--force-share', '--output=json', overlayOn('host-2')], { encoding: 'utf8' })) as {
      'backing-filename': string;
    };
    assert.match(info['backing-filename'], /images\/tiny-disk\//);
    assert.ok(!existsSync(overlayOn('host-1')), 'the old overlay is gone from host-1');
    await nubis.cliJson(['vm', 'delete', 'di1']);
  });

  it('deletes what it made: VM, volume, pool folders', async () => {
    const busy = await nubis.cli(['volume', 'delete', 'local/lv1']);
    assert.match(busy.stderr, /used by VM\(s\) dv1/);
    await nubis.cliJson(['vm', 'delete', 'dv1']);
    await nubis.cli(['volume', 'delete', 'local/lv1']);
    assert.ok(!existsSync(fileOn('host-2', 'lv1')));
    await nubis.cli(['pool', 'delete', 'local']);
    assert.ok(!existsSync(join(nubis.dataDir, 'hosts', 'host-1', 'pools', 'local')));
    assert.deepEqual(
      (await nubis.cliJson<PoolView[]>(['pool', 'list'])).map((p) => p.name),
      ['shared'],
    );
  });
});
