import { spawn } from 'node:child_process';

/** What a finished host command printed. */
export interface ToolResult {
  stdout: string;
  stderr: string;
}

/** Options of {@link runTool}. */
export interface RunToolOptions {
  /** Working directory. Default: the current one. */
  cwd?: string;
  /** Kill the command after this long. Default 10 minutes (a kernel download on a slow link). */
  timeoutMs?: number;
  /** Extra environment variables. */
  env?: Record<string, string>;
}

/** Why a host command did not succeed: it could not start, it timed out, or it exited non-zero. */
export class ToolFailure extends Error {
  override readonly name = 'ToolFailure';
  constructor(
    message: string,
    readonly command: string,
    readonly exitCode: number | null,
    readonly stderr: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** True when the program itself was not found (ENOENT on spawn). */
  get notInstalled(): boolean {
    return (this.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
  }
}

/**
 * Runs a host program without a shell (arguments are never re-parsed) and resolves with its
 * output once it exits with status 0; rejects with a {@link ToolFailure} otherwise. The image
 * builder's callers wrap that into a NubisError that says what to install or fix.
 */
export function runTool(command: string, args: readonly string[], options: RunToolOptions = {}): Promise<ToolResult> {
  const commandLine = [command, ...args].join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: { ...process.env, LC_ALL: 'C', ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: options.timeoutMs ?? 600_000,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', (error) => reject(new ToolFailure(`${command} could not be started: ${error.message}`, commandLine, null, stderr, { cause: error })));
    child.on('close', (code, signal) => {
      if (code === 0) resolve({ stdout, stderr });
      else {
        const how = signal ? `was killed by ${signal}` : `exited with status ${code}`;
        const tail = stderr.trim().split('\n').slice(-5).join('\n');
        reject(new ToolFailure(`${commandLine} ${how}${tail ? `: ${tail}` : ''}`, commandLine, code, stderr));
      }
    });
  });
}
