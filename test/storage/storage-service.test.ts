// The storage service with real NBD peers: every layout written and read back by qemu-io through
// our NBD server, after a restart, with a member failed (every redundant layout), after a rebuild, after a scrub that
// repaired injected corruption; ENOSPC reaches the writer; nbdinfo sees thin holes.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { isNubisError } from '../../src/core/errors.ts';
import { decodeLabel, LABEL_BYTES } from '../../src/storage/pool/metadata-format.ts';
import { StorageService, type RaidLayout } from '../../src/storage/service.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;

/** qemu-io commands against `uri`; fails on any verification or I/O error. */
async function qemuIo(uri: string, commands: string[], readOnly = false): Promise<string> {
  const { stdout } = await run('qemu-io', [...(readOnly ? ['-r'] : []), '-f', 'raw', uri, ...commands.flatMap((c) => ['-c', c])]);
  assert.doesNotMatch(stdout, /Pattern verification failed|failed:/, stdout);
  return stdout;
}

const WRITE_PATTERNS = ['write -P 0xab 0 1M', 'write -f -P 0xcd 5M 64k', 'write -P 0x5e 2100000 5000', 'flush'];
const READ_PATTERNS = ['read -P 0xab 0 1M', 'read -P 0xcd 5M 64k', 'read -P 0x5e 2100000 5000', 'read -P 0 8M 1M'];

describe('storage service over NBD', () => {
  let dir: string;
  let service: StorageService;
  let socket: string;
  const poolsDir = () => join(dir, 'pools');

  async function device(name: string, sizeMiB: number): Promise<string> {
    const path = join(dir, name);
    await writeFile(path, '');
    await truncate(path, sizeMiB * MiB);
    return path;
  }

  async function restart(): Promise<void> {
    await service.close();
    ({ service } = await StorageService.start({ poolsDir: poolsDir(), socketPath: socket }));
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-storage-svc-'));
    socket = join(dir, 'nbd.sock');
    ({ service } = await StorageService.start({ poolsDir: poolsDir(), socketPath: socket }));
  });

  after(async () => {
    await service?.close();
    await rm(dir, { recursive: true, force: true });
  });

  const layouts: Array<[RaidLayout, number[]]> = [
    ['raid0', [40, 48]],
    ['raid1', [40, 48]],
    ['raid5', [40, 44, 48]],
    ['raid6', [40, 40, 44, 48]],
    ['raid10', [40, 40, 40, 48]],
  ];

  it('every layout: qemu-io data reads back, also after a restart', async () => {
    for (const [layout, sizes] of layouts) {
      const devices = await Promise.all(sizes.map((s, i) => device(`${layout}-${i}.img`, s)));
      await service.createPool({ name: layout, layout, devices, allocationUnit: '256K' });
      await service.createVolume(layout, 'disk', '16M');
      await qemuIo(service.exportUri(layout, 'disk'), [...WRITE_PATTERNS, ...READ_PATTERNS]);
    }
    await restart();
    for (const [layout] of layouts) await qemuIo(service.exportUri(layout, 'disk'), READ_PATTERNS);
  });

  it('raid1, raid6 and raid10 serve the same bytes with a member failed, and take writes', async () => {
    for (const layout of ['raid1', 'raid6', 'raid10'] as const) {
      await service.offlineMember(layout, 0);
      assert.equal(service.getPool(layout).state, 'degraded');
      await qemuIo(service.exportUri(layout, 'disk'), [...READ_PATTERNS, 'write -P 0x42 12M 128k', 'read -P 0x42 12M 128k']);
    }
  });

  it('nbdinfo sees base:allocation with holes in a thin volume', async () => {
    const { stdout } = await run('nbdinfo', ['--map', service.exportUri('raid1', 'disk')]);
    assert.match(stdout, /hole,zero/);
    assert.match(stdout, /data/);
  });

  it('raid5: reads with a failed member, rebuild onto a new device, scrub repairs injected corruption', async () => {
    const uri = service.exportUri('raid5', 'disk');
    await service.offlineMember('raid5', 2);
    assert.equal(service.getPool('raid5').state, 'degraded');
    await qemuIo(uri, [...READ_PATTERNS, 'write -P 0x77 9M 256k', 'read -P 0x77 9M 256k']);
    const spare = await device('raid5-spare.img', 44);
    const progress: number[] = [];
    const status = await service.replaceMember('raid5', 2, spare, { onProgress: (p) => progress.push(p.doneBytes), maxBytesPerSec: 64 * MiB });
    assert.equal(status.state, 'online');
    assert.ok(progress.length > 0);
    await service.offlineMember('raid5', 0);
    await qemuIo(uri, [...READ_PATTERNS, 'read -P 0x77 9M 256k']);
    // Member 0 stays out after a restart (its data may be stale): replace it, then rot a member.
    await restart();
    assert.equal(service.getPool('raid5').state, 'degraded');
    await service.replaceMember('raid5', 0, await device('raid5-spare2.img', 40));
    assert.equal(service.getPool('raid5').state, 'online');
    const members = service.getPool('raid5').members;
    const victim = members[1]!.path;
    const label = decodeLabel((await readFile(victim)).subarray(0, LABEL_BYTES))!;
    await service.close();
    const handle = await open(victim, 'r+');
    await handle.write(randomBytes(64 * 1024), 0, 64 * 1024, label.dataStartBytes);
    await handle.close();
    ({ service } = await StorageService.start({ poolsDir: poolsDir(), socketPath: socket }));
    const report = await service.scrubPool('raid5');
    assert.ok(report.checksumErrors + report.redundancyFixes > 0, 'scrub found the rot');
    assert.equal(report.unrepairedBlocks, 0);
    assert.ok(service.getPool('raid5').members[1]!.checksumErrors > 0, 'the rotten member is blamed');
    await qemuIo(uri, [...READ_PATTERNS, 'read -P 0x77 9M 256k']);
  });

  it('snapshots keep their content through NBD while the origin changes', async () => {
    await service.snapshotVolume('raid6', 'disk', 'before');
    await qemuIo(service.exportUri('raid6', 'disk'), ['write -P 0x99 0 1M']);
    await qemuIo(service.exportUri('raid6', 'before'), ['read -P 0xab 0 1M'], true);
    await service.cloneVolume('raid6', 'before', 'copy');
    await qemuIo(service.exportUri('raid6', 'copy'), ['read -P 0xab 0 1M', 'write -P 0x11 0 4k', 'read -P 0x11 0 4k']);
    await qemuIo(service.exportUri('raid6', 'before'), ['read -P 0xab 0 1M'], true);
    const { stderr } = await run('qemu-io', ['-f', 'raw', service.exportUri('raid6', 'before'), '-c', 'write -P 1 0 4k']).catch((e) => e);
    assert.match(String(stderr), /Operation not permitted|read-only|Permission denied/i);
  });

  it('a full pool returns ENOSPC to the writer and never harms other volumes', async () => {
    const devices = [await device('tiny-0.img', 16)];
    const pool = await service.createPool({ name: 'tiny', layout: 'raid0', devices, allocationUnit: '256K' });
    await service.createVolume('tiny', 'keep', '2M');
    await qemuIo(service.exportUri('tiny', 'keep'), ['write -P 0x3c 0 1M', 'flush']);
    await service.createVolume('tiny', 'big', pool.sizeBytes * 2);
    const result = await run('qemu-io', ['-f', 'raw', service.exportUri('tiny', 'big'), '-c', `write -P 0x1 0 ${pool.sizeBytes + 4 * MiB}`]).catch((e) => e);
    assert.match(`${result.stdout}${result.stderr}`, /No space left on device/);
    await qemuIo(service.exportUri('tiny', 'keep'), ['read -P 0x3c 0 1M']);
  });

  it('bad input fails with a clear NubisError and changes nothing', async () => {
    const [a, b] = [await device('bad-0.img', 40), await device('bad-1.img', 40)];
    const expect = async (promise: Promise<unknown>, code: string, pattern: RegExp) => {
      await assert.rejects(promise, (error: unknown) => isNubisError(error, code) && pattern.test((error as Error).message));
    };
    await expect(service.createPool({ name: 'x', layout: 'raid5', devices: [a, b] }), 'POOL_TOO_FEW_DEVICES', /raid5 pool needs at least 3 devices/);
    await expect(service.createPool({ name: 'raid1', layout: 'raid1', devices: [a, b] }), 'POOL_EXISTS', /raid1 already exists/);
    const used = service.getPool('raid1').members[0]!.path;
    await expect(service.createPool({ name: 'y', layout: 'raid1', devices: [a, used] }), 'POOL_DEVICE_IN_USE', /already belongs to pool raid1/);
    await expect(service.createVolume('raid1', 'disk', '1G'), 'VOLUME_EXISTS', /already has a volume named disk/);
    await expect(service.createVolume('raid1', 'other', '20X'), 'VOLUME_SIZE_INVALID', /"20X" does not parse/);
    await expect(service.resizeVolume('raid1', 'disk', '1M'), 'VOLUME_SHRINK_BELOW_DATA', /holds data at/);
    assert.equal(service.getVolume('raid1', 'disk').sizeBytes, 16 * MiB);
    assert.deepEqual(
      service.listPools().map((p) => p.name),
      ['raid0', 'raid1', 'raid10', 'raid5', 'raid6', 'tiny'],
    );
    assert.ok((await readFile(a)).subarray(0, 8).every((x) => x === 0));
    await expect(StorageService.start({ poolsDir: poolsDir() }), 'POOL_IN_USE', /served by process \d+ already/);
  });
});
