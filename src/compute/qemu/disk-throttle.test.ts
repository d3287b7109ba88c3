import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { blockIoThrottleArgs, checkDiskLimits } from './disk-throttle.ts';

describe('disk throttle', () => {
  it('turns limits into block_set_io_throttle arguments, every rate given (0: none), bursts with their length', () => {
    assert.deepEqual(blockIoThrottleArgs('dev', { iopsRead: 50, bytesPerSec: 1000, bytesPerSecBurst: 4000, burstSeconds: 5 }), {
      id: 'dev',
      iops: 0,
      iops_rd: 50,
      iops_wr: 0,
      bps: 1000,
      bps_rd: 0,
      bps_wr: 0,
      bps_max: 4000,
      bps_max_length: 5,
    });
    assert.deepEqual(
      blockIoThrottleArgs('dev', undefined),
      { id: 'dev', iops: 0, iops_rd: 0, iops_wr: 0, bps: 0, bps_rd: 0, bps_wr: 0 },
      'none lifts every limit',
    );
  });

  it('refuses what QEMU would refuse or what could never bind, naming the disk', () => {
    for (const [limits, message] of [
      [{ iops: 10, iopsWrite: 5 }, /vdb: give iops for reads and writes together/],
      [{ bytesPerSec: 10, bytesReadPerSec: 5 }, /vdb: give bytesPerSec/],
      [{ iopsBurst: 10 }, /needs an iops limit/],
      [{ bytesPerSec: 100, bytesPerSecBurst: 50 }, /below the bytes limit/],
      [{ iops: 10, burstSeconds: 3 }, /burstSeconds needs/],
      [{ iops: 0 }, /iops must be a whole number from 1/],
      [{ iops: 1.5 }, /iops must be a whole number/],
    ] as const) {
      assert.throws(() => checkDiskLimits(limits, 'vdb'), message);
    }
  });
});
