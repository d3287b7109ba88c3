// An undo stack for multi-step host work, after Incus `shared/revert`: each step that changed the
// host registers how to take it back; if a later step fails, the undos run newest first, so
// nothing half-built is left behind.
import { messageOf } from './errors.ts';

/** One undo step: a name for diagnostics and the action that takes the step back. */
interface UndoStep {
  description: string;
  undo: () => unknown;
}

/**
 * Collects undo steps while an operation builds something. Call {@link Revert.success} once the
 * whole operation worked; otherwise {@link Revert.fail} (or `runUndos`) undoes every step in
 * reverse order. Undo failures do not hide the original error: they are collected and returned.
 *
 * ```ts
 * const revert = new Revert();
 * try {
 *   await makeBridge(); revert.add('delete bridge', () => deleteBridge());
 *   await makeVxlan();  revert.add('delete vxlan', () => deleteVxlan());
 *   revert.success();
 * } catch (error) { await revert.fail(); throw error; }
 * ```
 */
export class Revert {
  #steps: UndoStep[] = [];
  #done = false;

  /** Registers how to take back a step that has just succeeded. */
  add(description: string, undo: () => unknown): void {
    if (this.#done) throw new Error(`Revert already finished; cannot add ${description}`);
    this.#steps.push({ description, undo });
  }

  /** The operation worked: forget the undos. */
  success(): void {
    this.#done = true;
    this.#steps = [];
  }

  /**
   * Runs every registered undo, newest first, each even when an earlier one failed; resolves with
   * a description of each undo that failed (empty when all worked).
   */
  async fail(): Promise<string[]> {
    this.#done = true;
    const steps = this.#steps.reverse();
    this.#steps = [];
    const failures: string[] = [];
    for (const step of steps) {
      try {
        await step.undo();
      } catch (error) {
        failures.push(`${step.description}: ${messageOf(error)}`);
      }
    }
    return failures;
  }

  /**
   * Runs `build` with a fresh Revert; when `build` throws, undoes its steps and rethrows the
   * original error (with the failed undos attached as `undoFailures` when there were any).
   */
  static async run<T>(build: (revert: Revert) => Promise<T>): Promise<T> {
    const revert = new Revert();
    try {
      const result = await build(revert);
      revert.success();
      return result;
    } catch (error) {
      const failures = await revert.fail();
      if (failures.length > 0 && error !== null && typeof error === 'object') {
        Object.assign(error, { undoFailures: failures });
      }
      throw error;
    }
  }
}
