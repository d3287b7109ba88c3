/**
 * Live migration, Nubis `auto` beside QEMU's defaults as libvirt's `virsh migrate --live` uses
 * them (pre-copy only, 300 ms downtime limit, no post-copy, no switch on timeout), in the same
 * run, for three guests: idle, dirtying memory at a moderate rate, and dirtying faster than a
 * capped link. For each: QEMU-reported downtime, the true pause (the source's STOP to the
 * destination's RESUME), the blackout a client sees (the longest gap between replies to pings
 * every 10 ms), total time, bytes sent over guest memory, and the prediction beside what
 * happened. Idle and moderate guests migrate three times (back and forth) to show the spread.
 *
 *   npx tsx bench/migration/migration.bench.ts
 *
 * The baseline is given a deadline (GIVE_UP_S): a pre-copy that has not converged by then is
 * cancelled and reported as not finished.
 */
import { performance } from 'node:perf_hooks';
import type { MigrationFigures } from '../../src/migration/migration-types.ts';
import type { Operation, Vm } from '../../src/wire/schemas.ts';
import { startProbe } from '../../src/network/probe.ts';
import { NubisInstance } from '../../test/helpers/nubis-instance.ts';

const GIVE_UP_S = 60;

interface Scenario {
  name: string;
  dirtyRateMb: number;
  workingSetMb: number;
  bandwidthMbps?: number;
  /** Migrations per VM (back and forth between the hosts), to show the spread. */
  runs: number;
}

const scenarios: Scenario[] = [
  { name: 'idle', dirtyRateMb: 0, workingSetMb: 0, runs: 3 },
  { name: 'moderate dirtying (10 MB/s, 64 MiB)', dirtyRateMb: 10, workingSetMb: 64, runs: 3 },
  { name: 'dirtying above the link (25 MB/s over a 20 MB/s cap)', dirtyRateMb: 25, workingSetMb: 64, bandwidthMbps: 20, runs: 1 },
];

/** The longest gap between consecutive replies, from `ping -D` output ("[1700000000.123456] 64 bytes ..."). */
function longestGapMs(pingOutput: string): number {
  const times = [...pingOutput.matchAll(/^\[(\d+\.\d+)\] \d+ bytes from/gm)].map((m) => Number(m[1]) * 1000);
  let longest = 0;
  for (let i = 1; i < times.length; i++) longest = Math.max(longest, times[i] - times[i - 1]);
  return longest;
}

const nubis = new NubisInstance('bench-migration');
const rows: string[] = [];
try {
  await nubis.up(['--hosts', '2']);
  const bed = nubis.upResult.testBed as string;
  const network = await nubis.cliJson<{ id: string }>(['network', 'create', 'bench', '--subnet', '10.95.0.0/24']);
  // An anchor VM keeps the network on host-2, where the pinging client sits.
  await nubis.cliJson(['vm', 'create', 'anchor', '--image', 'tiny', '--memory', '128', '--network', 'bench', '--host', 'host-2']);
  let round = 0;
  for (const scenario of scenarios) {
    for (const mode of ['QEMU defaults (libvirt)', 'Nubis auto'] as const) {
      const name = `m${round++}`;
      const vm = await nubis.cliJson<Vm>(['vm', 'create', name, '--image', 'tiny', '--memory', '256', '--network', 'bench', '--host', 'host-1']);
      const ip = vm.nics[0].ip;
      if (scenario.dirtyRateMb > 0) {
        await nubis.cli([
          'network',
          'probe',
          'bench',
          '--on',
          'host-2',
          '--',
          'curl',
          '-s',
          `http://${ip}/cgi-bin/dirty?rate_mb=${scenario.dirtyRateMb}&wss_mb=${scenario.workingSetMb}`,
        ]);
        await new Promise((resolve) => setTimeout(resolve, 3000)); // let the working set fill and the rate settle
      }
      for (let run = 1; run <= scenario.runs; run++) {
        const to = run % 2 === 1 ? 'host-2' : 'host-1';
        const pinger = await startProbe({
          hostNs: `${bed}-host-2`,
          networkKey: network.id,
          address: '10.95.0.250/24',
          command: ['ping', '-D', '-i', '0.01', '-W', '1', ip],
        });
        await new Promise((resolve) => setTimeout(resolve, 500));
        const body =
          mode === 'Nubis auto'
            ? { to, strategy: 'auto', ...(scenario.bandwidthMbps ? { bandwidthMbps: scenario.bandwidthMbps } : {}) }
            : { to, strategy: 'precopy', maxDowntimeMs: 300, ...(scenario.bandwidthMbps ? { bandwidthMbps: scenario.bandwidthMbps } : {}) };
        const started = performance.now();
        const created = await nubis.api<{ operation: Operation }>('POST', `/v1/vms/${name}/migrate`, body);
        const id = created.body.operation.id;
        const giveUp = setTimeout(() => void nubis.api('POST', `/v1/operations/${id}/cancel`), GIVE_UP_S * 1000);
        const final = await nubis.waitOperation(id);
        clearTimeout(giveUp);
        const wallMs = performance.now() - started;
        await new Promise((resolve) => setTimeout(resolve, 500));
        const ping = await pinger.stop();
        const history = await nubis.cliJson<Array<{ status: string; figures: MigrationFigures }>>(['vm', 'migrations', name]);
        const f = history[0].figures;
        const finished = final.status === 'succeeded';
        const p = f.prediction;
        const prediction = p ? `${p.route}, lambda ${p.lambda.toFixed(2)}: ${p.predictedTotalMs ?? '-'} ms (${f.predictionErrorPercent ?? '-'}%)` : '-';
        rows.push(
          `| ${scenario.name} | ${mode} | ${finished ? 'yes' : `no (cancelled after ${GIVE_UP_S} s)`} | ${finished ? f.downtimeMs : '-'} | ${finished ? (f.pausedMs ?? '-') : '-'} | ${finished ? longestGapMs(ping.stdout).toFixed(0) : '-'} | ${finished ? f.totalTimeMs : `>${(wallMs / 1000).toFixed(0)} s`} | ${finished ? ((f.transferredBytes ?? 0) / (f.memoryMb * 2 ** 20)).toFixed(2) : '-'} | ${f.switchedToPostcopy ? 'yes' : 'no'} | ${prediction} |`,
        );
        console.error(rows.at(-1));
        if (!finished) break;
      }
      await nubis.cliJson(['vm', 'delete', name]);
    }
  }
  console.log(
    '| guest | migration | finished | QEMU downtime (ms) | true pause (ms) | client blackout (ms) | total (ms) | bytes sent / memory | post-copy | prediction: route, lambda, total (error) |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const row of rows) console.log(row);
} finally {
  await nubis.destroy();
}
