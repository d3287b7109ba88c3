/**
 * Runs a host program for a request: without a shell, with a deadline, and stopped by an
 * AbortSignal. A program that reads a FIFO or a slow device can otherwise hold a request (and
 * whoever waits for it) forever; here it is killed with SIGKILL when either fires.
 */
import { spawn } from 'node:child_process';
import { NubisError } from './errors.ts';

/** Options of {@link runCommand}. */
export interface RunCommandOptions {
  /** Kill the program after this long. Required: every command a request starts has a deadline. */
  timeoutMs: number;
  /** Kills the program when aborted; the promise then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Open file descriptors handed to the program as its fds 3, 4, ... (e.g. `/dev/fd/3`). */
  passFds?: readonly number[];
  /** Output kept per stream; more is dropped. Default 1 MiB. */
  maxOutputBytes?: number;
  /**
   * How the output is decoded. Default 'utf8'. 'latin1' keeps every byte as one character, so
   * `Buffer.from(stdout, 'latin1')` gives the bytes back: for output that holds raw file names,
   * which need not be UTF-8, and where `maxOutputBytes` then counts bytes exactly.
   */
  encoding?: 'utf8' | 'latin1';
}

/** What a finished program printed. */
export interface CommandOutput {
  stdout: string;
  stderr: string;
}

/**
 * Runs `command` with `args` and resolves with its output once it exits with status 0. Rejects
 * with a NubisError: `COMMAND_MISSING` (not installed), `COMMAND_TIMEOUT` (deadline passed; the
 * program was killed), `COMMAND_FAILED` (non-zero exit or killed by a signal; `details` carries
 * `exitCode` and `stderr`), or with `signal.reason` when the signal aborted it.
 */
export function runCommand(command: string, args: readonly string[], options: RunCommandOptions): Promise<CommandOutput> {
  const { signal, timeoutMs } = options;
  const maxOutputBytes = options.maxOutputBytes ?? 1024 * 1024;
  const commandLine = [command, ...args].join(' ');
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortReason(signal));
    const child = spawn(command, args, {
      env: { ...process.env, LC_ALL: 'C' },
      stdio: ['ignore', 'pipe', 'pipe', ...(options.passFds ?? [])],
      // Its own process group, so a kill reaches whatever it started too.
      detached: true,
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let aborted = false;
    const keep = (current: string, chunk: string) => (current.length >= maxOutputBytes ? current : current + chunk.slice(0, maxOutputBytes - current.length));
    const encoding = options.encoding ?? 'utf8';
    child.stdout!.setEncoding(encoding).on('data', (chunk: string) => (stdout = keep(stdout, chunk)));
    child.stderr!.setEncoding(encoding).on('data', (chunk: string) => (stderr = keep(stderr, chunk)));
    // The whole group is killed, and our ends of the pipes are closed: a grandchild holding them
    // would otherwise delay 'close' past the kill.
    const kill = () => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
      child.stdout!.destroy();
      child.stderr!.destroy();
    };
    const timer = setTimeout(() => {
      timedOut = true;
      kill();
    }, timeoutMs);
    const onAbort = () => {
      aborted = true;
      kill();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    const settle = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    child.on('error', (error: NodeJS.ErrnoException) => {
      settle();
      if (error.code === 'ENOENT') reject(new NubisError('COMMAND_MISSING', `${command} is not installed; install it (see README, Setup)`, { cause: error }));
      else reject(new NubisError('COMMAND_FAILED', `${command} could not be started: ${error.message}`, { cause: error }));
    });
    child.on('close', (code, killedBy) => {
      settle();
      if (aborted && signal) return reject(abortReason(signal));
      if (timedOut)
        return reject(new NubisError('COMMAND_TIMEOUT', `${commandLine} did not finish within ${timeoutMs} ms and was killed`, { details: { timeoutMs } }));
      if (code === 0) return resolve({ stdout, stderr });
      const how = killedBy ? `was killed by ${killedBy}` : `exited with status ${code}`;
      const tail = stderr.trim().split('\n').slice(-5).join('\n');
      reject(new NubisError('COMMAND_FAILED', `${commandLine} ${how}${tail ? `: ${tail}` : ''}`, { details: { exitCode: code, stderr } }));
    });
  });
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new NubisError('COMMAND_ABORTED', 'The command was cancelled');
}
