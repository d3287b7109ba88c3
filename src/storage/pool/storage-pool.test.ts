// Unit tests of the pool engine on sparse files: every layout, degraded members, rebuild, scrub,
// snapshots and clones, thin provisioning limits, bad input, corrupted metadata.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isNubisError } from '../../core/errors.ts';
import { decodeLabel, LABEL_BYTES } from './metadata-format.ts';
import type { MemberDevice } from './member-device.ts';
import type { RaidLayout } from './raid-array.ts';
import { StoragePool } from './storage-pool.ts';

const MiB = 1024 * 1024;
let dir: string;
let counter = 0;

async function devices(sizesMiB: number[]): Promise<string[]> {
  const paths: string[] = [];
  for (const size of sizesMiB) {
    const path = join(dir, `dev-${counter++}.img`);
    await writeFile(path, '');
    await truncate(path, size * MiB);
    paths.push(path);
  }
  return paths;
}

async function expectCode(promise: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isNubisError(error, code), `expected ${code}, got ${(error as Error).message}`);
    if (message) assert.match((error as Error).message, message);
    return true;
  });
}

/** Writes a recognisable pattern at several offsets (aligned and not) and returns a checker. */
async function writePattern(pool: StoragePool, volume: string, sizeBytes: number): Promise<(pool: StoragePool) => Promise<void>> {
  const device = pool.volumeDevice(volume);
  const writes: Array<[number, Buffer]> = [
    [0, randomBytes(MiB)],
    [3 * MiB + 512, randomBytes(100_000)],
    [sizeBytes - 4096, randomBytes(4096)],
    [5 * MiB + 123, randomBytes(777)],
  ];
  await Promise.all(writes.map(([position, data]) => device.write(data, position, { fua: false })));
  await device.flush();
  return async (reopened: StoragePool) => {
    const d = reopened.volumeDevice(volume);
    for (const [position, data] of writes) {
      const back = Buffer.alloc(data.length);
      await d.read(back, position);
      assert.ok(back.equals(data), `bytes at ${position} read back as written`);
    }
    const hole = Buffer.alloc(4096, 1);
    await d.read(hole, 8 * MiB);
    assert.ok(
      hole.every((b) => b === 0),
      'never-written space reads as zeroes',
    );
  };
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nubis-pool-unit-'));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('StoragePool layouts', () => {
  const cases: Array<[RaidLayout, number[]]> = [
    ['raid0', [40, 48]],
    ['raid1', [40, 56]],
    ['raid5', [40, 44, 48]],
    ['raid6', [40, 40, 44, 48]],
    ['raid10', [40, 40, 48, 48]],
  ];
  for (const [layout, sizes] of cases) {
    it(`${layout}: data reads back, also after reopening`, async () => {
      const paths = await devices(sizes);
      const pool = await StoragePool.create({ name: `p-${layout}`, layout, devices: paths, allocationUnitBytes: 256 * 1024 });
      const status = pool.status();
      assert.equal(status.state, 'online');
      assert.ok(status.wasteBytes >= (Math.max(...sizes) - Math.min(...sizes)) * MiB, 'waste of unequal members is reported');
      await pool.createVolume('v', 16 * MiB);
      const check = await writePattern(pool, 'v', 16 * MiB);
      await check(pool);
      await pool.close();
      const reopened = await StoragePool.open({ devices: [...paths].reverse() });
      await check(reopened);
      await reopened.close();
    });
  }
});

describe('StoragePool redundancy', () => {
  it('raid5 serves and takes writes with a member failed, rebuilds, then survives losing another', async () => {
    const paths = await devices([40, 40, 40]);
    const pool = await StoragePool.create({ name: 'r5', layout: 'raid5', devices: paths, allocationUnitBytes: 256 * 1024 });
    await pool.createVolume('v', 16 * MiB);
    const check = await writePattern(pool, 'v', 16 * MiB);
    await pool.offlineMember(1);
    assert.equal(pool.status().state, 'degraded');
    await check(pool);
    const later = randomBytes(300_000);
    await pool.volumeDevice('v').write(later, 10 * MiB + 5, { fua: true });
    const [spare] = await devices([44]);
    const progress: number[] = [];
    await pool.replaceMember(1, spare!, { onProgress: (p) => progress.push(p.doneBytes) });
    assert.equal(pool.status().state, 'online');
    assert.ok(progress.length > 0 && progress.at(-1)! > 0, 'rebuild reports progress');
    await pool.offlineMember(0);
    await check(pool);
    const back = Buffer.alloc(later.length);
    await pool.volumeDevice('v').read(back, 10 * MiB + 5);
    assert.ok(back.equals(later));
    await pool.close();
  });

  it('serves the event loop between allocation units while it rebuilds a member', async () => {
    // Members in memory: like page-cache I/O done inline, every call completes without a turn of
    // the event loop, so clients (sockets, timers) only get one if the rebuild gives it.
    const memory = new Map<string, Buffer>();
    const openDevice = async (path: string): Promise<MemberDevice> => {
      if (!memory.has(path)) memory.set(path, Buffer.alloc(40 * MiB));
      const bytes = memory.get(path)!;
      return {
        path,
        sizeBytes: bytes.length,
        read: async (buffer, offset, length, position) => void bytes.copy(buffer, offset, position, position + length),
        write: async (buffer, offset, length, position) => void buffer.copy(bytes, position, offset, offset + length),
        writeDurable: async (buffer, offset, length, position) => void buffer.copy(bytes, position, offset, offset + length),
        flush: async () => undefined,
        close: async () => undefined,
      };
    };
    const pool = await StoragePool.create({ name: 'turns', layout: 'raid5', devices: ['m0', 'm1', 'm2'], allocationUnitBytes: 256 * 1024, openDevice });
    await pool.createVolume('v', 16 * MiB);
    await pool.volumeDevice('v').write(randomBytes(16 * MiB), 0, { fua: true });
    await pool.offlineMember(1);
    let turns = 0;
    let counting = true;
    const count = () => {
      turns++;
      if (counting) setImmediate(count);
    };
    setImmediate(count);
    await pool.replaceMember(1, 'spare');
    counting = false;
    const allocationUnits = (16 * MiB) / (256 * 1024);
    assert.ok(turns >= allocationUnits, `${turns} turns of the event loop during a rebuild of ${allocationUnits} allocation units`);
    await pool.close();
  });

  it('an interrupted rebuild leaves the member out after a restart and resumes on the same device', async () => {
    const paths = await devices([40, 40, 40]);
    const pool = await StoragePool.create({ name: 'resume', layout: 'raid5', devices: paths, allocationUnitBytes: 256 * 1024 });
    await pool.createVolume('v', 16 * MiB);
    const check = await writePattern(pool, 'v', 16 * MiB);
    await pool.offlineMember(2);
    const [spare] = await devices([40]);
    const abort = new AbortController();
    await assert.rejects(
      pool.replaceMember(2, spare!, { signal: abort.signal, onProgress: (p) => p.doneBytes > 0 && abort.abort() }),
      (error: unknown) => (error as Error).name === 'AbortError',
    );
    await pool.close();
    const reopened = await StoragePool.open({ devices: [...paths, spare!] });
    assert.equal(reopened.status().members[2]!.state, 'faulted', 'a half-rebuilt member is not trusted');
    await check(reopened);
    await reopened.replaceMember(2, spare!);
    assert.equal(reopened.status().state, 'online');
    await reopened.offlineMember(0);
    await check(reopened);
    await reopened.close();
  });

  it('raid6 serves data with two members missing after a restart', async () => {
    const paths = await devices([40, 40, 40, 40, 40]);
    const pool = await StoragePool.create({ name: 'r6', layout: 'raid6', devices: paths, allocationUnitBytes: 256 * 1024 });
    await pool.createVolume('v', 16 * MiB);
    const check = await writePattern(pool, 'v', 16 * MiB);
    await pool.close();
    await rm(paths[1]!);
    await rm(paths[3]!);
    const degraded = await StoragePool.open({ devices: paths });
    assert.equal(degraded.status().state, 'degraded');
    await check(degraded);
    await degraded.close();
  });

  it('scrub finds and repairs silent corruption from redundancy; raid0 reports it as an I/O error', async () => {
    for (const layout of ['raid1', 'raid5', 'raid6', 'raid0'] as const) {
      const paths = await devices(layout === 'raid1' ? [40, 40] : layout === 'raid0' ? [40] : layout === 'raid5' ? [40, 40, 40] : [40, 40, 40, 40]);
      const pool = await StoragePool.create({ name: `s-${layout}`, layout, devices: paths, allocationUnitBytes: 256 * 1024 });
      await pool.createVolume('v', 16 * MiB);
      const check = await writePattern(pool, 'v', 16 * MiB);
      await pool.close();
      // Flip bytes in the first data row of member 0, behind the pool's back.
      const label = decodeLabel((await readFile(paths[0]!)).subarray(0, LABEL_BYTES))!;
      const handle = await open(paths[0]!, 'r+');
      await handle.write(randomBytes(8192), 0, 8192, label.dataStartBytes + 4096);
      await handle.close();
      const reopened = await StoragePool.open({ devices: paths });
      if (layout === 'raid0') {
        await expectCode(reopened.volumeDevice('v').read(Buffer.alloc(MiB), 0), 'VOLUME_IO_ERROR');
        const report = await reopened.scrub();
        assert.ok(report.unrepairedBlocks > 0);
      } else {
        const report = await reopened.scrub();
        assert.ok(report.checksumErrors + report.redundancyFixes > 0, `${layout}: scrub found the damage`);
        assert.equal(report.unrepairedBlocks, 0);
        await check(reopened);
        const second = await reopened.scrub();
        assert.equal(second.checksumErrors + second.redundancyFixes, 0, `${layout}: nothing left to repair`);
      }
      await reopened.close();
    }
  });
});

describe('StoragePool volumes', () => {
  it('snapshots keep their content while the origin changes; clones are writable and independent', async () => {
    const paths = await devices([48]);
    const pool = await StoragePool.create({ name: 'snaps', layout: 'raid0', devices: paths, allocationUnitBytes: 256 * 1024 });
    await pool.createVolume('base', 8 * MiB);
    const base = pool.volumeDevice('base');
    const first = randomBytes(2 * MiB);
    await base.write(first, 0, { fua: false });
    const used = pool.status().allocatedBytes;
    await pool.snapshot('base', 'snap1');
    assert.equal(pool.status().allocatedBytes, used, 'a snapshot takes no space');
    await base.write(Buffer.alloc(4096, 0xee), 4096, { fua: false });
    await base.write(Buffer.alloc(700, 0xdd), 3000, { fua: false });
    const snapshotBytes = Buffer.alloc(2 * MiB);
    await pool.volumeDevice('snap1').read(snapshotBytes, 0);
    assert.ok(snapshotBytes.equals(first), 'snapshot unchanged');
    await expectCode(pool.volumeDevice('snap1').write(Buffer.alloc(512), 0, { fua: false }), 'VOLUME_READ_ONLY');
    await pool.clone('snap1', 'clone1');
    await pool.volumeDevice('clone1').write(Buffer.alloc(512, 0x77), 0, { fua: true });
    const c = Buffer.alloc(512);
    await pool.volumeDevice('clone1').read(c, 0);
    assert.ok(c.every((b) => b === 0x77));
    await pool.volumeDevice('snap1').read(snapshotBytes, 0);
    assert.ok(snapshotBytes.equals(first), 'snapshot unchanged by its clone');
    await pool.close();
    const reopened = await StoragePool.open({ devices: paths });
    await reopened.volumeDevice('snap1').read(snapshotBytes, 0);
    assert.ok(snapshotBytes.equals(first), 'snapshot unchanged after restart');
    const b = Buffer.alloc(4096);
    await reopened.volumeDevice('base').read(b, 4096);
    assert.ok(b.every((x) => x === 0xee));
    // Deleting the origin and the clone returns only what the snapshot does not hold.
    await reopened.deleteVolume('base');
    await reopened.deleteVolume('clone1');
    await reopened.volumeDevice('snap1').read(snapshotBytes, 0);
    assert.ok(snapshotBytes.equals(first));
    await reopened.deleteVolume('snap1');
    await reopened.commit();
    assert.equal(reopened.status().allocatedBytes, 0, 'all space returned');
    await reopened.close();
  });

  it('a full pool answers POOL_FULL to the writer and leaves other volumes intact; trim returns space', async () => {
    const paths = await devices([24]);
    const pool = await StoragePool.create({ name: 'full', layout: 'raid0', devices: paths, allocationUnitBytes: 256 * 1024 });
    const usable = pool.status().sizeBytes;
    await pool.createVolume('keep', 4 * MiB);
    const keep = randomBytes(MiB);
    await pool.volumeDevice('keep').write(keep, 0, { fua: true });
    await pool.createVolume('hog', 4 * usable);
    assert.ok(pool.status().overcommitRatio > 1);
    assert.ok(pool.status().warnings.some((w) => /overcommitted/.test(w)));
    const hog = pool.volumeDevice('hog');
    let full = false;
    for (let position = 0; position < 4 * usable; position += MiB) {
      try {
        await hog.write(Buffer.alloc(MiB, 0x42), position, { fua: false });
      } catch (error) {
        assert.ok(isNubisError(error, 'POOL_FULL'));
        full = true;
        break;
      }
    }
    assert.ok(full, 'the pool filled up');
    const back = Buffer.alloc(MiB);
    await pool.volumeDevice('keep').read(back, 0);
    assert.ok(back.equals(keep), 'other volume intact');
    await hog.trim(0, 4 * MiB, { fua: true });
    await hog.write(Buffer.alloc(MiB, 0x43), 0, { fua: true });
    await pool.close();
  });

  it('refuses bad input with clear errors and changes nothing', async () => {
    const [a, b] = await devices([40, 40]);
    await expectCode(
      StoragePool.create({ name: 'bad', layout: 'raid5', devices: [a!, b!] }),
      'POOL_TOO_FEW_DEVICES',
      /raid5 pool needs at least 3 devices; 2 given/,
    );
    const [tiny] = await devices([2]);
    await expectCode(StoragePool.create({ name: 'bad', layout: 'raid1', devices: [a!, tiny!] }), 'POOL_DEVICE_TOO_SMALL', /dev-.*\.img has 2 MiB/);
    await expectCode(StoragePool.create({ name: 'bad', layout: 'raid1', devices: [a!, a!] }), 'POOL_DEVICE_DUPLICATE');
    await expectCode(StoragePool.create({ name: 'bad', layout: 'raid7' as RaidLayout, devices: [a!, b!] }), 'POOL_LAYOUT_INVALID');
    await expectCode(StoragePool.create({ name: 'bad pool!', layout: 'raid1', devices: [a!, b!] }), 'POOL_NAME_INVALID');
    assert.ok(
      (await readFile(a!)).subarray(0, 8).every((x) => x === 0),
      'failed creates wrote nothing',
    );
    const pool = await StoragePool.create({ name: 'good', layout: 'raid1', devices: [a!, b!] });
    await expectCode(StoragePool.create({ name: 'other', layout: 'raid1', devices: [b!, tiny!] }), 'POOL_DEVICE_IN_USE', /already belongs to pool good/);
    await pool.createVolume('v', 8 * MiB);
    await expectCode(pool.createVolume('v', 8 * MiB), 'VOLUME_EXISTS');
    await expectCode(pool.createVolume('w', 1000), 'VOLUME_SIZE_INVALID');
    await pool.volumeDevice('v').write(Buffer.alloc(4096, 1), 6 * MiB, { fua: true });
    await expectCode(pool.resizeVolume('v', 2 * MiB), 'VOLUME_SHRINK_BELOW_DATA', /holds data at 6 MiB/);
    assert.equal(pool.getVolume('v').sizeBytes, 8 * MiB, 'size unchanged');
    await pool.resizeVolume('v', 32 * MiB);
    assert.equal(pool.getVolume('v').sizeBytes, 32 * MiB);
    assert.deepEqual(
      pool.listVolumes().map((v) => v.name),
      ['v'],
    );
    await pool.close();
  });

  it('opens read-only with a reason when the metadata is corrupt', async () => {
    const paths = await devices([40]);
    const pool = await StoragePool.create({ name: 'meta', layout: 'raid0', devices: paths });
    await pool.createVolume('v', 8 * MiB);
    await pool.close();
    const label = decodeLabel((await readFile(paths[0]!)).subarray(0, LABEL_BYTES))!;
    const handle = await open(paths[0]!, 'r+');
    for (const slot of [0, 1]) await handle.write(randomBytes(64), 0, 64, LABEL_BYTES + slot * label.slotBytes + 100);
    await handle.close();
    const broken = await StoragePool.open({ devices: paths });
    assert.equal(broken.status().readOnly, true);
    assert.match(broken.status().readOnlyReason!, /corrupt/);
    await expectCode(broken.createVolume('x', 8 * MiB), 'POOL_READ_ONLY');
    await broken.close();
  });
});
