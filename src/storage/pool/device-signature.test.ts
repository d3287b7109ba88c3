import assert from 'node:assert/strict';
import { mkdtemp, open, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { readDeviceSignature } from './device-signature.ts';
import { FileMemberDevice } from './member-device.ts';
import { encodeLabel, type PoolLabel } from './metadata-format.ts';

const MiB = 1024 * 1024;

describe('readDeviceSignature', () => {
  let dir: string;
  let counter = 0;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-signature-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A sparse 4 MiB file with `bytes` written at each offset, probed through a real member device. */
  async function probe(writes: Array<[number, Buffer | string]>, sizeBytes = 4 * MiB) {
    const path = join(dir, `dev-${counter++}.img`);
    await writeFile(path, '');
    await truncate(path, sizeBytes);
    const handle = await open(path, 'r+');
    try {
      for (const [offset, bytes] of writes) await handle.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes, 0, bytes.length, offset);
    } finally {
      await handle.close();
    }
    const device = await FileMemberDevice.open(path);
    try {
      return await readDeviceSignature(device);
    } finally {
      await device.close();
    }
  }

  const u16 = (value: number) => Buffer.from([value & 0xff, value >> 8]);
  const u32 = (value: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(value);
    return b;
  };

  it('finds nothing on a blank sparse file, a tiny one or an empty one', async () => {
    assert.equal(await probe([]), undefined);
    assert.equal(await probe([], 3000), undefined);
    assert.equal(await probe([], 0), undefined);
  });

  it('tells ext2, ext3 and ext4 apart by their feature flags', async () => {
    assert.equal((await probe([[1080, u16(0xef53)]]))?.description, 'an ext2 filesystem');
    assert.equal(
      (
        await probe([
          [1080, u16(0xef53)],
          [1024 + 0x5c, u32(0x4)],
        ])
      )?.description,
      'an ext3 filesystem',
    );
    // extents (0x40) in the incompatible features: ext4.
    assert.equal(
      (
        await probe([
          [1080, u16(0xef53)],
          [1024 + 0x5c, u32(0x4)],
          [1024 + 0x60, u32(0x42)],
        ])
      )?.description,
      'an ext4 filesystem',
    );
  });

  it('finds XFS, btrfs, LUKS and swap', async () => {
    assert.equal((await probe([[0, 'XFSB']]))?.kind, 'xfs');
    assert.equal((await probe([[65600, '_BHRfS_M']]))?.kind, 'btrfs');
    assert.equal((await probe([[0, Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe, 0, 2])]]))?.description, 'a LUKS encrypted volume');
    assert.equal((await probe([[4086, 'SWAPSPACE2']]))?.description, 'Linux swap space');
  });

  it('finds GPT, and MBR only with a used partition entry', async () => {
    assert.equal((await probe([[512, 'EFI PART']]))?.description, 'a GPT partition table');
    assert.equal(
      (
        await probe([
          [510, Buffer.from([0x55, 0xaa])],
          [446 + 4, Buffer.from([0x83])],
        ])
      )?.description,
      'an MBR partition table',
    );
    assert.equal(await probe([[510, Buffer.from([0x55, 0xaa])]]), undefined, 'a boot signature over four empty entries is no partition table');
  });

  it('finds LVM2 in any of the first four sectors, and md superblocks at the start and the end', async () => {
    assert.equal((await probe([[0, 'LABELONE']]))?.kind, 'lvm2');
    assert.equal((await probe([[1536, 'LABELONE']]))?.kind, 'lvm2');
    assert.equal((await probe([[4096, u32(0xa92b4efc)]]))?.kind, 'linux-raid', 'md 1.2');
    assert.equal((await probe([[4 * MiB - 8192, u32(0xa92b4efc)]]))?.kind, 'linux-raid', 'md 1.0');
    assert.equal((await probe([[4 * MiB - 65536, u32(0xa92b4efc)]]))?.kind, 'linux-raid', 'md 0.90');
  });

  it('names the Nubis pool a label belongs to, and still refuses a damaged label', async () => {
    const label: PoolLabel = {
      poolUuid: 'u-1',
      poolName: 'p1',
      memberIndex: 2,
      memberCount: 3,
      layout: 'raid5',
      chunkBytes: 65536,
      allocationUnitBytes: MiB,
      slotBytes: MiB,
      journalBytes: MiB,
      dataStartBytes: 4 * MiB,
      rows: 1,
      createdAt: new Date(0).toISOString(),
    };
    const found = await probe([[0, encodeLabel(label)]]);
    assert.deepEqual({ kind: found?.kind, pool: found?.pool, poolUuid: found?.poolUuid }, { kind: 'nubis-pool', pool: 'p1', poolUuid: 'u-1' });
    assert.match(found!.description, /member 2 of Nubis pool p1/);
    const damaged = encodeLabel(label);
    damaged[50] ^= 0xff;
    assert.equal((await probe([[0, damaged]]))?.description, 'a damaged Nubis pool label');
  });
});
