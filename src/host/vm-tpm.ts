/**
 * A VM's TPM 2.0 on its host: one swtpm process per VM, started before its QEMU and ended with
 * it, as the VM's own user like its QEMU (vm-launcher.ts). The TPM's state lives in the VM's
 * `run/tpm/` (the folder that user owns, vm-files.ts), so it lasts from one boot to the next and
 * goes when the VM is deleted; in a live migration QEMU carries it in the migration stream
 * (QEMU docs/specs/tpm.rst: the destination's swtpm starts with an empty state and receives the
 * source's state blobs), so the destination's swtpm starts from an empty folder.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { lchown, lstat, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { serialLogTail } from '../compute/serial-log.ts';
import type { VmUser } from '../compute/vm-user.ts';
import { NubisError } from '../core/errors.ts';
import { processAlive } from '../core/process-alive.ts';

export const SWTPM_BINARY = 'swtpm';

/**
 * The files of a VM's swtpm in its folder: what swtpm writes is in `run/`, its log (its output,
 * opened by the agent) beside QEMU's.
 */
export function tpmPathsOf(vmDir: string): { stateDir: string; socket: string; pidFile: string; log: string } {
  const runDir = join(vmDir, 'run');
  return { stateDir: join(runDir, 'tpm'), socket: join(runDir, 'swtpm.sock'), pidFile: join(runDir, 'swtpm.pid'), log: join(vmDir, 'swtpm.log') };
}

/** How a VM's process is started as its user: the launcher and its arguments up to the program (vm-launcher.ts). */
export interface VmProcessLauncher {
  user: VmUser;
  command: string;
  args: string[];
}

/** A running swtpm of one VM. */
export interface VmTpm {
  socket: string;
  pid: number;
  /** Ends the swtpm (if its QEMU did not end it already) and removes its socket and pid file; keeps the state. */
  stop(): Promise<void>;
}

/**
 * Starts the swtpm of the VM in `vmDir` and resolves once its control socket exists. `incoming`
 * (the destination of a migration) starts it from an empty state, which the migration fills.
 * With `--terminate` the swtpm ends by itself when its QEMU goes away, also while no agent runs.
 */
export async function startVmTpm(vmDir: string, options: { incoming?: boolean; timeoutMs?: number; launcher?: VmProcessLauncher } = {}): Promise<VmTpm> {
  const paths = tpmPathsOf(vmDir);
  await stopLeftoverTpm(vmDir);
  if (options.incoming) await rm(paths.stateDir, { recursive: true, force: true });
  await mkdir(paths.stateDir, { recursive: true, mode: 0o700 });
  if (options.launcher) {
    // In the user's own folder: what is there could be a link it made, and lchown never follows one.
    if (!(await lstat(paths.stateDir)).isDirectory()) throw new NubisError('VM_START_FAILED', `The TPM state folder ${paths.stateDir} is not a folder`);
    await lchown(paths.stateDir, options.launcher.user.uid, options.launcher.user.gid);
  }
  const args = [
    'socket',
    '--tpm2',
    '--tpmstate',
    `dir=${paths.stateDir},mode=0600`,
    '--ctrl',
    `type=unixio,path=${paths.socket},mode=0600`,
    '--pid',
    `file=${paths.pidFile}`,
    '--log',
    'fd=1',
    '--terminate',
  ];
  const logFd = openSync(paths.log, 'a', 0o600);
  let child: ChildProcess;
  try {
    const [command, commandArgs] = options.launcher ? [options.launcher.command, [...options.launcher.args, SWTPM_BINARY, ...args]] : [SWTPM_BINARY, args];
    child = spawn(command, commandArgs, { detached: true, stdio: ['ignore', logFd, logFd] });
  } finally {
    closeSync(logFd);
  }
  let failure: string | undefined;
  child.on('error', (error) => (failure = `cannot run ${SWTPM_BINARY}: ${error.message}; install the swtpm package`));
  child.on('exit', (code, signal) => (failure ??= `swtpm exited at once (${code ?? signal})`));
  child.unref();
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  while (!existsSync(paths.socket)) {
    if (failure || Date.now() > deadline) {
      if (child.pid) process.kill(child.pid, 'SIGKILL');
      const tail = (await serialLogTail(paths.log, 3).catch(() => [])).join(' | ');
      throw new NubisError(
        'VM_START_FAILED',
        `The TPM of the VM in ${vmDir} did not start: ${failure ?? 'no control socket within the deadline'}${tail ? `: ${tail}` : ''}`,
      );
    }
    await delay(10);
  }
  const pid = child.pid!;
  return { socket: paths.socket, pid, stop: () => stopTpmProcess(vmDir, pid) };
}

/**
 * Ends a swtpm an earlier run of this VM left (its pid file names a live swtpm), and removes the
 * socket and pid file of one that ended with its QEMU while no agent watched.
 */
async function stopLeftoverTpm(vmDir: string): Promise<void> {
  const pid = Number.parseInt(readFileSafe(tpmPathsOf(vmDir).pidFile), 10);
  await stopTpmProcess(vmDir, Number.isInteger(pid) && pid > 0 ? pid : undefined);
}

async function stopTpmProcess(vmDir: string, pid: number | undefined): Promise<void> {
  const paths = tpmPathsOf(vmDir);
  if (pid !== undefined && processAlive(pid) && isSwtpmOf(pid, vmDir)) {
    process.kill(pid, 'SIGTERM');
    for (let waited = 0; waited < 2_000 && processAlive(pid); waited += 20) await delay(20);
    if (processAlive(pid)) process.kill(pid, 'SIGKILL');
  }
  await Promise.all([paths.socket, paths.pidFile].map((path) => rm(path, { force: true })));
}

/** True when `pid` is a swtpm whose command line names this VM's state folder (not a reused pid). */
function isSwtpmOf(pid: number, vmDir: string): boolean {
  return readFileSafe(`/proc/${pid}/cmdline`).includes(tpmPathsOf(vmDir).stateDir);
}

function readFileSafe(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}
