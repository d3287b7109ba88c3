/**
 * How long until a VM restored from a backup runs and answers: `backup restore --live` beside a
 * restore in full, for disks of several sizes, and beside restic restoring the same data in the
 * same run (the reference: the time until a well-known backup tool has the data back in a file,
 * which a VM could only then start on). The goal of the issue: a live restore under 10 s for a
 * 256 MiB and a 4 GiB disk.
 *
 *   npx tsx bench/backup/live-restore.bench.ts [--sizes-mib 256,4096]
 *
 * For each size: SIZE MiB of random bytes (incompressible, no zero chunk) become the one dir-pool
 * volume of a VM of the tiny image (128 MiB), which is backed up and stopped. Then:
 * Each operation is started through the API (as the CLI does) and followed on its event stream,
 * from the request on; stages are printed as they come.
 * - live: a restore with `live: true` (`backup restore ID --as live --live`); meanwhile the VM is
 *   polled through the API until it is running and its guest ready, and a command is run on its console that reads the first and
 *   the last MiB of its disk (read from the store, through the volume's backing file, as the rest
 *   is pulled): the time to that answer is the figure. Then the time until every block is in, and
 *   `qemu-img compare` of the restored volume (its VM stopped) with the original data.
 * - no restore: `vm create` of the same image until its guest is ready, the floor of any restore.
 * - full: a restore without `live` until the new VM runs (every chunk written first).
 * - restic: `restic backup` of the raw file, then `restic restore` of it into a new folder.
 * Nubis is torn down before restic runs. Prints the Markdown of the run and writes no file:
 * record it by hand from a quiet machine (load average under 1, nothing else running).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Backup } from '../../src/wire/backup-schemas.ts';
import type { Vm } from '../../src/wire/schemas.ts';
import { NubisInstance, runOnConsole } from '../../test/helpers/nubis-instance.ts';
import { ensureRestic, load, machine, progress, resticIn, seconds, setUpBenchVm, writeRandom } from './bench-common.ts';

const GOAL_MS = 10_000;

const { values } = parseArgs({ options: { 'sizes-mib': { type: 'string', default: '256,4096' } } });
const sizes = (values['sizes-mib'] ?? '').split(',').map(Number);
if (sizes.some((size) => !Number.isInteger(size) || size < 8)) throw new Error(`--sizes-mib ${values['sizes-mib']}: give whole numbers of MiB, 8 or more`);

type Restored = Vm & { restore: { live: boolean; runningAfterMs: number; doneAfterMs?: number; pulledBytes?: number } };

interface SizeFigures {
  sizeMiB: number;
  accelerator: string;
  backupMs: number;
  /** From the CLI's start: the new VM running with its guest ready, then its console's answer read from its disk. */
  liveReadyMs: number;
  liveAnswerMs: number;
  liveDoneMs: number;
  livePulledBytes: number;
  /** `qemu-img compare`'s verdict on the volume restored live and the original data. */
  liveCompare: string;
  fullRunningMs: number;
  /** A new VM of the same image and memory, no restore, until its guest is ready: the floor of any restore. */
  plainReadyMs: number;
  resticRestoreMs: number;
}

/** Polls the API (not the CLI: a process every 100 ms would slow the guest it waits for) until VM `name` runs with its guest ready. */
async function untilReady(nubis: NubisInstance, name: string, deadlineMs: number): Promise<void> {
  for (;;) {
    const { status, body: vm } = await nubis.api<Vm>('GET', `/v1/vms/${name}`);
    if (status === 200 && vm.state === 'running' && vm.ready) return;
    if (Date.now() > deadlineMs) throw new Error(`${name} was not running and ready in time`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * Starts an operation through the API and follows its event stream to the end: its result, the
 * wall clock from the request, and when each stage was first reported (printed as progress).
 */
async function operation<T>(nubis: NubisInstance, path: string, body: unknown): Promise<{ result: T; wallMs: number }> {
  const started = performance.now();
  const accepted = await nubis.api<{ operation: { id: string } }>('POST', path, body);
  if (accepted.status !== 202) throw new Error(`POST ${path}: ${accepted.status} ${JSON.stringify(accepted.body)}`);
  const response = await fetch(`${nubis.url}/v1/operations/${accepted.body.operation.id}/events`, { headers: { authorization: `Bearer ${nubis.token}` } });
  const decoder = new TextDecoder();
  let text = '';
  const stages = new Set<string>();
  for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
    text += decoder.decode(chunk, { stream: true });
    for (const [, stage] of text.matchAll(/"stage":"([a-z-]+)"/g))
      if (!stages.has(stage)) {
        stages.add(stage);
        progress(`  ${path}: ${stage} after ${seconds(performance.now() - started)}`);
      }
  }
  const end = /event: end\ndata: (.*)\n/.exec(text);
  const final = end ? (JSON.parse(end[1]) as { status: string; result: T; error?: { message: string } }) : undefined;
  if (final?.status !== 'succeeded') throw new Error(`${path}: ${final?.error?.message ?? text.slice(-300)}`);
  return { result: final.result, wallMs: performance.now() - started };
}

/** Nubis's half for one size (see the file header); the caller destroys `nubis`. */
async function benchNubis(nubis: NubisInstance, rawPath: string, sizeMiB: number): Promise<Omit<SizeFigures, 'resticRestoreMs'>> {
  const accelerator = await setUpBenchVm(nubis, rawPath, sizeMiB);
  progress(`Nubis: backup of ${sizeMiB} MiB`);
  const backup = await nubis.cliJson<Backup>(['backup', 'create', 'bench']);
  await nubis.cliJson(['vm', 'stop', 'bench']);
  progress('Nubis: live restore');
  const started = performance.now();
  const restoring = operation<Restored>(nubis, `/v1/backups/${backup.id}/restore`, { name: 'live', live: true });
  restoring.catch(() => undefined);
  await untilReady(nubis, 'live', Date.now() + 600_000);
  const liveReadyMs = performance.now() - started;
  const lastMiB = sizeMiB - 1;
  const answer = await runOnConsole(
    nubis,
    'live',
    `echo "read=[$(dd if=/dev/vda bs=1M count=1 2>/dev/null | md5sum | cut -c1-8) $(dd if=/dev/vda bs=1M count=1 skip=${lastMiB} 2>/dev/null | md5sum | cut -c1-8)]"`,
    { timeoutMs: 300_000 },
  );
  if (!/read=\[[0-9a-f]{8} [0-9a-f]{8}\]/.test(answer)) throw new Error(`The live VM's console did not answer: ${answer.slice(-300)}`);
  const liveAnswerMs = performance.now() - started;
  const live = (await restoring).result;
  const liveDoneMs = performance.now() - started;
  // Stopped first: a running QEMU may hold qcow2 metadata it has not written to the file yet.
  await nubis.cliJson(['vm', 'stop', 'live']);
  const volume = spawnSync('find', [nubis.dataDir, '-name', 'live-bench.qcow2'], { encoding: 'utf8' }).stdout.trim();
  const compared = spawnSync('qemu-img', ['compare', '-U', '-f', 'raw', '-F', 'qcow2', rawPath, volume], { encoding: 'utf8' });
  const liveCompare =
    compared.status === 0 ? 'identical' : `${compared.status}: ${(compared.stdout + compared.stderr).trim().replaceAll('\n', '; ').replaceAll('|', '/')}`;
  await nubis.cliJson(['vm', 'delete', 'live']);
  progress('Nubis: a new VM of the same image, no restore');
  const plain = await operation<Vm>(nubis, '/v1/vms', { name: 'plain', image: 'tiny', cpus: 1, memoryMb: 128, waitReady: true });
  await nubis.cliJson(['vm', 'delete', 'plain']);
  progress('Nubis: restore in full');
  const full = await operation<Restored>(nubis, `/v1/backups/${backup.id}/restore`, { name: 'full' });
  if (full.result.state !== 'running') throw new Error(`The restored VM is ${full.result.state}`);
  return {
    sizeMiB,
    accelerator,
    backupMs: backup.durationMs,
    liveReadyMs,
    liveAnswerMs,
    liveDoneMs,
    livePulledBytes: live.restore.pulledBytes ?? 0,
    liveCompare,
    fullRunningMs: full.wallMs,
    plainReadyMs: plain.wallMs,
  };
}

/** restic's backup of the raw file, then the time its restore takes. */
function benchRestic(work: string, rawPath: string): number {
  const { restic } = resticIn(work);
  restic(['backup', '--host', 'nubis-bench', rawPath]);
  return restic(['restore', 'latest', '--target', join(work, 'restic-restored')]).wallMs;
}

async function benchSize(sizeMiB: number): Promise<SizeFigures> {
  const work = mkdtempSync(join(tmpdir(), `nubis-bench-live-restore-${process.pid}-`));
  const nubis = new NubisInstance('bench-live');
  try {
    const rawPath = join(work, 'disk.raw');
    progress(`${sizeMiB} MiB of random bytes into ${rawPath}`);
    writeRandom(rawPath, 0, sizeMiB);
    let figures: Omit<SizeFigures, 'resticRestoreMs'>;
    try {
      figures = await benchNubis(nubis, rawPath, sizeMiB);
    } finally {
      await nubis.destroy();
    }
    progress(`restic: backup and restore of ${sizeMiB} MiB`);
    return { ...figures, resticRestoreMs: benchRestic(work, rawPath) };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function report(results: SizeFigures[], resticVersion: string, loadBefore: number[], loadAfter: number[]): string {
  const column = (label: string, cell: (f: SizeFigures) => string) => `| ${label} | ${results.map(cell).join(' | ')} |`;
  return `### ${new Date().toISOString().slice(0, 10)}: live restore, Nubis and ${resticVersion}

- Machine: ${machine()}, ${resticVersion}; the guest under ${results[0]?.accelerator ?? '?'}
- Date: ${new Date().toISOString()}
- Load average (1, 5, 15 min): before ${load(loadBefore)}; after ${load(loadAfter)}
- Data: random bytes (no zero chunk), one dir-pool volume of a stopped VM of the tiny image, 128 MiB

| | ${results.map((f) => `${f.sizeMiB} MiB disk`).join(' | ')} |
| --- | ${results.map(() => '---').join(' | ')} |
${column('`restore --live`: VM running, guest ready', (f) => seconds(f.liveReadyMs))}
${column('`restore --live`: its console answers with the first and last MiB of its disk', (f) => seconds(f.liveAnswerMs))}
${column(`under ${GOAL_MS / 1000} s to an answering VM`, (f) => (f.liveAnswerMs < GOAL_MS ? 'yes' : 'no'))}
${column('`restore --live` ready, less a plain boot: what the live restore adds', (f) => seconds(f.liveReadyMs - f.plainReadyMs))}
${column('`restore --live`: every block in (operation done)', (f) => seconds(f.liveDoneMs))}
${column('`restore --live`: sealed bytes fetched by the pull', (f) => `${(f.livePulledBytes / 2 ** 20).toFixed(1)} MiB`)}
${column('restored volume against the original data (`qemu-img compare`)', (f) => f.liveCompare)}
${column('`restore` in full: VM running (wall clock)', (f) => seconds(f.fullRunningMs))}
${column('no restore: `vm create` of the same image until its guest is ready', (f) => seconds(f.plainReadyMs))}
${column(`${resticVersion}: \`restore\` of the same data into a file`, (f) => seconds(f.resticRestoreMs))}
${column('(the backup it restores: durationMs)', (f) => seconds(f.backupMs))}`;
}

const loadBefore = loadavg();
const resticVersion = ensureRestic();
const results: SizeFigures[] = [];
for (const size of sizes) results.push(await benchSize(size));
console.log(report(results, resticVersion, loadBefore, loadavg()));
