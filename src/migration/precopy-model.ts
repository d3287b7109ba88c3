/**
 * A model of iterative pre-copy (after Liu et al., HPDC 2011): with dirty rate D and link rate B,
 * lambda = D / B; each pass sends what the previous one left dirty, so the dirty set shrinks by
 * lambda per pass until QEMU can stop the VM and send the rest within the downtime limit. Pure:
 * the migration service feeds it what it measured and records the prediction beside the outcome.
 */

export interface PrecopyInput {
  /** Bytes still to send in the pass under way (QEMU's `remaining`). */
  remainingBytes: number;
  /** How fast the pass under way goes through guest memory. The first pass skips zero pages
   * almost for free, so it moves faster than the link; later passes send dirty, non-zero pages. */
  scanRateBytesPerSec: number;
  dirtyRateBytesPerSec: number;
  bandwidthBytesPerSec: number;
  /** The dirty set never exceeds guest memory. */
  memoryBytes: number;
  /** The stop-and-copy QEMU is asked to fit in now; with `maxDowntimeLimitMs`, widened per pass
   * as `downtimeTargetForPass` says. */
  downtimeLimitMs: number;
  maxDowntimeLimitMs?: number;
  /** The pass under way (QEMU's `dirty-sync-count`); 1 when not given. */
  pass?: number;
  /** Give up predicting convergence after this many passes. */
  maxPasses?: number;
}

export interface PrecopyPrediction {
  lambda: number;
  converges: boolean;
  /** Passes still to run, counting the stop-and-copy. */
  passes: number;
  /** Time from now to completion, when it converges. */
  remainingTimeMs?: number;
  downtimeMs?: number;
}

/** How many passes the model follows before it calls a pre-copy non-converging. */
export const MODEL_MAX_PASSES = 30;

export function predictPrecopy(input: PrecopyInput): PrecopyPrediction {
  const bandwidth = input.bandwidthBytesPerSec;
  const lambda = bandwidth > 0 ? input.dirtyRateBytesPerSec / bandwidth : Number.POSITIVE_INFINITY;
  if (!(bandwidth > 0)) return { lambda, converges: false, passes: 0 };
  const maxPasses = input.maxPasses ?? MODEL_MAX_PASSES;
  let elapsedSec = input.remainingBytes / Math.max(input.scanRateBytesPerSec, bandwidth);
  let dirty = Math.min(input.dirtyRateBytesPerSec * elapsedSec, input.memoryBytes);
  for (let pass = 1; pass <= maxPasses; pass++) {
    const passSec = dirty / bandwidth;
    const limitMs = downtimeTargetForPass(input.downtimeLimitMs, input.maxDowntimeLimitMs ?? input.downtimeLimitMs, (input.pass ?? 1) + pass);
    if (passSec * 1000 <= limitMs) {
      return { lambda, converges: true, passes: pass, remainingTimeMs: Math.round((elapsedSec + passSec) * 1000), downtimeMs: Math.round(passSec * 1000) };
    }
    elapsedSec += passSec;
    dirty = Math.min(input.dirtyRateBytesPerSec * passSec, input.memoryBytes);
  }
  return { lambda, converges: false, passes: maxPasses };
}

/**
 * `auto`'s downtime target while pass `pass` (QEMU's `dirty-sync-count`) runs: the first target
 * for two passes, then doubled each pass up to the most the user accepts, so a guest that does
 * not converge at the tight target still finishes by pre-copy.
 */
export function downtimeTargetForPass(initialMs: number, maxMs: number, pass: number): number {
  return Math.min(maxMs, initialMs * 2 ** Math.max(0, pass - 2));
}

/** Post-copy from now: the rest of memory crosses the link once while the VM runs on the destination. */
export function predictPostcopyMs(remainingBytes: number, bandwidthBytesPerSec: number): number {
  return bandwidthBytesPerSec > 0 ? Math.round((remainingBytes / bandwidthBytesPerSec) * 1000) : Number.POSITIVE_INFINITY;
}

/**
 * The `downtime-limit` to give QEMU so that its stop decision matches the real link. QEMU stops
 * the VM once what is left fits `its bandwidth estimate x limit`; where that estimate falls below
 * the real link (it did on fast links in earlier QEMUs), QEMU stops later than it could, after
 * passes for nothing. With the measured rate it stops when the rest takes `targetMs` on the real
 * link; where QEMU's estimate is right, the ratio is 1 and the limit is the target as it is.
 */
export function qemuDowntimeLimitFor(targetMs: number, measuredBytesPerSec: number, qemuBytesPerSec: number): number {
  if (!(measuredBytesPerSec > 0) || !(qemuBytesPerSec > 0)) return targetMs;
  const correction = Math.min(4, Math.max(1, measuredBytesPerSec / qemuBytesPerSec));
  return Math.max(1, Math.round(targetMs * correction));
}

/** A link rate measured from (time, bytes sent) samples over the last `windowMs`. */
export class RateMeter {
  readonly #samples: Array<{ atMs: number; bytes: number }> = [];
  readonly #windowMs: number;

  constructor(windowMs = 1000) {
    this.#windowMs = windowMs;
  }

  add(atMs: number, bytes: number): void {
    this.#samples.push({ atMs, bytes });
    while (this.#samples.length > 2 && atMs - this.#samples[1].atMs >= this.#windowMs) this.#samples.shift();
  }

  /** How much time the samples in the window span. */
  spanMs(): number {
    return this.#samples.length < 2 ? 0 : this.#samples[this.#samples.length - 1].atMs - this.#samples[0].atMs;
  }

  /** Bytes per second over the window; 0 until two samples span some time. */
  rate(): number {
    if (this.#samples.length < 2) return 0;
    const first = this.#samples[0];
    const last = this.#samples[this.#samples.length - 1];
    return last.atMs > first.atMs ? ((last.bytes - first.bytes) * 1000) / (last.atMs - first.atMs) : 0;
  }
}
