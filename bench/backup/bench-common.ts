/** What the backup benchmarks share: the data they back up, the VM on it, restic, and the machine line. */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, lstatSync, openSync, readdirSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { totalmem } from 'node:os';
import { join } from 'node:path';
import type { Vm } from '../../src/wire/schemas.ts';
import type { NubisInstance } from '../../test/helpers/nubis-instance.ts';

export const MiB = 1024 * 1024;

export const progress = (text: string): void => console.error(`# ${text}`);
export const seconds = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
export const mib = (bytes: number): string => `${(bytes / MiB).toFixed(1)} MiB`;

/** Runs `fn` and measures its wall clock. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; wallMs: number }> {
  const started = performance.now();
  const value = await fn();
  return { value, wallMs: performance.now() - started };
}

/** Bytes of the regular files under `path` (apparent sizes; sockets and links are not data). */
export function folderBytes(path: string): number {
  let total = 0;
  for (const name of readdirSync(path, { recursive: true }) as string[]) {
    const stats = lstatSync(join(path, name));
    if (stats.isFile()) total += stats.size;
  }
  return total;
}

/** Writes `countMiB` MiB of fresh random bytes at `atMiB` MiB of the file at `path` (made when missing). */
export function writeRandom(path: string, atMiB: number, countMiB: number): void {
  const fd = openSync(path, existsSync(path) ? 'r+' : 'w');
  try {
    for (let mib = 0; mib < countMiB; mib += 1) writeSync(fd, randomBytes(MiB), 0, MiB, (atMiB + mib) * MiB);
  } finally {
    closeSync(fd);
  }
}

/** The machine, for a result's first line: CPU model and count, memory, Node. */
export function machine(): string {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1].replace(/\s+/g, ' ').trim() ?? '?';
  const cores = cpuinfo.match(/^processor\s*:/gm)?.length ?? 0;
  return `${model} x ${cores}, ${(totalmem() / 2 ** 30).toFixed(1)} GiB, Node ${process.version}`;
}

export const load = (values: number[]): string => values.map((value) => value.toFixed(2)).join(', ');

/** restic's version line; installs the Debian package first when it is missing. */
export function ensureRestic(): string {
  const version = () => spawnSync('restic', ['version'], { encoding: 'utf8' });
  if (version().error) {
    progress('restic is missing: apt-get install -y restic');
    const install = () =>
      spawnSync('apt-get', ['install', '-y', '-q', 'restic'], {
        stdio: ['ignore', process.stderr, process.stderr],
        env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      });
    // An old package list may not name the current version: update it once and try again.
    if (
      install().status !== 0 &&
      (spawnSync('apt-get', ['update', '-q'], { stdio: ['ignore', process.stderr, process.stderr] }).status !== 0 || install().status !== 0)
    ) {
      throw new Error('Could not install restic with apt-get (install it by hand: apt-get install restic)');
    }
  }
  const answer = version();
  if (answer.status !== 0) throw new Error(`restic version failed: ${answer.stderr}`);
  return /restic [\d.]+/.exec(answer.stdout)?.[0] ?? answer.stdout.trim();
}

/** A new restic repository in `work` (its password and cache there too), and how to run restic on it. */
export function resticIn(work: string): { repository: string; restic: (args: string[]) => { stdout: string; wallMs: number } } {
  const repository = join(work, 'restic-repo');
  const passwordFile = join(work, 'restic-password');
  writeFileSync(passwordFile, randomBytes(24).toString('hex'), { mode: 0o600 });
  // Its cache in the temporary folder too: nothing of the run is left in the user's home.
  const env = { ...process.env, RESTIC_REPOSITORY: repository, RESTIC_PASSWORD_FILE: passwordFile, RESTIC_CACHE_DIR: join(work, 'restic-cache') };
  const restic = (args: string[]) => {
    const started = performance.now();
    const done = spawnSync('restic', args, { env, encoding: 'utf8', maxBuffer: 256 * MiB });
    if (done.status !== 0) throw new Error(`restic ${args.join(' ')}: ${done.stderr}`);
    return { stdout: done.stdout, wallMs: performance.now() - started };
  };
  restic(['init']);
  return { repository, restic };
}

/**
 * Nubis up with VM `bench` (the tiny image, 128 MiB) whose one dir-pool volume (vda, `local/bench`)
 * holds the raw file's content; answers the guest's accelerator.
 */
export async function setUpBenchVm(nubis: NubisInstance, rawPath: string, sizeMiB: number): Promise<string> {
  const cli = async (args: string[]) => {
    const done = await nubis.cli(args);
    if (done.code !== 0) throw new Error(`nubis ${args.join(' ')}: ${done.stderr}`);
  };
  await nubis.up();
  await cli(['pool', 'create', 'local', '--kind', 'dir']);
  await cli(['volume', 'create', 'bench', '--pool', 'local', '--size', `${sizeMiB}M`, '--host', 'host-1']);
  const found = spawnSync('find', [nubis.dataDir, '-name', 'bench.qcow2'], { encoding: 'utf8' }).stdout.trim().split('\n');
  if (found.length !== 1 || !found[0]) throw new Error(`The volume's qcow2 file: found ${JSON.stringify(found)}`);
  const converted = spawnSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', rawPath, found[0]], { encoding: 'utf8' });
  if (converted.status !== 0) throw new Error(`qemu-img convert: ${converted.stderr}`);
  await cli(['vm', 'create', 'bench', '--image', 'tiny', '--cpus', '1', '--memory', '128', '--disk', 'local/bench']);
  return (await nubis.cliJson<Vm>(['vm', 'show', 'bench'])).accelerator ?? '?';
}
