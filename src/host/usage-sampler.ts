/**
 * The agent's usage figures: every 10 s, the counters of this host (/proc/stat, /proc/meminfo)
 * and of each VM's QEMU process (CPU time and resident memory from /proc/PID, the guest's disk
 * bytes over QMP, its taps' bytes from /proc/PID/net/dev), posted to the control plane, which
 * turns counters into rates (metrics/usage-store.ts).
 *
 * The taps live in the host's network namespace, and so does its QEMU: reading the device table
 * through the QEMU process's own /proc/PID/net sees them whatever namespace the agent reads from.
 */
import { readFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { messageOf } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import type { HostUsageReport, VmUsageSample } from '../wire/event-schemas.ts';
import type { QmpClient } from '../compute/qmp/qmp-client.ts';

/** What the sampler needs of one VM (ManagedVm.usageSource). */
export interface UsageSource {
  vm: string;
  pid: number;
  cpus: number;
  /** Its tap devices, in the host's network namespace. */
  taps: string[];
  /** Bytes read and written by its disks since its QEMU started. */
  diskBytes(): Promise<{ readBytes: number; writtenBytes: number }>;
  /** Its QMP, for the balloon (host/vm-memory.ts). */
  qmp?: Pick<QmpClient, 'execute'>;
}

/** Linux reports CPU times in clock ticks of USER_HZ, 100 a second on every architecture Nubis runs on (proc(5)). */
const CLOCK_TICKS_PER_SECOND = 100;

/** CPU seconds of a process: utime + stime, fields 14 and 15 of /proc/PID/stat (proc(5)). */
export function parseProcessCpuSeconds(stat: string): number {
  // The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

/** A `Key:   123 kB` line of /proc/PID/status or /proc/meminfo, in bytes (0 when absent). */
export function parseKilobytesField(text: string, key: string): number {
  const match = new RegExp(`^${key}:\\s+(\\d+) kB$`, 'm').exec(text);
  return match ? Number(match[1]) * 1024 : 0;
}

/** All CPU time and its idle part (idle + iowait), in seconds, from the `cpu` line of /proc/stat. */
export function parseHostCpuSeconds(stat: string): { totalSeconds: number; idleSeconds: number } {
  const line = /^cpu\s+(.*)$/m.exec(stat)?.[1] ?? '';
  // user nice system idle iowait irq softirq steal; guest time is already counted in user.
  const ticks = line.trim().split(/\s+/).slice(0, 8).map(Number);
  const total = ticks.reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
  return { totalSeconds: total / CLOCK_TICKS_PER_SECOND, idleSeconds: ((ticks[3] ?? 0) + (ticks[4] ?? 0)) / CLOCK_TICKS_PER_SECOND };
}

/**
 * Bytes the guest received and sent over `taps`, from /proc/PID/net/dev. A tap's receive side is
 * what the guest sent, and its transmit side what the guest received.
 */
export function parseTapBytes(netDev: string, taps: readonly string[]): { rxBytes: number; txBytes: number } {
  let rxBytes = 0;
  let txBytes = 0;
  for (const line of netDev.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0 || !taps.includes(line.slice(0, colon).trim())) continue;
    const fields = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .map(Number);
    txBytes += fields[0] ?? 0;
    rxBytes += fields[8] ?? 0;
  }
  return { rxBytes, txBytes };
}

export interface UsageSamplerOptions {
  /** The VMs to sample now. */
  sources: () => UsageSource[];
  /** Sends one report to the control plane. */
  send: (report: HostUsageReport) => Promise<unknown>;
  logger?: Logger;
  /** Default 10 s. */
  intervalMs?: number;
  /** Default /proc (a test points it at a folder of its own). */
  procRoot?: string;
}

export class UsageSampler {
  readonly #options: UsageSamplerOptions;

  constructor(options: UsageSamplerOptions) {
    this.#options = Object.freeze({ ...options });
  }

  /** This host's and its VMs' counters now; a VM whose process just went is left out. */
  async sample(): Promise<HostUsageReport> {
    const proc = this.#options.procRoot ?? '/proc';
    const [stat, meminfo] = await Promise.all([readFile(`${proc}/stat`, 'utf8'), readFile(`${proc}/meminfo`, 'utf8')]);
    const cpu = parseHostCpuSeconds(stat);
    const memoryTotalBytes = parseKilobytesField(meminfo, 'MemTotal');
    const samples = await Promise.all(this.#options.sources().map((source) => this.#sampleVm(proc, source).catch(() => undefined)));
    return {
      at: new Date().toISOString(),
      host: {
        cpuTotalSeconds: cpu.totalSeconds,
        cpuIdleSeconds: cpu.idleSeconds,
        cpus: Math.max(1, (stat.match(/^cpu\d+ /gm) ?? []).length),
        memoryUsedBytes: Math.max(0, memoryTotalBytes - parseKilobytesField(meminfo, 'MemAvailable')),
        memoryTotalBytes,
      },
      vms: samples.filter((sample): sample is VmUsageSample => sample !== undefined),
    };
  }

  async #sampleVm(proc: string, source: UsageSource): Promise<VmUsageSample> {
    const [stat, status, netDev, disk] = await Promise.all([
      readFile(`${proc}/${source.pid}/stat`, 'utf8'),
      readFile(`${proc}/${source.pid}/status`, 'utf8'),
      source.taps.length > 0 ? readFile(`${proc}/${source.pid}/net/dev`, 'utf8') : '',
      source.diskBytes(),
    ]);
    const net = parseTapBytes(netDev, source.taps);
    return {
      vm: source.vm,
      pid: source.pid,
      cpus: source.cpus,
      cpuSeconds: parseProcessCpuSeconds(stat),
      memoryBytes: parseKilobytesField(status, 'VmRSS'),
      diskReadBytes: disk.readBytes,
      diskWriteBytes: disk.writtenBytes,
      netRxBytes: net.rxBytes,
      netTxBytes: net.txBytes,
    };
  }

  /** Samples and sends every interval until `signal` aborts; a failed send is logged and the next one tried. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        await this.#options.send(await this.sample());
      } catch (error) {
        if (!signal.aborted) this.#options.logger?.debug(`usage report failed: ${messageOf(error)}`);
      }
      await delay(this.#options.intervalMs ?? 10_000, undefined, { signal }).catch(() => undefined);
    }
  }
}
