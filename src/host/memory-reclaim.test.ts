import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decideReclaim, hostPressure, type ReclaimGuest } from './memory-reclaim.ts';

const SHORT = { totalMb: 16_000, availableMb: 2_000 };
const ROOMY = { totalMb: 16_000, availableMb: 8_000 };
const BETWEEN = { totalMb: 16_000, availableMb: 4_000 };

/** An idle 1 GiB guest using about 100 MiB, its kernel keeping 40 MiB out of MemTotal. */
const idle: ReclaimGuest = { id: 'vm-1', maxMb: 1024, targetMb: 1024, reclaim: true, guest: { totalMb: 984, availableMb: 884 } };

describe('hostPressure', () => {
  it('is short under 20% available, roomy over 30%, and holds in between', () => {
    assert.equal(hostPressure(SHORT), 'short');
    assert.equal(hostPressure(ROOMY), 'roomy');
    assert.equal(hostPressure(BETWEEN), 'hold');
  });

  it('is short when tasks stall on memory, even with memory available', () => {
    assert.equal(hostPressure({ ...ROOMY, stallPercent: 12.5 }), 'short');
    assert.equal(hostPressure({ ...ROOMY, stallPercent: 2 }), 'roomy');
  });
});

describe('decideReclaim', () => {
  it('balloons an idle guest down one step at a time while the host is short', () => {
    const [step] = decideReclaim(SHORT, [idle]);
    assert.equal(step.targetMb, 1024 - 128, 'one step of 128 MiB');
    const [next] = decideReclaim(SHORT, [{ ...idle, reclaimTargetMb: 1024 - 128 }]);
    assert.equal(next.targetMb, 1024 - 256);
  });

  it('stops at what the guest uses plus headroom and its kernel, never below the floor', () => {
    // uses 100 MiB + 64 headroom + 40 kernel = 204
    const at300 = { ...idle, reclaimTargetMb: 300, guest: { totalMb: 260, availableMb: 160 } };
    assert.equal(decideReclaim(SHORT, [at300])[0].targetMb, 204);
    const at210 = { ...idle, reclaimTargetMb: 210, guest: { totalMb: 170, availableMb: 70 } };
    assert.deepEqual(decideReclaim(SHORT, [at210]), [], 'within the smallest change');
    const tiny = { ...idle, reclaimTargetMb: 200, guest: { totalMb: 160, availableMb: 150 } };
    assert.equal(decideReclaim(SHORT, [tiny])[0].targetMb, 128, 'an eighth of its 1 GiB maximum');
  });

  it('leaves guests alone without pressure, and those that did not ask for reclaim', () => {
    assert.deepEqual(decideReclaim(BETWEEN, [idle]), []);
    assert.deepEqual(decideReclaim(ROOMY, [idle]), []);
    assert.deepEqual(decideReclaim(SHORT, [{ ...idle, reclaim: false }]), []);
  });

  it('never goes above what the owner set, nor takes a guest below its current use', () => {
    const busy = { ...idle, targetMb: 512, guest: { totalMb: 472, availableMb: 80 } };
    assert.deepEqual(decideReclaim(SHORT, [busy]), [], 'uses 392 MiB: 392 + 98 + 40 is more than 512 - 16');
  });

  it('gives memory back once the host has room, a step at a time up to the owner target', () => {
    assert.equal(decideReclaim(ROOMY, [{ ...idle, reclaimTargetMb: 300 }])[0].targetMb, 428);
    assert.equal(decideReclaim(ROOMY, [{ ...idle, reclaimTargetMb: 1000 }])[0].targetMb, 1024);
    assert.deepEqual(decideReclaim(BETWEEN, [{ ...idle, reclaimTargetMb: 300 }]), [], 'holds between the thresholds');
  });

  it('gives memory back to a guest running low, even while the host is short', () => {
    const low = { ...idle, reclaimTargetMb: 300, guest: { totalMb: 260, availableMb: 20 } };
    const [step] = decideReclaim(SHORT, [low]);
    assert.equal(step.targetMb, 428);
    assert.match(step.why, /only 20 MiB available/);
  });

  it('gives everything back to a guest whose statistics are stale or that turned reclaim off', () => {
    const { guest: _stale, ...blind } = { ...idle, reclaimTargetMb: 300 };
    assert.equal(decideReclaim(SHORT, [blind])[0].targetMb, 1024);
    assert.equal(decideReclaim(SHORT, [{ ...idle, reclaimTargetMb: 300, reclaim: false }])[0].targetMb, 1024);
    assert.deepEqual(decideReclaim(SHORT, [{ ...idle, reclaim: false }]), [], 'nothing to give back');
  });
});
