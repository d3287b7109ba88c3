import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ASSUMED_LINK_BYTES_PER_SEC, predictMigrationCost } from './migration-cost.ts';
import { predictPrecopy } from './precopy-model.ts';

const gigabit = ASSUMED_LINK_BYTES_PER_SEC;
const auto = { downtimeLimitMs: 20, maxDowntimeLimitMs: 300 };

describe('migration cost', () => {
  it('predicts an idle guest as one pass over its memory at the link rate', () => {
    const cost = predictMigrationCost({ memoryMb: 1024, dirtyRateBytesPerSec: 0, linkBytesPerSec: gigabit, diskBytes: 0, ...auto });
    assert.equal(cost.converges, true);
    // The model's time is whole milliseconds: the bytes are within a millisecond of the link of the memory size.
    assert.ok(Math.abs(cost.bytes! - 2 ** 30) <= gigabit / 1000, String(cost.bytes));
    assert.equal(cost.timeMs, Math.round((2 ** 30 / gigabit) * 1000));
  });

  it('is the pre-copy model’s time, with every pass sent at the link rate, and the local disks before it', () => {
    const input = { memoryMb: 2048, dirtyRateBytesPerSec: 20 * 2 ** 20, linkBytesPerSec: gigabit, ...auto };
    const model = predictPrecopy({
      remainingBytes: 2 * 2 ** 30,
      scanRateBytesPerSec: gigabit,
      dirtyRateBytesPerSec: input.dirtyRateBytesPerSec,
      bandwidthBytesPerSec: gigabit,
      memoryBytes: 2 * 2 ** 30,
      downtimeLimitMs: 20,
      maxDowntimeLimitMs: 300,
      pass: 1,
    });
    const memoryOnly = predictMigrationCost({ ...input, diskBytes: 0 });
    assert.equal(memoryOnly.timeMs, model.remainingTimeMs);
    assert.ok(memoryOnly.bytes! > 2 * 2 ** 30, 'the dirtied pages are sent again');
    const withDisk = predictMigrationCost({ ...input, diskBytes: 10 * 2 ** 30 });
    assert.equal(withDisk.bytes, memoryOnly.bytes! + 10 * 2 ** 30);
    assert.equal(withDisk.timeMs, memoryOnly.timeMs! + Math.round((10 * 2 ** 30 * 1000) / gigabit));
  });

  it('gives no time or bytes for a guest that dirties memory faster than the link carries it', () => {
    const cost = predictMigrationCost({ memoryMb: 1024, dirtyRateBytesPerSec: 2 * gigabit, linkBytesPerSec: gigabit, diskBytes: 0, ...auto });
    assert.deepEqual([cost.converges, cost.lambda, cost.timeMs, cost.bytes], [false, 2, undefined, undefined]);
  });
});
