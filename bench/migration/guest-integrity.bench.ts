/**
 * Does guest memory survive many-pass pre-copies? A 256 MiB guest rewrites a 64 MiB working set
 * at 10 MB/s while it is migrated back and forth with a 20 ms downtime limit, which makes QEMU run
 * four or more passes. After each migration the guest's kernel log is searched for the faults
 * that lost pages cause (oops, `Bad page state`, virtio rings out of order) and the guest must
 * still answer HTTP with its writer alive. QEMU 7.2 under TCG failed this (bench/migration/
 * RESULTS.md); the script says which QEMU it ran against.
 *
 *   npx tsx bench/migration/guest-integrity.bench.ts [RUNS]
 */
import { execFileSync } from 'node:child_process';
import type { MigrationFigures } from '../../src/migration/migration-types.ts';
import type { Operation, Vm } from '../../src/wire/schemas.ts';
import { NubisInstance } from '../../test/helpers/nubis-instance.ts';

const RUNS = Number(process.argv[2] ?? 8);
/** What a guest kernel prints when memory it relied on came back wrong. */
const FAULT = /Oops|BUG|Bad page|not a head|Kernel panic|general protection|segfault|page fault/;

const qemuVersion = execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).split('\n')[0];
const nubis = new NubisInstance('bench-integrity');
const rows: string[] = [];
let faults = 0;
try {
  await nubis.up(['--hosts', '2']);
  await nubis.cliJson(['network', 'create', 'integrity', '--subnet', '10.96.0.0/24']);
  await nubis.cliJson(['vm', 'create', 'anchor', '--image', 'tiny', '--memory', '128', '--network', 'integrity', '--host', 'host-2']);
  const vm = await nubis.cliJson<Vm>(['vm', 'create', 'writer', '--image', 'tiny', '--memory', '256', '--network', 'integrity', '--host', 'host-1']);
  const ip = vm.nics[0].ip;
  const guestHttp = async (path: string): Promise<string> => {
    const probe = await nubis.cli(['network', 'probe', 'integrity', '--on', 'host-2', '--', 'curl', '-s', '-m', '10', `http://${ip}${path}`]);
    return probe.stdout.trim();
  };
  await guestHttp('/cgi-bin/dirty?rate_mb=10&wss_mb=64');
  await new Promise((resolve) => setTimeout(resolve, 3000));
  for (let run = 1; run <= RUNS; run++) {
    const to = run % 2 === 1 ? 'host-2' : 'host-1';
    const created = await nubis.api<{ operation: Operation }>('POST', '/v1/vms/writer/migrate', { to, strategy: 'precopy', maxDowntimeMs: 20 });
    const final = await nubis.waitOperation(created.body.operation.id);
    const history = await nubis.cliJson<Array<{ figures: MigrationFigures }>>(['vm', 'migrations', 'writer']);
    await new Promise((resolve) => setTimeout(resolve, 2000)); // a fault shows a moment after the switch-over
    const log = await nubis.cliJson<{ lines: string[] }>(['vm', 'log', 'writer', '--lines', '400']);
    const faultLine = log.lines.find((line) => FAULT.test(line));
    const state = await guestHttp('/cgi-bin/dirty');
    const writerAlive = /"running":true/.test(state);
    const ok = final.status === 'succeeded' && !faultLine && writerAlive;
    if (!ok) faults++;
    const f = history[0].figures;
    rows.push(
      `| ${run} | ${final.status} | ${f.passes ?? '-'} | ${f.downtimeMs ?? '-'} | ${writerAlive ? 'yes' : 'no'} | ${faultLine ? `\`${faultLine.trim().slice(0, 80)}\`` : 'none'} |`,
    );
    console.error(rows.at(-1));
    if (!ok) break; // the guest is damaged: later runs would measure the damage, not the migration
  }
  console.log(`${qemuVersion}, TCG: ${faults === 0 ? `${RUNS} of ${RUNS} migrations intact` : 'guest damaged'}`);
  console.log('| run | status | passes | QEMU downtime (ms) | writer alive | first fault in the guest log |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const row of rows) console.log(row);
} finally {
  await nubis.destroy();
}
process.exit(faults === 0 ? 0 : 1);
