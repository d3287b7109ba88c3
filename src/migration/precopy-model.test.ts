import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { downtimeTargetForPass, predictPostcopyMs, predictPrecopy, qemuDowntimeLimitFor, RateMeter } from './precopy-model.ts';

const MiB = 2 ** 20;

describe('pre-copy model', () => {
  it('an idle guest converges after the first pass, its time set by how fast the pass scans memory', () => {
    const p = predictPrecopy({
      remainingBytes: 200 * MiB,
      scanRateBytesPerSec: 400 * MiB,
      dirtyRateBytesPerSec: 0,
      bandwidthBytesPerSec: 100 * MiB,
      memoryBytes: 256 * MiB,
      downtimeLimitMs: 20,
    });
    assert.equal(p.converges, true);
    assert.equal(p.lambda, 0);
    assert.equal(p.remainingTimeMs, 500);
    assert.equal(p.downtimeMs, 0);
  });

  it('a dirtying guest takes geometrically shrinking passes while lambda < 1', () => {
    // lambda 0.5: 1 s first pass leaves 50 MiB dirty (0.5 s), then 25 MiB (0.25 s), ... until a pass fits 100 ms.
    const p = predictPrecopy({
      remainingBytes: 100 * MiB,
      scanRateBytesPerSec: 100 * MiB,
      dirtyRateBytesPerSec: 50 * MiB,
      bandwidthBytesPerSec: 100 * MiB,
      memoryBytes: 1024 * MiB,
      downtimeLimitMs: 100,
    });
    assert.equal(p.lambda, 0.5);
    assert.equal(p.converges, true);
    assert.equal(p.passes, 4); // 0.5 s, 0.25 s, 0.125 s, then 62.5 ms fits
    assert.equal(p.remainingTimeMs, 1000 + 500 + 250 + 125 + 63);
    assert.equal(p.downtimeMs, 63);
  });

  it("follows auto's widening target: tight for two passes, then doubled up to the maximum", () => {
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6, 7].map((pass) => downtimeTargetForPass(20, 300, pass)),
      [20, 20, 40, 80, 160, 300, 300],
    );
    // lambda 0.5 after 1 s of first pass: passes of 500, 250, 125, 62.5, 31, 16 ms. At a fixed
    // 20 ms the 16 ms one is the stop-and-copy; widened, 62.5 ms already fits (target 160 ms).
    const fixed = predictPrecopy({
      remainingBytes: 100 * MiB,
      scanRateBytesPerSec: 100 * MiB,
      dirtyRateBytesPerSec: 50 * MiB,
      bandwidthBytesPerSec: 100 * MiB,
      memoryBytes: 1024 * MiB,
      downtimeLimitMs: 20,
    });
    const widened = predictPrecopy({
      remainingBytes: 100 * MiB,
      scanRateBytesPerSec: 100 * MiB,
      dirtyRateBytesPerSec: 50 * MiB,
      bandwidthBytesPerSec: 100 * MiB,
      memoryBytes: 1024 * MiB,
      downtimeLimitMs: 20,
      maxDowntimeLimitMs: 300,
    });
    assert.equal(fixed.passes, 6);
    assert.equal(widened.passes, 4);
    assert.equal(widened.downtimeMs, 63);
  });

  it('a guest dirtying faster than the link never converges', () => {
    const p = predictPrecopy({
      remainingBytes: 100 * MiB,
      scanRateBytesPerSec: 20 * MiB,
      dirtyRateBytesPerSec: 25 * MiB,
      bandwidthBytesPerSec: 20 * MiB,
      memoryBytes: 256 * MiB,
      downtimeLimitMs: 300,
    });
    assert.equal(p.converges, false);
    assert.ok(p.lambda > 1);
  });

  it('post-copy sends the rest once', () => {
    assert.equal(predictPostcopyMs(64 * MiB, 32 * MiB), 2000);
  });

  it('corrects the downtime limit for QEMU under-estimating the link, within bounds', () => {
    assert.equal(qemuDowntimeLimitFor(20, 200e6, 100e6), 40);
    assert.equal(qemuDowntimeLimitFor(20, 100e6, 200e6), 20, 'never below the target');
    assert.equal(qemuDowntimeLimitFor(20, 1e9, 1e6), 80, 'at most 4 times');
    assert.equal(qemuDowntimeLimitFor(20, 0, 0), 20);
  });

  it('measures a rate over a sliding window', () => {
    const meter = new RateMeter(1000);
    assert.equal(meter.rate(), 0);
    for (let t = 0; t <= 3000; t += 200) meter.add(t, t < 2000 ? t * 1000 : 2000 * 1000 + (t - 2000) * 100);
    assert.equal(Math.round(meter.rate()), 100_000);
  });
});
