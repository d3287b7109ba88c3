/** `nubis vm usage` and `nubis host usage`: the last points of a usage graph, or all of it with --json. */
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import type { UsageSeries } from '../../wire/event-schemas.ts';
import { client, globals } from '../common.ts';
import { formatSize, printJson, printTable } from '../output.ts';

/** How many of the latest points the table shows. */
const TABLE_POINTS = 12;

const percent = (value: number | null) => (value === null ? undefined : `${(value * 100).toFixed(1)}%`);
const bytes = (value: number | null) => (value === null ? undefined : formatSize(value));
const perSecond = (value: number | null) =>
  value === null ? undefined : value >= 2 ** 20 ? `${(value / 2 ** 20).toFixed(1)} MiB/s` : `${(value / 1024).toFixed(1)} KiB/s`;

/** The table of the last points that have a value. */
function printUsage(series: UsageSeries): void {
  const a = series.average;
  const rows = series.timestamps
    .map((time, i) => [
      time.slice(11, 19),
      percent(a.cpu[i]),
      bytes(a.memoryBytes[i]),
      perSecond(a.diskReadBytesPerSec[i]),
      perSecond(a.diskWriteBytesPerSec[i]),
      perSecond(a.netRxBytesPerSec[i]),
      perSecond(a.netTxBytesPerSec[i]),
    ])
    .filter((row) => row.slice(1).some((cell) => cell !== undefined))
    .slice(-TABLE_POINTS);
  printTable(['TIME (UTC)', 'CPU', 'MEMORY', 'DISK READ', 'DISK WRITE', 'NET RX', 'NET TX'], rows);
  if (series.memoryTotalBytes !== undefined) console.log(`memory size ${formatSize(series.memoryTotalBytes)}, one point per ${series.stepSeconds} s`);
}

/** Adds `usage <ref>` to the `vm` or `host` command. */
export function addUsageCommand(parent: Command, kind: 'vm' | 'host'): void {
  parent
    .command(`usage <${kind}>`)
    .description(`CPU, memory, disk and network of a ${kind} over the last hour (10 s points) or day (5 min)`)
    .option('--range <range>', 'hour or day', 'hour')
    .action(async (ref: string, options: { range: string }, command: Command) => {
      if (options.range !== 'hour' && options.range !== 'day') throw new NubisError('VALIDATION_FAILED', `--range must be hour or day, not ${options.range}`);
      const project = kind === 'vm' ? globals(command).project : undefined;
      const query = new URLSearchParams({ range: options.range, ...(project ? { project } : {}) });
      const series = await client(command).request<UsageSeries>('GET', `/v1/${kind}s/${encodeURIComponent(ref)}/usage?${query}`);
      if (globals(command).json) return printJson(series);
      printUsage(series);
    });
}
