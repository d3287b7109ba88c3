/**
 * What a backup costs through Nubis (full, then incremental after a small change; restore, verify,
 * challenge), beside restic backing up the same content on the host in the same run (the
 * reference: a well-known deduplicating backup tool with no VM, no QEMU and no store process).
 *
 *   npx tsx bench/backup/backup.bench.ts [--size-mib 1024] [--change-percent 1]
 *
 * - Data: SIZE MiB of random bytes (incompressible, no zero chunk) written to a raw file on the
 *   host. Nubis: a VM of the tiny image (128 MiB) whose one dir-pool volume (vda) of SIZE is that
 *   file, converted into the volume's qcow2 file before the VM starts (as test/storage/backups
 *   does). restic: the raw file itself.
 * - Full backup: `nubis backup create VM --json` (its durationMs, the CLI's wall clock, sentBytes,
 *   storedBytes, and how much the store's folder grew); `restic backup --json` of the file (its
 *   summary's total_duration and data_added, the wall clock, how much the repository grew).
 * - The change: CHANGE% of the disk (whole MiB, at least 1) of fresh random bytes, contiguous, in
 *   the middle of the disk: inside the running guest with `dd ... of=/dev/vda conv=fsync`, and
 *   at the same offset of the raw file for restic. Then the incremental backup of each, and its
 *   share of the full's time and bytes (the goal: under 5% of both).
 * - Nubis only: `backup restore ID --as NAME` of the incremental until the new VM runs, `backup
 *   verify` of it, and `backup challenge` of it (the store's and the check's ms, the proof's bytes).
 * Nubis runs first and is torn down before restic runs, so neither shares the machine with the
 * other. Installs restic with apt-get when it is missing (before anything is measured). Prints
 * the Markdown of the run and writes no file: record it by hand from a quiet machine (load
 * average under 1, nothing else running). bench/backup/README.md says more.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Backup, BackupAudit, BackupVerification } from '../../src/wire/backup-schemas.ts';
import type { Vm } from '../../src/wire/schemas.ts';
import { NubisInstance, runOnConsole } from '../../test/helpers/nubis-instance.ts';
import { ensureRestic, folderBytes, load, machine, mib, progress, resticIn, seconds, setUpBenchVm, timed, writeRandom } from './bench-common.ts';
/** The goal of the issue: an incremental backup costs under 5% of the full one's time and bytes. */
const GOAL_SHARE = 0.05;

const { values } = parseArgs({ options: { 'size-mib': { type: 'string', default: '1024' }, 'change-percent': { type: 'string', default: '1' } } });
const sizeMiB = Number(values['size-mib']);
const changePercent = Number(values['change-percent']);
if (!Number.isInteger(sizeMiB) || sizeMiB < 8) throw new Error(`--size-mib ${values['size-mib']}: give a whole number of MiB, 8 or more`);
if (!(changePercent > 0 && changePercent <= 100)) throw new Error(`--change-percent ${values['change-percent']}: give a number above 0 and at most 100`);
/** The change in whole MiB (dd's block), in the middle of the disk. */
const changeMiB = Math.min(sizeMiB, Math.max(1, Math.round((sizeMiB * changePercent) / 100)));
const changeAtMiB = Math.floor((sizeMiB - changeMiB) / 2);

/** What one backup cost, as each tool reports it and as timed from outside. */
interface BackupCost {
  /** The tool's own figure: Nubis's durationMs, restic's total_duration. */
  toolMs: number;
  /** From starting the CLI to its exit. */
  wallMs: number;
  /** Nubis: sentBytes (sealed chunks sent to the store); restic: data_added. */
  bytes: number;
  /** How much the store's folder or the restic repository grew on disk. */
  grewBytes: number;
  /** Nubis: chunks sent; restic: data blobs added. */
  pieces: number;
}

interface NubisFigures {
  accelerator: string;
  full: BackupCost;
  incremental: BackupCost;
  fullStoredBytes: number;
  incrementalStoredBytes: number;
  /** What each backup read of the disk, and the backup whose dirty bitmap the incremental's read followed. */
  fullReadBytes: number;
  incrementalRead: { bytes: number; changedSince?: string };
  restoreWallMs: number;
  verifyWallMs: number;
  verifiedChunks: number;
  challenge: BackupAudit & { wallMs: number };
}

interface ResticFigures {
  version: string;
  full: BackupCost;
  incremental: BackupCost;
}

/** One `nubis backup create` of the VM, with the store's growth. */
async function nubisBackup(nubis: NubisInstance): Promise<{ cost: BackupCost; backup: Backup }> {
  const storeDir = join(nubis.dataDir, 'backups');
  const before = folderBytes(storeDir);
  const { value: backup, wallMs } = await timed(() => nubis.cliJson<Backup>(['backup', 'create', 'bench']));
  const pieces = backup.disks.reduce((sum, disk) => sum + disk.newChunks, 0);
  return { backup, cost: { toolMs: backup.durationMs, wallMs, bytes: backup.sentBytes, grewBytes: folderBytes(storeDir) - before, pieces } };
}

/** The Nubis half of the run (see the file header); the caller destroys `nubis`. */
async function benchNubis(nubis: NubisInstance, rawPath: string): Promise<NubisFigures> {
  const accelerator = await setUpBenchVm(nubis, rawPath, sizeMiB);
  progress(`Nubis: full backup of ${sizeMiB} MiB (guest under ${accelerator})`);
  const full = await nubisBackup(nubis);
  progress(`Nubis: ${changeMiB} MiB of fresh random bytes at ${changeAtMiB} MiB, in the guest`);
  const output = await runOnConsole(
    nubis,
    'bench',
    `dd if=/dev/urandom of=/dev/vda bs=1M count=${changeMiB} seek=${changeAtMiB} conv=fsync 2>/dev/null && echo changed-$((6*7))`,
    { timeoutMs: 300_000 },
  );
  if (!output.includes('changed-42')) throw new Error(`The guest did not change its disk: ${output.slice(-300)}`);
  progress('Nubis: incremental backup');
  const incremental = await nubisBackup(nubis);
  if (incremental.cost.pieces === 0) throw new Error('The incremental backup sent no chunk: the change did not reach the disk');
  const id = incremental.backup.id;
  progress(`Nubis: restore, verify and challenge of ${id}`);
  const restored = await timed(() => nubis.cliJson<Vm>(['backup', 'restore', id, '--as', 'restored']));
  if (restored.value.state !== 'running') throw new Error(`The restored VM is ${restored.value.state}, not running`);
  const verified = await timed(() => nubis.cliJson<BackupVerification>(['backup', 'verify', id]));
  if (!verified.value.ok) throw new Error(`backup verify ${id} found damage: ${JSON.stringify(verified.value)}`);
  const challenged = await timed(() => nubis.cliJson<BackupAudit[]>(['backup', 'challenge', id]));
  const audit = challenged.value[0];
  if (!audit?.passed) throw new Error(`backup challenge ${id} did not pass: ${JSON.stringify(challenged.value)}`);
  return {
    accelerator,
    full: full.cost,
    incremental: incremental.cost,
    fullStoredBytes: full.backup.storedBytes,
    incrementalStoredBytes: incremental.backup.storedBytes,
    fullReadBytes: readBytesOf(full.backup),
    incrementalRead: {
      bytes: readBytesOf(incremental.backup),
      ...(incremental.backup.disks[0]?.changedSince ? { changedSince: incremental.backup.disks[0].changedSince } : {}),
    },
    restoreWallMs: restored.wallMs,
    verifyWallMs: verified.wallMs,
    verifiedChunks: verified.value.checkedChunks,
    challenge: { ...audit, wallMs: challenged.wallMs },
  };
}

const readBytesOf = (backup: Backup): number => backup.disks.reduce((sum, disk) => sum + (disk.readBytes ?? disk.sizeBytes), 0);

/** restic's summary of a backup (`--json`: the last line, message_type "summary"). */
interface ResticSummary {
  message_type: 'summary';
  data_blobs: number;
  data_added: number;
  total_duration: number;
}

/** The restic half of the run: a repository in `work`, a full backup, the change, an incremental. */
function benchRestic(work: string, rawPath: string, version: string): ResticFigures {
  const { repository, restic } = resticIn(work);
  const backup = (): BackupCost => {
    const before = folderBytes(repository);
    const { stdout, wallMs } = restic(['backup', '--json', '--host', 'nubis-bench', rawPath]);
    const summary = stdout
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { message_type?: string })
      .find((message): message is ResticSummary => message.message_type === 'summary');
    if (!summary) throw new Error(`restic backup printed no summary: ${stdout.slice(-500)}`);
    return {
      toolMs: summary.total_duration * 1000,
      wallMs,
      bytes: summary.data_added,
      grewBytes: folderBytes(repository) - before,
      pieces: summary.data_blobs,
    };
  };
  progress(`${version}: full backup of ${sizeMiB} MiB`);
  const full = backup();
  writeRandom(rawPath, changeAtMiB, changeMiB);
  progress(`${version}: incremental backup after ${changeMiB} MiB changed at ${changeAtMiB} MiB`);
  const incremental = backup();
  return { version, full, incremental };
}

const count = (n: number, noun: string): string => `${n} ${noun}${n === 1 ? '' : 's'}`;
const percent = (part: number, whole: number): string => `${((part / whole) * 100).toFixed(1)}%`;
const meets = (part: number, whole: number): string => (part / whole < GOAL_SHARE ? 'yes' : 'no');

/** The side-by-side table of the two tools' backups. */
function comparisonTable(n: NubisFigures, r: ResticFigures): string {
  const rows: Array<[string, string, string]> = [
    ['full: time (tool: durationMs / total_duration)', seconds(n.full.toolMs), seconds(r.full.toolMs)],
    ['full: wall clock of the CLI', seconds(n.full.wallMs), seconds(r.full.wallMs)],
    ['full: bytes sent / added', `${mib(n.full.bytes)} (${count(n.full.pieces, 'chunk')})`, `${mib(r.full.bytes)} (${count(r.full.pieces, 'blob')})`],
    ['full: store / repository grew by', mib(n.full.grewBytes), mib(r.full.grewBytes)],
    ['incremental: time (tool)', seconds(n.incremental.toolMs), seconds(r.incremental.toolMs)],
    ['incremental: wall clock of the CLI', seconds(n.incremental.wallMs), seconds(r.incremental.wallMs)],
    [
      'incremental: bytes sent / added',
      `${mib(n.incremental.bytes)} (${count(n.incremental.pieces, 'chunk')})`,
      `${mib(r.incremental.bytes)} (${count(r.incremental.pieces, 'blob')})`,
    ],
    ['incremental: store / repository grew by', mib(n.incremental.grewBytes), mib(r.incremental.grewBytes)],
    ['incremental / full: time (tool)', percent(n.incremental.toolMs, n.full.toolMs), percent(r.incremental.toolMs, r.full.toolMs)],
    ['incremental / full: wall clock', percent(n.incremental.wallMs, n.full.wallMs), percent(r.incremental.wallMs, r.full.wallMs)],
    ['incremental / full: bytes sent / added', percent(n.incremental.bytes, n.full.bytes), percent(r.incremental.bytes, r.full.bytes)],
    [
      `under ${GOAL_SHARE * 100}% of the full's time and bytes`,
      `time ${meets(n.incremental.toolMs, n.full.toolMs)}, bytes ${meets(n.incremental.bytes, n.full.bytes)}`,
      `time ${meets(r.incremental.toolMs, r.full.toolMs)}, bytes ${meets(r.incremental.bytes, r.full.bytes)}`,
    ],
  ];
  return [`| | Nubis | ${r.version} |`, '| --- | --- | --- |', ...rows.map((row) => `| ${row.join(' | ')} |`)].join('\n');
}

/** The table of Nubis's other operations on the incremental backup. */
function nubisTable(n: NubisFigures): string {
  const c = n.challenge;
  const rows: Array<[string, string]> = [
    ['storedBytes of the full / the incremental (shared chunks included)', `${mib(n.fullStoredBytes)} / ${mib(n.incrementalStoredBytes)}`],
    [
      'read of the disk by the full / the incremental (changed-block tracking)',
      `${mib(n.fullReadBytes)} / ${mib(n.incrementalRead.bytes)}${n.incrementalRead.changedSince ? ` (the chunks marked by the bitmap since ${n.incrementalRead.changedSince})` : ' (no bitmap: every chunk)'}`,
    ],
    ['`backup restore --as` until the new VM runs (wall clock)', seconds(n.restoreWallMs)],
    ['`backup verify` (wall clock)', `${seconds(n.verifyWallMs)}, ${n.verifiedChunks} chunks checked`],
    [
      '`backup challenge` (wall clock)',
      `${seconds(c.wallMs)}: ${c.blocks} blocks, store ${c.storeMs} ms, verify ${c.verifyMs} ms, proof ${c.proofBytes} bytes`,
    ],
  ];
  return ['| Nubis, of the incremental backup | measured |', '| --- | --- |', ...rows.map((row) => `| ${row.join(' | ')} |`)].join('\n');
}

/** The Markdown of the run. */
function report(n: NubisFigures, r: ResticFigures, loadBefore: number[], loadAfter: number[]): string {
  return `### ${new Date().toISOString().slice(0, 10)}: backups of a ${sizeMiB} MiB disk with ${changeMiB} MiB (${changePercent}%) changed, Nubis and restic

- Machine: ${machine()}, ${r.version}; the guest under ${n.accelerator}
- Date: ${new Date().toISOString()}
- Load average (1, 5, 15 min): before ${load(loadBefore)}; after ${load(loadAfter)}
- Data: ${sizeMiB} MiB of random bytes; the change: ${changeMiB} MiB of fresh random bytes at ${changeAtMiB} MiB (in the running guest for Nubis, in the raw file for restic)

${comparisonTable(n, r)}

${nubisTable(n)}`;
}

const loadBefore = loadavg();
const resticVersion = ensureRestic();
const work = mkdtempSync(join(tmpdir(), `nubis-bench-backup-${process.pid}-`));
const nubis = new NubisInstance('bench-backup');
try {
  const rawPath = join(work, 'disk.raw');
  progress(`${sizeMiB} MiB of random bytes into ${rawPath}`);
  writeRandom(rawPath, 0, sizeMiB);
  let nubisFigures: NubisFigures;
  try {
    nubisFigures = await benchNubis(nubis, rawPath);
  } finally {
    await nubis.destroy();
  }
  const resticFigures = benchRestic(work, rawPath, resticVersion);
  console.log(report(nubisFigures, resticFigures, loadBefore, loadavg()));
} finally {
  rmSync(work, { recursive: true, force: true });
}
