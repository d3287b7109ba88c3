// Diagnostic namespaces attached to a tenant network, like OpenStack's DHCP namespace used for
// `ip netns exec qdhcp-... ping`: `nubis network probe`, the tests and the migration benchmark use
// them to play a user of a VM's service from inside the overlay.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { NubisError } from '../core/errors.ts';
import { assertIpv4, parseIpv4Cidr } from './addresses.ts';
import { ip, setSysctl, type CommandResult } from './ip-command.ts';
import { createNamespace, deleteNamespace, isRunning, runInNamespace } from './namespaces.ts';
import { plugNamespace, type NetworkOnHostKey } from './overlay.ts';
import { Revert } from '../core/revert.ts';
import { deleteLinkIfPresent } from './underlay.ts';

/** The probe's interface name inside its namespace. */
export const PROBE_INTERFACE = 'eth0';

/** Where and how to attach a probe. */
export interface ProbeOptions extends NetworkOnHostKey {
  /** The probe's address with prefix length, e.g. `10.0.0.250/24`; none (e.g. for a DHCP client) when omitted. */
  address?: string;
  /** Default route via this address when given. */
  gateway?: string;
  /** MAC of the probe's interface; default random. */
  mac?: string;
  /** Name of the probe's namespace; default `<hostNs>-pb-<random>`, so host prefixes cover it. */
  probeNs?: string;
  /**
   * Turn IPv6 off in the probe (default true): the networks are IPv4, and router solicitations
   * or MLD reports from a probe would otherwise add frames that tests counting traffic must ignore.
   */
  disableIpv6?: boolean;
}

/** An open probe namespace; {@link Probe.close} removes it. */
export interface Probe {
  namespace: string;
  /** `eth0`, inside {@link Probe.namespace}. */
  interfaceName: string;
  /** The veth end on the network's bridge in the host namespace. */
  hostLinkName: string;
  /** Runs a command in the probe; a non-zero exit is a result. Default deadline 10 s. */
  run(command: readonly string[], options?: { timeoutMs?: number; signal?: AbortSignal; input?: string }): Promise<CommandResult>;
  /** Starts a long-running command in the probe (stdio piped); the caller stops it. */
  spawn(command: readonly string[]): ChildProcessWithoutNullStreams;
  /** Stops what the probe still runs and removes its namespace and veth. Idempotent. */
  close(): Promise<void>;
}

/**
 * Creates a probe: a fresh namespace with a veth plugged into the network's bridge on the host,
 * the interface up with the given address (and default route). On failure nothing is left.
 */
export async function openProbe(options: ProbeOptions): Promise<Probe> {
  const suffix = randomBytes(4).toString('hex');
  const namespace = options.probeNs ?? `${options.hostNs}-pb-${suffix}`;
  const hostLinkName = `npb-${suffix}${randomBytes(3).toString('hex').slice(0, 3)}`;
  const call = { signal: options.signal, timeoutMs: options.timeoutMs };
  const inProbe = { ...call, netns: namespace };
  const address = options.address === undefined ? undefined : parseIpv4Cidr(options.address, 'probe address');
  if (options.gateway !== undefined) assertIpv4(options.gateway, 'gateway');
  const children = new Set<ChildProcessWithoutNullStreams>();
  await Revert.run(async (revert) => {
    if (!(await createNamespace(namespace, call))) {
      throw new NubisError('NET_NAMESPACE_EXISTS', `Probe namespace ${namespace} already exists`, { details: { namespace } });
    }
    revert.add(`delete namespace ${namespace}`, () => deleteNamespace(namespace, { ...call, killProcesses: true }));
    if (options.disableIpv6 ?? true) {
      await setSysctl('net.ipv6.conf.all.disable_ipv6', '1', inProbe);
      await setSysctl('net.ipv6.conf.default.disable_ipv6', '1', inProbe);
    }
    await plugNamespace({ ...options, hostLinkName, peerNs: namespace, peerName: PROBE_INTERFACE });
    revert.add(`delete veth ${hostLinkName}`, () => deleteLinkIfPresent(hostLinkName, { ...call, netns: options.hostNs }));
    if (address) await ip(['addr', 'add', `${address.address}/${address.prefixLength}`, 'dev', PROBE_INTERFACE], inProbe);
    if (options.gateway !== undefined) await ip(['route', 'add', 'default', 'via', options.gateway], inProbe);
  });
  let closed = false;
  return {
    namespace,
    interfaceName: PROBE_INTERFACE,
    hostLinkName,
    run: (command, runOptions = {}) => {
      if (command.length === 0) throw new NubisError('NET_INVALID_COMMAND', 'Probe command is empty');
      return runInNamespace(namespace, command[0], command.slice(1), runOptions);
    },
    spawn: (command) => {
      if (command.length === 0) throw new NubisError('NET_INVALID_COMMAND', 'Probe command is empty');
      const child = spawn('ip', ['netns', 'exec', namespace, ...command], { stdio: ['pipe', 'pipe', 'pipe'] });
      children.add(child);
      child.on('close', () => children.delete(child));
      return child;
    },
    close: async () => {
      if (closed) return;
      closed = true;
      for (const child of children) await stopChild(child, 2000);
      // Deleting the namespace deletes the veth, and with it its end on the bridge.
      await deleteNamespace(namespace, { ...call, killProcesses: true });
      await deleteLinkIfPresent(hostLinkName, { ...call, netns: options.hostNs });
    },
  };
}

/**
 * Runs `command` in a temporary probe attached to the network and always removes the probe
 * afterwards, also when the command fails or times out. A command still running after
 * `timeoutMs` is killed and the call rejects with `NET_COMMAND_TIMEOUT`.
 */
export async function runProbe(options: ProbeOptions & { command: readonly string[]; timeoutMs: number }): Promise<CommandResult> {
  const { timeoutMs, ...probeOptions } = options;
  const probe = await openProbe({ ...probeOptions, timeoutMs: undefined });
  try {
    return await probe.run(options.command, { timeoutMs, signal: options.signal });
  } finally {
    await probe.close();
  }
}

/** A probe running a long command, e.g. a ping every 10 ms across a migration. */
export interface RunningProbe {
  probe: Probe;
  child: ChildProcessWithoutNullStreams;
  /** Stops the command (SIGINT, so ping prints its summary; SIGKILL after 2 s), removes the probe, and resolves with what it printed. */
  stop(): Promise<CommandResult>;
}

/** Starts `command` in a new probe attached to the network; {@link RunningProbe.stop} ends both. */
export async function startProbe(options: ProbeOptions & { command: readonly string[] }): Promise<RunningProbe> {
  const probe = await openProbe(options);
  let child: ChildProcessWithoutNullStreams;
  try {
    child = probe.spawn(options.command);
  } catch (error) {
    await probe.close();
    throw error;
  }
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
  child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
  const exited = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? 128)));
  let stopping: Promise<CommandResult> | undefined;
  return {
    probe,
    child,
    stop: () => {
      stopping ??= (async () => {
        await stopChild(child, 2000, 'SIGINT');
        const exitCode = await exited;
        await probe.close();
        return { exitCode, stdout: Buffer.concat(stdout).toString('utf8'), stderr: Buffer.concat(stderr).toString('utf8') };
      })();
      return stopping;
    },
  };
}

/** Signals a child and waits for it to close, escalating to SIGKILL after `graceMs`. */
async function stopChild(child: ChildProcessWithoutNullStreams, graceMs: number, first: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  child.kill(first);
  const timer = setTimeout(() => {
    if (child.pid !== undefined && isRunning(child.pid)) child.kill('SIGKILL');
  }, graceMs);
  await closed;
  clearTimeout(timer);
}
