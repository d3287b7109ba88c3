/**
 * The usage graphs of VMs and hosts: host agents post counters every 10 s (CPU seconds, bytes
 * read and written, bytes received and sent, since the QEMU process or the host started), this
 * store turns them into rates and keeps each VM's and host's in a round-robin series (rrd.ts).
 * It is saved to a file in the data folder every few minutes and when the control plane stops
 * (written to a temporary file, then renamed over the old one), and read back at the start, so
 * the graphs survive a restart. A deleted VM's series goes with it.
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import type { Logger } from '../core/logger.ts';
import { messageOf } from '../core/errors.ts';
import { type HostUsageReport, USAGE_METRICS, type UsageRange, type UsageSeries, type VmUsageSample } from '../wire/event-schemas.ts';
import type { VmActivity } from '../wire/schemas.ts';
import { RoundRobinSeries } from './rrd.ts';

const FILE_VERSION = 1;
const METRICS = USAGE_METRICS.length;

/** Rates need two samples of one process: its counters at the first one. */
interface LastCounters {
  atMs: number;
  pid?: number;
  counters: number[];
}

export interface UsageStoreOptions {
  /** Where the series are saved (usage.json in the data folder); none: kept in memory only. */
  file?: string;
  /** How often the series are saved. Default 5 minutes. */
  saveEveryMs?: number;
  logger?: Logger;
}

/** The rate of a counter between two samples, or null when the counter went back (a new process). */
function rate(now: number, before: number, seconds: number): number | null {
  return now >= before && seconds > 0 ? (now - before) / seconds : null;
}

export class UsageStore {
  readonly #options: UsageStoreOptions;
  readonly #series = new Map<string, RoundRobinSeries>();
  readonly #last = new Map<string, LastCounters>();
  /** Each VM's rates from its latest sample, for `vm show` (the series average them into steps). */
  readonly #latest = new Map<string, { atMs: number; values: Array<number | null> }>();
  readonly #memoryTotal = new Map<string, number>();
  #timer?: NodeJS.Timeout;

  constructor(options: UsageStoreOptions = {}) {
    this.#options = Object.freeze({ ...options });
  }

  /** Records what host `hostId` reported at `receivedMs`: its own figures and its VMs'. */
  record(hostId: string, report: HostUsageReport, receivedMs = Date.now()): void {
    const atMs = Date.parse(report.at);
    const vmRates = report.vms.map((sample) => this.#recordVm(sample, atMs, receivedMs));
    const { host } = report;
    const last = this.#last.get(`host:${hostId}`);
    const total = host.cpuTotalSeconds;
    const idle = host.cpuIdleSeconds;
    const busy = last && total > last.counters[0] && idle >= last.counters[1] ? 1 - (idle - last.counters[1]) / (total - last.counters[0]) : null;
    this.#last.set(`host:${hostId}`, { atMs, counters: [total, idle] });
    // The host's disk and network: what its VMs moved (the agent reads no host-wide device counters).
    const sums = [2, 3, 4, 5].map((metric) => {
      const known = vmRates.map((values) => values[metric]).filter((value): value is number => value !== null);
      return known.length > 0 ? known.reduce((a, b) => a + b, 0) : null;
    });
    this.#memoryTotal.set(`host:${hostId}`, host.memoryTotalBytes);
    this.#seriesOf(`host:${hostId}`).add(receivedMs, [busy === null ? null : Math.min(1, Math.max(0, busy)), host.memoryUsedBytes, ...sums]);
  }

  #recordVm(sample: VmUsageSample, atMs: number, receivedMs: number): Array<number | null> {
    const key = `vm:${sample.vm}`;
    const counters = [sample.cpuSeconds, sample.diskReadBytes, sample.diskWriteBytes, sample.netRxBytes, sample.netTxBytes];
    const last = this.#last.get(key);
    this.#last.set(key, { atMs, pid: sample.pid, counters });
    // A new QEMU process (a restart, a migration here) starts its counters at zero: no rate from the old ones.
    const comparable = last && last.pid === sample.pid && atMs > last.atMs;
    const seconds = comparable ? (atMs - last.atMs) / 1000 : 0;
    const rates = counters.map((value, i) => (comparable ? rate(value, last.counters[i], seconds) : null));
    const cpu = rates[0] === null ? null : Math.min(1, rates[0] / sample.cpus);
    const values = [cpu, sample.memoryBytes, rates[1], rates[2], rates[3], rates[4]];
    this.#seriesOf(key).add(receivedMs, values);
    this.#latest.set(key, { atMs: receivedMs, values });
    return values;
  }

  /**
   * What VM `vmId` is doing now: its rates from its host's latest sample (at most `freshMs` old,
   * default 30 s: three sampling periods), or undefined when there is none that recent.
   */
  vmNow(vmId: string, nowMs = Date.now(), freshMs = 30_000): VmActivity | undefined {
    const latest = this.#latest.get(`vm:${vmId}`);
    if (!latest || nowMs - latest.atMs > freshMs) return undefined;
    const figures = Object.fromEntries(USAGE_METRICS.flatMap((metric, i) => (latest.values[i] === null ? [] : [[metric, latest.values[i]]]))) as Omit<
      VmActivity,
      'sampledAt'
    >;
    return { sampledAt: new Date(latest.atMs).toISOString(), ...figures };
  }

  #seriesOf(key: string): RoundRobinSeries {
    let series = this.#series.get(key);
    if (!series) {
      series = new RoundRobinSeries(METRICS);
      this.#series.set(key, series);
    }
    return series;
  }

  /** The graph of VM `vmId` over `range`, or undefined when nothing was ever reported for it. */
  vm(vmId: string, range: UsageRange, nowMs = Date.now()): UsageSeries | undefined {
    return this.#read(`vm:${vmId}`, range, nowMs);
  }

  /** The graph of host `hostId` over `range`, or undefined when nothing was ever reported for it. */
  host(hostId: string, range: UsageRange, nowMs = Date.now()): UsageSeries | undefined {
    return this.#read(`host:${hostId}`, range, nowMs);
  }

  #read(key: string, range: UsageRange, nowMs: number): UsageSeries | undefined {
    const series = this.#series.get(key);
    if (!series) return undefined;
    const reading = series.read(range, nowMs);
    const byMetric = (values: Array<Array<number | null>>) =>
      Object.fromEntries(USAGE_METRICS.map((metric, i) => [metric, values[i]])) as UsageSeries['average'];
    const total = this.#memoryTotal.get(key);
    return {
      range,
      stepSeconds: reading.stepSeconds,
      timestamps: reading.stepsStart.map((seconds) => new Date(seconds * 1000).toISOString()),
      average: byMetric(reading.average),
      ...(range === 'day' ? { max: byMetric(reading.max) } : {}),
      ...(total !== undefined ? { memoryTotalBytes: total } : {}),
    };
  }

  /** Forgets a deleted VM's series. */
  dropVm(vmId: string): void {
    this.#latest.delete(`vm:${vmId}`);
    this.#series.delete(`vm:${vmId}`);
    this.#last.delete(`vm:${vmId}`);
  }

  /** Forgets the series of every VM and host not in these sets (deleted while the control plane was down). */
  keepOnly(vmIds: ReadonlySet<string>, hostIds: ReadonlySet<string>): void {
    for (const key of [...this.#series.keys()]) {
      const [kind, id] = [key.slice(0, key.indexOf(':')), key.slice(key.indexOf(':') + 1)];
      if (!(kind === 'vm' ? vmIds : hostIds).has(id)) {
        this.#series.delete(key);
        this.#latest.delete(key);
      }
    }
  }

  /** How many series are kept (each of fixed size). */
  get size(): number {
    return this.#series.size;
  }

  /** Reads the saved series back; a missing or unreadable file starts empty (and says why). */
  async load(): Promise<void> {
    if (!this.#options.file) return;
    let saved: { version?: number; series?: Record<string, unknown>; memoryTotal?: Record<string, number> };
    try {
      saved = JSON.parse(await readFile(this.#options.file, 'utf8'));
    } catch (error) {
      if ((error as { code?: string }).code !== 'ENOENT')
        this.#options.logger?.warn(`Usage graphs start empty: cannot read ${this.#options.file}: ${messageOf(error)}`);
      return;
    }
    if (saved.version !== FILE_VERSION) return;
    for (const [key, value] of Object.entries(saved.series ?? {})) {
      const series = RoundRobinSeries.restore(METRICS, value);
      if (series) this.#series.set(key, series);
    }
    for (const [key, total] of Object.entries(saved.memoryTotal ?? {})) if (typeof total === 'number') this.#memoryTotal.set(key, total);
  }

  /** Writes every series to the file, atomically: a crash mid-way leaves the previous file whole. */
  async save(): Promise<void> {
    const file = this.#options.file;
    if (!file) return;
    const body = JSON.stringify({
      version: FILE_VERSION,
      savedAt: new Date().toISOString(),
      series: Object.fromEntries(this.#series),
      memoryTotal: Object.fromEntries(this.#memoryTotal),
    });
    await writeFile(`${file}.tmp`, body, { mode: 0o600 });
    await rename(`${file}.tmp`, file);
  }

  /** Saves every `saveEveryMs` until `stop`. */
  start(): void {
    this.#timer ??= setInterval(
      () => void this.save().catch((error) => this.#options.logger?.warn(`Cannot save the usage graphs: ${messageOf(error)}`)),
      this.#options.saveEveryMs ?? 300_000,
    );
    this.#timer.unref();
  }

  /** Stops the periodic saves and saves once more. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.save();
  }
}
