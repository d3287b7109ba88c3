/**
 * `nubis up` and `nubis down`: start and stop the control plane and the local host agents as
 * processes of their own, so that either can restart without touching running VMs.
 */
import { spawn } from 'node:child_process';
import { existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { NubisError } from '../core/errors.ts';
import { processAlive } from '../core/process-alive.ts';
import { cacheDir, dataPaths, repoRoot } from '../core/paths.ts';
import { buildTinyImage, readTinyImage } from '../images/build-tiny.ts';
import { stopOrphanedVms } from '../host/orphan-vms.ts';
import { ApiClient, resolveApiTarget } from './api-client.ts';
import type { Operation, Vm } from '../api/schemas.ts';

export interface UpOptions {
  dataDir: string;
  port: number;
  hosts: number;
  detach: boolean;
  quiet: boolean;
}


async function readPidFile(path: string): Promise<number | undefined> {
  if (!existsSync(path)) return undefined;
  const pid = Number.parseInt(await readFile(path, 'utf8'), 10);
  return Number.isInteger(pid) && processAlive(pid) ? pid : undefined;
}

/** Starts `nubis daemon ...` detached, with its output in a log file and its pid in run/. */
async function spawnDaemon(dataDir: string, name: string, args: string[]): Promise<number> {
  const paths = dataPaths(dataDir);
  await mkdir(paths.runDir, { recursive: true });
  await mkdir(paths.logsDir, { recursive: true });
  const logFd = openSync(join(paths.logsDir, `${name}.log`), 'a');
  const child = spawn(process.execPath, [join(repoRoot, 'bin/nubis.mjs'), 'daemon', ...args], { detached: true, stdio: ['ignore', logFd, logFd], env: process.env });
  closeSync(logFd);
  child.unref();
  await writeFile(join(paths.runDir, `${name}.pid`), `${child.pid}\n`);
  return child.pid!;
}

/** Waits until `check` returns a value, or throws with `what` after `timeoutMs`. */
async function waitFor<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    await delay(100);
  }
  throw new NubisError('UP_FAILED', `${what} did not happen within ${timeoutMs / 1000} s${lastError ? ` (${(lastError as Error).message})` : ''}; see the logs in the data folder`);
}

export interface UpResult {
  url: string;
  dataDir: string;
  adminTokenFile: string;
  hosts: string[];
  alreadyRunning: boolean;
}

/** Starts whatever of the control plane and the host agents is not running yet. */
export async function up(options: UpOptions, say: (line: string) => void): Promise<UpResult> {
  const paths = dataPaths(options.dataDir);
  await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
  if (!readTinyImage(cacheDir())) {
    say('Building the tiny guest image (first run only)');
    await buildTinyImage({ cacheDir: cacheDir(), onProgress: (message) => say(`  ${message}`) });
  }
  const hostNames = Array.from({ length: options.hosts }, (_, i) => `host-${i + 1}`);
  let alreadyRunning = true;
  let controlPid = await readPidFile(join(paths.runDir, 'control-plane.pid'));
  if (!controlPid) {
    alreadyRunning = false;
    await rm(paths.apiInfo, { force: true });
    controlPid = await spawnDaemon(options.dataDir, 'control-plane', ['control-plane', '--data', options.dataDir, '--port', String(options.port)]);
  }
  const url = await waitFor('The control plane answering', 30_000, async () => {
    if (!processAlive(controlPid!)) throw new NubisError('UP_FAILED', `The control plane exited; see ${join(paths.logsDir, 'control-plane.log')}`);
    if (!existsSync(paths.apiInfo)) return undefined;
    const info = JSON.parse(readFileSync(paths.apiInfo, 'utf8')) as { url: string };
    await new ApiClient(resolveApiTarget(options.dataDir)).request('GET', '/v1/status');
    return info.url;
  });
  for (const name of hostNames) {
    if (await readPidFile(join(paths.runDir, `agent-${name}.pid`))) continue;
    alreadyRunning = false;
    await spawnDaemon(options.dataDir, `agent-${name}`, ['agent', '--name', name, '--data', options.dataDir, '--control-url', url]);
  }
  const client = new ApiClient(resolveApiTarget(options.dataDir));
  // The first agent start probes the accelerator (up to ~20 s where KVM does not work).
  await waitFor('Every host agent joining', 90_000, async () => {
    const hosts = await client.request<Array<{ name: string; status: string }>>('GET', '/v1/hosts');
    return hostNames.every((name) => hosts.some((host) => host.name === name && host.status === 'online')) ? true : undefined;
  });
  return { url, dataDir: options.dataDir, adminTokenFile: paths.adminToken, hosts: hostNames, alreadyRunning };
}

export interface DownResult {
  stoppedVms: string[];
  stoppedProcesses: string[];
}

/**
 * Stops the VMs (unless `keepVms`), then the agents and the control plane. VMs are stopped
 * through the API, cleanly; any QEMU left without an agent is stopped directly afterwards.
 */
export async function down(options: { dataDir: string; keepVms: boolean }, say: (line: string) => void): Promise<DownResult> {
  const paths = dataPaths(options.dataDir);
  const stoppedVms: string[] = [];
  if (!options.keepVms) {
    try {
      const client = new ApiClient(resolveApiTarget(options.dataDir));
      const vms = await client.request<Vm[]>('GET', '/v1/vms');
      const running = vms.filter((vm) => ['running', 'paused', 'starting'].includes(vm.state));
      if (running.length > 0) say(`Stopping ${running.length} VM(s): ${running.map((vm) => vm.name).join(', ')}`);
      await Promise.all(
        running.map(async (vm) => {
          const { operation } = await client.request<{ operation: Operation }>('POST', `/v1/vms/${vm.id}/stop`, { timeoutSeconds: 20 });
          await client.follow(operation.id, () => {});
          stoppedVms.push(vm.name);
        }),
      );
    } catch (error) {
      say(`Could not stop VMs through the API (${(error as Error).message}); stopping them directly`);
    }
  }
  const stoppedProcesses: string[] = [];
  if (existsSync(paths.runDir)) {
    const { readdirSync } = await import('node:fs');
    // Agents first, so none reports to a control plane that is going away.
    const pidFiles = readdirSync(paths.runDir).filter((f) => f.endsWith('.pid')).sort((a, b) => Number(a.startsWith('control')) - Number(b.startsWith('control')));
    for (const file of pidFiles) {
      const pid = await readPidFile(join(paths.runDir, file));
      if (pid) {
        process.kill(pid, 'SIGTERM');
        await waitFor(`${file.replace('.pid', '')} exiting`, 30_000, async () => (processAlive(pid) ? undefined : true)).catch(() => process.kill(pid, 'SIGKILL'));
        stoppedProcesses.push(file.replace('.pid', ''));
      }
      await rm(join(paths.runDir, file), { force: true });
    }
  }
  if (!options.keepVms) {
    const orphans = await stopOrphanedVms(paths.hostsDir);
    if (orphans.length > 0) say(`Stopped ${orphans.length} QEMU process(es) that had no agent`);
  }
  await rm(paths.apiInfo, { force: true });
  return { stoppedVms, stoppedProcesses };
}
