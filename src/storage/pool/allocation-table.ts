/**
 * Which physical allocation units (AUs) are in use, derived from the volume maps: a reference
 * count per AU, the free list and the never-written tail. It enforces the allocation rules of
 * crash consistency (see storage-pool.ts): freed AUs are reused only after the commit that frees
 * them, and AUs shared at the last commit stay copy-on-write until the next.
 */
import type { PoolState } from './metadata-format.ts';

/** What a commit took from the table, to hand back with `commitDone`. */
export interface CommitCapture {
  freed: number[];
  epoch: number;
}

/** Reference counts and free lists of a pool's physical AUs. */
export class AllocationTable {
  readonly auCount: number;
  readonly #refcounts: Uint16Array;
  #free: number[] = [];
  #pendingFree: number[] = [];
  #nextFreshAu: number;
  /** durableHighWaterAu as last committed. */
  #highWaterDurable: number;
  /** AU -> commit epoch in which its reference count dropped; copy-on-write until committed. */
  readonly #dropped = new Map<number, number>();
  #epoch = 0;

  constructor(auCount: number, state: PoolState) {
    this.auCount = auCount;
    this.#refcounts = new Uint16Array(auCount);
    this.#nextFreshAu = Math.min(state.durableHighWaterAu, auCount);
    this.#highWaterDurable = state.durableHighWaterAu;
    this.#rebuild(state);
  }

  /** Derives reference counts and free lists from the volume maps. */
  #rebuild(state: PoolState): void {
    this.#refcounts.fill(0);
    for (const { map } of state.volumes.values()) {
      for (let i = 0; i < map.length; i++) if (map[i] !== 0) this.#refcounts[map[i]! - 1]!++;
    }
    this.#free = [];
    for (let p = this.#nextFreshAu - 1; p >= 0; p--) if (this.#refcounts[p] === 0) this.#free.push(p);
  }

  /** Whether any volume maps AU `p`. */
  isAllocated(p: number): boolean {
    return this.#refcounts[p]! > 0;
  }

  /** How many AUs some volume maps. */
  allocatedCount(): number {
    let allocated = 0;
    for (let p = 0; p < this.auCount; p++) if (this.#refcounts[p]! > 0) allocated++;
    return allocated;
  }

  /** Whether a write to AU `p` must go to a copy: it is shared now or was at the last commit. */
  mustCopyOnWrite(p: number): boolean {
    return this.#refcounts[p]! > 1 || this.#dropped.has(p);
  }

  /** One more map entry points at AU `p`. */
  ref(p: number): void {
    this.#refcounts[p]!++;
  }

  /** One map entry less points at AU `p`; at none, it is free once the next commit is durable. */
  unref(p: number): void {
    this.#refcounts[p]!--;
    this.#dropped.set(p, this.#epoch);
    if (this.#refcounts[p] === 0) this.#pendingFree.push(p);
  }

  /** AU `p`, freshly written, is now mapped by exactly one volume. */
  own(p: number): void {
    this.#refcounts[p] = 1;
  }

  /** AU `p` was taken but its write failed: free it after the next commit. */
  abandon(p: number): void {
    this.#pendingFree.push(p);
  }

  /** A free AU that has been written before, if any. */
  takeFree(): number | undefined {
    return this.#free.pop();
  }

  /** The lowest never-written AU, if any is left. */
  takeFresh(): number | undefined {
    return this.#nextFreshAu < this.auCount ? this.#nextFreshAu++ : undefined;
  }

  /** Whether the committed high-water mark already covers AU `p`. */
  isBelowDurableHighWater(p: number): boolean {
    return p < this.#highWaterDurable;
  }

  /** Whether AUs were freed that the next commit makes reusable. */
  get hasPendingFree(): boolean {
    return this.#pendingFree.length > 0;
  }

  /** Called synchronously as a commit captures its changes. */
  commitStarted(): CommitCapture {
    const freed = this.#pendingFree;
    this.#pendingFree = [];
    return { freed, epoch: this.#epoch++ };
  }

  /** Called once the commit that captured `capture` is durable, with its high-water mark. */
  commitDone(capture: CommitCapture, highWater: number): void {
    this.#highWaterDurable = Math.max(this.#highWaterDurable, highWater);
    for (const p of capture.freed) if (this.#refcounts[p] === 0) this.#free.push(p);
    for (const [p, at] of this.#dropped) if (at <= capture.epoch) this.#dropped.delete(p);
  }
}
