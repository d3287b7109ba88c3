/**
 * A whole Nubis for a test: `nubis up` in a data folder of its own on a free port, the API with
 * its admin token, the CLI, and `nubis down` plus removal of the folder at the end.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Operation } from '../../src/wire/schemas.ts';

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** A TCP port nothing listens on right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export class NubisInstance {
  readonly dataDir: string;
  port = 0;
  url = '';
  token = '';

  constructor(prefix: string) {
    this.dataDir = mkdtempSync(join(tmpdir(), `nubis-${prefix}-${process.pid}-`));
  }

  /** Runs the nubis CLI against this instance; `input` is written to its stdin. */
  cli(args: string[], options: { input?: string; env?: Record<string, string> } = {}): Promise<CliResult> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [join(repoRoot, 'bin/nubis.mjs'), '--data', this.dataDir, ...args], {
        // Its own config folder: a `nubis login` of the machine's user never stands in for this instance.
        env: { ...process.env, NUBIS_URL: '', NUBIS_TOKEN: '', NUBIS_CONFIG: join(this.dataDir, 'cli-config'), ...options.env },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk) => (stdout += chunk));
      child.stderr.on('data', (chunk) => (stderr += chunk));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr }));
      if (options.input !== undefined) child.stdin.write(options.input);
      child.stdin.end();
    });
  }

  /** `cli` that must succeed; with `--json` its output is parsed. */
  async cliJson<T>(args: string[]): Promise<T> {
    const result = await this.cli([...args, '--json']);
    if (result.code !== 0) throw new Error(`nubis ${args.join(' ')} failed (${result.code}): ${result.stderr}`);
    return JSON.parse(result.stdout) as T;
  }

  /** What `nubis up --json` answered last. */
  upResult: Record<string, unknown> = {};

  async up(extraArgs: string[] = []): Promise<void> {
    this.port ||= await freePort();
    const result = await this.cli(['up', '--detach', '--port', String(this.port), ...extraArgs, '--json']);
    if (result.code !== 0) throw new Error(`nubis up failed: ${result.stderr}${result.stdout}`);
    this.upResult = JSON.parse(result.stdout) as Record<string, unknown>;
    this.url = this.upResult.url as string;
    this.token = readFileSync(join(this.dataDir, 'admin-token'), 'utf8').trim();
  }

  /** Stops everything and removes the data folder, whatever state the test left. */
  async destroy(): Promise<void> {
    await this.cli(['down']).catch(() => undefined);
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  async api<T>(method: string, path: string, body?: unknown, token: string | null = this.token): Promise<{ status: number; body: T }> {
    const response = await fetch(`${this.url}${path}`, {
      method,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, body: (text ? JSON.parse(text) : undefined) as T };
  }

  /** Waits for an operation to end (by its event stream) and returns it. */
  async waitOperation(id: string): Promise<Operation> {
    const response = await fetch(`${this.url}/v1/operations/${id}/events`, { headers: { authorization: `Bearer ${this.token}` } });
    const text = await response.text(); // the stream ends when the operation does
    const end = /event: end\ndata: (.*)\n/.exec(text);
    if (!end) throw new Error(`Operation ${id} stream ended without an end event: ${text.slice(-500)}`);
    return JSON.parse(end[1]) as Operation;
  }

  pidOf(name: string): number {
    return Number(readFileSync(join(this.dataDir, 'run', `${name}.pid`), 'utf8'));
  }
}

/** GETs a URL with a deadline; resolves with the body text or undefined when it did not answer. */
export async function httpGet(url: string, timeoutMs = 5_000): Promise<string | undefined> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    return await response.text();
  } catch {
    return undefined;
  }
}

/**
 * Types `command` on a VM's serial console (through the API's WebSocket) and resolves with what
 * the console printed up to the line `<marker>-done`, which is echoed after the command.
 *
 * A command typed while the guest's shell is still starting is flushed with the terminal's
 * input, so the shell is first woken with empty lines until it shows a prompt.
 */
export async function runOnConsole(
  nubis: NubisInstance,
  vm: string,
  command: string,
  options: { project?: string; timeoutMs?: number; viaTicket?: boolean; token?: string } = {},
): Promise<string> {
  const { default: WebSocket } = await import('ws');
  const timeoutMs = options.timeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  const query = options.project ? `?project=${options.project}` : '';
  const marker = `mark${Math.random().toString(36).slice(2, 10)}`;
  const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
  // With `viaTicket` the console opens as a browser's does: a serial ticket (asked with `token`,
  // default the admin's), no token on the WebSocket.
  const ticketPath = options.viaTicket
    ? await nubis.api<{ path: string }>('POST', `/v1/vms/${vm}/console-ticket${query}`, { kind: 'serial' }, options.token ?? nubis.token).then((answer) => {
        if (answer.status !== 201) throw new Error(`No console ticket for ${vm}: ${answer.status} ${JSON.stringify(answer.body)}`);
        return answer.body.path;
      })
    : undefined;
  const socket = ticketPath
    ? new WebSocket(`${nubis.url.replace('http', 'ws')}${ticketPath}`)
    : new WebSocket(`${nubis.url.replace('http', 'ws')}/v1/vms/${vm}/console${query}`, { headers: { authorization: `Bearer ${nubis.token}` } });
  let output = '';
  let prompted = false;
  let finished = false;
  let closed: string | undefined;
  socket.on('message', (data: Buffer) => {
    const text = data.toString();
    output += text;
    // After each prompt busybox ash asks the terminal where the cursor is; answer as a terminal
    // would, so that nothing typed later is taken for the answer.
    for (const _ of text.matchAll(/\x1b\[6n/g)) if (socket.readyState === WebSocket.OPEN) socket.send('\x1b[1;1R');
    if (/[#$] (\x1b\[6n)?$/.test(output)) prompted = true;
    // The marker is built by the shell ($((1+1)) -> 2), so the echoed command line never matches.
    if (output.includes(`${marker}-2-done`)) finished = true;
  });
  socket.on('close', (code, reason) => (closed = `${code} ${reason.toString()}`));
  let failure: string;
  try {
    await new Promise((resolve, reject) => {
      socket.once('open', resolve);
      socket.once('error', reject);
    });
    while (!prompted && !closed && Date.now() < deadline) {
      socket.send('\n');
      for (let waited = 0; waited < 1000 && !prompted; waited += 50) await sleep(50);
    }
    if (prompted && !closed) {
      socket.send(`${command}; echo ${marker}-$((1+1))-done\n`);
      while (!finished && !closed && Date.now() < deadline) await sleep(50);
      if (finished) return output;
    }
    failure = closed
      ? `The console of ${vm} closed (${closed})`
      : `No ${prompted ? `${marker}-done` : 'prompt'} on the console of ${vm} within ${timeoutMs} ms`;
  } catch (error) {
    failure = `The console of ${vm} could not be opened: ${(error as Error).message}`;
  } finally {
    socket.close();
  }
  // What the guest printed, whether or not it reached this console session.
  const log = await nubis.cli(['vm', 'log', vm, '-n', '12', ...(options.project ? ['--project', options.project] : [])]).catch(() => ({ stdout: '(no log)' }));
  throw new Error(`${failure} after typing ${JSON.stringify(command.slice(0, 60))}; got: ${JSON.stringify(output.slice(-400))}\nserial log:\n${log.stdout}`);
}
