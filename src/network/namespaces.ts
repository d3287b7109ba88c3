// Named network namespaces (`ip netns`), the unit Nubis uses for a simulated host, a DHCP server
// and a diagnostic probe.
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { NubisError } from '../core/errors.ts';
import { ip, ipJson, runCommand, type CommandResult } from './ip-command.ts';
import { assertNamespaceName } from './names.ts';

/** Options for one call into a namespace. */
export interface NamespaceCallOptions {
  signal?: AbortSignal;
  /** Deadline for each command; default 10 s. */
  timeoutMs?: number;
}

/** Names of the existing network namespaces that start with `prefix` (all when omitted), sorted. */
export async function listNamespaces(prefix = '', options: NamespaceCallOptions = {}): Promise<string[]> {
  const entries = await ipJson<{ name: string }[]>(['netns', 'list'], rootCall(options));
  return entries
    .map((entry) => entry.name)
    .filter((name) => name.startsWith(prefix))
    .sort();
}

/** True when the named namespace exists. */
export async function namespaceExists(name: string, options: NamespaceCallOptions = {}): Promise<boolean> {
  return (await listNamespaces(name, options)).includes(name);
}

/**
 * Creates the namespace `name` with its loopback up; an existing one is kept (its loopback is
 * brought up again), so agents can call this after a restart. Resolves true when it was created.
 */
export async function createNamespace(name: string, options: NamespaceCallOptions = {}): Promise<boolean> {
  assertNamespaceName(name);
  let created = false;
  if (!(await namespaceExists(name, options))) {
    await ip(['netns', 'add', name], rootCall(options));
    created = true;
  }
  try {
    await ip(['link', 'set', 'lo', 'up'], { ...rootCall(options), netns: name });
  } catch (error) {
    if (created) await ip(['netns', 'delete', name], rootCall(options)).catch(() => {});
    throw error;
  }
  return created;
}

/** Options for {@link deleteNamespace}. */
export interface DeleteNamespaceOptions extends NamespaceCallOptions {
  /**
   * Kill the processes still running in the namespace first (SIGTERM, then SIGKILL after
   * `killGraceMs`). Without it a running process keeps the namespace's links alive after the
   * name is gone. Default false.
   */
  killProcesses?: boolean;
  /** How long processes get to exit after SIGTERM; default 2000 ms. */
  killGraceMs?: number;
}

/**
 * Deletes the namespace `name`; one that does not exist is not an error. Its links go with it
 * (a veth's peer in another namespace too); physical links would return to the root namespace.
 * Resolves true when it existed.
 */
export async function deleteNamespace(name: string, options: DeleteNamespaceOptions = {}): Promise<boolean> {
  assertNamespaceName(name);
  if (!(await namespaceExists(name, options))) return false;
  if (options.killProcesses) await killNamespaceProcesses(name, options);
  await ip(['netns', 'delete', name], rootCall(options));
  return true;
}

/** Process ids running in the namespace (`ip netns pids`). */
export async function namespacePids(name: string, options: NamespaceCallOptions = {}): Promise<number[]> {
  const out = await ip(['netns', 'pids', name], rootCall(options));
  return out
    .split('\n')
    .map((line) => Number.parseInt(line.trim(), 10))
    .filter((pid) => Number.isInteger(pid) && pid > 0);
}

/**
 * Stops every process in the namespace: SIGTERM, then SIGKILL to what is left after the grace
 * time. Resolves with the pids it signalled.
 */
export async function killNamespaceProcesses(name: string, options: DeleteNamespaceOptions = {}): Promise<number[]> {
  const pids = await namespacePids(name, options);
  if (pids.length === 0) return [];
  for (const pid of pids) signalQuietly(pid, 'SIGTERM');
  const deadline = Date.now() + (options.killGraceMs ?? 2000);
  while (Date.now() < deadline && pids.some(isRunning)) await sleep(50);
  for (const pid of pids.filter(isRunning)) signalQuietly(pid, 'SIGKILL');
  const hardDeadline = Date.now() + 2000;
  while (Date.now() < hardDeadline && pids.some(isRunning)) await sleep(20);
  return pids;
}

/** Options for {@link runInNamespace}. */
export interface RunInNamespaceOptions extends NamespaceCallOptions {
  /** Written to the command's standard input. */
  input?: string;
}

/**
 * Runs `command args...` inside the namespace and resolves with its exit code and output; a
 * non-zero exit is a result, not an error. A command still running after `timeoutMs` (default
 * 10 s) is killed and the call rejects with `NET_COMMAND_TIMEOUT`.
 */
export async function runInNamespace(ns: string, command: string, args: readonly string[], options: RunInNamespaceOptions = {}): Promise<CommandResult> {
  assertNamespaceName(ns);
  return runCommand(command, args, { ...rootCall(options), input: options.input, netns: ns, allowFailure: true });
}

/** Only cancellation and deadline: `ip netns` commands must run in the root namespace. */
function rootCall(options: NamespaceCallOptions): NamespaceCallOptions {
  return { signal: options.signal, timeoutMs: options.timeoutMs };
}

/** True while `pid` exists and is not a zombie. */
export function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  return !isZombie(pid);
}

function isZombie(pid: number): boolean {
  try {
    // /proc/PID/stat: "pid (comm) state ..."; comm may contain spaces or parentheses.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state === 'Z' || state === 'X';
  } catch {
    return false;
  }
}

function signalQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') {
      throw new NubisError('NET_PROCESS_SIGNAL_FAILED', `Cannot send ${signal} to process ${pid}`, { cause: error });
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The command line of a process (arguments split), or undefined when it has exited. */
export async function processCommandLine(pid: number): Promise<string[] | undefined> {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8');
    return raw.split('\0').filter((part) => part.length > 0);
  } catch {
    return undefined;
  }
}
