/**
 * How close a VM's CPU and disk limits hold: asked against measured, beside what the same VM does
 * with no limit in the same run (the reference: QEMU and the kernel without Nubis's controls).
 *
 *   npx tsx bench/limits/limits.bench.ts
 *
 * One VM of the tiny image (1 vCPU, 128 MiB) with a 64 MiB dir-pool volume, through Nubis:
 * - CPU: the guest spins on its one vCPU; its use over 10 s comes from its cgroup's CPU counter
 *   (`nubis/vm-<id>`), in percent of one host CPU, with no cap and then under `--cpu-limit`
 *   25%, 50% and 75% set while it runs.
 * - Disk: direct 4 KiB reads (`dd iflag=direct`) of the volume, timed inside the guest from
 *   /proc/uptime, with no limit and under `--disk-iops` 100, 200 and 500; then 64 KiB reads
 *   under `--disk-bps` 1M and 4M.
 * Prints the Markdown of the run (bench/limits/RESULTS.md keeps them). Needs a quiet host (load
 * average under 1): a cap above what the host has idle cannot be reached.
 */
import { cpus, loadavg, totalmem } from 'node:os';
import { setTimeout as delay } from 'node:timers/promises';
import { VmCgroups, detectCgroups } from '../../src/host/cgroups.ts';
import type { Vm } from '../../src/wire/schemas.ts';
import { NubisInstance, runOnConsole } from '../../test/helpers/nubis-instance.ts';

const WINDOW_MS = 10_000;
const nubis = new NubisInstance('bench-limits');
const rows: string[] = [];
let accelerator = '?';
const loadBefore = loadavg();

async function cli(args: string[]): Promise<void> {
  const done = await nubis.cli(args);
  if (done.code !== 0) throw new Error(`nubis ${args.join(' ')}: ${done.stderr}`);
}

/** The VM's CPU use over a window, in percent of one host CPU, from its cgroup's counter. */
async function cpuShare(cgroups: VmCgroups, vmId: string): Promise<number> {
  const before = (await cgroups.cpuUsageUs(vmId))!;
  const started = performance.now();
  await delay(WINDOW_MS);
  return (((await cgroups.cpuUsageUs(vmId))! - before) / ((performance.now() - started) * 1000)) * 100;
}

/** Seconds the guest took for `count` direct reads of `blockSize` from its data disk. */
async function timedReads(count: number, blockSize: string): Promise<number> {
  const output = await runOnConsole(
    nubis,
    'limits',
    `a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/vda of=/dev/null bs=${blockSize} count=${count} iflag=direct 2>/dev/null && b=$(cut -d' ' -f1 /proc/uptime) && echo "took $a $b"`,
    { timeoutMs: 180_000 },
  );
  const match = /took ([\d.]+) ([\d.]+)/.exec(output);
  if (!match) throw new Error(`the guest did not time its reads: ${output}`);
  return Number(match[2]) - Number(match[1]);
}

function row(control: string, asked: number | undefined, measured: number, unit: string): void {
  const deviation = asked === undefined ? '-' : `${(((measured - asked) / asked) * 100).toFixed(1)}%`;
  rows.push(`| ${control} | ${asked === undefined ? 'none (reference)' : `${asked} ${unit}`} | ${measured.toFixed(1)} ${unit} | ${deviation} |`);
}

try {
  await nubis.up();
  await cli(['pool', 'create', 'local', '--kind', 'dir']);
  await cli(['volume', 'create', 'data', '--pool', 'local', '--size', '64M', '--host', 'host-1']);
  await cli(['vm', 'create', 'limits', '--image', 'tiny', '--cpus', '1', '--memory', '128', '--disk', 'local/data']);
  const vm = await nubis.cliJson<Vm>(['vm', 'show', 'limits']);
  accelerator = vm.accelerator ?? '?';
  const cgroups = new VmCgroups(await detectCgroups());

  // Disk first, while the guest does nothing else.
  row('direct 4 KiB reads', undefined, 1000 / (await timedReads(1000, '4k')), 'reads/s');
  for (const iops of [100, 200, 500]) {
    await cli(['vm', 'set', 'limits', '--disk-iops', `vda=${iops}`]);
    row('`--disk-iops`', iops, Math.min(1000, iops * 5) / (await timedReads(Math.min(1000, iops * 5), '4k')), 'reads/s');
  }
  await cli(['vm', 'set', 'limits', '--disk-limits-none', 'vda']);
  row('direct 64 KiB reads', undefined, 16 / (await timedReads(256, '64k')), 'MiB/s');
  for (const mib of [1, 4]) {
    await cli(['vm', 'set', 'limits', '--disk-bps', `vda=${mib}M`]);
    row('`--disk-bps`', mib, (mib * 4) / (await timedReads(mib * 64, '64k')), 'MiB/s');
  }

  await runOnConsole(nubis, 'limits', '(while :; do :; done) >/dev/null 2>&1 & true');
  row('CPU of a spinning 1-vCPU guest', undefined, await cpuShare(cgroups, vm.id), '%');
  for (const cap of [25, 50, 75]) {
    await cli(['vm', 'set', 'limits', '--cpu-limit', `${cap}%`]);
    await delay(1_000); // one second for the new quota to govern whole periods
    row('`--cpu-limit`', cap, await cpuShare(cgroups, vm.id), '%');
  }
} finally {
  await nubis.destroy();
}

const loadAfter = loadavg();
const cpu = cpus()[0]?.model.replace(/\s+/g, ' ').trim();
const fmt = (load: number[]) => load.map((value) => value.toFixed(2)).join(', ');
console.log(`### ${new Date().toISOString().slice(0, 10)}: CPU and disk limits, asked against measured

- Machine: ${cpu} x ${cpus().length}, ${(totalmem() / 2 ** 30).toFixed(1)} GiB, Node ${process.version}; the guest under ${accelerator}
- Date: ${new Date().toISOString()}
- Load average (1, 5, 15 min): before ${fmt(loadBefore)}; after ${fmt(loadAfter)}

| control | asked | measured | deviation |
| --- | --- | --- | --- |
${rows.join('\n')}`);
