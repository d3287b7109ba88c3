/**
 * Reader-writer locks keyed by number, created on first use and dropped when idle. The pool uses
 * one table for volume ranges and one for physical allocation units. The uncontended path
 * allocates one small state object and no promise.
 */
interface LockState {
  readers: number;
  writer: boolean;
  queue: Array<{ write: boolean; resolve: () => void }>;
}

export class KeyedLocks {
  readonly #states = new Map<number, LockState>();

  /** Resolves when held; undefined when it was free (no await needed). */
  acquire(key: number, write: boolean): Promise<void> | undefined {
    let state = this.#states.get(key);
    if (!state) {
      state = { readers: 0, writer: false, queue: [] };
      this.#states.set(key, state);
    }
    if (state.queue.length === 0 && !state.writer && (!write || state.readers === 0)) {
      if (write) state.writer = true;
      else state.readers++;
      return undefined;
    }
    return new Promise((resolve) => state.queue.push({ write, resolve }));
  }

  release(key: number, write: boolean): void {
    const state = this.#states.get(key);
    if (!state) return;
    if (write) state.writer = false;
    else state.readers--;
    while (state.queue.length > 0) {
      const next = state.queue[0]!;
      if (next.write) {
        if (state.readers > 0 || state.writer) break;
        state.writer = true;
      } else {
        if (state.writer) break;
        state.readers++;
      }
      state.queue.shift();
      next.resolve();
      if (next.write) break;
    }
    if (!state.writer && state.readers === 0 && state.queue.length === 0) this.#states.delete(key);
  }

  /** Runs `fn` holding the lock. */
  async with<T>(key: number, write: boolean, fn: () => Promise<T>): Promise<T> {
    const waiting = this.acquire(key, write);
    if (waiting) await waiting;
    try {
      return await fn();
    } finally {
      this.release(key, write);
    }
  }
}
