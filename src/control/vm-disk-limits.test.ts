import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { VmSpec } from '../compute/vm-spec.ts';
import { diskIdOfDevice, diskLimitChanges, diskLimitFields, withDiskLimits } from './vm-disk-limits.ts';

const spec = {
  disks: [
    { id: 'disk0', kind: 'nbd', socketPath: '/run/nbd.sock', exportName: 'p/a' },
    { id: 'disk1', kind: 'nbd', socketPath: '/run/nbd.sock', exportName: 'p/b', limits: { iops: 10 } },
  ],
} as unknown as VmSpec;

describe('VM disk limits between the API and the spec', () => {
  it('names disks by guest device: vda is disk0, vdb disk1', () => {
    assert.equal(diskIdOfDevice('vdb', 'v'), 'disk1');
    assert.throws(() => diskIdOfDevice('sda', 'v'), /not a disk device of VM v/);
    assert.deepEqual(diskLimitFields(spec), { diskLimits: { vdb: { iops: 10 } } });
  });

  it('sets a disk its limits whole, lifts them with null, and refuses a disk the VM lacks or limits that conflict', () => {
    const changes = diskLimitChanges(spec, { vda: { bytesPerSec: 100 }, vdb: null }, 'v');
    assert.deepEqual(changes, [
      { diskId: 'disk0', limits: { bytesPerSec: 100 } },
      { diskId: 'disk1', limits: {} },
    ]);
    assert.deepEqual(diskLimitFields(withDiskLimits(spec, changes)), { diskLimits: { vda: { bytesPerSec: 100 } } });
    assert.throws(() => diskLimitChanges(spec, { vdc: { iops: 1 } }, 'v'), /VM v has no disk vdc/);
    assert.throws(() => diskLimitChanges(spec, { vda: { iops: 1, iopsRead: 1 } }, 'v'), /IO limits of disk vda/);
  });
});
