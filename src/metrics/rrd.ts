/**
 * A round-robin series, as RRDtool (and Proxmox's RRD files) keep them: a fixed number of slots
 * per archive, each slot a time step, the oldest overwritten as time goes round. Two archives:
 * the last hour at 10 s (360 points) and the last day at 5 min (288 points, the average and the
 * maximum of the 10 s values in each). The memory of a series never grows.
 */

export interface RrdArchiveShape {
  stepSeconds: number;
  points: number;
}

export const HOUR_ARCHIVE: RrdArchiveShape = { stepSeconds: 10, points: 360 };
export const DAY_ARCHIVE: RrdArchiveShape = { stepSeconds: 300, points: 288 };

/** One archive: per slot, the step it holds (its start in seconds), how many values and their sum and maximum per metric. */
class RrdArchive {
  readonly shape: RrdArchiveShape;
  readonly #metrics: number;
  readonly stepOf: Float64Array;
  readonly count: Uint32Array;
  readonly sum: Float64Array;
  readonly max: Float64Array;

  constructor(shape: RrdArchiveShape, metrics: number) {
    this.shape = shape;
    this.#metrics = metrics;
    this.stepOf = new Float64Array(shape.points).fill(-1);
    this.count = new Uint32Array(shape.points * metrics);
    this.sum = new Float64Array(shape.points * metrics);
    this.max = new Float64Array(shape.points * metrics);
  }

  /** Adds `values` (null: not measured) at `atSeconds` to the slot of its step, clearing the slot first when it held an older step. */
  add(atSeconds: number, values: ReadonlyArray<number | null>): void {
    const step = Math.floor(atSeconds / this.shape.stepSeconds);
    const slot = step % this.shape.points;
    if (this.stepOf[slot] !== step) {
      this.stepOf[slot] = step;
      this.count.fill(0, slot * this.#metrics, (slot + 1) * this.#metrics);
      this.sum.fill(0, slot * this.#metrics, (slot + 1) * this.#metrics);
      this.max.fill(0, slot * this.#metrics, (slot + 1) * this.#metrics);
    }
    for (let metric = 0; metric < this.#metrics; metric++) {
      const value = values[metric];
      if (value === null || value === undefined || !Number.isFinite(value)) continue;
      const i = slot * this.#metrics + metric;
      this.max[i] = this.count[i] === 0 ? value : Math.max(this.max[i], value);
      this.sum[i] += value;
      this.count[i] += 1;
    }
  }

  /** The archive's points up to `nowSeconds`, oldest first: per metric the average (and maximum), null where nothing was added. */
  read(nowSeconds: number): { stepsStart: number[]; average: Array<Array<number | null>>; max: Array<Array<number | null>> } {
    const { stepSeconds, points } = this.shape;
    const last = Math.floor(nowSeconds / stepSeconds);
    const stepsStart: number[] = [];
    const average = Array.from({ length: this.#metrics }, () => [] as Array<number | null>);
    const max = Array.from({ length: this.#metrics }, () => [] as Array<number | null>);
    for (let step = last - points + 1; step <= last; step++) {
      const slot = ((step % points) + points) % points;
      stepsStart.push(step * stepSeconds);
      for (let metric = 0; metric < this.#metrics; metric++) {
        const i = slot * this.#metrics + metric;
        const held = this.stepOf[slot] === step && this.count[i] > 0;
        average[metric].push(held ? this.sum[i] / this.count[i] : null);
        max[metric].push(held ? this.max[i] : null);
      }
    }
    return { stepsStart, average, max };
  }

  toJSON(): unknown {
    return { stepOf: [...this.stepOf], count: [...this.count], sum: [...this.sum], max: [...this.max] };
  }

  /** Takes back what `toJSON` wrote; false (and nothing taken) when it does not fit this shape. */
  restore(saved: unknown): boolean {
    const s = saved as { stepOf?: number[]; count?: number[]; sum?: number[]; max?: number[] } | undefined;
    const fits = (array: unknown, length: number) => Array.isArray(array) && array.length === length && array.every((v) => typeof v === 'number');
    const cells = this.shape.points * this.#metrics;
    if (!s || !fits(s.stepOf, this.shape.points) || !fits(s.count, cells) || !fits(s.sum, cells) || !fits(s.max, cells)) return false;
    this.stepOf.set(s.stepOf!);
    this.count.set(s.count!);
    this.sum.set(s.sum!);
    this.max.set(s.max!);
    return true;
  }
}

/** The points of one archive as a graph reads them. */
export interface RrdReading {
  stepSeconds: number;
  /** Start of each step, in seconds since the epoch. */
  stepsStart: number[];
  average: Array<Array<number | null>>;
  max: Array<Array<number | null>>;
}

/** A series of `metrics` values per sample, kept in the hour and the day archive. */
export class RoundRobinSeries {
  readonly #hour: RrdArchive;
  readonly #day: RrdArchive;

  constructor(metrics: number) {
    this.#hour = new RrdArchive(HOUR_ARCHIVE, metrics);
    this.#day = new RrdArchive(DAY_ARCHIVE, metrics);
  }

  /** Records one sample (a value per metric, null for one not measured) taken at `atMs`. */
  add(atMs: number, values: ReadonlyArray<number | null>): void {
    this.#hour.add(atMs / 1000, values);
    this.#day.add(atMs / 1000, values);
  }

  /** The hour or the day up to `nowMs`, oldest first. */
  read(range: 'hour' | 'day', nowMs: number): RrdReading {
    const archive = range === 'hour' ? this.#hour : this.#day;
    return { stepSeconds: archive.shape.stepSeconds, ...archive.read(nowMs / 1000) };
  }

  toJSON(): unknown {
    return { hour: this.#hour.toJSON(), day: this.#day.toJSON() };
  }

  /** A series from what `toJSON` wrote, or undefined when it does not fit (another shape or version). */
  static restore(metrics: number, saved: unknown): RoundRobinSeries | undefined {
    const series = new RoundRobinSeries(metrics);
    const s = saved as { hour?: unknown; day?: unknown } | undefined;
    return series.#hour.restore(s?.hour) && series.#day.restore(s?.day) ? series : undefined;
  }
}
