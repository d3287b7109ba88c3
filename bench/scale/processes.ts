/**
 * The processes of bench/scale and what they cost: the real control plane (`nubis daemon
 * control-plane`, its own process), the simulated agents (sim-agents.ts) and the seeding run
 * (seed.ts), each started here, stopped by its pid, and read from /proc (CPU seconds, resident
 * memory). Everything started is undone by `cleanUp`, also on failure and Ctrl-C.
 */
import { type ChildProcess, execFileSync, fork, spawn } from 'node:child_process';
import { existsSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { dataPaths, repoRoot } from '../../src/core/paths.ts';
import type { SimAnswer, SimRequest } from './sim-agents.ts';

// Whoever calls cleanUp first (the run's `finally` or the SIGINT handler) starts it; the other
// waits for the same clean-up, so the process cannot exit half-way through it.
const cleanups: Array<() => Promise<void> | void> = [];
let cleaning: Promise<void> | undefined;

/** Registers an undo step, run in reverse order by `cleanUp`. */
export function onCleanUp(step: () => Promise<void> | void): void {
  cleanups.push(step);
}

export function cleanUp(): Promise<void> {
  cleaning ??= (async () => {
    for (const undo of cleanups.splice(0).reverse()) {
      try {
        await undo();
      } catch (error) {
        console.error(`Clean-up step failed: ${(error as Error).message}`);
      }
    }
  })();
  return cleaning;
}

const CLOCK_TICKS_PER_SEC = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());

/** CPU seconds (user + system) a process has used so far, from /proc/PID/stat. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces: the fields after it start past the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SEC;
}

/** Resident memory of a process (bytes), from /proc/PID/status. */
export function residentBytes(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) * 1024 : Number.NaN;
}

/** Resolves when `child` has exited; kills it (by its pid) if it takes longer than `timeoutMs`. */
async function stopChild(child: ChildProcess, signal: NodeJS.Signals, timeoutMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  await exited;
  clearTimeout(timer);
}

/** The control plane as a real process: `node bin/nubis.mjs --data DIR daemon control-plane`. */
export interface ControlPlaneProcess {
  pid: number;
  url: string;
  /** The agents' way in: the unix socket in the data folder. */
  agentUrl: string;
  adminToken: string;
  joinToken: string;
  stop(): Promise<void>;
}

/**
 * Starts the control plane on `dataDir` (port chosen by the system, 127.0.0.1 only) with
 * `cacheDir` as NUBIS_CACHE, its log in `logFile`, and waits until it listens.
 */
export async function startControlPlane(options: { dataDir: string; cacheDir: string; logFile: string }): Promise<ControlPlaneProcess> {
  const log = openSync(options.logFile, 'a');
  // NUBIS_BENCH_CPU_PROF=DIR: the control plane writes a CPU profile there when it stops (for finding what to fix).
  const profile = process.env.NUBIS_BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.NUBIS_BENCH_CPU_PROF}`] : [];
  const child = spawn(
    process.execPath,
    [...profile, join(repoRoot, 'bin', 'nubis.mjs'), '--data', options.dataDir, 'daemon', 'control-plane', '--port', '0', '--listen', '127.0.0.1'],
    { env: { ...process.env, NUBIS_CACHE: options.cacheDir, NUBIS_LOG_LEVEL: 'warn' }, stdio: ['ignore', log, log] },
  );
  const stop = () => stopChild(child, 'SIGTERM', 60_000);
  onCleanUp(stop);
  const paths = dataPaths(options.dataDir);
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`The control plane exited (code ${child.exitCode}); see ${options.logFile}`);
    if (Date.now() > deadline) throw new Error(`The control plane did not start within 120 s; see ${options.logFile}`);
    if (existsSync(paths.apiInfo)) {
      // Read while the control plane writes it, it may be cut short: the next poll reads it whole.
      let info: { url: string; agentUrl: string; pid: number } | undefined;
      try {
        info = JSON.parse(readFileSync(paths.apiInfo, 'utf8')) as { url: string; agentUrl: string; pid: number };
      } catch {}
      if (info && info.pid === child.pid)
        return {
          pid: info.pid,
          url: info.url,
          agentUrl: info.agentUrl,
          adminToken: readFileSync(paths.adminToken, 'utf8').trim(),
          joinToken: readFileSync(paths.joinToken, 'utf8').trim(),
          stop,
        };
    }
    await delay(100);
  }
}

/** The simulated agents' process and its requests. */
export interface SimAgentsProcess {
  pid: number;
  ask<T extends SimAnswer['type']>(request: SimRequest, expect: T): Promise<Extract<SimAnswer, { type: T }>>;
  stop(): Promise<void>;
}

/** Starts the simulated hosts' process (sim-agents.ts); `ask` sends one request and waits for its answer. */
export function startSimAgents(options: {
  hosts: number;
  socketDir: string;
  agentUrl: string;
  joinToken: string;
  logFile: string;
  underlay: boolean;
}): SimAgentsProcess {
  const log = openSync(options.logFile, 'a');
  const child = fork(
    new URL('./sim-agents.ts', import.meta.url),
    [
      '--hosts',
      String(options.hosts),
      '--dir',
      options.socketDir,
      '--control',
      options.agentUrl,
      '--join-token',
      options.joinToken,
      ...(options.underlay ? ['--underlay'] : []),
    ],
    { stdio: ['ignore', log, log, 'ipc'] },
  );
  const stop = async () => {
    // Disconnecting asks it to close its servers and remove its sockets.
    if (child.connected) child.disconnect();
    await stopChild(child, 'SIGTERM', 30_000);
  };
  onCleanUp(stop);
  let queue: Promise<unknown> = Promise.resolve();
  const ask = <T extends SimAnswer['type']>(request: SimRequest, expect: T): Promise<Extract<SimAnswer, { type: T }>> => {
    const asked = queue.then(
      () =>
        new Promise<Extract<SimAnswer, { type: T }>>((resolve, reject) => {
          const onExit = (code: number | null) => reject(new Error(`The simulated agents exited (code ${code}); see ${options.logFile}`));
          child.once('exit', onExit);
          child.once('message', (answer: SimAnswer) => {
            child.off('exit', onExit);
            if (answer.type === expect) resolve(answer as Extract<SimAnswer, { type: T }>);
            else reject(new Error(`The simulated agents answered ${JSON.stringify(answer)} to ${request.type}`));
          });
          child.send(request);
        }),
    );
    queue = asked.catch(() => undefined);
    return asked;
  };
  return { pid: child.pid!, ask, stop };
}

/** Runs seed.ts to its end; resolves with what it printed: VMs made, seconds and its CPU seconds. */
export async function runSeed(options: { dataDir: string; vms: number; project: string; logFile: string }): Promise<{
  created: number;
  seconds: number;
  cpuSeconds: number;
}> {
  const log = openSync(options.logFile, 'a');
  const child = fork(new URL('./seed.ts', import.meta.url), ['--data', options.dataDir, '--vms', String(options.vms), '--project', options.project], {
    stdio: ['ignore', 'pipe', log, 'ipc'],
  });
  onCleanUp(() => stopChild(child, 'SIGTERM', 30_000));
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    output += chunk.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  if (code !== 0) throw new Error(`Seeding failed (code ${code}); see ${options.logFile}`);
  // Its own count of its CPU (a process that has exited has no /proc entry left).
  return JSON.parse(output.trim().split('\n').pop()!) as { created: number; seconds: number; cpuSeconds: number };
}
