/**
 * fio (nbd engine) through our NBD server vs qemu-nbd serving the same kind of backing file, in
 * one run, and writes bench/storage/RESULTS.md. Two cores, shared machine: every server runs at
 * once in its own process, and the cells are measured interleaved (job by job, server by server,
 * `--repeat` rounds with the server order rotated), so load from other sessions hits them alike.
 *
 *   node --import tsx bench/storage/nbd-bench.ts [--runtime 6] [--size-mib 1024] [--repeat 3]
 *       [--jobs "rand write"] [--servers qemu-direct,pool] [--no-rebuild]
 *
 * `--jobs` (substrings of job labels) and `--servers` (keys below) narrow the run while working on
 * one path; a narrowed run prints its table and leaves RESULTS.md alone. `--servers
 * pool,pool-encrypted` is the encrypted-vs-plain comparison alone (a few minutes at the defaults). A full run replaces the part
 * of RESULTS.md between the two generated-section markers and keeps the text around them.
 *
 * Servers measured, each in its own process on a unix socket, each on its own copy of the data:
 * - qemu-direct: qemu-nbd --cache=none --aio=native (the reference the issue names)
 * - qemu-cache: qemu-nbd with its default cache mode (buffered, like ours)
 * - raw: ours serving a raw file (protocol overhead only)
 * - pool: ours serving a volume of a single-device pool (raid0 over one file: thin map, checksums)
 * - pool-encrypted: the same pool layout with an encrypted volume (XTS-AES-256 in the storage
 *   engine, data key wrapped by a FileKeyProvider in the run's temp folder), so the cost of
 *   encryption is the ratio of the two, reported in its own table (the goal: at least 80% of plain
 *   IOPS and MB/s)
 * - raid5, raid5-degraded: ours serving a volume of a 3-device raid5 pool, healthy and with a
 *   member offline
 * and the rebuild rate of the degraded raid5 member onto a new device.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs, promisify } from 'node:util';
import { FileKeyProvider } from '../../src/storage/keys/file-key-provider.ts';
import { StorageService } from '../../src/storage/service.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const { values } = parseArgs({
  options: {
    runtime: { type: 'string', default: '6' },
    'size-mib': { type: 'string', default: '1024' },
    repeat: { type: 'string', default: '3' },
    jobs: { type: 'string' },
    servers: { type: 'string' },
    'no-rebuild': { type: 'boolean', default: false },
  },
});
const runtime = Number(values.runtime);
const sizeMiB = Number(values['size-mib']);
const repeat = Number(values.repeat);
const repoRoot = new URL('../..', import.meta.url).pathname;

interface Job {
  label: string;
  rw: string;
  bs: string;
  depth: number;
}
const ALL_JOBS: Job[] = [
  { label: 'seq read 1 MiB QD32', rw: 'read', bs: '1M', depth: 32 },
  { label: 'seq write 1 MiB QD32', rw: 'write', bs: '1M', depth: 32 },
  { label: 'rand read 4 KiB QD1', rw: 'randread', bs: '4k', depth: 1 },
  { label: 'rand read 4 KiB QD32', rw: 'randread', bs: '4k', depth: 32 },
  { label: 'rand write 4 KiB QD1', rw: 'randwrite', bs: '4k', depth: 1 },
  { label: 'rand write 4 KiB QD32', rw: 'randwrite', bs: '4k', depth: 32 },
];

interface Server {
  key: string;
  title: string;
  /** Degraded arrays are measured on reads only (writes would change what the rebuild copies). */
  readsOnly?: boolean;
  uri?: string;
}
const ALL_SERVERS: Server[] = [
  { key: 'qemu-direct', title: 'qemu-nbd --cache=none --aio=native' },
  { key: 'qemu-cache', title: 'qemu-nbd (default cache)' },
  { key: 'raw', title: 'ours, raw file' },
  { key: 'pool', title: 'ours, single-device pool volume' },
  { key: 'pool-encrypted', title: 'ours, encrypted single-device pool volume' },
  { key: 'raid5', title: 'ours, raid5 (3 devices) volume' },
  { key: 'raid5-degraded', title: 'ours, raid5 degraded (1 of 3 offline)', readsOnly: true },
];
const REFERENCE = 'qemu-direct';
/** The encryption goal: an encrypted volume keeps at least this share of a plain one's IOPS and MB/s. */
const ENCRYPTED_GOAL_SHARE = 0.8;
const RESULTS_BEGIN = '<!-- nbd-bench: generated from here -->';
const RESULTS_END = '<!-- nbd-bench: generated up to here -->';

const jobFilter = values.jobs
  ?.split(',')
  .map((s) => s.trim())
  .filter(Boolean);
const serverFilter = values.servers
  ?.split(',')
  .map((s) => s.trim())
  .filter(Boolean);
const JOBS = ALL_JOBS.filter((job) => !jobFilter || jobFilter.some((f) => job.label.includes(f)));
const SERVERS = ALL_SERVERS.filter((server) => !serverFilter || serverFilter.includes(server.key));
const fullRun = !jobFilter && !serverFilter;
if (JOBS.length === 0 || SERVERS.length === 0) {
  process.stderr.write(
    `Nothing to measure: jobs ${values.jobs ?? 'all'}, servers ${values.servers ?? 'all'} (keys: ${ALL_SERVERS.map((s) => s.key).join(', ')})\n`,
  );
  process.exit(2);
}
const wants = (key: string) => SERVERS.some((s) => s.key === key);

interface Sample {
  mbPerSec: number;
  iops: number;
}

async function fio(uri: string, job: Job, dir: string): Promise<Sample> {
  const out = join(dir, 'fio.json');
  await run('fio', [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    `--iodepth=${job.depth}`,
    `--size=${sizeMiB}M`,
    `--runtime=${runtime}`,
    '--time_based',
    '--output-format=json',
    `--output=${out}`,
  ]);
  const result = JSON.parse(await readFile(out, 'utf8')).jobs[0];
  const side = result.read.io_bytes > 0 ? result.read : result.write;
  return { mbPerSec: side.bw_bytes / 1e6, iops: side.iops };
}

async function waitForSocket(path: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    try {
      await run('nbdinfo', ['--list', `nbd+unix:///?socket=${path}`]);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`nothing listens on ${path}`);
}

async function startDaemon(args: string[]): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', () => resolve());
    child.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  return child;
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

async function sparseFile(path: string, bytes: number): Promise<void> {
  await writeFile(path, '');
  await truncate(path, bytes);
}

const loadBefore = (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
const dir = await mkdtemp(join(tmpdir(), 'nubis-nbd-bench-'));
const children: ChildProcess[] = [];
/** server key -> job label -> samples */
const samples = new Map<string, Map<string, Sample[]>>();
const notes: string[] = [];
const startedAt = Date.now();
try {
  const raw = join(dir, 'disk.raw');
  // Fully written, so that every server reads real data (no sparse-file shortcuts).
  await run('dd', ['if=/dev/urandom', `of=${raw}`, 'bs=1M', `count=${sizeMiB}`, 'status=none']);

  // qemu-nbd locks its image, so every server gets its own copy.
  for (const [key, extra] of [
    ['qemu-direct', ['--cache=none', '--aio=native']],
    ['qemu-cache', []],
  ] as const) {
    if (!wants(key)) continue;
    const file = join(dir, `${key}.raw`);
    await copyFile(raw, file);
    const socket = join(dir, `${key}.sock`);
    children.push(spawn('qemu-nbd', ['-t', '-f', 'raw', ...extra, '-x', 'disk', '-k', socket, file], { stdio: 'ignore' }));
    await waitForSocket(socket);
    SERVERS.find((s) => s.key === key)!.uri = `nbd+unix:///disk?socket=${socket}`;
  }
  if (wants('raw')) {
    const file = join(dir, 'ours.raw');
    await copyFile(raw, file);
    const socket = join(dir, 'ours-raw.sock');
    children.push(await startDaemon(['bench/storage/serve-file.ts', file, socket]));
    SERVERS.find((s) => s.key === 'raw')!.uri = `nbd+unix:///disk?socket=${socket}`;
  }

  // Pools: one member file for the single-device pool; three per raid5 pool. Volumes as large as
  // the benchmark area, written in full, so that every cell reads and overwrites allocated data.
  const poolsDir = join(dir, 'pools');
  const pools = [
    { key: 'pool', name: 'single', layout: 'raid0' as const, members: 1, memberMiB: sizeMiB + 256 },
    { key: 'pool-encrypted', name: 'single-enc', layout: 'raid0' as const, members: 1, memberMiB: sizeMiB + 256, encrypted: true },
    { key: 'raid5', name: 'r5', layout: 'raid5' as const, members: 3, memberMiB: sizeMiB / 2 + 256 },
    { key: 'raid5-degraded', name: 'r5d', layout: 'raid5' as const, members: 3, memberMiB: sizeMiB / 2 + 256 },
  ].filter((p) => wants(p.key));
  let daemon: ChildProcess | undefined;
  const socket = join(dir, 'pool.sock');
  const keysDir = join(dir, 'keys');
  const daemonArgs = ['src/storage/storage-daemon.ts', '--pools', poolsDir, '--socket', socket, '--keys', keysDir];
  if (pools.length > 0) {
    {
      const { service } = await StorageService.start({ poolsDir, keys: new FileKeyProvider(keysDir) });
      for (const pool of pools) {
        const devices: string[] = [];
        for (let i = 0; i < pool.members; i++) {
          devices.push(join(dir, `${pool.name}-${i}.img`));
          await sparseFile(devices[i]!, pool.memberMiB * MiB);
        }
        await service.createPool({ name: pool.name, layout: pool.layout, devices });
        await service.createVolume(pool.name, 'vol', sizeMiB * MiB, { encrypted: 'encrypted' in pool });
      }
      await service.close();
    }
    daemon = await startDaemon(daemonArgs);
    for (const pool of pools) await run('nbdcopy', [raw, `nbd+unix:///${pool.name}/vol?socket=${socket}`]);
    if (wants('raid5-degraded')) {
      // Offline member 1 while no daemon has the pool open; the daemon then serves it degraded.
      await stop(daemon);
      const { service } = await StorageService.start({ poolsDir, keys: new FileKeyProvider(keysDir) });
      await service.offlineMember('r5d', 1);
      await service.close();
      daemon = await startDaemon(daemonArgs);
    }
    children.push(daemon);
    for (const pool of pools) SERVERS.find((s) => s.key === pool.key)!.uri = `nbd+unix:///${pool.name}/vol?socket=${socket}`;
  }

  // Write back what the set-up left dirty in the page cache, so that no cell pays for it.
  await run('sync');

  for (let round = 0; round < repeat; round++) {
    for (const job of JOBS) {
      // Rotate the order each round, so no server always runs right after the same neighbour.
      const order = SERVERS.map((_, i) => SERVERS[(i + round) % SERVERS.length]!);
      for (const server of order) {
        if (server.readsOnly && job.rw.includes('write')) continue;
        const sample = await fio(server.uri!, job, dir);
        let row = samples.get(server.key);
        if (!row) samples.set(server.key, (row = new Map()));
        let list = row.get(job.label);
        if (!list) row.set(job.label, (list = []));
        list.push(sample);
        process.stderr.write(`round ${round + 1}/${repeat} ${job.label} ${server.key}: ${Math.round(sample.iops)} IOPS, ${Math.round(sample.mbPerSec)} MB/s\n`);
      }
    }
  }

  if (daemon) await stop(daemon);
  if (wants('raid5-degraded') && !values['no-rebuild']) {
    // The rebuild of the offline member onto a new device, in-process, unthrottled.
    const { service } = await StorageService.start({ poolsDir, keys: new FileKeyProvider(keysDir) });
    const spare = join(dir, 'r5d-spare.img');
    await sparseFile(spare, (sizeMiB / 2 + 256) * MiB);
    const started = Date.now();
    let rebuilt = 0;
    await service.replaceMember('r5d', 1, spare, { onProgress: (p) => (rebuilt = p.doneBytes) });
    const seconds = (Date.now() - started) / 1000;
    // Each of 3 members holds a third of every row (data or parity): half the pool data's size.
    const memberBytes = rebuilt / 2;
    notes.push(
      `RAID 5 rebuild of one member (3 devices, ${sizeMiB} MiB of allocated volume data): ${(rebuilt / MiB).toFixed(0)} MiB of allocation units in ${seconds.toFixed(1)} s, ` +
        `${(rebuilt / 1e6 / seconds).toFixed(0)} MB/s of pool data (${(memberBytes / 1e6 / seconds).toFixed(0)} MB/s written to the new member, the rest read from the two others), unthrottled, in-process.`,
    );
    await service.close();
  }
} finally {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  await rm(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------- report
const cpu = cpus()[0]?.model ?? 'unknown CPU';
const { stdout: kernel } = await run('uname', ['-r']);
const { stdout: fioVersion } = await run('fio', ['--version']);
const { stdout: qemuVersion } = await run('qemu-nbd', ['--version']);
const measured = SERVERS.filter((s) => samples.has(s.key));
const cell = (key: string, label: string, metric: keyof Sample): { median: number; min: number; max: number } | undefined => {
  const list = samples.get(key)?.get(label);
  if (!list?.length) return undefined;
  const values_ = list.map((s) => s[metric]);
  return { median: median(values_), min: Math.min(...values_), max: Math.max(...values_) };
};
const lines: string[] = [];
lines.push('# NBD server benchmark', '');
lines.push(`Date: ${new Date().toISOString()} (${Math.round((Date.now() - startedAt) / 60000)} min)  `);
lines.push(`Load average before the run: ${loadBefore}; at its end: ${(await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ')}  `);
lines.push(`Machine: ${cpus().length} x ${cpu}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM, Linux ${kernel.trim()}, Node ${process.version}  `);
lines.push(`Tools: ${fioVersion.trim()} (nbd engine), ${qemuVersion.split('\n')[0]}  `);
// The command as run, narrowing included, so a printed table says what it measured.
const invocation = [
  `--runtime ${runtime} --size-mib ${sizeMiB} --repeat ${repeat}`,
  ...(values.jobs ? [`--jobs "${values.jobs}"`] : []),
  ...(values.servers ? [`--servers ${values.servers}`] : []),
  ...(values['no-rebuild'] ? ['--no-rebuild'] : []),
].join(' ');
lines.push(
  `Method: \`node --import tsx bench/storage/nbd-bench.ts ${invocation}\`; one fio job per cell, ${runtime} s time-based over ${sizeMiB} MiB, unix sockets, every server on its own copy of the data (qemu-nbd and the raw file in processes of their own, the pool volumes in one storage daemon). ` +
    `All servers run at once and the cells are measured interleaved, ${repeat} round${repeat === 1 ? '' : 's'}; each cell shows the median${repeat > 1 ? ', with the lowest and highest of the rounds in brackets' : ''}.`,
  '',
);
for (const metric of ['iops', 'mbPerSec'] as const) {
  lines.push(`## ${metric === 'iops' ? 'IOPS' : 'MB/s'}`, '');
  lines.push(`| job | ${measured.map((s) => s.title).join(' | ')} |`);
  lines.push(`| --- | ${measured.map(() => '---:').join(' | ')} |`);
  for (const job of JOBS) {
    const ref = cell(REFERENCE, job.label, metric);
    const cells = measured.map((server) => {
      const c = cell(server.key, job.label, metric);
      if (!c) return '-';
      const ratio = server.key === REFERENCE || !ref ? '' : ` **${Math.round((100 * c.median) / ref.median)}%**`;
      const plain = server.key === 'pool-encrypted' ? cell('pool', job.label, metric) : undefined;
      const ofPlain = plain ? ` _${Math.round((100 * c.median) / plain.median)}% of plain_` : '';
      const spread = repeat > 1 ? ` (${Math.round(c.min)}-${Math.round(c.max)})` : '';
      return `${Math.round(c.median)}${spread}${ratio}${ofPlain}`;
    });
    lines.push(`| ${job.label} | ${cells.join(' | ')} |`);
  }
  lines.push('');
}
const footnotes: string[] = [];
if (samples.has(REFERENCE))
  footnotes.push(
    `Percentages (bold) are medians relative to the median of ${ALL_SERVERS.find((s) => s.key === REFERENCE)!.title}, the reference the storage issue names.`,
  );
if (samples.has('pool') && samples.has('pool-encrypted'))
  footnotes.push('Percentages in italics (encrypted column) are its median relative to the median of the plain single-device pool volume.');
if (footnotes.length) lines.push(footnotes.join(' '), '');
const degradedLines: string[] = [];
for (const job of JOBS.filter((j) => !j.rw.includes('write'))) {
  const healthy = cell('raid5', job.label, 'iops');
  const degraded = cell('raid5-degraded', job.label, 'iops');
  if (healthy && degraded) {
    degradedLines.push(
      `- ${job.label}: ${Math.round(degraded.median)} IOPS degraded vs ${Math.round(healthy.median)} healthy, ${Math.round(100 - (100 * degraded.median) / healthy.median)}% less.`,
    );
  }
}
if (degradedLines.length)
  lines.push(
    '## RAID 5 degraded reads',
    '',
    'One member of three offline: a third of the data chunks are rebuilt from the other two on every read.',
    '',
    ...degradedLines,
    '',
  );
lines.push(...encryptionTable());
if (notes.length) lines.push('## Rebuild', '', ...notes.map((n) => `- ${n}`), '');
const report = `${lines.join('\n')}\n`;
if (fullRun) {
  // The figures go between two markers, so the hand-written reading around them stays.
  const resultsUrl = new URL('RESULTS.md', import.meta.url);
  const previous = await readFile(resultsUrl, 'utf8').catch(() => '');
  const begin = previous.indexOf(RESULTS_BEGIN);
  const end = previous.indexOf(RESULTS_END);
  const generated = `${RESULTS_BEGIN}\n${report}${RESULTS_END}`;
  const next = begin >= 0 && end > begin ? previous.slice(0, begin) + generated + previous.slice(end + RESULTS_END.length) : `${generated}\n`;
  await writeFile(resultsUrl, next);
}
process.stdout.write(report);

/**
 * The table "Encrypted / plain pool volume": per job, the encrypted volume's median IOPS and MB/s
 * as a share of the plain one's, and whether both meet the goal; empty unless both were measured.
 */
function encryptionTable(): string[] {
  const goalPercent = Math.round(100 * ENCRYPTED_GOAL_SHARE);
  const rows: string[] = [];
  let met = 0;
  for (const job of JOBS) {
    const figures = (['iops', 'mbPerSec'] as const).map((metric) => {
      const plain = cell('pool', job.label, metric);
      const encrypted = cell('pool-encrypted', job.label, metric);
      return plain && encrypted ? { plain: plain.median, encrypted: encrypted.median, share: encrypted.median / plain.median } : undefined;
    });
    if (figures.some((f) => !f)) continue;
    const meets = figures.every((f) => f!.share >= ENCRYPTED_GOAL_SHARE);
    if (meets) met++;
    const columns = figures.flatMap((f) => [Math.round(f!.plain), Math.round(f!.encrypted), `${Math.round(100 * f!.share)}%`]);
    rows.push(`| ${job.label} | ${columns.join(' | ')} | ${meets ? 'yes' : '**no**'} |`);
  }
  if (rows.length === 0) return [];
  return [
    '## Encrypted / plain pool volume',
    '',
    'The same single-device pool layout, one volume plain and one encrypted (XTS-AES-256 per 4 KiB sector in the storage engine), ' +
      `measured interleaved; medians. The goal: the encrypted volume keeps at least ${goalPercent}% of the plain one's IOPS and MB/s.`,
    '',
    `| job | plain IOPS | encrypted IOPS | IOPS encrypted / plain | plain MB/s | encrypted MB/s | MB/s encrypted / plain | at least ${goalPercent}% |`,
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |',
    ...rows,
    '',
    `Goal met in ${met} of ${rows.length} jobs.`,
    '',
  ];
}
